"""Attaching banks to the decoder layers of any Hugging Face causal LM.

A bank is registered as the submodule ``schemabank`` of its decoder layer (so it moves with the
model and its parameters are named ``...layers.<i>.schemabank.<param>``) and applied by a forward
hook to the hidden state the layer returns. Nothing else in the model changes, so generation with
the KV cache works as before: the bank acts on each new token's hidden state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .bank import SchemaBank, ortho_penalty
from .errors import ConfigError

BANK_ATTR = "schemabank"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder layers (the first ModuleList as long as the layer count)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def resolve_layers(layers: list[int], num_layers: int) -> list[int]:
    """Turn negative layer indices into absolute ones, checking the range."""
    out = []
    for i in layers:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ConfigError(
                f"schemabank.layers: layer {i} does not exist (the model has {num_layers} decoder layers)"
            )
        out.append(j)
    if len(set(out)) != len(out):
        raise ConfigError(f"schemabank.layers: {layers} names the same layer twice")
    return sorted(out)


def _hook(module: nn.Module, args, output):
    bank: SchemaBank = getattr(module, BANK_ATTR)
    if isinstance(output, tuple):  # older transformers return (hidden_states, ...)
        return (bank(output[0]), *output[1:])
    return bank(output)


class BankSet:
    """The banks attached to one model, keyed by absolute layer index."""

    def __init__(self, model: nn.Module, banks: dict[int, SchemaBank]):
        self.model = model
        self.banks = dict(sorted(banks.items()))
        layers = decoder_layers(model)
        self._handles = []
        for i, bank in self.banks.items():
            layers[i].add_module(BANK_ATTR, bank)
            self._handles.append(layers[i].register_forward_hook(_hook))

    @classmethod
    def attach(
        cls,
        model: nn.Module,
        layers: list[int],
        num_schemas: int,
        rank: int,
        topk: int,
        attr_dim: int,
    ) -> BankSet:
        """Create fresh banks (gain 0) on ``layers`` of ``model``, on its device, in float32."""
        hidden = model.config.hidden_size
        absolute = resolve_layers(layers, len(decoder_layers(model)))
        device = next(model.parameters()).device
        banks = {
            i: SchemaBank(hidden, num_schemas, rank, topk, attr_dim).to(device) for i in absolute
        }
        return cls(model, banks)

    def detach(self) -> None:
        """Remove the hooks and the bank submodules, restoring the bare model."""
        for h in self._handles:
            h.remove()
        layers = decoder_layers(self.model)
        for i in self.banks:
            delattr(layers[i], BANK_ATTR)
        self._handles = []

    def __iter__(self) -> Iterator[SchemaBank]:
        return iter(self.banks.values())

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every bank's parameters, bank by bank (for optimisers and counting)."""
        for bank in self:
            yield from bank.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Bank tensors keyed ``layers.<i>.<param>`` (the layout of schemabank.safetensors)."""
        return {
            f"layers.{i}.{k}": v.detach().contiguous()
            for i, bank in self.banks.items()
            for k, v in bank.state_dict().items()
        }

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy tensors keyed as :meth:`state_dict` into the banks; missing or unexpected keys
        and wrong shapes raise ``ValueError`` before anything is copied."""
        expected = self.state_dict()
        missing, extra = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
        if missing or extra:
            raise ValueError(
                f"bank tensors do not match: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        for key, t in tensors.items():
            if t.shape != expected[key].shape:
                raise ValueError(
                    f"bank tensor {key} has shape {tuple(t.shape)}, expected {tuple(expected[key].shape)}"
                )
        for i, bank in self.banks.items():
            prefix = f"layers.{i}."
            bank.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )

    def ortho(self) -> torch.Tensor:
        """Orthonormality penalty averaged over banks."""
        return torch.stack([ortho_penalty(b) for b in self]).mean()

    @contextmanager
    def disabled(self):
        """Temporarily run the model as if no bank were attached."""
        before = [b.enabled for b in self]
        for b in self:
            b.enabled = False
        try:
            yield
        finally:
            for b, e in zip(self, before, strict=True):
                b.enabled = e

    @contextmanager
    def capturing(self):
        """Keep each bank's router logits of the last forward pass (``bank.last_logits``)."""
        for b in self:
            b.capture, b.last_logits = True, None
        try:
            yield
        finally:
            for b in self:
                b.capture, b.last_logits = False, None

    def last_logits(self) -> list[torch.Tensor]:
        """Router logits of the last captured forward pass, one (B, T, S) tensor per bank."""
        out = [b.last_logits for b in self]
        if any(x is None for x in out):
            raise RuntimeError("no router logits captured: run a forward pass inside capturing()")
        return out

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

from ..errors import ConfigError
from .bank import SchemaBank, ortho_penalty
from .router import PrefixState

BANK_ATTR = "schemabank"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder layers (the first ModuleList as long as the layer count)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def decoder_module(model: nn.Module) -> nn.Module:
    """The module whose child is the list of decoder layers (e.g. ``LlamaModel``)."""
    layers = decoder_layers(model)
    for module in model.modules():
        if any(child is layers for child in module.children()):
            return module
    raise ValueError(f"cannot find the decoder of {type(model).__name__}")


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
    # The layer's hidden states (B, T, H) -> the bank's (B, T, H), in place of the layer's output.
    if isinstance(output, tuple):  # older transformers return (hidden_states, ...)
        return (bank(output[0]), *output[1:])
    return bank(output)


def _prefix_hook(state: PrefixState):
    """A decoder forward pre-hook recording, for prefix routers, which new tokens are real and
    whether the pass continues the sequences of the previous one (a non-empty KV cache)."""

    def hook(module, args, kwargs):
        if state.held:
            return
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs["inputs_embeds"]
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise ValueError("a prefix router needs a 2-D attention mask (batch, length)")
            mask = mask[:, -x.shape[1] :]  # (B, T_new): the new tokens' part
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # named cache since 5.2x
        past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        state.set(mask, past > 0)

    return hook


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
        if any(b.router_input != "token" for b in self.banks.values()):
            self.prefix_state = PrefixState()
            for bank in self.banks.values():
                bank.prefix_state = self.prefix_state
            self._handles.append(
                decoder_module(model).register_forward_pre_hook(
                    _prefix_hook(self.prefix_state), with_kwargs=True
                )
            )

    @classmethod
    def attach(
        cls,
        model: nn.Module,
        layers: list[int],
        num_schemas: int,
        rank: int,
        topk: int,
        attr_dim: int,
        router_input: str = "token",
        router_hidden: int = 0,
    ) -> BankSet:
        """Create fresh banks (gain 0) on ``layers`` of ``model``, on its device, in float32."""
        hidden = model.config.hidden_size
        absolute = resolve_layers(layers, len(decoder_layers(model)))
        device = next(model.parameters()).device
        banks = {
            i: SchemaBank(
                hidden, num_schemas, rank, topk, attr_dim, router_input, router_hidden
            ).to(device)
            for i in absolute
        }
        return cls(model, banks)

    def detach(self) -> None:
        """Remove the hooks and the bank submodules, restoring the bare model."""
        for h in self._handles:
            h.remove()
        layers = decoder_layers(self.model)
        for i, bank in self.banks.items():
            delattr(layers[i], BANK_ATTR)
            bank.prefix_state = None
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

    @contextmanager
    def restricted(self, mask: torch.Tensor | None):
        """Route each sequence of the batch only among the schemas ``mask`` (B, S) allows
        (oracle routing by the problems' tags); None leaves routing to the routers."""
        for b in self:
            b.route_mask = mask
        try:
            yield
        finally:
            for b in self:
                b.route_mask = None

    def last_logits(self) -> list[torch.Tensor]:
        """Router logits of the last captured forward pass, one (B, T, S) tensor per bank."""
        out = [b.last_logits for b in self]
        if any(x is None for x in out):
            raise RuntimeError("no router logits captured: run a forward pass inside capturing()")
        return out

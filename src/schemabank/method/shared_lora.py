"""One matmul for the LoRA A of projections that read the same input (``training.fuse_lora_a``).

A decoder layer's attention feeds one input to ``q_proj``, ``k_proj`` and ``v_proj``, its MLP one
to ``gate_proj`` and ``up_proj``. PEFT's LoRA computes ``x @ A.T`` for each of them: three (two)
skinny matmuls forward, and in the backward pass three (two) more for the input's gradient and
three (two) split-K matmuls for the weights'. Concatenated, ``x @ cat(A_q, A_k, A_v).T`` is one
matmul each way, with the same numbers within float error (each output column is the same dot
product, its sum perhaps in another order).

The parameters, PEFT's modules and their state dict stay as they are. Hooks do the work, the
same functions on every layer (so alike layers still share compiled code): a forward pre-hook on
the parent (the attention or the MLP) computes the concatenated product and hands each LoRA A
module its columns; a forward hook on each LoRA A module returns them in place of its own
product, which a compiler then drops as unused; a forward hook on the parent clears them. They
act only inside :func:`fused` (the trainer's compiled forward passes); elsewhere each returns at
once and PEFT computes as usual; after training :func:`unshare_lora_inputs` removes them. Without
a compiler the module's own product still runs, so the setting is meant for ``training.compile``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn

#: Projections of one parent module that read the same input.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

_active = False  # inside fused(): read by the hooks (a compiled graph specialises on it)


@contextmanager
def fused():
    """The hooks of :func:`share_lora_inputs` act inside this context."""
    global _active
    before, _active = _active, True
    try:
        yield
    finally:
        _active = before


def _input(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _lora_a(layer: LoraLayer) -> nn.Linear:
    return layer.lora_A[layer.active_adapters[0]]


def _compute(parent: nn.Module, args: tuple, kwargs: dict) -> None:
    if not _active:
        return
    layers = [getattr(parent, name) for name in parent._shared_lora_names]
    if any(layer.merged or layer.disable_adapters for layer in layers):
        return  # PEFT will not call the LoRA A modules
    modules = [_lora_a(layer) for layer in layers]
    x = _input(args, kwargs)
    x = layers[0]._cast_input_dtype(x, modules[0].weight.dtype)
    products = F.linear(x, torch.cat([m.weight for m in modules]))
    for m, part in zip(modules, products.split([m.out_features for m in modules], -1), strict=True):
        m._shared_product = part


def _take(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    shared = module._shared_product
    return shared if _active and shared is not None else output


def _clear(parent: nn.Module, args: tuple, output):
    if _active:
        for name in parent._shared_lora_names:
            _lora_a(getattr(parent, name))._shared_product = None
    return output


def share_lora_inputs(model: nn.Module) -> int:
    """Put :mod:`shared_lora`'s hooks on every parent module of ``model`` with two or more LoRA
    layers of one :data:`GROUPS` entry (one active adapter each, without dropout or a variant
    such as DoRA). Returns the number of groups."""
    groups = 0
    for parent in model.modules():
        for names in GROUPS:
            found = [n for n in names if _shareable(getattr(parent, n, None))]
            if len(found) < 2:
                continue
            if hasattr(parent, "_shared_lora_names"):
                raise ValueError(f"{type(parent).__name__} has two groups of LoRA projections")
            parent._shared_lora_names = tuple(found)
            hooks = [
                parent.register_forward_pre_hook(_compute, with_kwargs=True),
                parent.register_forward_hook(_clear),
            ]
            for name in found:
                module = _lora_a(getattr(parent, name))
                module._shared_product = None
                hooks.append(module.register_forward_hook(_take))
            parent._shared_lora_hooks = hooks
            groups += 1
    return groups


def unshare_lora_inputs(model: nn.Module) -> None:
    """Remove :func:`share_lora_inputs`' hooks and attributes from ``model`` (after training:
    each hook costs a Python call a module a forward pass, the generation loop's included)."""
    for parent in model.modules():
        if not hasattr(parent, "_shared_lora_hooks"):
            continue
        for handle in parent._shared_lora_hooks:
            handle.remove()
        for name in parent._shared_lora_names:
            del _lora_a(getattr(parent, name))._shared_product
        del parent._shared_lora_hooks, parent._shared_lora_names


def _shareable(layer) -> bool:
    if not isinstance(layer, LoraLayer) or len(layer.active_adapters) != 1:
        return False
    adapter = layer.active_adapters[0]
    return (
        adapter in layer.lora_A
        and isinstance(layer.lora_dropout[adapter], nn.Identity)
        and adapter not in getattr(layer, "lora_variant", {})
    )

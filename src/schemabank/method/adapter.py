"""Putting the adapter on a base model: PEFT LoRA in both modes, plus banks in SchemaBank mode.

LoRA is added first and banks second, so that for the same seed both modes start from the same
LoRA initialisation, and so that PEFT never wraps a bank's router.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import peft
import torch
from torch import nn

from ..config import BankConfig, Config, LoraSection
from .attach import BankSet, decoder_layers, resolve_layers
from .stages import count_parameters


def make_lora_config(lcfg: LoraSection, r: int | None = None) -> peft.LoraConfig:
    """PEFT's LoRA config from ours, optionally at another rank ``r`` (the parameter-matched
    baseline); alpha is scaled with the rank so that alpha / r, the update's scale, stays."""
    r = r or lcfg.r
    alpha = lcfg.lora_alpha * r / lcfg.r  # keeps alpha / r when the rank is matched
    return peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=lcfg.lora_dropout,
        target_modules=lcfg.target_modules,
    )


def bank_parameter_count(hidden_size: int, bcfg: BankConfig, num_banks: int) -> int:
    """Trainable parameters of ``num_banks`` banks: router, U, V, A, G and gain each."""
    S, r, ad, n = bcfg.num_schemas, bcfg.rank, bcfg.attr_dim, bcfg.router_hidden
    n_in = hidden_size * (2 if bcfg.router_input == "token_prefix" else 1)
    router = n_in * S if n == 0 else n_in * n + n + n * S
    return num_banks * (router + 2 * S * hidden_size * r + S * ad + ad * r + 1)


def lora_parameters_per_rank(base: nn.Module, lcfg: LoraSection) -> int:
    """LoRA parameters at rank 1 (the count is linear in the rank)."""
    probe_cfg = peft.LoraConfig(
        task_type="CAUSAL_LM", r=1, lora_alpha=1, target_modules=lcfg.target_modules
    )
    probe = peft.get_peft_model(base, probe_cfg)
    n = sum(p.numel() for name, p in probe.named_parameters() if "lora_" in name)
    probe.unload()
    return n


def matched_rank(base: nn.Module, cfg: Config) -> int:
    """The LoRA rank whose parameter count is closest to SchemaBank's (LoRA at lora.r + banks)."""
    per_rank = lora_parameters_per_rank(base, cfg.lora)
    n_banks = len(resolve_layers(cfg.schemabank.layers, len(decoder_layers(base))))
    target = per_rank * cfg.lora.r + bank_parameter_count(
        base.config.hidden_size, cfg.schemabank, n_banks
    )
    return max(1, round(target / per_rank))


def build_adapter(base: nn.Module, cfg: Config) -> tuple[peft.PeftModel, BankSet | None, int]:
    """Wrap ``base`` with LoRA (and banks in SchemaBank mode). Returns model, banks, LoRA rank."""
    r = matched_rank(base, cfg) if cfg.lora.match_params else cfg.lora.r
    model = peft.get_peft_model(base, make_lora_config(cfg.lora, r))
    banks = None
    if cfg.experiment.mode == "schemabank":
        b = cfg.schemabank
        banks = BankSet.attach(
            model,
            b.layers,
            b.num_schemas,
            b.rank,
            b.topk,
            b.attr_dim,
            b.router_input,
            b.router_hidden,
        )
    return model, banks, r


@contextmanager
def base_only(model: peft.PeftModel, banks: BankSet | None):
    """LoRA and banks off: the bare base model (for its perplexity beside the adapter's)."""
    with model.disable_adapter(), banks.disabled() if banks is not None else nullcontext():
        yield


def adapter_parameters(model: peft.PeftModel) -> dict:
    """The ``parameters`` entry of results.json: counts per group, LoRA rank and target modules."""
    lora = model.peft_config["default"]
    return {
        **count_parameters(model),
        "lora_rank": lora.r,
        "lora_target_modules": sorted(lora.target_modules),
    }


@contextmanager
def merged_lora(model: nn.Module):
    """``model``'s LoRA layers merged into their base weights while the context lasts (PEFT's
    ``merge``: each adapted linear layer then runs one matmul instead of three and their sum, so
    a decoding step launches fewer kernels), then their base weights and biases put back bit for
    bit (PEFT's ``unmerge`` subtracts the update again, which in bf16 would not restore them).
    The merged weights round differently from the separate matmuls: in bf16 a greedy decode can
    pick other tokens."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged]
    saved = []
    for m in layers:
        base = m.get_base_layer()
        params = [p for p in (base.weight, getattr(base, "bias", None)) if p is not None]
        saved.append((m, [(p, p.detach().clone()) for p in params]))
    try:
        for m in layers:
            m.merge()
        yield
    finally:
        with torch.no_grad():
            for m, params in saved:
                if m.merged:
                    m.unmerge()
                for p, before in params:
                    p.copy_(before)

"""The training stages as data (SPEC section 4): what each trains, which losses it uses.

======================== ============================== ================================================
stage                    trainable groups               loss
======================== ============================== ================================================
stage1_router_pretrain   router                         routing cross-entropy to the tag target
stage2_schema_train      schema, lora                   LM + lambda_ortho · ortho
stage3_joint_finetune    router, schema, lora           LM + ortho (+ balance, z-loss when weighted)
baseline                 lora                           LM
======================== ============================== ================================================

Parameter groups are name filters (:func:`param_group`): the bank's router weight, the bank's other
parameters (U, V, A, G, gain), and PEFT's LoRA matrices. Everything else is the frozen base.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

GROUPS = ("router", "schema", "lora")


@dataclass(frozen=True)
class Stage:
    """One training stage: what it trains and which losses it optimises (a row of the table
    above)."""

    key: str
    """Config key under training.stages (``baseline`` for the LoRA-only mode)."""
    label: str
    """The ``stage`` field of training_log.jsonl."""
    trainable: tuple[str, ...]
    losses: tuple[str, ...]
    tagged: bool = False
    """Whether inputs carry the tag line (under the tag-dropout curriculum)."""


STAGES: tuple[Stage, ...] = (
    Stage("stage1_router_pretrain", "router_pretrain", ("router",), ("route",), tagged=True),
    Stage("stage2_schema_train", "schema_train", ("schema", "lora"), ("lm", "ortho")),
    Stage(
        "stage3_joint_finetune",
        "joint_finetune",
        ("router", "schema", "lora"),
        ("lm", "ortho", "balance", "z"),
    ),
)
BASELINE = Stage("baseline", "lora", ("lora",), ("lm",))


def param_group(name: str) -> str | None:
    """``router``, ``schema``, ``lora`` or None (frozen base) for a parameter name."""
    if ".schemabank.router." in name or name.startswith("schemabank.router."):
        return "router"
    if ".schemabank." in name or name.startswith("schemabank."):
        return "schema"
    if "lora_" in name:
        return "lora"
    return None


def grouped_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The adapter's parameters by group (the base model's are left out)."""
    out: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        g = param_group(name)
        if g is not None:
            out[g].append((name, p))
    return out


def set_trainable(model: nn.Module, groups: Iterable[str]) -> None:
    """Make exactly the parameters of ``groups`` trainable; freeze everything else."""
    groups = set(groups)
    for name, p in model.named_parameters():
        p.requires_grad_(param_group(name) in groups)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Adapter parameter counts per group, and their total."""
    counts = {g: sum(p.numel() for _, p in ps) for g, ps in grouped_parameters(model).items()}
    counts["total"] = sum(counts.values())
    return counts

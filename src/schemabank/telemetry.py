"""Telemetry: one flushed JSON object per training step in ``training_log.jsonl``.

Fields of a line (SPEC section 7): ``step`` (1-based), ``stage``, ``loss`` (the optimised total),
``lm_loss`` and ``route_loss`` (null in stages that do not use them), ``ortho``, ``balance``,
``z_loss`` (logged at every SchemaBank step, optimised only where the stage uses them with a
non-zero weight; null for the baseline), ``lr``, ``tag_dropout``, ``grad_norm`` (before clipping), ``tokens_per_s`` (non-padding
tokens of the step over its wall time), ``tokens``, ``gain`` (mean bank gain; null for the
baseline) and ``elapsed_s``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

LOG_FIELDS = (
    "step",
    "stage",
    "loss",
    "lm_loss",
    "route_loss",
    "ortho",
    "balance",
    "z_loss",
    "lr",
    "tag_dropout",
    "grad_norm",
    "tokens_per_s",
    "tokens",
    "gain",
    "elapsed_s",
)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


class JsonlLogger:
    """Appends records to a JSONL file, flushing each line."""

    def __init__(self, path: Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def log(self, record: dict) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullLogger(JsonlLogger):
    """A logger that writes nothing (the processes other than rank 0 of a distributed run)."""

    def __init__(self):
        pass

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

"""Telemetry: one flushed JSON object per training step in ``training_log.jsonl``.

Fields of a line (SPEC section 7): ``step`` (1-based), ``stage``, ``loss`` (the optimised total),
``lm_loss`` and ``route_loss`` (null in stages that do not use them), ``ortho``, ``balance``,
``z_loss`` (logged at every SchemaBank step, optimised only where the stage uses them with a
non-zero weight; null for the baseline), ``lr``, ``tag_dropout``, ``grad_norm`` (before clipping), ``tokens_per_s`` (non-padding
tokens of the step over its wall time; of the whole batch, over all processes), ``tokens``, ``gain`` (mean bank gain; null for the
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


def step_seconds(line: dict) -> float:
    """A training-log line's step time: its ``tokens`` over its ``tokens_per_s``."""
    return line["tokens"] / line["tokens_per_s"]


def throughput(lines: list[dict], skip: int = 0) -> dict:
    """Training throughput of a log: its tokens over its steps' wall time (``tokens`` /
    ``tokens_per_s`` per step), leaving out the first ``skip`` steps of each stage (warm-up)."""
    kept, seen = [], {}
    for line in lines:
        seen[line["stage"]] = seen.get(line["stage"], 0) + 1
        if seen[line["stage"]] > skip:
            kept.append(line)
    tokens = sum(x["tokens"] for x in kept)
    seconds = sum(step_seconds(x) for x in kept)
    return {
        "steps": len(kept),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else float("nan"),
    }


def throughput_by_stage(lines: list[dict], skip: int = 0) -> dict[str, dict]:
    """:func:`throughput` of each stage of a log, in the order the stages ran."""
    stages = list(dict.fromkeys(line["stage"] for line in lines))
    return {st: throughput([x for x in lines if x["stage"] == st], skip) for st in stages}


def curve_difference(a: list[dict], b: list[dict], key: str = "loss") -> dict:
    """Largest and mean absolute difference of ``key`` between two logs of the same steps."""
    if [x["step"] for x in a] != [x["step"] for x in b]:
        raise ValueError(f"the logs have different steps ({len(a)} and {len(b)} lines)")
    diffs = [abs(x[key] - y[key]) for x, y in zip(a, b, strict=True) if x[key] is not None]
    return {
        "key": key,
        "steps": len(diffs),
        "max_abs": max(diffs, default=0.0),
        "mean_abs": sum(diffs) / len(diffs) if diffs else 0.0,
    }

"""Each training step's time in runs' training logs: median, 90th percentile and the slow steps.

Usage, from the repository root, on any machine:

    python scripts/step_times.py RUN [RUN ...] [--slow 0.2]

A step's time is ``tokens / tokens_per_s`` of its log line (``telemetry.step_seconds``) (the wall time of the step, as the
trainer measured it). For each run and stage it prints the steps, the median and 90th-percentile
step time, and the steps slower than ``--slow`` seconds (compilation, CUDA-graph recording,
checkpoints) with their sum and their step numbers. With ``training.compile`` the median is the
steady step and the slow steps are what new shapes cost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from schemabank.telemetry import read_jsonl, step_seconds


def step_times(lines: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``{stage: [(step, seconds), ...]}`` in the order the stages ran."""
    out: dict[str, list[tuple[int, float]]] = {}
    for x in lines:
        out.setdefault(x["stage"], []).append((x["step"], step_seconds(x)))
    return out


def summary(times: list[tuple[int, float]], slow: float) -> dict:
    """Median, 90th percentile and total of one stage's step times, and its steps over ``slow``."""
    s = np.array([t for _, t in times])
    over = [(step, t) for step, t in times if t > slow]
    return {
        "steps": len(s),
        "median_ms": 1000 * float(np.median(s)),
        "p90_ms": 1000 * float(np.percentile(s, 90)),
        "total_s": float(s.sum()),
        "slow_steps": over,
        "slow_s": sum(t for _, t in over),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (or training_log.jsonl files)")
    p.add_argument("--slow", type=float, default=0.2, help="seconds above which a step is slow")
    args = p.parse_args(argv)
    for run in args.runs:
        path = Path(run)
        log = path if path.suffix == ".jsonl" else path / "training_log.jsonl"
        if not log.is_file():
            sys.exit(f"step_times: training log not found: {log}")
        stages = step_times(read_jsonl(log))
        total = sum(t for times in stages.values() for _, t in times)
        print(f"{run}: {sum(map(len, stages.values()))} steps, {total:.1f} s")
        for stage, times in stages.items():
            r = summary(times, args.slow)
            slow = ", ".join(f"{step} ({t:.1f} s)" for step, t in r["slow_steps"])
            print(
                f"  {stage:16s} {r['steps']:5d} steps  median {r['median_ms']:6.1f} ms  "
                f"p90 {r['p90_ms']:6.1f} ms  total {r['total_s']:6.1f} s  "
                f"over {args.slow} s: {len(r['slow_steps'])} steps, {r['slow_s']:.1f} s"
                + (f": {slow}" if slow else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

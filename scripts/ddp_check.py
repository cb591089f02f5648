"""Check multi-GPU training: the same run on one GPU and on N GPUs (torchrun), side by side.

Usage, from the repository root of a machine with 2 GPUs, in the project's environment (``make
setup``; 4 min 13 s on 2 x H200; the figures are in docs/performance.md, Several GPUs):

    python scripts/ddp_check.py --output ddp_check

It trains ``configs/smollm2/schemabank.yaml`` (all three stages: 30 + 60 + 30 steps) at a global
batch of 384 length-grouped examples, in micro-batches of 192 per process, and evaluates on 256
GSM8K problems and the perplexities, three times:

1. ``1gpu``: one process (two micro-batches of 192 a step);
2. ``<N>gpu``: ``torchrun --nproc_per_node N -m schemabank train`` (one micro-batch per GPU);
3. ``1gpu_noise`` (leave out with ``--no-noise``): one process with micro-batches of 96, the
   same gradient summed in another order, to show how far two runs that agree in exact
   arithmetic drift apart in bf16: the noise the N-GPU curve is judged against.

It prints, and writes to ``OUTPUT/ddp_check.json``: training tokens/s of each run (steady state,
leaving out the first ``--skip`` steps of each stage; and overall, from the run's training time),
the N-GPU / 1-GPU ratio, overall and for each stage, the largest and mean absolute difference of
the loss curves from the 1-GPU run's, and the GSM8K accuracy and perplexity of each. Each run's output is in
``OUTPUT/<name>.log``, its run directory in ``OUTPUT/<name>/``. ``--set key=value`` changes the
config of all runs (e.g. ``--set training.device=cpu`` with ``--nproc 2`` checks the script on a
machine without GPUs; pass a smaller ``--batch-size`` there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from schemabank.config import load_config
from schemabank.errors import SchemaBankError
from schemabank.telemetry import curve_difference, read_jsonl, throughput, throughput_by_stage


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="folder for the runs, their logs and the JSON")
    p.add_argument("--config", default="configs/smollm2/schemabank.yaml")
    p.add_argument("--nproc", type=int, help="GPUs (processes) of the multi-GPU run (default: all)")
    p.add_argument("--steps", type=int, default=120, help="training steps (stages 1/4, 1/2, 1/4)")
    p.add_argument("--batch-size", type=int, default=384, help="global batch")
    p.add_argument("--micro-batch-size", type=int, default=192, help="per process")
    p.add_argument("--limit", type=int, default=256, help="GSM8K problems to evaluate")
    p.add_argument("--skip", type=int, default=5, help="warm-up steps per stage left out")
    p.add_argument("--no-noise", action="store_true", help="leave out the noise reference run")
    p.add_argument("--data-dir", help="passed on to schemabank train")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def train(name: str, launcher: list[str], overrides: list[str], args) -> dict:
    """Run ``schemabank train`` under ``launcher``; return its log lines, results and wall time."""
    out = Path(args.output)
    cmd = [*launcher, "-m", "schemabank", "train", "--config", args.config, "--overwrite"]
    cmd += ["--output-dir", str(out / name)]
    cmd += [f"--set={o}" for o in overrides]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"[{name}] failed with exit status {rc}; see {out / name}.log")
    run_dir = next((out / name).iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    print(f"[{name}] done in {wall:.0f} s", flush=True)
    return {"lines": read_jsonl(run_dir / "training_log.jsonl"), "results": results, "wall": wall}


def summary(run: dict, skip: int) -> dict:
    r = run["results"]
    steady = throughput(run["lines"], skip)
    whole = throughput(run["lines"])
    ppl = r.get("perplexity") or {}
    return {
        "processes": r["environment"].get("processes", 1),
        "device": r["environment"]["device_name"],
        "tokens_per_s_steady": steady["tokens_per_s"],
        "tokens_per_s_overall": whole["tokens"] / r["training"]["time_s"],
        "tokens_per_s_by_stage": {
            st: t["tokens_per_s"] for st, t in throughput_by_stage(run["lines"], skip).items()
        },
        "train_time_s": r["training"]["time_s"],
        "wall_s": run["wall"],
        "final_loss": run["lines"][-1]["loss"],
        "strict": r["gsm8k"]["strict"]["correct"],
        "flexible": r["gsm8k"]["flexible"]["correct"],
        "n": r["gsm8k"]["n"],
        "ppl": {k: v for k, v in ppl.items() if k.startswith(("ppl_", "base_ppl_"))},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    nproc = args.nproc
    if nproc is None:
        import torch

        nproc = torch.cuda.device_count()
    if nproc < 2:
        sys.exit("ddp_check: needs at least 2 processes (GPUs); pass --nproc")
    s1 = args.steps // 4
    s2 = args.steps // 2
    overrides = [
        f"training.total_steps={args.steps}",
        f"training.stages.stage1_router_pretrain.steps={s1}",
        f"training.stages.stage2_schema_train.steps={s2}",
        f"training.stages.stage3_joint_finetune.steps={args.steps - s1 - s2}",
        f"training.batch_size={args.batch_size}",
        f"training.micro_batch_size={args.micro_batch_size}",
        "training.group_by_length=true",
        "training.checkpoint_every=0",
        f"eval.limit={args.limit}",
        *args.overrides,
    ]
    try:
        load_config(args.config, overrides)  # a bad config fails here, before any run
    except SchemaBankError as exc:
        sys.exit(f"ddp_check: {exc}")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    python = [sys.executable]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    runs = {"1gpu": train("1gpu", python, overrides, args)}
    multi = f"{nproc}gpu"
    runs[multi] = train(multi, [*torchrun, f"--nproc_per_node={nproc}"], overrides, args)
    if not args.no_noise:
        half = f"training.micro_batch_size={max(1, args.micro_batch_size // 2)}"
        runs["1gpu_noise"] = train("1gpu_noise", python, [*overrides, half], args)

    ref = runs["1gpu"]
    report = {
        "settings": {
            "config": args.config,
            "overrides": overrides,
            "nproc": nproc,
            "skip": args.skip,
        },
        "runs": {name: summary(run, args.skip) for name, run in runs.items()},
        "loss_difference_to_1gpu": {
            name: curve_difference(ref["lines"], run["lines"])
            for name, run in runs.items()
            if name != "1gpu"
        },
    }
    one, many = report["runs"]["1gpu"], report["runs"][multi]
    report["speedup_steady"] = many["tokens_per_s_steady"] / one["tokens_per_s_steady"]
    report["speedup_overall"] = many["tokens_per_s_overall"] / one["tokens_per_s_overall"]
    predictions = [
        [(p["strict_pred"], p["flexible_pred"]) for p in run["results"]["gsm8k"]["problems"]]
        for run in runs.values()
    ]
    report["predictions_differing_from_1gpu"] = {
        name: sum(a != b for a, b in zip(predictions[0], preds, strict=True))
        for name, preds in zip(runs, predictions, strict=True)
        if name != "1gpu"
    }

    print(
        f"\n{'run':12s} {'procs':>5s} {'tok/s steady':>13s} {'tok/s overall':>14s} "
        f"{'train s':>8s} {'final loss':>10s} {'strict':>9s} {'PPL':>s}"
    )
    for name, r in report["runs"].items():
        ppl = ", ".join(f"{k} {v:.3f}" for k, v in r["ppl"].items() if k.startswith("ppl_"))
        print(
            f"{name:12s} {r['processes']:5d} {r['tokens_per_s_steady']:13.0f} "
            f"{r['tokens_per_s_overall']:14.0f} {r['train_time_s']:8.1f} {r['final_loss']:10.4f} "
            f"{r['strict']:4d}/{r['n']:<4d} {ppl}"
        )
    print(
        f"\nspeed-up {multi} / 1gpu: {report['speedup_steady']:.2f} x steady, "
        f"{report['speedup_overall']:.2f} x overall (device {one['device']})"
    )
    print(f"  target >= 1.8 x (steady): {'met' if report['speedup_steady'] >= 1.8 else 'NOT met'}")
    report["speedup_by_stage"] = {
        st: many["tokens_per_s_by_stage"][st] / v for st, v in one["tokens_per_s_by_stage"].items()
    }
    print(
        "  by stage (steady): "
        + ", ".join(
            f"{st} {one['tokens_per_s_by_stage'][st]:.0f} -> "
            f"{many['tokens_per_s_by_stage'][st]:.0f} tok/s ({x:.2f} x)"
            for st, x in report["speedup_by_stage"].items()
        )
    )
    diffs = report["loss_difference_to_1gpu"]
    for name, d in diffs.items():
        print(
            f"loss curve {name} vs 1gpu over {d['steps']} steps: max |diff| {d['max_abs']:.4g}, "
            f"mean |diff| {d['mean_abs']:.4g}; GSM8K predictions differing: "
            f"{report['predictions_differing_from_1gpu'][name]}/{one['n']}"
        )
    if "1gpu_noise" in diffs and diffs["1gpu_noise"]["mean_abs"] > 0:
        ratio = diffs[multi]["mean_abs"] / diffs["1gpu_noise"]["mean_abs"]
        report["mean_difference_over_noise"] = ratio
        print(f"  {multi} mean |diff| / noise run's: {ratio:.2f} (about 1 or below: within noise)")
    (Path(args.output) / "ddp_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {Path(args.output) / 'ddp_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``schemabank`` command (also ``python -m schemabank``): train, eval, compare.

Input problems end in a one-line ``schemabank: error: ...`` on stderr and exit status 1; usage
mistakes exit with 2 (argparse). Launched as several processes (``torchrun``, ``accelerate
launch``), ``train`` and ``eval`` run on all of them and only rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .errors import ConfigError, SchemaBankError


def is_main() -> bool:
    """Whether this process prints: the only one, or rank 0 of those a launcher started (from
    ``RANK``, without importing torch)."""
    return os.environ.get("RANK", "0") == "0"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="folder with gsm8k/ and wikitext-2/ (default: $SCHEMABANK_DATA_DIR, "
        "then the Hugging Face hub)",
    )


def _add_overrides(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="schemabank", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a baseline or SchemaBank run, then evaluate it")
    start = t.add_mutually_exclusive_group(required=True)
    start.add_argument("--config", help="YAML config, e.g. configs/smoke.yaml")
    start.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last saved state (its config.yaml)",
    )
    _add_overrides(t, "override a config value, e.g. --set training.total_steps=100 (repeatable)")
    t.add_argument(
        "--output-dir", help="parent of the run directory (default: the config's output_dir)"
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing run of the same name and start again",
    )
    t.add_argument(
        "--profile-steps",
        metavar="FIRST:N",
        action="append",
        default=[],
        help="run the global steps FIRST to FIRST+N-1 under torch.profiler, with the loop's work "
        "around them, and write their time per step (wall, GPU busy and idle, launches, top "
        "operations) to the run's profile.json, e.g. 700:5 (repeatable, for windows that do not overlap). "
        "On CUDA with training.compile, a profiled run and an unprofiled one do not reuse each "
        "other's compiled graphs from the cache (docs/performance.md)",
    )
    _add_common(t)

    e = sub.add_parser("eval", help="evaluate a saved run (no training) or a bare base model")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a run's checkpoint/ directory (or the run directory)")
    src.add_argument("--base-model", help="a base model to evaluate k-shot without any adapter")
    e.add_argument(
        "--shots",
        type=int,
        help="few-shot examples (default: 5 for --base-model, the run's setting for --checkpoint)",
    )
    e.add_argument(
        "--limit", type=int, help="evaluate the first N test problems (default: all 1,319)"
    )
    e.add_argument("--batch-size", type=int, help="generation batch size")
    _add_overrides(e, "override a value of the run's config (eval.*, training.device, ...)")
    e.add_argument(
        "--output",
        help="where to write the results JSON (default: <run>/eval_results.json, "
        "or results/<model>_<K>shot/results.json for --base-model); every generation goes "
        "beside it, named with 'results' made 'samples' and .jsonl (eval_samples.jsonl)",
    )
    _add_common(e)

    b = sub.add_parser("bench", help="measure training and evaluation throughput on this device")
    b.add_argument(
        "--config",
        default="configs/smollm2/schemabank.yaml",
        help="config whose model, adapter and eval settings are measured",
    )
    _add_overrides(b, "override a config value, e.g. --set training.batch_size=64")
    b.add_argument("--steps", type=int, default=20, help="timed training steps per mode")
    b.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="training steps per mode before the timed ones, timed only as a whole (the "
        "compiled peer's compile time is what they took beyond as many steady steps); the "
        "first timed batch of each shape these lack is replayed among them too",
    )
    b.add_argument(
        "--limit", type=int, help="GSM8K test problems to generate for (default: all 1,319)"
    )
    b.add_argument(
        "--checkpoint", help="time the evaluation of this trained run instead of a fresh adapter"
    )
    b.add_argument(
        "--only", choices=["train", "eval"], help="measure only training or only evaluation"
    )
    b.add_argument(
        "--peers",
        choices=["none", "eager", "all"],
        help="plain PEFT LoRA peers timed on the same batches at the baseline's LoRA: eager, "
        "and eager plus torch.compile (default: all on CUDA, eager elsewhere)",
    )
    b.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of the compiled peer (default: reduce-overhead on CUDA, "
        "torch's default elsewhere)",
    )
    b.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="then step each model this many more times under torch.profiler: the GPU's busy "
        "and idle time, the host's launches and the top operations a step (in the JSON's "
        "'profile')",
    )
    b.add_argument("--output", help="write the figures as JSON here")
    _add_common(b)

    le = sub.add_parser(
        "lm-eval",
        help="evaluate a run or a base model on lm-evaluation-harness tasks (extra lm-eval)",
        description="lm-eval's simple_evaluate on the model class 'schemabank' (see "
        "schemabank.harness); `python -m schemabank.harness_cli` is lm-eval's full command line",
    )
    src = le.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", help="a run directory or its checkpoint/ (schemabank.load)")
    src.add_argument("--base-model", help="a bare base model, e.g. smollm2-135m-instruct")
    le.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated: gsm8k")
    le.add_argument(
        "--limit", type=float, help="the first N documents of each task (below 1: a fraction)"
    )
    le.add_argument("--num-fewshot", type=int, help="override the tasks' few-shot count")
    le.add_argument("--batch-size", default="1", help="generation batch size, or auto (default 1)")
    le.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    le.add_argument("--dtype", help="weights' dtype (default: bfloat16 on CUDA, else float32)")
    le.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of task YAMLs (repeatable); its tasks override lm-eval's of the same name",
    )
    le.add_argument(
        "--no-builtin-tasks",
        action="store_true",
        help="index only the --include-path tasks (lm-eval's own ~14,000 take half a minute)",
    )
    le.add_argument(
        "--data-dir",
        help="read lm-eval's gsm8k task from DATA_DIR/gsm8k/{train,test}.jsonl instead of the "
        "hub (a copy of its YAML with only the dataset changed)",
    )
    le.add_argument(
        "--output",
        help="lm-eval's results JSON (default: <run>/lm_eval_results.json, or "
        "results/lm_eval/<model>_results.json for --base-model)",
    )
    le.add_argument(
        "--log-samples",
        action="store_true",
        help="also write every document's prompt and generation beside the output (.jsonl)",
    )

    r = sub.add_parser("report", help="write report.md with PNG figures of one or more runs")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory or results file")
    r.add_argument(
        "--output", help="folder for report.md and the PNGs (default: RUN_DIR/report, or report/)"
    )

    v = sub.add_parser("verify", help="check a run's results against expected values")
    v.add_argument("run", metavar="RUN_DIR", help="run directory or results file")
    v.add_argument(
        "--expected", required=True, help="expected-values YAML, e.g. expected/smoke.yaml"
    )

    c = sub.add_parser(
        "compare", help="paired comparison of two evaluated runs (McNemar, bootstrap)"
    )
    c.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="RUN_A RUN_B (run directories or results.json); more pairs (one per seed: "
        "A1 B1 A2 B2 ...) are also pooled",
    )
    c.add_argument("--output", help="also write the comparison as JSON")

    w = sub.add_parser(
        "sweep",
        help="train many configs, several at a time (skips finished runs, resumes cut ones)",
    )
    w.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML configs")
    w.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at the same time (default 1; at batch 1 a GPU is mostly idle and 8 can share it)",
    )
    w.add_argument("--output-dir", help="parent of the run directories (default: each config's)")
    _add_overrides(w, "override a value in every config (repeatable)")
    w.add_argument(
        "--seeds",
        type=_int_list,
        metavar="S1,S2,...",
        help="train every config once per seed (experiment.seed), e.g. --seeds 42,43,44",
    )
    w.add_argument(
        "--retries",
        type=int,
        default=1,
        help="try failed runs again (resuming their saved state) once the others are done, half "
        "as many at a time, this many times (default 1; out of GPU memory while sharing the card "
        "is the usual cause)",
    )
    w.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    _add_common(w)

    tb = sub.add_parser("table", help="the results table (Markdown) of many runs' results.json")
    tb.add_argument(
        "runs",
        nargs="+",
        metavar="RUNS",
        help="run directories, results files, or a folder of runs (with its compare/*.json)",
    )
    tb.add_argument(
        "--compare", nargs="*", default=[], metavar="JSON", help="more `compare --output` files"
    )
    tb.add_argument(
        "--readme",
        help="replace the text between the results markers of this Markdown file instead of printing",
    )
    tb.add_argument(
        "--check", action="store_true", help="with --readme: fail if the file is not up to date"
    )
    return parser


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None


def _run_dir_of(checkpoint: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) from either of them."""
    if (checkpoint / "checkpoint").is_dir():
        return checkpoint, checkpoint / "checkpoint"
    return checkpoint.parent, checkpoint


def _quiet_libraries() -> None:
    """Keep transformers' advice and deprecation notes out of the run's output."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    if not is_main():  # one progress bar per run, not one per process
        transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def cmd_train(args) -> int:
    from .config import load_config

    output_dir = args.output_dir
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        if args.output_dir or args.overwrite:
            raise ConfigError(
                "--resume continues a run in place: leave out --output-dir and --overwrite"
            )
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        output_dir = run_dir.parent
        if (output_dir / cfg.run_name).resolve() != run_dir.resolve():
            named = load_config(run_dir / "config.yaml").run_name  # without the --set
            if (output_dir / named).resolve() != run_dir.resolve():
                raise ConfigError(
                    f"--resume {run_dir}: its config.yaml names the run {named} (experiment.name "
                    f"and seed), not {run_dir.name}; was the folder renamed? rename it back to "
                    f"{named} to resume it"
                )
            raise ConfigError("--resume: --set must not change experiment.name or experiment.seed")
    else:
        cfg = load_config(args.config, args.overrides)  # fails fast, before the heavy imports
    windows = []
    if args.profile_steps:
        from .profiling import parse_windows

        try:
            windows = parse_windows(args.profile_steps, cfg.training.total_steps)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    _quiet_libraries()
    from .results import load_results, summary_lines
    from .training import TrainingInterrupted, run

    try:
        run_dir = run(
            cfg,
            output_dir=output_dir,
            data_dir=args.data_dir,
            resume=bool(args.resume),
            overwrite=args.overwrite,
            profile_steps=windows,
        )
    except TrainingInterrupted as exc:
        if is_main():
            print(f"schemabank: {exc}", file=sys.stderr)
        return exc.exit_code
    if is_main():
        print("\n".join(summary_lines(load_results(run_dir))))
        print(f"wrote {run_dir}")
    return 0


def cmd_eval(args) -> int:
    from .config import apply_overrides, config_from_dict, run_config

    for flag in ("limit", "batch_size", "shots"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "shots" else 1):
            raise ConfigError(
                f"--{flag.replace('_', '-')}: must be >= {0 if flag == 'shots' else 1}, got {value}"
            )
    from .files import check_writable  # after the cheap checks: these import torch
    from .results import samples_path

    extra = [
        f"eval.{k}={getattr(args, k)}"
        for k in ("limit", "batch_size", "shots")
        if getattr(args, k) is not None
    ]
    if args.checkpoint:
        run_dir, ckpt = _run_dir_of(Path(args.checkpoint))
        warn = (
            (lambda m: print(f"schemabank: warning: {m}", file=sys.stderr)) if is_main() else None
        )
        cfg = run_config(run_dir, args.overrides + extra, warn)
        output = Path(args.output) if args.output else run_dir / "eval_results.json"
        check_writable(output.parent)  # before the evaluation, not after it
        _quiet_libraries()
        from .evaluation import evaluate_checkpoint

        results = evaluate_checkpoint(
            ckpt, cfg, data_dir=args.data_dir or cfg.data.dir, samples_path=samples_path(output)
        )
    else:
        if args.shots is None:
            extra.append("eval.shots=5")
        cfg = config_from_dict(apply_overrides({}, args.overrides + extra), source="eval options")
        name = Path(args.base_model).stem.replace("/", "_")
        output = (
            Path(args.output)
            if args.output
            else Path("results") / f"{name}_{cfg.eval.shots}shot" / "results.json"
        )
        check_writable(output.parent)
        _quiet_libraries()
        from .evaluation import evaluate_base_model

        results = evaluate_base_model(
            args.base_model,
            cfg.eval,
            data_dir=args.data_dir or cfg.data.dir,
            device_name=cfg.training.device,
            precision=cfg.training.precision,
            dtype=cfg.model.dtype,
            samples_path=samples_path(output),
        )
    from .files import write_json
    from .results import summary_lines

    if is_main():
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(output, results)
        print("\n".join(summary_lines(results)))
        print(f"wrote {output}")
    return 0


def cmd_lm_eval(args) -> int:
    import json
    import shlex
    import tempfile
    import time

    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit: must be > 0, got {args.limit:g}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ConfigError(f"--num-fewshot: must be >= 0, got {args.num_fewshot}")
    batch = args.batch_size
    if not (batch == "auto" or batch.startswith("auto:") or (batch.isdigit() and int(batch) > 0)):
        raise ConfigError(f"--batch-size: a positive integer or auto, got {batch!r}")
    tasks = [t for t in args.tasks.split(",") if t]
    if args.path:
        if not Path(args.path).is_dir():
            raise ConfigError(f"--path {args.path}: no such run or checkpoint directory")
        run_dir, _ = _run_dir_of(Path(args.path))
        output = Path(args.output) if args.output else run_dir / "lm_eval_results.json"
        model_args = {"path": args.path}
    else:
        name = Path(args.base_model).stem.replace("/", "_")
        output = (
            Path(args.output) if args.output else Path("results/lm_eval") / f"{name}_results.json"
        )
        model_args = {"base_model": args.base_model}
    model_args.update({k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k)})
    from .files import check_writable, write_json  # after the cheap checks: torch

    check_writable(output.parent)
    _quiet_libraries()
    from . import harness  # registers the model class; a one-line error without lm-eval

    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="schemabank-lm-eval-") as tmp:
        include = list(args.include_path)
        if args.data_dir and "gsm8k" in tasks:
            include.append(str(harness.local_gsm8k_task(args.data_dir, tmp)))
        results = harness.evaluate(
            model_args,
            tasks,
            limit=limit,
            num_fewshot=args.num_fewshot,
            batch_size=int(batch) if batch.isdigit() else batch,
            include_path=include,
            builtin_tasks=not args.no_builtin_tasks,
            log_samples=args.log_samples,
        )
    if not results:
        return 0
    from lm_eval.utils import handle_non_serializable, make_table

    samples = results.pop("samples", None)
    results["schemabank"] = {
        "command": shlex.join(["schemabank", *args.argv]),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, json.loads(json.dumps(results, default=handle_non_serializable)))
    if samples is not None:
        from .files import atomic_write_text
        from .results import samples_path

        lines = [
            json.dumps({"task": task, **s}, default=handle_non_serializable)
            for task, rows in samples.items()
            for s in rows
        ]
        atomic_write_text(samples_path(output), "".join(f"{line}\n" for line in lines))
    print(make_table(results))
    print(f"wrote {output}")
    return 0


def cmd_bench(args) -> int:
    from .config import load_config

    for flag in ("steps", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag}: must be >= 1, got {value}")
    for flag in ("warmup", "profile_steps"):
        if getattr(args, flag) < 0:
            raise ConfigError(
                f"--{flag.replace('_', '-')}: must be >= 0, got {getattr(args, flag)}"
            )
    cfg = load_config(args.config, args.overrides)
    _quiet_libraries()
    from .files import write_json
    from .study.bench import format_bench, run_bench

    parts = (args.only,) if args.only else ("train", "eval")
    result = run_bench(
        cfg,
        data_dir=args.data_dir or cfg.data.dir,
        steps=args.steps,
        warmup=args.warmup,
        limit=args.limit,
        checkpoint=args.checkpoint,
        parts=parts,
        peers=args.peers,
        compile_mode=args.compile_mode,
        profile=args.profile_steps,
    )
    print("\n".join(format_bench(result)))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.output), result)
    return 0


def cmd_report(args) -> int:
    from .study.document import default_output_dir, write_report

    out = write_report(args.runs, args.output or default_output_dir(args.runs))
    print(f"wrote {out['report']} and {len(out['figures'])} figures")
    return 0


def cmd_verify(args) -> int:
    from .study.verify import format_checks, verify_run

    checks = verify_run(args.run, args.expected)
    print("\n".join(format_checks(checks)))
    return 0 if all(c.ok for c in checks) else 1


def cmd_compare(args) -> int:
    from .files import write_json
    from .study.compare import compare_runs, format_comparison, format_pooled, pool_comparisons

    if len(args.runs) % 2:
        raise ConfigError(f"compare: give runs in pairs (A B [A B ...]), got {len(args.runs)}")
    pairs = list(zip(args.runs[::2], args.runs[1::2], strict=True))
    if len(pairs) == 1:
        comparison = compare_runs(*pairs[0])
        print("\n".join(format_comparison(comparison)))
    else:
        comparison = pool_comparisons(pairs)
        print("\n".join(format_pooled(comparison)))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.output), comparison)
    return 0


def cmd_sweep(args) -> int:
    from .study.sweep import plan_jobs, run_sweep

    for flag, low in (("jobs", 1), ("retries", 0)):
        if getattr(args, flag) < low:
            raise ConfigError(f"--{flag}: must be >= {low}, got {getattr(args, flag)}")
    if args.dry_run:
        for j in plan_jobs(
            args.configs, args.output_dir, args.data_dir, args.overrides, args.seeds
        ):
            print(f"{j.action:7s} {j.run_dir}  {' '.join(j.command)}")
        return 0
    codes = run_sweep(
        args.configs,
        args.output_dir,
        args.data_dir,
        args.overrides,
        args.seeds,
        args.jobs,
        args.retries,
    )
    failed = [d.name for d, rc in codes.items() if rc != 0]
    print(
        f"{len(codes) - len(failed)} of {len(codes)} runs finished"
        + (f"; failed: {', '.join(failed)} (see their logs)" if failed else "")
    )
    return 1 if failed else 0


def cmd_table(args) -> int:
    from .study.table import check_readme, results_table, update_readme

    text = results_table(args.runs, args.compare)
    if not args.readme:
        print(text)
        return 0
    if args.check:
        check_readme(args.readme, text)
        print(f"{args.readme}: the results table is up to date")
        return 0
    update_readme(args.readme, text)
    print(f"updated the results table in {args.readme}")
    return 0


READERS = ("compare", "report", "verify", "table")  # commands that read results files


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Variable-length batches fragment PyTorch's CUDA cache; expandable segments avoid that.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        return {
            "train": cmd_train,
            "eval": cmd_eval,
            "compare": cmd_compare,
            "bench": cmd_bench,
            "report": cmd_report,
            "verify": cmd_verify,
            "sweep": cmd_sweep,
            "table": cmd_table,
            "lm-eval": cmd_lm_eval,
        }[args.command](args)
    except SchemaBankError as exc:
        message = str(exc).replace("\n", "\\n")  # one line, whatever the input held
        if is_main():  # every process reads the same inputs, so meets the same problem
            print(f"schemabank: error: {message}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        if args.command not in READERS:
            raise
        # results.json's core is checked on loading; a deeper part that does not fit (an edited
        # file, another version's) lands here instead of in a traceback
        print(
            f"schemabank: error: a results file given is malformed or from another version "
            f"(in its {type(exc).__name__}: {exc})".replace("\n", " "),
            file=sys.stderr,
        )
        return 1
    except OSError as exc:  # a file that cannot be written or read: name it and the cause
        where = f"{exc.filename}: " if exc.filename else ""
        if is_main():
            print(f"schemabank: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # torch.OutOfMemoryError, named so that torch need not be imported
        if type(exc).__name__ != "OutOfMemoryError":
            raise
        print(
            "schemabank: error: out of GPU memory; lower training.batch_size or set "
            "training.micro_batch_size (eval.batch_size when evaluating)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        if is_main():
            print("schemabank: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    """SIGTERM outside training (which saves its state first) stops like Ctrl-C, with a message."""
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())

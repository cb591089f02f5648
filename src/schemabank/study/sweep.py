"""Run many configs, several at a time on one machine: ``schemabank sweep CONFIG... --jobs N``.

A run at ``training.batch_size: 1`` keeps a GPU mostly idle (the step is bound by the host
launching kernels), so a study of many small runs finishes sooner with several training processes
sharing the GPU. Each config becomes one ``schemabank train`` subprocess; its output goes to
``<output_dir>/logs/<run>.log``. A run whose ``results.json`` exists is skipped, a run with a saved
training state is resumed, so the same command picks up a study where it stopped. Wall times in
the runs' results.json then include the sharing: say how many ran at once when reporting them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError
from ..state import STATE_DIR


@dataclass
class Job:
    run_dir: Path
    log: Path
    command: list[str]
    action: str  # "train", "resume" or "skip"


def plan_jobs(
    configs: list[str | Path],
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    overrides: list[str] = (),
    seeds: list[int] | None = None,
) -> list[Job]:
    """One job per config (per config and seed, with ``seeds``); every config is loaded (and so
    checked) before anything runs."""
    jobs, seen = [], {}
    for path in configs:
        for seed in seeds or [None]:
            sets = [*overrides, *([f"experiment.seed={seed}"] if seed is not None else [])]
            cfg = load_config(path, sets)
            out = Path(output_dir or cfg.output_dir)
            run_dir = out / cfg.run_name
            if run_dir in seen:
                raise ConfigError(f"{path} and {seen[run_dir]} write the same run {run_dir}")
            seen[run_dir] = path
            base = [sys.executable, "-m", "schemabank", "train"]
            extra = [a for o in sets for a in ("--set", o)]
            if data_dir:
                extra += ["--data-dir", str(data_dir)]
            if (run_dir / "results.json").is_file():
                action, command = "skip", []
            elif (run_dir / STATE_DIR).is_dir():
                action, command = "resume", [*base, "--resume", str(run_dir), *extra]
            else:
                action = "train"
                command = [*base, "--config", str(path), "--output-dir", str(out), *extra]
                if run_dir.exists():  # an unfinished run that saved no state yet: start again
                    command.append("--overwrite")
            log = out / "logs" / f"{cfg.run_name}.log"
            jobs.append(Job(run_dir, log, command, action))
    return jobs


_ECHO_LOCK = threading.Lock()


def _echo(line: str) -> None:
    with _ECHO_LOCK:  # one whole line at a time from the worker threads
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_jobs(jobs: list[Job], parallel: int, echo=_echo) -> dict[Path, int]:
    """Run the jobs, ``parallel`` at a time; return each run directory's exit status."""
    todo = [j for j in jobs if j.action != "skip"]
    for j in jobs:
        if j.action == "skip":
            echo(f"skip    {j.run_dir.name} (results.json exists)")
    env = dict(os.environ)
    # The processes share the CPU too: a few threads each, unless the caller chose.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, parallel))))
    t0 = time.perf_counter()

    def one(job: Job) -> int:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        echo(f"start   {job.run_dir.name} ({job.action}) -> {job.log}")
        started = time.perf_counter()
        with open(job.log, "a", encoding="utf-8") as log:
            rc = subprocess.call(job.command, stdout=log, stderr=subprocess.STDOUT, env=env)
        echo(
            f"{'done' if rc == 0 else 'FAILED':7s} {job.run_dir.name} rc={rc} "
            f"{time.perf_counter() - started:.0f} s (sweep at {time.perf_counter() - t0:.0f} s)"
        )
        return rc

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        codes = dict(zip([j.run_dir for j in todo], pool.map(one, todo), strict=True))
    return codes


def run_sweep(
    configs: list[str],
    output_dir,
    data_dir,
    overrides: list[str],
    seeds: list[int] | None,
    parallel: int,
    retries: int = 0,
    echo=_echo,
) -> dict[Path, int]:
    """Plan and run a sweep; runs that failed are tried again up to ``retries`` times, each
    round with half as many at a time (a failure is often memory that the others held) and
    planned afresh (a cut run resumes from its saved state). Returns each run's exit status."""
    jobs = plan_jobs(configs, output_dir, data_dir, overrides, seeds)
    codes = run_jobs(jobs, parallel, echo)
    for _ in range(retries):
        failed = {d for d, rc in codes.items() if rc != 0}
        if not failed:
            break
        parallel = max(1, parallel // 2)
        echo(f"trying {len(failed)} failed run(s) again, {parallel} at a time")
        again = plan_jobs(configs, output_dir, data_dir, overrides, seeds)
        codes.update(run_jobs([j for j in again if j.run_dir in failed], parallel, echo))
    return codes

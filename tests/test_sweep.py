"""`schemabank sweep`: many configs, several at a time; finished runs are skipped, cut ones resumed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import tiny_config

from schemabank.cli import main
from schemabank.state import STATE_DIR
from schemabank.study.sweep import plan_jobs


def write(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sweep_runs_skips_and_reports_failures(tmp_path, tiny_llama, data_dir, capsys):
    eval_ = {"limit": 1, "batch_size": 1, "max_new_tokens": 2, "ppl_windows": [], "num_samples": 0}
    a = write(tmp_path / "a.yaml", tiny_config(tiny_llama, "baseline", eval=eval_))
    b = write(
        tmp_path / "b.yaml",
        tiny_config(tiny_llama, "schemabank", experiment={"name": "b", "seed": 1}, eval=eval_),
    )
    bad = write(
        tmp_path / "bad.yaml",
        tiny_config(tmp_path / "no-model", "baseline", experiment={"name": "bad"}, eval=eval_),
    )
    out = tmp_path / "out"
    args = ["sweep", "--jobs", "2", "--output-dir", str(out), "--data-dir", str(data_dir)]
    assert main([*args, str(a), str(b), str(bad)]) == 1
    printed = capsys.readouterr().out
    assert "2 of 3 runs finished; failed: bad_seed0" in printed
    assert "trying 1 failed run(s) again, 1 at a time" in printed  # --retries 1 by default
    for run in ("tiny_baseline_seed0", "b_seed1"):
        assert (out / run / "results.json").is_file()
        assert "wrote" in (out / "logs" / f"{run}.log").read_text()
    assert (out / "logs" / "bad_seed0.log").read_text().count("schemabank: error:") == 2

    # a second sweep skips what finished and tries the failed run again
    jobs = {j.run_dir.name: j.action for j in plan_jobs([a, b, bad], out, data_dir)}
    assert jobs == {"tiny_baseline_seed0": "skip", "b_seed1": "skip", "bad_seed0": "train"}


def test_plan_resumes_cut_runs_and_restarts_unsaved_ones(tmp_path, tiny_llama, capsys):
    cfg = tiny_config(tiny_llama, "baseline")
    a = write(tmp_path / "a.yaml", cfg)
    b = write(tmp_path / "b.yaml", {**cfg, "experiment": {**cfg["experiment"], "name": "b"}})
    out = tmp_path / "out"
    (out / "tiny_baseline_seed0" / STATE_DIR).mkdir(parents=True)  # cut after a saved state
    (out / "b_seed0").mkdir()  # cut before any state was saved
    jobs = plan_jobs([a, b], out, overrides=["eval.limit=2"])
    assert [j.action for j in jobs] == ["resume", "train"]
    assert jobs[0].command[-4:] == [
        "--resume",
        str(out / "tiny_baseline_seed0"),
        "--set",
        "eval.limit=2",
    ]
    assert jobs[1].command[-1] == "--overwrite"
    assert main(["sweep", "--dry-run", "--output-dir", str(out), str(a), str(b)]) == 0
    assert "resume  " in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--jobs", "0"], "--jobs: must be >= 1"),
        (["--retries", "-1"], "--retries: must be >= 0"),
        (["DUP", "DUP"], "write the same run"),
        (["--set", "training.batch_size=0"], "training.batch_size"),
    ],
)
def test_bad_sweeps_fail_before_running(tmp_path, tiny_llama, capsys, argv, needle):
    a = write(tmp_path / "a.yaml", tiny_config(tiny_llama, "baseline"))
    argv = [str(a) if x == "DUP" else x for x in argv]
    configs = [] if "DUP" in " ".join(argv) or str(a) in argv else [str(a)]
    assert main(["sweep", "--output-dir", str(tmp_path / "out"), *argv, *configs]) == 1
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "schemabank", "sweep", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--jobs" in out.stdout


def test_seeds_make_one_run_per_config_and_seed(tmp_path, tiny_llama, capsys):
    a = write(tmp_path / "a.yaml", tiny_config(tiny_llama, "baseline"))
    jobs = plan_jobs([a], tmp_path / "out", seeds=[42, 43])
    assert [j.run_dir.name for j in jobs] == ["tiny_baseline_seed42", "tiny_baseline_seed43"]
    assert jobs[1].command[-2:] == ["--set", "experiment.seed=43"]
    with pytest.raises(SystemExit):
        main(["sweep", "--seeds", "4x", str(a)])
    assert "expected integers separated by commas" in capsys.readouterr().err


def test_failed_runs_are_tried_again_with_half_the_jobs(tmp_path, tiny_llama, monkeypatch, capsys):
    from schemabank.study import sweep

    a = write(tmp_path / "a.yaml", tiny_config(tiny_llama, "baseline"))
    b = write(tmp_path / "b.yaml", tiny_config(tiny_llama, "baseline", experiment={"name": "b"}))
    calls = []

    def fake_run_jobs(jobs, parallel, echo=None):  # the first pass fails b (as out of memory would)
        calls.append(([j.run_dir.name for j in jobs], parallel))
        return {j.run_dir: int(len(calls) == 1 and j.run_dir.name == "b_seed0") for j in jobs}

    monkeypatch.setattr(sweep, "run_jobs", fake_run_jobs)
    out = str(tmp_path / "out")
    assert main(["sweep", "--jobs", "4", "--output-dir", out, str(a), str(b)]) == 0
    assert calls == [(["tiny_baseline_seed0", "b_seed0"], 4), (["b_seed0"], 2)]
    assert "2 of 2 runs finished" in capsys.readouterr().out
    calls.clear()
    assert main(["sweep", "--retries", "0", "--output-dir", out, str(a), str(b)]) == 1
    assert len(calls) == 1

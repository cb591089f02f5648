"""Never lose a run: periodic training state, resume after SIGKILL or SIGTERM with the same
result as an uninterrupted run, a non-finite loss that keeps the last good state, atomic writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors.torch import load_file

from schemabank.cli import main
from schemabank.config import config_from_dict, for_device
from schemabank.errors import SchemaBankError, TrainingError
from schemabank.state import STATE_DIR
from schemabank.training import run

REPO = Path(__file__).resolve().parents[1]
TIMING = ("tokens_per_s", "elapsed_s")


def long_config(base, **training):
    """A tiny run long enough (120 steps across the three stages) to be stopped in the middle."""
    cfg = tiny_config(
        base, eval={"limit": 1, "max_new_tokens": 2, "ppl_windows": [16], "ppl_max_tokens": 40}
    )
    cfg["training"].update(
        total_steps=120,
        checkpoint_every=7,
        learning_rate=3e-3,
        stages={
            "stage1_router_pretrain": {
                "steps": 40,
                "tag_curriculum": {"dropout_schedule": [0.0, 0.5]},
            },
            "stage2_schema_train": {"steps": 40},
            "stage3_joint_finetune": {"steps": 40},
        },
    )
    cfg["training"].update(training)
    return cfg


ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
TRAIN = [sys.executable, "-m", "schemabank", "train"]


def start(cfg: dict, tmp: Path, data_dir: Path, *extra) -> subprocess.Popen:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen(
        [
            *TRAIN,
            "--config",
            str(path),
            "--output-dir",
            str(tmp / "out"),
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def resume(run_dir: Path, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRAIN, "--resume", str(run_dir), "--data-dir", str(data_dir)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def wait_for_lines(log: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if log.exists() and log.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {n}: {proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the training log")


def log_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "training_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k not in TIMING} for x in lines]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = run_dir / "checkpoint"
    return {
        **load_file(ck / "adapter_model.safetensors"),
        **load_file(ck / "schemabank.safetensors"),
    }


@pytest.fixture(scope="module")
def reference(tiny_llama, data_dir, tmp_path_factory):
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = config_from_dict(long_config(tiny_llama))
    run_dir = run(cfg, output_dir=tmp / "out", data_dir=data_dir)
    assert not (run_dir / STATE_DIR).exists()  # a finished run keeps only its checkpoint
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    assert log_lines(run_dir) == log_lines(reference)
    got, want = weights(run_dir), weights(reference)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["training"]["resumed"] is True and results["training"]["total_steps"] == 120


def test_sigkill_then_resume_equals_an_uninterrupted_run(reference, tiny_llama, data_dir, tmp_path):
    cfg = long_config(tiny_llama)
    proc = start(cfg, tmp_path, data_dir)
    run_dir = tmp_path / "out" / reference.name
    wait_for_lines(run_dir / "training_log.jsonl", 60, proc)  # in stage 2, past several states
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    state = json.loads((run_dir / STATE_DIR / "trainer_state.json").read_text())
    assert 56 <= state["step"] < 120 and state["step"] % 7 == 0
    done = resume(run_dir, data_dir)
    assert done.returncode == 0, done.stderr
    assert_same_run(run_dir, reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_and_exits_cleanly_then_resumes(
    sig, reference, tiny_llama, data_dir, tmp_path
):
    cfg = long_config(tiny_llama)
    proc = start(cfg, tmp_path, data_dir)
    run_dir = tmp_path / "out" / reference.name
    wait_for_lines(run_dir / "training_log.jsonl", 30, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"{sig.name} at step" in err and "--resume" in err and "Traceback" not in err
    state = json.loads((run_dir / STATE_DIR / "trainer_state.json").read_text())
    assert state["step"] == len(log_lines(run_dir))  # saved at the step it stopped
    done = resume(run_dir, data_dir)
    assert done.returncode == 0, done.stderr
    assert_same_run(run_dir, reference)


def test_non_finite_loss_keeps_the_last_good_state(tiny_llama, data_dir, tmp_path):
    cfg = config_from_dict(long_config(tiny_llama, learning_rate=1e30, checkpoint_every=1))
    with pytest.raises(TrainingError) as exc:
        run(cfg, output_dir=tmp_path, data_dir=data_dir)
    msg = str(exc.value)
    run_dir = tmp_path / cfg.run_name
    state = json.loads((run_dir / STATE_DIR / "trainer_state.json").read_text())
    assert re.search(
        rf"is (nan|inf) at step {state['step'] + 1} \(stage (schema_train|joint_finetune)\)", msg
    )
    assert f"last good training state (step {state['step']})" in msg and "\n" not in msg
    good = load_file(run_dir / STATE_DIR / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in good.values())
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "results.json").exists()


def test_state_is_replaced_atomically(tiny_llama, data_dir, tmp_path, monkeypatch):
    """A crash while writing the state leaves the previous state whole and no temporary files."""
    import schemabank.state as state_mod

    cfg = config_from_dict(long_config(tiny_llama, checkpoint_every=3))
    real_save = state_mod.save_file
    calls = {"n": 0}

    def flaky(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # the second state's second file
            raise OSError("disk full")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(state_mod, "save_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        run(cfg, output_dir=tmp_path, data_dir=data_dir)
    run_dir = tmp_path / cfg.run_name
    state = json.loads((run_dir / STATE_DIR / "trainer_state.json").read_text())
    assert state["step"] == 3
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml",
        STATE_DIR,
        "training_log.jsonl",
    ]


def test_resume_problems_are_one_line_errors(tiny_llama, data_dir, tmp_path, capsys):
    cfg = config_from_dict(long_config(tiny_llama, learning_rate=1e30, checkpoint_every=1))
    with pytest.raises(SchemaBankError):
        run(cfg, output_dir=tmp_path, data_dir=data_dir)  # leaves a state behind
    run_dir = tmp_path / cfg.run_name

    capsys.readouterr()

    def error(*argv):
        assert main(["train", *map(str, argv)]) == 1
        lines = [x for x in re.split(r"[\r\n]+", capsys.readouterr().err) if x.strip()]
        errors = [x for x in lines if "error:" in x]
        assert errors == [lines[-1]] and errors[0].startswith("schemabank: error: "), lines
        return errors[0]

    assert "no config.yaml" in error("--resume", tmp_path / "nothing", "--data-dir", data_dir)
    assert "experiment.name" in error(
        "--resume", run_dir, "--set", "experiment.seed=5", "--data-dir", data_dir
    )
    assert "config changed" in error(
        "--resume", run_dir, "--set", "schemabank.num_schemas=16", "--data-dir", data_dir
    )
    renamed = run_dir.with_name("renamed_run")  # a renamed folder: no --set to blame
    run_dir.rename(renamed)
    message = error("--resume", renamed, "--data-dir", data_dir)
    assert f"names the run {run_dir.name}" in message and "renamed" in message
    assert "--set" not in message
    renamed.rename(run_dir)
    recorded = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert recorded == for_device(cfg, "cpu")  # untouched (as decided for the CPU)
    (run_dir / STATE_DIR / "optimizer.safetensors").write_bytes(b"junk")
    assert "optimizer.safetensors" in error("--resume", run_dir, "--data-dir", data_dir)
    (run_dir / STATE_DIR / "trainer_state.json").unlink()
    assert "no training state" in error("--resume", run_dir, "--data-dir", data_dir)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
        ),
    ],
)
def test_state_tensors_reach_the_host_whole(device):
    """The state's tensors are copied to the host together (one wait on a GPU): every copy is
    contiguous, on the CPU and equal, bit for bit, to its tensor, a non-contiguous one and a
    scalar (AdamW's step) included."""
    from schemabank.state import _on_host

    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(64, 32, generator=g).to(device),
        "t": torch.randn(32, 64, generator=g).to(device).t(),
        "step": torch.tensor(7.0).to(device),
        "big": torch.randn(1 << 20, generator=g).to(device),
    }
    host = _on_host(tensors)
    assert list(host) == list(tensors)
    for n, t in tensors.items():
        assert host[n].device.type == "cpu" and host[n].is_contiguous()
        assert torch.equal(host[n], t.cpu()), n

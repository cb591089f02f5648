"""Several processes (as torchrun and accelerate launch start them; gloo on the CPU): the same loss
curve, final weights and evaluation as one process at the same global batch, files written once,
a signal to one process stops all of them at the same step, and the run resumes on any number of
processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors.torch import load_file

from schemabank import distributed
from schemabank.cli import main
from schemabank.config import config_from_dict, load_config
from schemabank.state import STATE_DIR
from schemabank.telemetry import curve_difference, read_jsonl, throughput, throughput_by_stage
from schemabank.training import run

REPO = Path(__file__).resolve().parents[1]
TIMING = ("tokens_per_s", "elapsed_s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(cfg: dict, tmp: Path) -> Path:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_args(cfg_path: Path, out: Path, data_dir: Path) -> list[str]:
    return [
        "-m",
        "schemabank",
        "train",
        "--config",
        str(cfg_path),
        "--output-dir",
        str(out),
        "--data-dir",
        str(data_dir),
    ]


def launch(rank: int, world: int, port: int, args: list[str]) -> subprocess.Popen:
    """One process of ``world``, with the environment torchrun and accelerate launch give it."""
    env = {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = run_dir / "checkpoint"
    out = load_file(ck / "adapter_model.safetensors")
    if (ck / "schemabank.safetensors").exists():
        out.update(load_file(ck / "schemabank.safetensors"))
    return out


def assert_same_training(a: Path, b: Path, tol: float) -> None:
    """The same loss curve (every logged value) and final weights, within ``tol``.

    Except ``balance``: the load-balancing loss is not a mean over tokens but a product of two,
    so it is computed per micro-batch (per process), as it is for micro-batches in one process.
    """
    la, lb = read_jsonl(a / "training_log.jsonl"), read_jsonl(b / "training_log.jsonl")
    assert [x["step"] for x in la] == [x["step"] for x in lb]
    for x, y in zip(la, lb, strict=True):
        for k in x:
            if k == "balance":
                continue
            if k in TIMING or x[k] is None or isinstance(x[k], str):
                assert x[k] == y[k] or k in TIMING, (k, x, y)
            else:
                assert y[k] == pytest.approx(x[k], rel=tol, abs=tol), (k, x["step"])
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for n in wa:
        torch.testing.assert_close(wb[n], wa[n], rtol=tol, atol=tol, msg=n)


def test_torchrun_two_processes_match_one(tiny_llama, data_dir, tmp_path):
    """``torchrun --nproc_per_node 2 -m schemabank train``, SchemaBank's three stages at a global
    batch of 4: the same run as one process, written once by rank 0. The two processes also pack
    their shares into rows (``training.packing``), which changes nothing either."""
    cfg = tiny_config(tiny_llama, schemabank={"lambda_z": 0.1}, data={"dev_size": 3})
    cfg["training"] |= {"batch_size": 4, "max_length": 256}
    one = run(config_from_dict(cfg), output_dir=tmp_path / "one", data_dir=data_dir)
    cfg["training"]["packing"] = True
    cfg_path = write_config(cfg, tmp_path)

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + train_args(cfg_path, tmp_path / "two", data_dir),
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two" / one.name
    assert proc.stdout.count("wrote ") == 1  # one process prints
    assert sorted(p.name for p in two.iterdir()) == [
        "checkpoint",
        "config.yaml",
        "results.json",
        "samples.jsonl",
        "training_log.jsonl",
    ]
    assert [x["step"] for x in read_jsonl(two / "training_log.jsonl")] == list(range(1, 7))
    assert_same_training(one, two, tol=1e-5)

    ra, rb = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert rb["environment"]["processes"] == 2 and ra["environment"]["processes"] == 1
    assert rb["gsm8k"]["problems"] == ra["gsm8k"]["problems"]  # 3 problems: shards of 2 and 1
    assert rb["gsm8k_dev"]["problems"] == ra["gsm8k_dev"]["problems"]  # the held-out dev set
    assert len(ra["gsm8k_dev"]["problems"]) == 3
    assert [s["output"] for s in rb["gsm8k"]["samples"]] == [
        s["output"] for s in ra["gsm8k"]["samples"]
    ]
    # every generation, gathered in test-set order and written once, as one process writes it
    assert read_jsonl(two / "samples.jsonl") == read_jsonl(one / "samples.jsonl")
    assert rb["routing"]["layers"].keys() == ra["routing"]["layers"].keys()
    for layer, stats in ra["routing"]["layers"].items():
        assert rb["routing"]["layers"][layer]["tag_schema"] == stats["tag_schema"]
        assert rb["routing"]["layers"][layer]["tokens"] == stats["tokens"]
    for w, entry in ra["perplexity"]["windows"].items():
        assert rb["perplexity"]["windows"][w]["tokens"] == entry["tokens"]
        assert rb["perplexity"]["windows"][w]["ppl"] == pytest.approx(entry["ppl"], rel=1e-5)
        assert rb["perplexity"]["windows"][w]["base_ppl"] == entry["base_ppl"]


def test_signal_to_one_process_stops_all_and_resumes_on_one(tiny_llama, data_dir, tmp_path):
    """Baseline mode in micro-batches: SIGTERM to rank 1 alone stops both processes after the
    same step with the state saved once; resumed by one process, the run ends as an
    uninterrupted one-process run does."""
    cfg = tiny_config(
        tiny_llama,
        mode="baseline",
        eval={"limit": 1, "max_new_tokens": 2, "ppl_windows": [16], "ppl_max_tokens": 40},
    )
    cfg["training"].update(
        total_steps=120, batch_size=4, micro_batch_size=1, checkpoint_every=50, learning_rate=3e-3
    )
    cfg_path = write_config(cfg, tmp_path)
    reference = run(config_from_dict(cfg), output_dir=tmp_path / "ref", data_dir=data_dir)

    port = free_port()
    args = train_args(cfg_path, tmp_path / "out", data_dir)
    procs = [launch(r, 2, port, args) for r in range(2)]
    run_dir = tmp_path / "out" / reference.name
    log = run_dir / "training_log.jsonl"
    try:
        end = time.time() + 240
        while not (log.exists() and log.read_text().count("\n") >= 10):
            assert time.time() < end, "timed out waiting for the training log"
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [143, 143], outs[0][1][-3000:]
    meta = json.loads((run_dir / STATE_DIR / "trainer_state.json").read_text())
    assert 10 < meta["step"] < 120
    assert len(read_jsonl(log)) == meta["step"]
    assert f"SIGTERM at step {meta['step']}" in outs[0][1]
    assert "schemabank:" not in outs[1][1]  # rank 1 stays quiet
    assert not (run_dir / "results.json").exists()

    resumed = run(  # by one process now
        load_config(run_dir / "config.yaml"),
        output_dir=tmp_path / "out",
        data_dir=data_dir,
        resume=True,
    )
    assert not (resumed / STATE_DIR).exists()
    assert_same_training(reference, resumed, tol=1e-4)


def test_batch_that_does_not_split_over_the_processes_is_a_config_error(
    tiny_llama, data_dir, tmp_path, monkeypatch, capsys
):
    cfg = tiny_config(tiny_llama)
    cfg["training"]["batch_size"] = 3
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    argv = ["train", "--config", str(write_config(cfg, tmp_path)), "--data-dir", str(data_dir)]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "schemabank: error: training.batch_size: 3 examples do not split evenly over 2 processes "
        "(WORLD_SIZE); use a multiple of 2"
    )
    monkeypatch.setenv("RANK", "1")  # the other processes meet the same problem, quietly
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "out").exists()


def test_shards_cover_every_item_once_and_gather_in_order(monkeypatch):
    assert distributed.shard(5) == [0, 1, 2, 3, 4]
    assert distributed.gather_shards(["a", "b"], 2) == ["a", "b"]
    world, n = 3, 8
    shards = {}
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        shards[r] = distributed.shard(n)
    assert sorted(i for s in shards.values() for i in s) == list(range(n))

    def all_gather_object(parts, items):
        parts[:] = [[f"item{i}" for i in shards[r]] for r in range(world)]

    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed.dist, "all_gather_object", all_gather_object)
    assert distributed.gather_shards(None, n) == [f"item{i}" for i in range(n)]


def test_throughput_and_curve_difference():
    lines = [
        {"step": 1, "stage": "a", "loss": 2.0, "tokens": 100, "tokens_per_s": 10.0},
        {"step": 2, "stage": "a", "loss": 1.5, "tokens": 100, "tokens_per_s": 100.0},
        {"step": 3, "stage": "b", "loss": 1.0, "tokens": 300, "tokens_per_s": 100.0},
        {"step": 4, "stage": "b", "loss": 0.5, "tokens": 100, "tokens_per_s": 50.0},
    ]
    assert throughput(lines)["tokens_per_s"] == pytest.approx(600 / (10 + 1 + 3 + 2))
    steady = throughput(lines, skip=1)  # the first step of each stage left out
    assert steady["steps"] == 2 and steady["tokens_per_s"] == pytest.approx(200 / 3)
    by_stage = throughput_by_stage(lines)
    assert list(by_stage) == ["a", "b"]
    assert by_stage["a"]["tokens_per_s"] == pytest.approx(200 / 11)
    assert by_stage["b"]["tokens_per_s"] == pytest.approx(400 / 5)
    assert throughput_by_stage(lines, skip=1)["b"]["tokens_per_s"] == pytest.approx(50.0)
    other = [{**x, "loss": x["loss"] + 0.1 * x["step"]} for x in lines]
    d = curve_difference(lines, other)
    assert d["max_abs"] == pytest.approx(0.4) and d["mean_abs"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="different steps"):
        curve_difference(lines, lines[:2])

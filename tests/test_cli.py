"""The ``schemabank`` command end to end (SPEC sections 4, 6, 7) on tiny random models, offline, CPU.

Two module-scoped fixtures do the expensive work once, as real subprocesses of the console entry
point (``python -m schemabank`` and the seed scripts ``train.py`` / ``evaluate.py``): ``runs``
trains one tiny SchemaBank run and one tiny baseline run, and ``evals`` evaluates, compares and
misuses them. Every subprocess pays several seconds of imports (torch, transformers, PEFT), so each
batch runs concurrently and the many bad-input cases call :func:`schemabank.cli.main` in-process
instead: same code path after the ``sys.exit``, same stderr, and an unexpected exception (which a
subprocess would print as a traceback) fails the test.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from conftest import TEST, tiny_config
from safetensors.torch import load_file

from schemabank.cli import main
from schemabank.config import config_from_dict, for_device, load_config
from schemabank.models import hash_model_dir
from schemabank.telemetry import read_jsonl

REPO = Path(__file__).resolve().parents[1]
MODES = ("schemabank", "baseline")
ENV = {
    **{k: v for k, v in os.environ.items() if k != "SCHEMABANK_DATA_DIR"},
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}

# 7 steps: stage 1 has 4 (two curriculum phases of 2 steps), stage 2 has 2, stage 3 has 1.
TRAINING = {
    "total_steps": 7,
    "batch_size": 2,
    "learning_rate": 1e-2,
    "max_length": 128,
    "stages": {
        "stage1_router_pretrain": {"steps": 4, "tag_curriculum": {"dropout_schedule": [0.0, 0.5]}},
        "stage2_schema_train": {"steps": 2},
        "stage3_joint_finetune": {"steps": 1},
    },
}
EXPECTED_STAGES = {
    "schemabank": ["router_pretrain"] * 4 + ["schema_train"] * 2 + ["joint_finetune"],
    "baseline": ["lora"] * 7,
}
EXPECTED_DROPOUT = {
    "schemabank": [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0],
    "baseline": [1.0] * 7,
}
LOG_FIELDS = (
    "step",
    "stage",
    "loss",
    "lm_loss",
    "route_loss",
    "ortho",
    "lr",
    "tag_dropout",
    "grad_norm",
    "tokens_per_s",
)
CHECKPOINT_FILES = {
    "schemabank": {
        "adapter_model.safetensors",
        "adapter_config.json",
        "base_model.json",
        "schemabank.safetensors",
        "schemabank_config.json",
        "README.md",
    },
    "baseline": {
        "adapter_model.safetensors",
        "adapter_config.json",
        "base_model.json",
        "README.md",
    },
}
BANK_PARAMS = ("router.weight", "U", "V", "A", "G", "gain")


# ---------------------------------------------------------------------------------------------
# Helpers


def cli(*args) -> list[str]:
    """``python -m schemabank ARGS``."""
    return [sys.executable, "-m", "schemabank", *map(str, args)]


def seed_script(script: str, *args) -> list[str]:
    """``python train.py ARGS`` / ``python evaluate.py ARGS`` (run from the repository root)."""
    return [sys.executable, script, *map(str, args)]


def run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Run the commands concurrently from the repository root and wait for all of them."""
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {
            name: pool.submit(
                subprocess.run,
                cmd,
                capture_output=True,
                text=True,
                env=ENV,
                cwd=REPO,
                timeout=300,
            )
            for name, cmd in commands.items()
        }
        return {name: f.result() for name, f in futures.items()}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def assert_user_error(code: int, stderr: str, *needles: str) -> str:
    """Exit status 1 and exactly one ``schemabank: error:`` line, printed last, naming the
    problem (every needle), and no traceback. Returns the error line."""
    assert code == 1, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in re.split(r"[\r\n]+", stderr) if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("schemabank: error: "), stderr
    assert lines[-1] == errors[0], stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


def call_main(capsys, *argv) -> tuple[int, str]:
    """Run ``schemabank ARGV`` in-process; returns (exit status, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> content)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def copy_data(data_dir: Path, dest: Path) -> Path:
    shutil.copytree(data_dir, dest)
    return dest


@dataclass
class Run:
    mode: str
    dir: Path
    cfg: dict
    """The config dict the run was trained with."""
    config_path: Path
    proc: subprocess.CompletedProcess

    @property
    def ckpt(self) -> Path:
        return self.dir / "checkpoint"

    def results(self) -> dict:
        return read_json(self.dir / "results.json")

    def log(self) -> list[dict]:
        lines = (self.dir / "training_log.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]


@dataclass
class Evals:
    dir: Path
    procs: dict[str, subprocess.CompletedProcess]

    def results(self, name: str) -> dict:
        assert_ok(self.procs[name])
        return read_json(self.dir / f"{name}.json")


# ---------------------------------------------------------------------------------------------
# Fixtures: train both modes once, then evaluate / compare / misuse them once


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama, data_dir) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("cli_runs")
    out = root / "results"
    cfgs = {mode: tiny_config(tiny_llama, mode, training=TRAINING) for mode in MODES}
    paths = {mode: write_yaml(root / f"{mode}.yaml", cfgs[mode]) for mode in MODES}
    procs = run_all(
        {
            mode: cli("train", "--config", paths[mode], "--output-dir", out, "--data-dir", data_dir)
            for mode in MODES
        }
    )
    for proc in procs.values():
        assert_ok(proc)
    return {
        mode: Run(mode, out / f"tiny_{mode}_seed0", cfgs[mode], paths[mode], procs[mode])
        for mode in MODES
    }


@pytest.fixture(scope="module")
def evals(runs, tiny_qwen2, data_dir, tmp_path_factory) -> Evals:
    out = tmp_path_factory.mktemp("cli_evals")
    sb, bl = runs["schemabank"], runs["baseline"]
    data = ("--data-dir", data_dir)
    commands = {
        "limit2": cli("eval", "--checkpoint", sb.ckpt, "--output", out / "limit2.json", "--limit", 2, *data),
        # same limit as training: the seed entry point with a checkpoint/ dir, the CLI with a run dir
        "repro_schemabank": seed_script(
            "evaluate.py", "--checkpoint", sb.ckpt, "--output", out / "repro_schemabank.json", *data
        ),
        "repro_baseline": cli("eval", "--checkpoint", bl.dir, "--output", out / "repro_baseline.json", *data),
        "base": cli(
            "eval", "--base-model", tiny_qwen2, "--shots", 2, "--limit", 2, "--output", out / "base.json",
            "--set", "eval.max_new_tokens=8", "--set", "eval.ppl_windows=[32]", *data,
        ),
        "compare": cli("compare", sb.dir, bl.dir / "results.json", "--output", out / "compare.json"),
        "train_py_missing_config": seed_script("train.py", "--config", out / "absent.yaml"),
    }  # fmt: skip
    return Evals(out, run_all(commands))


@pytest.fixture
def sb_config(tmp_path, tiny_llama) -> Path:
    """A valid SchemaBank config file (for runs that must fail on something else)."""
    return write_yaml(
        tmp_path / "cfg.yaml", tiny_config(tiny_llama, "schemabank", training=TRAINING)
    )


# ---------------------------------------------------------------------------------------------
# 1. Training end to end: files and their contents


@pytest.mark.parametrize("mode", MODES)
def test_train_writes_every_spec_file(runs, mode):
    run = runs[mode]
    assert sorted(p.name for p in run.dir.parent.iterdir()) == [
        "tiny_baseline_seed0",
        "tiny_schemabank_seed0",
    ]
    # exactly SPEC section 7's files: no temporary folders left behind, no extra model card
    assert {p.name for p in run.dir.iterdir()} == {
        "config.yaml",
        "results.json",
        "samples.jsonl",
        "training_log.jsonl",
        "checkpoint",
    }
    assert {p.name for p in run.ckpt.iterdir()} == CHECKPOINT_FILES[mode]
    assert f"wrote {run.dir}" in run.proc.stdout
    assert re.search(r"strict\s+\d+/3 = ", run.proc.stdout)


@pytest.mark.parametrize("mode", MODES)
def test_no_pickles_anywhere(runs, mode):
    """Weights are safetensors; every other file is UTF-8 text (JSON / JSONL / YAML, and the
    checkpoint's README.md)."""
    for path in runs[mode].dir.rglob("*"):
        if path.is_dir():
            continue
        assert path.suffix in {".safetensors", ".json", ".jsonl", ".yaml", ".md"}, path
        if path.suffix == ".safetensors":
            assert load_file(path), path
        else:
            path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("mode", MODES)
def test_training_log(runs, mode):
    log = runs[mode].log()
    assert len(log) == TRAINING["total_steps"]
    for entry in log:
        assert set(LOG_FIELDS) <= entry.keys(), entry
    assert [e["step"] for e in log] == list(range(1, 8))
    assert [e["stage"] for e in log] == EXPECTED_STAGES[mode]
    assert [e["tag_dropout"] for e in log] == EXPECTED_DROPOUT[mode]
    for e in log:
        stage1 = e["stage"] == "router_pretrain"
        # the routing loss is optimised only in stage 1, the LM loss only after it
        assert (e["route_loss"] is not None) == stage1, e
        assert (e["lm_loss"] is not None) == (not stage1), e
        if stage1:
            assert e["loss"] == pytest.approx(e["route_loss"])
        if mode == "baseline":
            assert e["loss"] == pytest.approx(e["lm_loss"])
            assert e["ortho"] is None
        else:
            assert math.isfinite(e["ortho"]) and e["ortho"] >= 0
        assert math.isfinite(e["loss"])
        assert e["lr"] == pytest.approx(TRAINING["learning_rate"])  # constant schedule, no warmup
        assert math.isfinite(e["grad_norm"]) and e["grad_norm"] >= 0
        assert e["tokens_per_s"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_results_json(runs, mode):
    run = runs[mode]
    r = run.results()
    assert r["format"] == "schemabank-results-v1"
    assert r["kind"] == "train"
    assert r["experiment"] == {"name": f"tiny_{mode}", "seed": 0, "mode": mode}

    g = r["gsm8k"]
    limit = run.cfg["eval"]["limit"]
    assert g["n"] == limit == 3 and g["shots"] == 0
    assert len(g["problems"]) == limit
    assert [p["index"] for p in g["problems"]] == list(range(limit))
    assert [p["gold"] for p in g["problems"]] == [a.rsplit("#### ", 1)[1] for _, a in TEST[:limit]]
    for key in ("strict", "flexible"):
        acc = g[key]
        assert acc["total"] == limit
        assert acc["correct"] == sum(p[f"{key}_correct"] for p in g["problems"])
        assert acc["accuracy"] == pytest.approx(acc["correct"] / limit)
        lo, hi = acc["ci95"]
        assert 0.0 <= lo <= acc["accuracy"] <= hi <= 1.0 and hi > lo
    assert len(g["samples"]) == run.cfg["eval"]["num_samples"]
    for s in g["samples"]:
        assert s["question"] == TEST[s["index"]][0] and isinstance(s["output"], str)

    ppl = r["perplexity"]
    for w in run.cfg["eval"]["ppl_windows"]:
        assert math.isfinite(ppl[f"ppl_{w}"]) and ppl[f"ppl_{w}"] > 1
        assert math.isfinite(ppl[f"base_ppl_{w}"]) and ppl[f"base_ppl_{w}"] > 1
    # the base model's perplexity does not depend on the adapter that was trained
    other = runs["baseline" if mode == "schemabank" else "schemabank"].results()["perplexity"]
    for w in run.cfg["eval"]["ppl_windows"]:
        assert ppl[f"base_ppl_{w}"] == pytest.approx(other[f"base_ppl_{w}"], rel=1e-5)

    training = r["training"]
    assert training["total_steps"] == TRAINING["total_steps"]
    log = run.log()
    for label, stage in training["stages"].items():
        steps = [e for e in log if e["stage"] == label]
        assert stage["steps"] == len(steps)
        assert stage["final_loss"] == pytest.approx(steps[-1]["loss"])
    assert list(training["stages"]) == list(dict.fromkeys(EXPECTED_STAGES[mode]))

    env = r["environment"]
    import peft
    import torch
    import transformers

    assert env["python"] == platform.python_version()
    assert env["torch"] == torch.__version__
    assert env["transformers"] == transformers.__version__
    assert env["peft"] == peft.__version__
    assert env["schemabank"] == version("schemabank")
    assert re.fullmatch("[0-9a-f]{64}", env["source_sha256"])
    assert env["device"] == "cpu"

    assert r["base_model"]["name"] == run.cfg["model"]["base_model"]
    assert r["config"] == for_device(config_from_dict(run.cfg), "cpu").to_dict()  # as decided


@pytest.mark.parametrize("mode", MODES)
def test_samples_jsonl_keeps_every_generation(runs, mode):
    """One line per test problem, in order, with the outcomes results.json records; dominant
    schemas per line of the output and bank only with banks."""
    run = runs[mode]
    r = run.results()
    records = read_jsonl(run.dir / "samples.jsonl")
    assert len(records) == r["gsm8k"]["n"] == 3
    assert [x["question"] for x in records] == [q for q, _ in TEST[:3]]
    for x, p in zip(records, r["gsm8k"]["problems"], strict=True):
        assert x["index"] == p["index"] and x["gold"] == p["gold"]
        for key in ("strict_pred", "flexible_pred", "strict_correct", "flexible_correct"):
            assert x[key] == p[key]
        assert x["prompt"] == f"Question: {x['question']}\nAnswer:"
        assert isinstance(x["output"], str)
        if mode == "baseline":
            assert "dominant_schemas" not in x
        else:
            assert list(x["dominant_schemas"]) == [str(layer) for layer in r["routing"]["layers"]]
            for steps in x["dominant_schemas"].values():
                assert len(steps) == x["output"].count("\n") + 1
    samples = r["gsm8k"]["samples"]
    assert [x["output"] for x in records[: len(samples)]] == [s["output"] for s in samples]


def test_overwrite_removes_the_samples_and_a_finished_run_is_not_resumed(tmp_path):
    from schemabank.errors import SchemaBankError
    from schemabank.training import check_run_dir

    names = ["results.json", "samples.jsonl", "eval_results.json", "eval_samples.jsonl"]
    for name in names:
        (tmp_path / name).write_text("{}")
    assert sorted(p.name for p in check_run_dir(tmp_path, False, True)) == sorted(names)
    with pytest.raises(SchemaBankError, match="finished"):
        check_run_dir(tmp_path, True, False)


def test_routing_and_parameters_schemabank(runs):
    run = runs["schemabank"]
    r = run.results()
    b = run.cfg["schemabank"]
    routing = r["routing"]
    assert routing["num_schemas"] == b["num_schemas"]
    s = routing["summary"]
    assert set(s) >= {"active", "dead", "entropy_bits", "schema_reuse", "nmi_tags_dominant"}
    assert s["active"] + s["dead"] == b["num_schemas"]
    assert 0.0 <= s["entropy_bits"] <= math.log2(b["num_schemas"]) + 1e-9
    assert 0.0 <= s["nmi_tags_dominant"] <= 1.0 + 1e-9
    assert r["schema_reuse"] == s["schema_reuse"] >= 0.0
    assert list(routing["layers"]) == ["1"]  # layer -1 of a 2-layer model
    assert sum(routing["layers"]["1"]["share"]) == pytest.approx(1.0)
    assert len(routing["layers"]["1"]["dominant_schema"]) == r["gsm8k"]["n"]

    p = r["parameters"]
    assert p["total"] == p["lora"] + p["router"] + p["schema"]
    assert p["router"] == b["num_schemas"] * 32  # W_r: H -> S, H = 32
    assert p["router"] > 0 and p["schema"] > 0 and p["lora"] > 0
    assert p["lora_rank"] == run.cfg["lora"]["r"]
    adapter = load_file(run.ckpt / "adapter_model.safetensors")
    bank = load_file(run.ckpt / "schemabank.safetensors")
    assert p["lora"] == sum(t.numel() for t in adapter.values())
    assert p["router"] + p["schema"] == sum(t.numel() for t in bank.values())


def test_routing_and_parameters_baseline(runs):
    r = runs["baseline"].results()
    assert r["routing"] is None
    assert r["schema_reuse"] == 0.0
    p = r["parameters"]
    assert p["router"] == p["schema"] == 0
    assert p["total"] == p["lora"] > 0
    # both modes use the same LoRA: the difference is the bank
    assert p["lora"] == runs["schemabank"].results()["parameters"]["lora"]
    adapter = load_file(runs["baseline"].ckpt / "adapter_model.safetensors")
    assert p["lora"] == sum(t.numel() for t in adapter.values())


@pytest.mark.parametrize("mode", MODES)
def test_config_yaml_is_the_config_used(runs, mode):
    run = runs[mode]
    # the config with its null speed keys decided for the device (the CPU: eager)
    assert load_config(run.dir / "config.yaml") == for_device(config_from_dict(run.cfg), "cpu")
    assert load_config(run.dir / "config.yaml") == for_device(load_config(run.config_path), "cpu")


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_files(runs, mode, tiny_llama):
    run = runs[mode]
    adapter = load_file(run.ckpt / "adapter_model.safetensors")
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    acfg = read_json(run.ckpt / "adapter_config.json")
    assert acfg["peft_type"] == "LORA"
    assert acfg["r"] == run.cfg["lora"]["r"] and acfg["lora_alpha"] == run.cfg["lora"]["lora_alpha"]
    base = read_json(run.ckpt / "base_model.json")
    assert base["name"] == str(tiny_llama)
    assert base["sha256"] == hash_model_dir(tiny_llama)
    if mode == "baseline":
        return
    bcfg = read_json(run.ckpt / "schemabank_config.json")
    b = run.cfg["schemabank"]
    for key in ("num_schemas", "rank", "topk", "attr_dim"):
        assert bcfg[key] == b[key], key
    assert bcfg["layers"] == [1] and bcfg["hidden_size"] == 32
    S, r, ad, H = bcfg["num_schemas"], bcfg["rank"], bcfg["attr_dim"], bcfg["hidden_size"]
    shapes = {
        "router.weight": (S, H),
        "U": (S, H, r),
        "V": (S, r, H),
        "A": (S, ad),
        "G": (ad, r),
        "gain": (),
    }
    tensors = load_file(run.ckpt / "schemabank.safetensors")
    expected = {
        f"layers.{layer}.{name}": shape
        for layer in bcfg["layers"]
        for name, shape in shapes.items()
    }
    assert {k: tuple(t.shape) for k, t in tensors.items()} == expected
    # training moved the bank away from its identity start (gain is initialised to 0)
    assert float(tensors["layers.1.gain"]) != 0.0


# ---------------------------------------------------------------------------------------------
# 2. Evaluating a checkpoint; the seed entry points


def test_eval_checkpoint_with_limit(evals):
    r = evals.results("limit2")
    assert r["kind"] == "checkpoint-eval"
    assert r["gsm8k"]["n"] == 2 and len(r["gsm8k"]["problems"]) == 2
    assert r["gsm8k"]["strict"]["total"] == 2
    assert r["training"] is None
    assert r["experiment"]["mode"] == "schemabank"
    assert r["config"]["eval"]["limit"] == 2
    assert r["routing"]["num_schemas"] == 8


def test_eval_samples_go_beside_each_output(runs, evals):
    """Every evaluation written to one folder keeps its own samples file, named after it."""
    assert sorted(p.name for p in evals.dir.glob("*.jsonl")) == [
        "base_samples.jsonl",
        "limit2_samples.jsonl",
        "repro_baseline_samples.jsonl",
        "repro_schemabank_samples.jsonl",
    ]
    assert len(read_jsonl(evals.dir / "limit2_samples.jsonl")) == 2
    base = read_jsonl(evals.dir / "base_samples.jsonl")
    assert len(base) == 2 and "dominant_schemas" not in base[0]
    assert base[0]["prompt"].count("Question:") == 3  # two shots, then the problem
    for mode in MODES:  # the checkpoint's generations are the trained run's, line for line
        again = (evals.dir / f"repro_{mode}_samples.jsonl").read_text()
        assert again == (runs[mode].dir / "samples.jsonl").read_text()
    assert not (runs["schemabank"].dir / "eval_samples.jsonl").exists()


@pytest.mark.parametrize("mode", MODES)
def test_eval_reproduces_the_trained_run(runs, evals, mode):
    """CPU, fp32, greedy: re-evaluating the saved checkpoint gives exactly the trained numbers."""
    trained = runs[mode].results()
    again = evals.results(f"repro_{mode}")
    assert again["kind"] == "checkpoint-eval"
    assert again["gsm8k"]["n"] == trained["gsm8k"]["n"]
    assert again["gsm8k"]["problems"] == trained["gsm8k"]["problems"]
    assert [s["output"] for s in again["gsm8k"]["samples"]] == [
        s["output"] for s in trained["gsm8k"]["samples"]
    ]
    for key in ("strict", "flexible"):
        assert again["gsm8k"][key] == trained["gsm8k"][key]
    assert again["perplexity"] == trained["perplexity"]
    assert again["routing"] == trained["routing"]
    assert again["schema_reuse"] == trained["schema_reuse"]
    assert again["parameters"] == trained["parameters"]
    assert again["base_model"] == trained["base_model"]


def test_train_py_dispatches_to_train(evals):
    proc = evals.procs["train_py_missing_config"]
    assert_user_error(proc.returncode, proc.stderr, "config file not found", "absent.yaml")
    assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------
# 3. Evaluating a bare base model; comparing runs


def test_eval_base_model(evals, tiny_qwen2):
    r = evals.results("base")
    assert r["kind"] == "base-eval"
    assert r["gsm8k"]["shots"] == 2 and r["gsm8k"]["n"] == 2
    assert r["gsm8k"]["max_new_tokens"] == 8
    assert r["routing"] is None and r["schema_reuse"] == 0.0
    assert r["parameters"] is None and r["training"] is None
    assert r["base_model"]["name"] == str(tiny_qwen2)
    assert r["base_model"]["model_type"] == "qwen2"
    assert math.isfinite(r["perplexity"]["ppl_32"])
    assert "base_ppl_32" not in r["perplexity"]  # it is the base model


def test_compare(evals, runs):
    proc = evals.procs["compare"]
    assert_ok(proc)
    lines = proc.stdout.splitlines()
    assert (
        "tiny_schemabank" in lines[0]
        and "tiny_baseline" in lines[0]
        and "3 paired problems" in lines[0]
    )
    for key in ("strict", "flexible"):
        line = next(ln for ln in lines if ln.strip().startswith(key))
        assert "McNemar p = " in line and "95% CI" in line and "A-B" in line
        assert "answers differ on " in line
    c = read_json(evals.dir / "compare.json")
    assert c["n"] == 3
    assert c["a"]["mode"] == "schemabank" and c["b"]["mode"] == "baseline"
    for key in ("strict", "flexible"):
        entry = c[key]
        assert set(entry) >= {"accuracy_a", "accuracy_b", "mcnemar", "bootstrap"}
        assert entry["accuracy_a"] == runs["schemabank"].results()["gsm8k"][key]["accuracy"]
        assert entry["accuracy_b"] == runs["baseline"].results()["gsm8k"][key]["accuracy"]
        assert 0.0 <= entry["mcnemar"]["p_value"] <= 1.0
        assert entry["bootstrap"]["difference"] == pytest.approx(
            entry["accuracy_a"] - entry["accuracy_b"]
        )
        pa, pb = (runs[m].results()["gsm8k"]["problems"] for m in ("schemabank", "baseline"))
        want = sum(x[f"{key}_pred"] != y[f"{key}_pred"] for x, y in zip(pa, pb, strict=True))
        assert entry["answers_differ"] == want


def test_compare_different_problem_sets_fails(evals, runs, capsys, tmp_path):
    evals.results("limit2")  # evaluated on 2 problems, the trained run on 3
    out = tmp_path / "cmp.json"
    code, err = call_main(
        capsys, "compare", runs["schemabank"].dir, evals.dir / "limit2.json", "--output", out
    )
    assert_user_error(code, err, "same problems", "3 vs 2")
    assert not out.exists()


def test_compare_pools_pairs_of_seeds(capsys, tmp_path):
    """Several pairs (the committed routing study's three seeds) are compared one by one and
    pooled; an odd number of runs is refused."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "results"
    runs = [
        results / name
        for s in (42, 43, 44)
        for name in (f"sb_routed_seed{s}", f"lora_b32_lr5e-4_r32_all_seed{s}")
    ]
    out = tmp_path / "pooled.json"
    code, err = call_main(capsys, "compare", *runs, "--output", out)
    assert code == 0, err
    c = read_json(out)
    assert len(c["pairs"]) == 3
    for key in ("strict", "flexible"):
        pooled = c["pooled"][key]
        per_seed = [pair[key]["bootstrap"]["difference"] for pair in c["pairs"]]
        assert pooled["per_seed_difference"] == pytest.approx(per_seed)
        assert pooled["difference"] == pytest.approx(sum(per_seed) / 3)
        assert pooled["ci95"][0] <= pooled["difference"] <= pooled["ci95"][1]
        assert 0 < pooled["p_value"] <= 1
    code, err = call_main(capsys, "compare", *runs[:3])
    assert_user_error(code, err, "in pairs", "got 3")


def test_compare_missing_results_file(runs, capsys, tmp_path):
    code, err = call_main(capsys, "compare", runs["schemabank"].dir, tmp_path / "absent_run")
    assert_user_error(code, err, "results file not found", "absent_run")


# ---------------------------------------------------------------------------------------------
# 4. Bad input: one line on stderr naming the problem, exit status 1, no traceback


def _setting(key: str, value):
    """A config edit that sets a dotted key."""

    def edit(cfg: dict) -> str:
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[last] = value
        return yaml.safe_dump(cfg)

    return edit


def _malformed_yaml(cfg: dict) -> str:
    return "experiment:\n  name: x\n   seed: 1\n"  # bad indentation on line 3


@pytest.mark.parametrize(
    ("edit", "overrides", "needles"),
    [
        pytest.param(None, [], ["config file not found", "cfg.yaml"], id="missing-file"),
        pytest.param(
            _malformed_yaml, [], ["cfg.yaml", "not valid YAML", "line 3"], id="malformed-yaml"
        ),
        pytest.param(
            _setting("training.foo", 1), [], ["training.foo", "unknown key"], id="unknown-key"
        ),
        pytest.param(
            _setting("schemabank.topk", 9),
            [],
            ["schemabank.topk", "num_schemas (8)", "got 9"],
            id="topk",
        ),
        pytest.param(
            _setting("training.total_steps", 8),
            [],
            [
                "training.stages",
                "add up to training.total_steps",
                "4 + 2 + 1 = 7",
                "total_steps = 8",
            ],
            id="stage-steps-sum",
        ),
        pytest.param(
            lambda cfg: yaml.safe_dump(cfg),
            ["training.total_steps"],
            ["--set", "training.total_steps", "key=value"],
            id="set-without-equals",
        ),
    ],
)
def test_bad_config(capsys, tmp_path, tiny_llama, data_dir, edit, overrides, needles):
    path = tmp_path / "cfg.yaml"
    if edit is not None:
        path.write_text(edit(tiny_config(tiny_llama, "schemabank", training=TRAINING)))
    sets = [a for o in overrides for a in ("--set", o)]
    out = tmp_path / "results"
    code, err = call_main(
        capsys, "train", "--config", path, *sets, "--output-dir", out, "--data-dir", data_dir
    )
    assert_user_error(code, err, *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    "window, needles",
    [
        ("5", ["--profile-steps '5'", "FIRST:N"]),
        ("0:2", ["--profile-steps '0:2'", ">= 1"]),
        ("a:b", ["FIRST:N"]),
        ("6:3", ["--profile-steps 6:3", "7 steps", "training.total_steps"]),
        ("1:2 2:1", ["--profile-steps 1:2 and 2:1 overlap"]),
    ],
)
def test_bad_profile_window(capsys, tmp_path, sb_config, data_dir, window, needles):
    out = tmp_path / "results"
    flags = [a for w in window.split() for a in ("--profile-steps", w)]
    code, err = call_main(
        capsys, "train", "--config", sb_config, *flags, "--output-dir", out, "--data-dir", data_dir,
    )  # fmt: skip
    assert_user_error(code, err, *needles)
    assert not out.exists()


def _no_test_split(root: Path) -> list[str]:
    (root / "gsm8k" / "test.jsonl").unlink()
    return ["GSM8K file not found", str(root / "gsm8k" / "test.jsonl")]


def _no_wikitext(root: Path) -> list[str]:
    (root / "wikitext-2" / "test.txt").unlink()
    return ["WikiText-2 file not found", "test.txt"]


def _malformed_json_line(root: Path) -> list[str]:
    path = root / "gsm8k" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"question": "How many?", "answer": '
    path.write_text("\n".join(lines) + "\n")
    return [f"{path}:3", "malformed JSON"]


def _answer_without_marker(root: Path) -> list[str]:
    path = root / "gsm8k" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"question": "How many?", "answer": "Seven."})
    path.write_text("\n".join(lines) + "\n")
    return [f"{path}:2", "####"]


def _non_utf8_line(root: Path) -> list[str]:
    path = root / "gsm8k" / "test.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"question": "Caf\xe9 sells 3 cakes", "answer": "#### 3"}\n')
    return [f"{path}:5", "UTF-8"]


@pytest.mark.parametrize(
    "breakage",
    [_no_test_split, _no_wikitext, _malformed_json_line, _answer_without_marker, _non_utf8_line],
    ids=[
        "no-test-split",
        "no-wikitext",
        "malformed-json-line",
        "no-answer-marker",
        "non-utf8-line",
    ],
)
def test_bad_data_dir(capsys, tmp_path, data_dir, sb_config, breakage):
    root = copy_data(data_dir, tmp_path / "data")
    needles = breakage(root)
    out = tmp_path / "results"
    code, err = call_main(
        capsys, "train", "--config", sb_config, "--output-dir", out, "--data-dir", root
    )
    assert_user_error(code, err, *needles)
    assert not out.exists()


def test_data_dir_that_does_not_exist(capsys, tmp_path, sb_config):
    out = tmp_path / "results"
    code, err = call_main(
        capsys,
        "train",
        "--config",
        sb_config,
        "--output-dir",
        out,
        "--data-dir",
        tmp_path / "absent_data",
    )
    assert_user_error(code, err, "data directory not found", "absent_data")
    assert not out.exists()


def _delete_bank_weights(ckpt: Path) -> list[str]:
    (ckpt / "schemabank.safetensors").unlink()
    return ["missing schemabank.safetensors"]


def _empty_dir(ckpt: Path) -> list[str]:
    shutil.rmtree(ckpt)
    ckpt.mkdir()
    return ["missing", "adapter_model.safetensors", "base_model.json"]


def _other_base_model(ckpt: Path) -> list[str]:
    path = ckpt / "base_model.json"
    path.write_text(json.dumps({**read_json(path), "sha256": "0" * 64}))
    return ["sha256 000000000000", "refusing to load it onto another base model"]


def _truncate(name: str):
    def breakage(ckpt: Path) -> list[str]:
        path = ckpt / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return [str(path), "corrupt or truncated"]

    return breakage


@pytest.mark.parametrize(
    "breakage",
    [
        _delete_bank_weights,
        _empty_dir,
        _truncate("adapter_model.safetensors"),
        _truncate("schemabank.safetensors"),
        _other_base_model,
    ],
    ids=["no-bank-weights", "empty-dir", "truncated-adapter", "truncated-bank", "other-base-model"],
)
def test_bad_checkpoint(capsys, tmp_path, runs, data_dir, breakage):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["schemabank"].dir, run_dir)
    needles = breakage(run_dir / "checkpoint")
    out = tmp_path / "eval.json"
    code, err = call_main(
        capsys,
        "eval",
        "--checkpoint",
        run_dir / "checkpoint",
        "--output",
        out,
        "--data-dir",
        data_dir,
    )
    assert_user_error(code, err, *needles)
    assert not out.exists()


def test_eval_checkpoint_without_config_warns_about_the_defaults(capsys, tmp_path, runs, data_dir):
    """A checkpoint copied without its run's config.yaml is still evaluated, with the default
    settings, and says so (the routing study's oracle evaluation once ran so without a word)."""
    ckpt = tmp_path / "copied" / "checkpoint"
    shutil.copytree(runs["schemabank"].ckpt, ckpt)
    out = tmp_path / "eval.json"
    code, err = call_main(
        capsys, "eval", "--checkpoint", ckpt, "--limit", 1, "--output", out, "--data-dir", data_dir,
        "--set", "eval.max_new_tokens=2", "--set", "eval.ppl_windows=[]",
    )  # fmt: skip
    assert code == 0, err
    assert "warning" in err and "no config.yaml" in err and "default" in err
    assert read_json(out)["experiment"]["name"] == "schemabank_gsm8k"


def test_eval_limit_zero(capsys, tmp_path, runs, data_dir):
    out = tmp_path / "eval.json"
    code, err = call_main(
        capsys, "eval", "--checkpoint", runs["schemabank"].ckpt, "--limit", 0, "--output", out,
        "--data-dir", data_dir,
    )  # fmt: skip
    assert_user_error(code, err, "--limit", ">= 1", "got 0")
    assert not out.exists()


def test_eval_missing_base_model(capsys, tmp_path, data_dir):
    out = tmp_path / "eval.json"
    code, err = call_main(
        capsys, "eval", "--base-model", tmp_path / "absent_model", "--limit", 1, "--output", out,
        "--data-dir", data_dir,
    )  # fmt: skip
    assert_user_error(code, err, "model not found", "absent_model")
    assert not out.exists()


@pytest.mark.parametrize("breakage", ["data", "base-model"])
def test_failed_train_keeps_the_finished_run(capsys, tmp_path, runs, data_dir, breakage):
    """Re-running a finished run's name with broken input leaves the old run intact."""
    sb = runs["schemabank"]
    out = tmp_path / "results"
    shutil.copytree(sb.dir, out / sb.dir.name)
    before = snapshot(out)
    if breakage == "data":
        root = copy_data(data_dir, tmp_path / "data")
        needles = _malformed_json_line(root)
        extra = ["--data-dir", root]
    else:
        needles = ["model not found", "absent_model"]
        extra = ["--data-dir", data_dir, "--set", f"model.base_model={tmp_path / 'absent_model'}"]
    code, err = call_main(
        capsys, "train", "--config", sb.config_path, "--output-dir", out, "--overwrite", *extra
    )
    assert_user_error(code, err, *needles)
    assert snapshot(out) == before


def test_rerunning_a_finished_run_is_refused(capsys, tmp_path, runs, data_dir):
    """Without --resume or --overwrite, an existing run is never started over."""
    sb = runs["schemabank"]
    out = tmp_path / "results"
    shutil.copytree(sb.dir, out / sb.dir.name)
    before = snapshot(out)
    code, err = call_main(
        capsys, "train", "--config", sb.config_path, "--output-dir", out, "--data-dir", data_dir
    )
    assert_user_error(code, err, "already holds a run", "--resume", "--overwrite")
    assert snapshot(out) == before


def test_out_of_gpu_memory_is_a_one_line_error(monkeypatch, capsys):
    """CUDA OOM (torch.OutOfMemoryError) ends in a one-line hint, not a traceback."""
    import torch

    from schemabank import cli

    def boom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")

    monkeypatch.setattr(cli, "cmd_train", boom)
    assert cli.main(["train", "--config", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of GPU memory" in err and "training.batch_size" in err


def test_results_identify_problems_by_their_questions(runs):
    from schemabank.metrics import question_hash

    problems = runs["schemabank"].results()["gsm8k"]["problems"]
    assert [p["question_sha256"] for p in problems] == [question_hash(q) for q, _ in TEST[:3]]

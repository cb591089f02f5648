"""lm-evaluation-harness on a SchemaBank run, offline: a local generate_until task over the test
data's GSM8K lines, through lm-eval's Python API (HFLM over schemabank.load's model), the
registered model class ``schemabank`` (``schemabank lm-eval`` and lm-eval's own command line), and
lm-eval's own gsm8k task pointed at a local data folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

pytest.importorskip("lm_eval")

import schemabank  # noqa: E402
from schemabank import training  # noqa: E402
from schemabank.cli import main  # noqa: E402
from schemabank.config import config_from_dict  # noqa: E402

TASK = "gsm8k_local"
METRIC = "exact_match,strict-match"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: the hub and datasets' offline switches, also where already read at import."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama, data_dir) -> Path:
    raw = tiny_config(
        tiny_llama, eval={"limit": 1, "batch_size": 1, "max_new_tokens": 2, "ppl_windows": []}
    )
    return training.run(config_from_dict(raw), tmp_path_factory.mktemp("harness"), data_dir)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, data_dir) -> tuple[Path, int]:
    """A local task (lm-eval's gsm8k prompt and strict-match scoring, zero-shot, 8 new tokens)
    over the test data's GSM8K test lines; (its folder, the number of lines)."""
    folder = tmp_path_factory.mktemp("tasks")
    lines = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:4]
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    task = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "test.jsonl")}},
        "output_type": "generate_until",
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
            }
        ],
        "generation_kwargs": {"until": ["Question:"], "do_sample": False, "max_gen_toks": 8},
        "num_fewshot": 0,
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                    {"function": "take_first"},
                ],
            }
        ],
        "metadata": {"version": 1.0},
    }
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder, len(lines)


def test_python_api_hflm_over_a_loaded_run(run_dir, task_dir):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder, n = task_dir
    model, tokenizer = schemabank.load(run_dir)
    assert model.banks is not None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
    )
    assert isinstance(out["results"][TASK][METRIC], float)
    assert len(out["samples"][TASK]) == n
    assert all(len(s["resps"][0]) == 1 for s in out["samples"][TASK])


def test_schemabank_lm_eval_command(run_dir, task_dir, tmp_path, capsys):
    folder, n = task_dir
    output = tmp_path / "lm_eval_results.json"
    argv = ["lm-eval", "--path", str(run_dir), "--tasks", TASK, "--include-path", str(folder)]
    argv += ["--no-builtin-tasks", "--batch-size", "2", "--output", str(output), "--log-samples"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert TASK in printed and "exact_match" in printed  # lm-eval's table
    results = json.loads(output.read_text())
    assert isinstance(results["results"][TASK][METRIC], float)
    assert results["config"]["model"] == "schemabank"
    assert results["schemabank"]["command"].startswith("schemabank lm-eval --path ")
    samples = (tmp_path / "lm_eval_samples.jsonl").read_text().splitlines()
    assert len(samples) == n and json.loads(samples[0])["task"] == TASK

    from lm_eval.api.registry import get_model

    from schemabank.harness import SchemaBankLM

    assert get_model("schemabank") is SchemaBankLM


def test_lm_evals_own_command_line_knows_the_model(run_dir, task_dir, tmp_path, monkeypatch):
    """``schemabank-lm-eval`` is ``lm_eval`` with ``--model schemabank`` registered (run in this
    process, its task index kept to the local task: lm-eval's own take half a minute)."""
    import lm_eval.tasks

    from schemabank.harness_cli import main as lm_eval_main

    index_all = lm_eval.tasks.TaskManager.__init__

    def local_only(self, *args, **kwargs):
        index_all(self, *args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks.TaskManager, "__init__", local_only)
    folder, _ = task_dir
    argv = ["schemabank-lm-eval", "--model", "schemabank", "--model_args", f"path={run_dir}"]
    argv += ["--tasks", TASK, "--device", "cpu", "--include_path", str(folder)]
    monkeypatch.setattr(sys, "argv", argv + ["--output_path", str(tmp_path / "out")])
    lm_eval_main()
    (written,) = (tmp_path / "out").rglob("results_*.json")
    assert isinstance(json.loads(written.read_text())["results"][TASK][METRIC], float)


def test_local_gsm8k_task_changes_only_the_dataset(data_dir, tmp_path):
    import lm_eval.tasks

    from schemabank.harness import LM_EVAL_GSM8K, local_gsm8k_task

    original = yaml.safe_load((Path(lm_eval.tasks.__file__).parent / LM_EVAL_GSM8K).read_text())
    local = yaml.safe_load((local_gsm8k_task(data_dir, tmp_path) / "gsm8k.yaml").read_text())
    changed = {k for k in original.keys() | local.keys() if original.get(k) != local.get(k)}
    assert changed == {"dataset_path", "dataset_name", "dataset_kwargs"}
    files = local["dataset_kwargs"]["data_files"]
    assert Path(files["test"]) == (data_dir / "gsm8k" / "test.jsonl").resolve()
    assert local["fewshot_split"] == "train" and Path(files["train"]).is_file()


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["lm-eval", "--path", str(tmp_path / "nope"), "--tasks", TASK]) == 1
    assert "no such run or checkpoint" in capsys.readouterr().err
    assert main(["lm-eval", "--base-model", "x", "--tasks", TASK, "--limit", "0"]) == 1
    assert "--limit" in capsys.readouterr().err

    for name in [m for m in sys.modules if m.split(".")[0] == "lm_eval"] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if lm-eval were not installed
    monkeypatch.delitem(sys.modules, "schemabank.harness", raising=False)
    monkeypatch.delattr(schemabank, "harness", raising=False)
    argv = ["lm-eval", "--base-model", "x", "--tasks", TASK, "--output", str(tmp_path / "r.json")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "schemabank[lm-eval]" in err

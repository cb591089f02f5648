"""``schemabank verify``: a run's results against recorded expected values and tolerances.

The fast tests use a hand-written results.json; the slow one trains ``configs/smoke.yaml`` on the
embedded model (about 2.5 minutes on 2 CPU cores) and checks it against the shipped
``expected/smoke.yaml``, the reproduction check CI runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from test_cli import assert_user_error, call_main

from schemabank.cli import main
from schemabank.results import FORMAT
from schemabank.study.verify import (
    ExpectedFileError,
    in_range,
    load_expected,
    lookup,
    verify_results,
)

REPO = Path(__file__).resolve().parents[1]
EXPECTED = REPO / "expected"

RESULTS = {
    "format": FORMAT,
    "kind": "train",
    "experiment": {"name": "toy", "seed": 0, "mode": "schemabank"},
    "gsm8k": {
        "n": 8,
        "strict": {"correct": 2, "total": 8, "accuracy": 0.25, "ci95": [0.07, 0.59]},
    },
    "perplexity": {"ppl_512": 20.0, "base_ppl_512": 19.8},
    "routing": {"summary": {"active": 20.0, "entropy_bits": 3.4}},
    "parameters": {"total": 1069441},
}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(RESULTS))
    return run


def write_expected(path: Path, metrics: dict, **top) -> Path:
    path.write_text(
        yaml.safe_dump(
            {"format": "schemabank-expected-v1", **top, "metrics": metrics}, sort_keys=False
        )
    )
    return path


IN_RANGE = {
    "experiment.mode": {"value": "schemabank"},
    "gsm8k.n": {"value": 8},
    "gsm8k.strict.correct": {"value": 3, "abs": 1},
    "gsm8k.strict.ci95.0": {"value": 0.07, "abs": 0.01},
    "perplexity.ppl_512": {"value": 20.3, "rel": 0.02},
    "routing.summary.active": {"min": 16, "max": 24},
    "parameters.total": {"value": 1069441},
}


def call_main_stdout(capsys, run_dir, expected) -> tuple[int, list[str]]:
    """Run ``schemabank verify`` in-process; returns (exit status, stdout lines)."""
    capsys.readouterr()
    code = main(["verify", str(run_dir), "--expected", str(expected)])
    return code, capsys.readouterr().out.splitlines()


def test_in_range_exits_0_with_one_line_per_metric(capsys, run_dir, tmp_path):
    expected = write_expected(tmp_path / "e.yaml", IN_RANGE)
    code, lines = call_main_stdout(capsys, run_dir, expected)
    assert code == 0
    assert len(lines) == len(IN_RANGE) + 1
    for line, name in zip(lines, IN_RANGE, strict=False):
        assert line.startswith("ok") and name in line
    ppl = next(ln for ln in lines if "perplexity.ppl_512" in ln)
    assert "20" in ppl and "20.3 ± 0.406 (rel 2%)" in ppl
    assert lines[-1] == f"passed: all {len(IN_RANGE)} metrics in range"


def test_out_of_range_exits_1_naming_each_metric(capsys, run_dir, tmp_path):
    metrics = {
        **IN_RANGE,
        "gsm8k.strict.correct": {"value": 5, "abs": 1},  # 2 is 3 away
        "perplexity.ppl_512": {"value": 25.0, "rel": 0.1},  # 20 is 20% away
        "experiment.mode": {"value": "baseline"},
    }
    expected = write_expected(tmp_path / "e.yaml", metrics)
    code, lines = call_main_stdout(capsys, run_dir, expected)
    assert code == 1
    bad = {"gsm8k.strict.correct", "perplexity.ppl_512", "experiment.mode"}
    for line in lines[:-1]:
        failed = line.startswith("OUT OF RANGE")
        name = line.removeprefix("OUT OF RANGE").split()[0] if failed else line.split()[1]
        assert failed == (name in bad), line
    correct = next(ln for ln in lines if "gsm8k.strict.correct" in ln)
    assert "OUT OF RANGE" in correct and "expected 5 ± 1 (abs 1)" in correct
    assert lines[-1].startswith("FAILED: 3 of 7 metrics out of range: ")
    assert all(b in lines[-1] for b in bad)


def test_null_value_is_out_of_range(capsys, tmp_path):
    """A baseline has no routing: an expected routing metric fails the run, not the file."""
    run = tmp_path / "baseline"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({**RESULTS, "routing": None}))
    expected = write_expected(tmp_path / "e.yaml", {"routing.summary.active": {"min": 1}})
    code, lines = call_main_stdout(capsys, run, expected)
    assert code == 1
    assert lines[0].startswith("OUT OF RANGE") and "null" in lines[0]
    assert "routing.summary.active" in lines[-1]


@pytest.mark.parametrize(
    ("actual", "entry", "ok"),
    [
        (1.0, {"value": 1.0}, True),
        (1.0000001, {"value": 1.0}, False),
        (10.5, {"value": 10.0, "abs": 0.5}, True),
        (10.6, {"value": 10.0, "abs": 0.5}, False),
        (10.6, {"value": 10.0, "abs": 0.5, "rel": 0.1}, True),  # either tolerance
        (9.0, {"value": 10.0, "rel": 0.1}, True),
        (8.9, {"value": 10.0, "rel": 0.1}, False),
        (5, {"min": 5}, True),
        (4.99, {"min": 5}, False),
        (7, {"min": 5, "max": 7}, True),
        (7.01, {"max": 7}, False),
        (float("nan"), {"value": 1.0, "abs": 10}, False),
        (float("nan"), {"max": 10}, False),
        ("smoke", {"value": "smoke"}, True),
        (True, {"value": True}, True),
        (True, {"value": 1}, False),
        (None, {"value": 0}, False),
    ],
)
def test_in_range(actual, entry, ok):
    assert in_range(actual, entry) is ok


def test_lookup_walks_dicts_and_lists():
    assert lookup(RESULTS, "gsm8k.strict.ci95.1") == 0.59
    assert lookup(RESULTS, "gsm8k.strict.ci95.-1") == 0.59
    assert lookup({"routing": None}, "routing.summary.active") is None
    with pytest.raises(ExpectedFileError, match="'ppl_4096'.*perplexity"):
        lookup(RESULTS, "perplexity.ppl_4096")
    with pytest.raises(ExpectedFileError, match="'5' in gsm8k.strict.ci95"):
        lookup(RESULTS, "gsm8k.strict.ci95.5")


def test_verify_results_keeps_the_file_order():
    checks = verify_results(RESULTS, IN_RANGE)
    assert [c.path for c in checks] == list(IN_RANGE)
    assert all(c.ok for c in checks)


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the problem, exit status 1


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("format: schemabank-expected-v1\nmetrics:\n  a: {value: 1\n", ["not valid YAML", "line"]),
        ("- just\n- a list\n", ["not an expected-values file", "schemabank-expected-v1"]),
        ("format: other\nmetrics: {a: {value: 1}}\n", ["not an expected-values file"]),
        ("format: schemabank-expected-v1\n", ["'metrics' must be a non-empty mapping"]),
        (
            "format: schemabank-expected-v1\nmetrics: {gsm8k.n: 8}\n",
            ["'gsm8k.n'", "must be a mapping"],
        ),
        (
            "format: schemabank-expected-v1\nmetrics: {gsm8k.n: {abs: 1}}\n",
            ["'gsm8k.n'", "needs value, min or max"],
        ),
        (
            "format: schemabank-expected-v1\nmetrics: {gsm8k.n: {value: 8, tol: 1}}\n",
            ["'gsm8k.n'", "unknown key(s) tol"],
        ),
        (
            "format: schemabank-expected-v1\nmetrics: {gsm8k.n: {value: 8, abs: -1}}\n",
            ["'gsm8k.n'", "abs must be >= 0"],
        ),
        (
            "format: schemabank-expected-v1\nmetrics: {gsm8k.n: {value: 8, rel: big}}\n",
            ["'gsm8k.n'", "rel must be a number"],
        ),
        (
            "format: schemabank-expected-v1\nmetrics: {gsm8k.n: {value: 8, min: 1}}\n",
            ["'gsm8k.n'", "either value"],
        ),
        (
            "format: schemabank-expected-v1\nmetrics: {gsm8k.nn: {value: 8}}\n",
            ["unknown metric path 'gsm8k.nn'", "no 'nn' in gsm8k"],
        ),
    ],
    ids=[
        "malformed-yaml",
        "not-a-mapping",
        "wrong-format",
        "no-metrics",
        "entry-not-mapping",
        "entry-without-value",
        "unknown-entry-key",
        "negative-tolerance",
        "non-numeric-tolerance",
        "value-and-bounds",
        "unknown-metric-path",
    ],
)
def test_bad_expected_file(capsys, run_dir, tmp_path, content, needles):
    path = tmp_path / "expected.yaml"
    path.write_text(content)
    code, err = call_main(capsys, "verify", run_dir, "--expected", path)
    assert_user_error(code, err, *needles)


def test_missing_expected_file(capsys, run_dir, tmp_path):
    code, err = call_main(capsys, "verify", run_dir, "--expected", tmp_path / "absent.yaml")
    assert_user_error(code, err, "expected-values file not found", "absent.yaml")


def test_missing_run(capsys, tmp_path):
    expected = write_expected(tmp_path / "e.yaml", IN_RANGE)
    code, err = call_main(capsys, "verify", tmp_path / "absent_run", "--expected", expected)
    assert_user_error(code, err, "results file not found", "absent_run")


@pytest.mark.parametrize("path", sorted(EXPECTED.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_expected_files_are_valid(path):
    expected = load_expected(path)
    assert expected
    assert all(isinstance(k, str) and "." in k for k in expected)


# ---------------------------------------------------------------------------------------------
# The reproduction check CI runs: configs/smoke.yaml against expected/smoke.yaml


def smoke_data_dir() -> Path | None:
    """``$SCHEMABANK_DATA_DIR``, else ``<repo>/../shared/data``, if it holds GSM8K."""
    for candidate in (os.environ.get("SCHEMABANK_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "gsm8k" / "test.jsonl").is_file():
            return Path(candidate)
    return None


@pytest.mark.slow
def test_smoke_run_matches_expected_values(capsys, tmp_path):
    data = smoke_data_dir()
    if data is None:
        pytest.skip(
            "no GSM8K data for the smoke run: set SCHEMABANK_DATA_DIR or provide ../shared/data"
        )

    out = tmp_path / "runs"
    code = main(
        ["train", "--config", str(REPO / "configs" / "smoke.yaml"), "--output-dir", str(out),
         "--data-dir", str(data)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    run = out / "smoke_seed0"
    capsys.readouterr()
    code = main(["verify", str(run), "--expected", str(EXPECTED / "smoke.yaml")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0, "\n".join(lines)
    assert lines[-1].startswith("passed: all")

    # the report on a realistic run (32 schemas, 8 tags, the embedded tokenizer)
    code = main(["report", str(run), "--output", str(tmp_path / "report")])
    assert code == 0, capsys.readouterr().err[-3000:]
    names = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert names == {
        "smoke_training.png",
        "smoke_schema_usage.png",
        "smoke_tag_schema.png",
        "smoke_tag_routing.png",
        "smoke_tokens_layer20.png",
    }

    # the README's Python front door on the real model (examples/quickstart.py)
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() and "banks: dict_keys([20])" in proc.stderr

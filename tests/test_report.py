"""``schemabank report``: report.md and its PNG figures, from tiny runs trained in-process.

The figure functions return what they plotted; these tests check it against results.json and
training_log.jsonl, that every PNG is a real image linked from report.md, and that runs without a
training log, without banks or with samples of the older format (no per-token routing) still
get a report, and that two runs get a few problems of each outcome from their samples.jsonl.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image
from test_cli import assert_user_error, call_main

from schemabank.config import config_from_dict
from schemabank.evaluation import write_samples
from schemabank.results import load_samples
from schemabank.study.document import (
    default_output_dir,
    outcome_examples,
    pick_sample,
    read_training_log,
    write_report,
)
from schemabank.study.figures import CURVES, ReportError, _layout_tokens
from schemabank.telemetry import read_jsonl
from schemabank.training import run

MODES = ("schemabank", "baseline")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama, data_dir) -> dict[str, Path]:
    """One tiny SchemaBank run and one tiny baseline run (seconds each on CPU)."""
    out = tmp_path_factory.mktemp("report_runs")
    return {
        mode: run(
            config_from_dict(tiny_config(tiny_llama, mode)), output_dir=out, data_dir=data_dir
        )
        for mode in MODES
    }


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> dict:
    """The report of both runs, written through the CLI entry point's function."""
    return write_report([runs["schemabank"], runs["baseline"]], tmp_path_factory.mktemp("report"))


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def assert_valid_png(path: Path) -> None:
    """A PNG that decodes, of a readable size, with something drawn on it."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 400 and image.height >= 150, (path, image.size)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5, f"{path} looks blank"


# ---------------------------------------------------------------------------------------------
# report.md and its images


def test_report_links_every_png(report):
    md_path = report["report"]
    md = md_path.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    pngs = sorted(p.name for p in md_path.parent.glob("*.png"))
    assert sorted(linked) == pngs == sorted(report["figures"])
    assert pngs == sorted(
        [
            "accuracy.png",
            "tiny_schemabank_training.png",
            "tiny_schemabank_schema_usage.png",
            "tiny_schemabank_tag_schema.png",
            "tiny_schemabank_tag_routing.png",
            "tiny_schemabank_tokens_layer1.png",
            "tiny_baseline_training.png",
        ]
    )
    for name in pngs:
        assert_valid_png(md_path.parent / name)


def test_report_tables(report, runs):
    md = report["report"].read_text()
    for mode in MODES:
        r = results_of(runs[mode])
        strict = r["gsm8k"]["strict"]
        assert f"{strict['correct']}/{strict['total']} = {100 * strict['accuracy']:.1f}%" in md
        for w in (16, 64):
            ppl, base = r["perplexity"][f"ppl_{w}"], r["perplexity"][f"base_ppl_{w}"]
            assert f"| {ppl:,.2f} | {base:,.2f} | {ppl / base:.3f} |" in md
    assert "No schema bank in this run" in md  # the baseline's section


# ---------------------------------------------------------------------------------------------
# The plotted data equal the run's files


@pytest.mark.parametrize("mode", MODES)
def test_training_curves_plot_the_log(report, runs, mode):
    log = read_jsonl(runs[mode] / "training_log.jsonl")
    data = report["figures"][f"tiny_{mode}_training.png"]
    assert data["step"] == [r["step"] for r in log] == list(range(1, 7))
    for key, *_ in CURVES:
        assert data[key] == [r[key] for r in log], key
    if mode == "schemabank":
        assert data["stages"] == [
            ["router_pretrain", 1, 2],
            ["schema_train", 3, 4],
            ["joint_finetune", 5, 6],
        ]
        assert data["tag_dropout"] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    else:
        assert data["stages"] == [["lora", 1, 6]]
        assert data["route_loss"] == [None] * 6 and data["ortho"] == [None] * 6


def test_schema_usage_plots_the_routing(report, runs):
    layers = results_of(runs["schemabank"])["routing"]["layers"]
    data = report["figures"]["tiny_schemabank_schema_usage.png"]
    assert data.keys() == layers.keys() == {"1"}
    for layer, entry in layers.items():
        assert data[layer]["share"] == entry["share"]
        assert data[layer]["dead_schemas"] == entry["dead_schemas"]
        assert data[layer]["active"] == entry["active"]
        assert math.isclose(sum(data[layer]["share"]), 1.0)


def test_tag_schema_heatmap_plots_the_table(report, runs):
    layers = results_of(runs["schemabank"])["routing"]["layers"]
    data = report["figures"]["tiny_schemabank_tag_schema.png"]["1"]
    table = layers["1"]["tag_schema"]
    assert data["tags"] == table["tags"]
    assert data["counts"] == table["counts"]
    for counts, percent in zip(table["counts"], data["percent"], strict=True):
        if sum(counts):
            assert percent == pytest.approx([100 * c / sum(counts) for c in counts])
        else:  # a tag no test problem has: a blank row
            assert all(math.isnan(p) for p in percent)


def test_tag_routing_figure_and_routing_fit_table(report, runs):
    r = results_of(runs["schemabank"])
    scores = r["routing"]["layers"]["1"]["tag_routing"]
    data = report["figures"]["tiny_schemabank_tag_routing.png"]["1"]
    assert data["tags"] == scores["tags"]
    for got, want in zip(data["recall"], scores["recall"], strict=True):
        assert math.isnan(got) if want is None else got == want
    text = Path(report["report"]).read_text()
    assert "### Routing against the tag targets" in text
    closed = r["routing_fit"]["test"]["regions"]["last"]["gap_closed"]
    assert f"| test | last | {r['routing_fit']['test']['regions']['last']['ce']:.3f} |" in text
    assert f"{closed:.2f} |" in text


def test_token_figure_plots_a_sample(report, runs):
    samples = results_of(runs["schemabank"])["gsm8k"]["samples"]
    data = report["figures"]["tiny_schemabank_tokens_layer1.png"]
    sample = pick_sample(samples)
    assert data["index"] == sample["index"]
    assert data["tokens"] == sample["tokens"]
    assert data["top1"] == sample["top1"]["1"]
    assert sum(count for _, count in data["legend"]) == len(sample["tokens"])
    counts = [count for _, count in data["legend"]]
    assert counts == sorted(counts, reverse=True)


def test_accuracy_plots_both_runs(report, runs):
    data = report["figures"]["accuracy.png"]
    assert set(data) == {"tiny_schemabank", "tiny_baseline"}
    for mode in MODES:
        g = results_of(runs[mode])["gsm8k"]
        for key in ("strict", "flexible"):
            assert data[f"tiny_{mode}"][key] == {
                "accuracy": g[key]["accuracy"],
                "ci95": g[key]["ci95"],
                "correct": g[key]["correct"],
                "total": g[key]["total"],
            }


# ---------------------------------------------------------------------------------------------
# Runs the report must take as they are


def test_results_file_without_training_log(runs, tmp_path):
    """An eval_results.json-style file on its own (checkpoint or base-model evaluation)."""
    r = results_of(runs["schemabank"])
    r["kind"] = "checkpoint-eval"
    lone = tmp_path / "evals" / "eval_results.json"
    lone.parent.mkdir()
    lone.write_text(json.dumps(r))
    out = write_report([lone], tmp_path / "report")
    md = out["report"].read_text()
    assert "training curves skipped" in md
    assert "tiny_schemabank (checkpoint-eval)" in md
    assert sorted(out["figures"]) == [
        "tiny_schemabank_checkpoint_eval_schema_usage.png",
        "tiny_schemabank_checkpoint_eval_tag_routing.png",
        "tiny_schemabank_checkpoint_eval_tag_schema.png",
        "tiny_schemabank_checkpoint_eval_tokens_layer1.png",
    ]
    assert "accuracy.png" not in out["figures"]  # one run: no side-by-side figure


def test_samples_without_token_routing(runs, tmp_path):
    """Results written before samples carried ``tokens`` / ``top1``: no token figure."""
    run_dir = tmp_path / "old"
    shutil.copytree(runs["schemabank"], run_dir, ignore=shutil.ignore_patterns("checkpoint"))
    r = results_of(run_dir)
    for sample in r["gsm8k"]["samples"]:
        del sample["tokens"], sample["top1"]
    (run_dir / "results.json").write_text(json.dumps(r))
    out = write_report([run_dir], tmp_path / "report")
    assert "token figure skipped" in out["report"].read_text()
    assert not any("tokens" in name for name in out["figures"])


def test_same_experiment_twice_gets_distinct_names(runs, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(runs["baseline"], copy, ignore=shutil.ignore_patterns("checkpoint"))
    out = write_report([runs["baseline"], copy], tmp_path / "report")
    assert set(out["figures"]["accuracy.png"]) == {
        f"tiny_baseline [{runs['baseline'].name}]",
        "tiny_baseline [again]",
    }
    assert len([n for n in out["figures"] if n.endswith("_training.png")]) == 2


def test_cli_report(capsys, runs, tmp_path):
    out = tmp_path / "report"
    code, err = call_main(capsys, "report", runs["schemabank"], runs["baseline"], "--output", out)
    assert code == 0, err
    assert (out / "report.md").is_file() and len(list(out.glob("*.png"))) == 7


def test_cli_report_default_output(capsys, runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["baseline"], run_dir, ignore=shutil.ignore_patterns("checkpoint"))
    code, err = call_main(capsys, "report", run_dir)
    assert code == 0, err
    assert (run_dir / "report" / "report.md").is_file()
    assert default_output_dir([run_dir / "results.json"]) == run_dir / "report"
    assert default_output_dir([run_dir, run_dir]) == Path("report")


def test_cli_report_missing_run(capsys, tmp_path):
    code, err = call_main(capsys, "report", tmp_path / "absent_run", "--output", tmp_path / "r")
    assert_user_error(code, err, "run not found", "absent_run")


def test_cli_report_malformed_log(capsys, runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["baseline"], run_dir, ignore=shutil.ignore_patterns("checkpoint"))
    with open(run_dir / "training_log.jsonl", "a") as f:
        f.write('{"step": 7, "stage": "lo\n')
    code, err = call_main(capsys, "report", run_dir, "--output", tmp_path / "r")
    assert_user_error(code, err, "training_log.jsonl:7", "malformed JSON line")


# ---------------------------------------------------------------------------------------------
# Pieces


def test_read_training_log_keeps_the_last_record_of_a_repeated_step(tmp_path):
    path = tmp_path / "training_log.jsonl"
    lines = [
        {"step": 1, "stage": "lora", "loss": 3.0},
        {"step": 2, "stage": "lora", "loss": 2.0},
        {"step": 2, "stage": "lora", "loss": 2.5},  # a resumed run logs step 2 again
        {"step": 3, "stage": "lora", "loss": 1.0},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert [r["loss"] for r in read_training_log(path)] == [3.0, 2.5, 1.0]
    path.write_text('{"loss": 1.0}\n')
    with pytest.raises(ReportError, match="no step / stage"):
        read_training_log(path)


def test_layout_tokens_wraps_and_marks_newlines():
    placed = _layout_tokens(["He", " has", " 8", ".\n", "####", " 8", "x" * 25], width=10)
    # (token index, row, column, text drawn)
    assert placed == [
        (0, 0, 0, "He"),
        (1, 0, 2, " has"),
        (2, 0, 6, " 8"),
        (3, 0, 8, ".↵"),
        (4, 1, 0, "####"),
        (5, 1, 4, " 8"),
        (6, 2, 0, "x" * 10),
        (6, 3, 0, "x" * 10),
        (6, 4, 0, "x" * 5),
    ]
    assert all(col + len(text) <= 10 for _, _, col, text in placed)


def test_pick_sample_prefers_a_solved_one():
    samples = [
        {"index": 0, "tokens": ["a"], "top1": {"1": [0]}, "strict_correct": False},
        {"index": 1, "tokens": ["b"], "top1": {"1": [1]}, "strict_correct": True},
        {"index": 2, "output": "old format", "strict_correct": True},
    ]
    assert pick_sample(samples)["index"] == 1
    assert pick_sample(samples[:1])["index"] == 0
    assert pick_sample(samples[2:]) is None


def test_many_runs_get_one_row_each(runs, tmp_path):
    """A study (more than six runs) is drawn as horizontal bars; the plotted values are the files'."""
    dirs = []
    for i in range(7):
        d = tmp_path / f"run{i}"
        shutil.copytree(runs["baseline"], d, ignore=shutil.ignore_patterns("checkpoint"))
        dirs.append(d)
    out = write_report(dirs, tmp_path / "report")
    data = out["figures"]["accuracy.png"]
    assert len(data) == 7
    g = results_of(dirs[0])["gsm8k"]
    for entry in data.values():
        assert entry["strict"]["correct"] == g["strict"]["correct"]
        assert entry["flexible"]["ci95"] == list(g["flexible"]["ci95"])
    assert_valid_png(tmp_path / "report" / "accuracy.png")


# ---------------------------------------------------------------------------------------------
# Problems solved by one run, both or neither (from samples.jsonl)


def test_two_runs_list_problems_by_who_solved_them(report, runs):
    md = report["report"].read_text()
    a, b = (results_of(runs[m])["gsm8k"]["problems"] for m in MODES)
    both = sum(x["strict_correct"] and y["strict_correct"] for x, y in zip(a, b, strict=True))
    neither = sum(
        not (x["strict_correct"] or y["strict_correct"]) for x, y in zip(a, b, strict=True)
    )
    assert "## Problems solved by A only, B only, both, neither" in md
    assert f"both {both}, neither {neither}." in md
    assert "| solved by | problem | question (first line) | gold | A's answer | B's answer |" in md


def crafted_pair(runs, tmp_path, outcomes: list[tuple[bool, bool]]) -> tuple[Path, Path]:
    """Copies of the two runs whose samples.jsonl have the given strict outcomes (A, B)."""
    dirs = []
    for side, mode in enumerate(MODES):
        d = tmp_path / mode
        shutil.copytree(runs[mode], d, ignore=shutil.ignore_patterns("checkpoint"))
        records = [
            {
                "index": i,
                "question": f"Question {i} | first line\nsecond line",
                "gold": str(i),
                "strict_pred": str(i) if ok[side] else None,
                "flexible_pred": None if ok[side] else "99",
                "strict_correct": ok[side],
            }
            for i, ok in enumerate(outcomes)
        ]
        write_samples(d / "samples.jsonl", records)
        dirs.append(d)
    return dirs[0], dirs[1]


def test_up_to_three_problems_of_each_kind(runs, tmp_path):
    outcomes = [(True, False)] * 5 + [(False, True), (True, True), (False, False)] * 2
    a, b = crafted_pair(runs, tmp_path, outcomes)
    picked = outcome_examples(load_samples(a), load_samples(b))
    assert picked == {
        "A only": {"count": 5, "rows": [0, 1, 2]},
        "B only": {"count": 2, "rows": [5, 8]},
        "both": {"count": 2, "rows": [6, 9]},
        "neither": {"count": 2, "rows": [7, 10]},
    }
    md = write_report([a, b], tmp_path / "report")["report"].read_text()
    assert "A only 5, B only 2, both 2, neither 2." in md
    assert "| A only | 0 | Question 0 \\| first line | 0 | 0 | – (flexible 99) |" in md
    assert (
        "| neither | 10 | Question 10 \\| first line | 10 | – (flexible 99) | – (flexible 99) |"
        in md
    )
    assert "| A only | 3 |" not in md and "second line" not in md


def test_runs_without_samples_skip_the_section(runs, tmp_path):
    a, b = crafted_pair(runs, tmp_path, [(True, False)])
    (b / "samples.jsonl").unlink()
    md = write_report([a, b], tmp_path / "report")["report"].read_text()
    assert f"No samples.jsonl for `{b}`" in md and "| solved by |" not in md

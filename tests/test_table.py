"""The results table: the selection rule (dev only, PPL limit), the seed and comparison summaries,
the Markdown markers, and that docs/results.md's table is what the committed results/ give."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from schemabank.cli import main
from schemabank.errors import SchemaBankError
from schemabank.results import FORMAT
from schemabank.study import table

REPO = Path(__file__).resolve().parents[1]


def acc(correct: int, total: int) -> dict:
    return {"correct": correct, "total": total, "accuracy": correct / total, "ci95": [0.0, 1.0]}


def fake(name, mode="baseline", seed=42, dev=(10, 10), test=50, ppl=26.0, kind="train") -> dict:
    return {
        "format": FORMAT,
        "kind": kind,
        "experiment": {"name": name, "seed": seed, "mode": mode},
        "parameters": {"total": 1000} if kind == "train" else None,
        "gsm8k": {"n": 100, "shots": 0, "strict": acc(test, 100), "flexible": acc(test + 1, 100)},
        "gsm8k_dev": {"strict": acc(dev[0], 500), "flexible": acc(dev[1], 500)} if dev else None,
        "perplexity": {
            "ppl_512": ppl,
            "base_ppl_512": 25.0,
            "ppl_4096": 17.0,
            "base_ppl_4096": 17.0,
        },
        "schema_reuse": 1.5 if mode == "schemabank" else 0.0,
        "routing": {"summary": {"active": 30, "dead": 2, "entropy_bits": 4.1}}
        if mode == "schemabank"
        else None,
        "training": {"time_s": 90.0, "resumed": seed == 43} if kind == "train" else None,
        "timings": {"gsm8k_s": 24.0, "gsm8k_dev_s": 6.0, "perplexity_s": 0.0, "total_s": 120.0},
    }


def write_runs(root: Path, runs: list[dict]) -> Path:
    for r in runs:
        d = root / f"{r['experiment']['name']}_seed{r['experiment']['seed']}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(r))
    return root


def test_best_is_chosen_on_dev_within_the_ppl_limit():
    runs = [
        fake("high_test_low_dev", dev=(5, 5), test=90),  # test is never looked at
        fake("best_dev_but_ppl_too_high", dev=(40, 40), ppl=25.0 * 1.2),
        fake("chosen", dev=(30, 31)),
        fake("tie_loses_on_flexible", dev=(30, 30)),
        fake("other_seed", seed=43, dev=(45, 45)),
        fake("sb_a", "schemabank", dev=(20, 20)),
        fake("sb_b", "schemabank", dev=(22, 22), ppl=25.0 * 1.10),  # at the limit: allowed
        fake("no_dev", dev=None),
    ]
    best = table.best_runs(runs)
    assert best["baseline"]["experiment"]["name"] == "chosen"
    assert best["schemabank"]["experiment"]["name"] == "sb_b"
    assert table.best_runs(runs, seed=43)["baseline"]["experiment"]["name"] == "other_seed"
    assert "schemabank" not in table.best_runs(runs, seed=43)
    assert table.best_runs(runs, ppl_limit=2.0)["baseline"]["experiment"]["name"] == (
        "best_dev_but_ppl_too_high"
    )


def test_table_rows_seeds_and_comparisons(tmp_path):
    runs = [fake("lora", seed=s, test=t) for s, t in ((42, 10), (43, 20), (44, 30))] + [
        fake("sb", "schemabank"),
        fake("base_x", "base", seed=None, dev=None, kind="base-eval"),
    ]
    root = write_runs(tmp_path / "results", runs)
    comparison = {
        "n": 100,
        "a": runs[3]["experiment"],
        "b": runs[0]["experiment"],
        **{
            k: {
                "bootstrap": {"difference": 0.4, "ci95": [0.1, 0.7]},
                "mcnemar": {"p_value": 0.0123},
            }
            for k in ("strict", "flexible")
        },
    }
    (root / "compare").mkdir()
    (root / "compare" / "sb_vs_lora.json").write_text(json.dumps(comparison))

    text = table.results_table([root])
    lines = text.splitlines()
    rows = [ln for ln in lines if ln.endswith(" min |")]  # the runs table
    assert rows[0].startswith("| base_x (base model)")  # base first, then LoRA, then SchemaBank
    assert rows[-1].startswith("| **sb_seed42** (SchemaBank)")
    assert rows[-1].endswith("| 30 / 2 | 4.10 | 1.50 | 1.5 min | 0.5 min |")
    assert rows[0].endswith("| – | 0.5 min |")  # a base-model evaluation trains nothing
    assert "| 1.5 min † |" in rows[2] and text.count("† resumed") == 1
    assert "| 10 = 10.0% [0.0, 100.0] |" in rows[1] and "| 26.00 (1.04×) |" in rows[1]
    # the mean and sd of 10%, 20%, 30%
    assert "| lora | 42, 43, 44 | 20.0% ± 10.0 |" in text
    assert "| sb_seed42 | lora_seed42 | 100 | +40.0 pts [+10.0, +70.0] | 0.012 |" in text
    assert "LoRA `lora_seed42`, SchemaBank `sb_seed42`" in text


def with_problems(r: dict, solved: set[int], ablation_of: str | None = None) -> dict:
    """``r`` with per-problem outcomes (problems in ``solved`` right) for paired comparisons."""
    r = copy.deepcopy(r)
    r["gsm8k"]["problems"] = [
        {"index": i, "gold": "1", "strict_correct": i in solved, "flexible_correct": i in solved}
        for i in range(100)
    ]
    r["gsm8k"]["strict"] = r["gsm8k"]["flexible"] = acc(len(solved), 100)
    if ablation_of:
        r["experiment"]["ablation_of"] = ablation_of
    return r


def test_ablations_are_not_candidates_and_are_listed_against_their_run(tmp_path):
    full = with_problems(fake("sb", "schemabank", dev=(20, 20)), set(range(30)))
    runs = [
        full,
        # best on dev, but an ablation of the chosen run: not a candidate
        with_problems(fake("sb_k1", "schemabank", dev=(25, 25)), set(range(10)), "sb"),
        with_problems(fake("sb_s64", "schemabank", dev=(19, 19)), set(range(31)), "sb"),
    ]
    assert table.best_runs(runs)["schemabank"]["experiment"]["name"] == "sb"
    lines = table.ablations_table(runs)
    assert lines[2].startswith("| sb_k1_seed42 | sb_seed42 | 25 (+5) | 10 (-20) | -20.0 pts [")
    # 20 problems only B solved, none only A: exact McNemar p = 2 * 0.5**20
    assert f"| {2 * 0.5**20:.3f} | 26.00 (1.04×) | 30 / 2 |" in lines[2]
    assert lines[3].startswith("| sb_s64_seed42 | sb_seed42 | 19 (-1) | 31 (+1) | +1.0 pts [")
    text = table.results_table([write_runs(tmp_path / "results", runs)])
    assert "Ablations (A = the ablation, B = the run it ablates):" in text
    assert "SchemaBank `sb_seed42`" in text
    orphan = with_problems(fake("sb_k1", "schemabank", seed=43), set(), "sb")
    with pytest.raises(SchemaBankError, match="ablation of sb, but no sb run at seed 43"):
        table.ablations_table([full, orphan])


def test_readme_markers_update_and_check(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{table.START}\nold\n{table.END}\nafter\n")
    table.update_readme(readme, "| new |")
    assert readme.read_text() == f"# x\n\nbefore\n{table.START}\n| new |\n{table.END}\nafter\n"
    table.check_readme(readme, "| new |")
    with pytest.raises(SchemaBankError, match="out of date"):
        table.check_readme(readme, "| newer |")
    readme.write_text("no markers\n")
    with pytest.raises(SchemaBankError, match="needs one"):
        table.update_readme(readme, "x")


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["table", str(tmp_path / "empty")]) == 1
    assert "neither a run directory nor a folder of runs" in capsys.readouterr().err
    root = write_runs(tmp_path / "results", [fake("a")])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["table", str(root), "--compare", str(bad)]) == 1
    assert "not a `schemabank compare --output` file" in capsys.readouterr().err
    broken = copy.deepcopy(fake("b"))
    broken["format"] = "other"
    write_runs(tmp_path / "more", [broken])
    assert main(["table", str(tmp_path / "more")]) == 1
    assert "not a SchemaBank results file" in capsys.readouterr().err


def test_readme_table_matches_the_committed_results(capsys):
    """CI: docs/results.md's results table is exactly what `schemabank table results` gives."""
    if not (REPO / "results").is_dir():
        pytest.skip("no committed results/ folder")
    results_md = str(REPO / "docs" / "results.md")
    assert main(["table", str(REPO / "results"), "--readme", results_md, "--check"]) == 0
    for path in (REPO / "results").glob("*/results.json"):
        assert (path.parent / "config.yaml").is_file() or "base" in path.parent.name

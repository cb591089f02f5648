"""The results table of a study, generated from the runs' results.json files, never typed by hand.

``schemabank table results --readme docs/results.md`` (every ``results/*/results.json`` and
``results/compare/*.json``) rewrites the
text between ``<!-- results-table:start -->`` and ``<!-- results-table:end -->`` in that file;
``--check`` fails when that text is not what the committed results give (CI runs it).

Selection rule (:func:`best_runs`): among the trained runs of each mode at one seed, the best is
the one with the most strictly correct *dev* problems (``data.dev_size`` held out of training; the
test set is never used to choose), among those whose PPL_512 stays within ``ppl_limit`` times the
base model's; ties go to the higher flexible dev score, then the name. Ablations (runs whose
config sets ``experiment.ablation_of``) are analyses of a run already chosen, not candidates: they
are left out of the choice and listed against the run they ablate, at the same seed.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import SchemaBankError
from ..results import load_results
from .compare import compare_results

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
PPL_LIMIT = 1.10
MODE_LABEL = {"base": "base model", "baseline": "LoRA", "schemabank": "SchemaBank"}


def _pct(acc: dict) -> str:
    lo, hi = acc["ci95"]
    return f"{acc['correct']} = {100 * acc['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _ppl(r: dict, window: int) -> str:
    p = r.get("perplexity") or {}
    value, base = p.get(f"ppl_{window}"), p.get(f"base_ppl_{window}")
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" ({value / base:.2f}×)" if base else "")


def _ppl_ratio(r: dict) -> float | None:
    p = r.get("perplexity") or {}
    if p.get("ppl_512") is None or not p.get("base_ppl_512"):
        return None
    return p["ppl_512"] / p["base_ppl_512"]


def _difference(bootstrap: dict) -> str:
    """A paired-bootstrap difference A − B with its 95% interval, in points."""
    lo, hi = bootstrap["ci95"]
    return f"{100 * bootstrap['difference']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _active(r: dict) -> str:
    routing = (r.get("routing") or {}).get("summary")
    return f"{routing['active']:.0f} / {routing['dead']:.0f}" if routing else "–"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _dev(r: dict) -> tuple[int, int] | None:
    d = r.get("gsm8k_dev")
    return (d["strict"]["correct"], d["flexible"]["correct"]) if d else None


def _name(r: dict) -> str:
    e = r["experiment"]
    return e["name"] if e.get("seed") is None else f"{e['name']}_seed{e['seed']}"


def best_runs(runs: list[dict], seed: int = 42, ppl_limit: float = PPL_LIMIT) -> dict[str, dict]:
    """The best trained run of each mode at ``seed`` by the selection rule (module docstring)."""
    best = {}
    for mode in ("baseline", "schemabank"):
        pool = [
            r
            for r in runs
            if r["kind"] == "train"
            and r["experiment"]["mode"] == mode
            and r["experiment"]["seed"] == seed
            and not r["experiment"].get("ablation_of")
            and _dev(r) is not None
            and (_ppl_ratio(r) or float("inf")) <= ppl_limit
        ]
        if pool:
            best[mode] = max(pool, key=lambda r: (*_dev(r), _name(r)))
    return best


def expand(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """``(results files, comparison files)`` of ``paths``: run directories, results files, or a
    folder of runs (each ``*/results.json``, and the comparisons in its ``compare/*.json``)."""
    runs, comparisons = [], []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "results.json").is_file():
            found = sorted(p.glob("*/results.json"))
            if not found:
                raise SchemaBankError(f"{p}: neither a run directory nor a folder of runs")
            runs += found
            comparisons += sorted((p / "compare").glob("*.json"))
        else:
            runs.append(p)
    return runs, comparisons


def load_runs(paths: list[str | Path]) -> list[dict]:
    """The results of ``paths`` (run directories or results files), in a stable order."""
    runs = [load_results(p) for p in paths]
    mode_order = {"base": 0, "baseline": 1, "schemabank": 2}
    return sorted(
        runs,
        key=lambda r: (
            mode_order.get(r["experiment"]["mode"], 3),
            r["experiment"]["name"],
            r["experiment"]["seed"] or 0,
        ),
    )


def _times(r: dict) -> list[str]:
    """Training and evaluation time in minutes; † marks a run whose training was resumed (its
    training time then adds up the processes, from the saved state)."""
    t, training = r["timings"], r.get("training")
    evaluation = sum(t.get(k, 0.0) for k in ("gsm8k_s", "gsm8k_dev_s", "perplexity_s"))
    if not training:
        return ["–", f"{evaluation / 60:.1f} min"]
    mark = " †" if training.get("resumed") else ""
    return [f"{training['time_s'] / 60:.1f} min{mark}", f"{evaluation / 60:.1f} min"]


def runs_table(runs: list[dict], best: dict[str, dict]) -> list[str]:
    chosen = {_name(r) for r in best.values()}
    lines = [
        "| run | params | dev strict (of 500) | test strict [95% CI] | test flexible [95% CI] "
        "| PPL_512 (× base) | PPL_4096 (× base) | active / dead | entropy (bits) | reuse "
        "| train | eval |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        g = r["gsm8k"]
        name = _name(r)
        label = f"**{name}**" if name in chosen else name
        params = r.get("parameters")
        dev = _dev(r)
        routing = (r.get("routing") or {}).get("summary")
        cells = [
            f"{label} ({MODE_LABEL.get(r['experiment']['mode'], r['experiment']['mode'])}"
            + (f", {g['shots']}-shot" if g["shots"] else "")
            + ")",
            f"{params['total']:,}" if params else "–",
            f"{dev[0]}" if dev else "–",
            _pct(g["strict"]),
            _pct(g["flexible"]),
            _ppl(r, 512),
            _ppl(r, 4096),
            _active(r),
            f"{routing['entropy_bits']:.2f}" if routing else "–",
            f"{r['schema_reuse']:.2f}" if routing else "–",
            *_times(r),
        ]
        lines.append(_row(cells))
    return lines


def seeds_table(runs: list[dict]) -> list[str]:
    """Mean and standard deviation over seeds, for every run name trained with several seeds."""
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        if r["kind"] == "train":
            by_name.setdefault(r["experiment"]["name"], []).append(r)
    groups = {k: v for k, v in by_name.items() if len(v) > 1}
    if not groups:
        return []
    lines = [
        "| run | seeds | test strict, mean ± sd | test flexible, mean ± sd | PPL_512, mean |",
        "|---|---|---|---|---|",
    ]
    for name, rs in sorted(groups.items()):
        cells = [name, ", ".join(str(r["experiment"]["seed"]) for r in rs)]
        for key in ("strict", "flexible"):
            accs = [100 * r["gsm8k"][key]["accuracy"] for r in rs]
            cells.append(f"{statistics.mean(accs):.1f}% ± {statistics.stdev(accs):.1f}")
        ppls = [r["perplexity"]["ppl_512"] for r in rs if r.get("perplexity")]
        cells.append(f"{statistics.mean(ppls):.2f}" if ppls else "–")
        lines.append(_row(cells))
    return lines


def ablations_table(runs: list[dict]) -> list[str]:
    """One row per ablation: its dev and test scores against the run it ablates (same seed), with
    the paired test comparison (:func:`schemabank.study.compare.compare_results`)."""
    by_key = {(r["experiment"]["name"], r["experiment"]["seed"]): r for r in runs}
    rows = []
    for r in runs:
        parent_name = r["experiment"].get("ablation_of")
        if not parent_name:
            continue
        parent = by_key.get((parent_name, r["experiment"]["seed"]))
        if parent is None:
            raise SchemaBankError(
                f"{_name(r)}: ablation of {parent_name}, but no {parent_name} run at seed "
                f"{r['experiment']['seed']} is among the runs"
            )
        rows.append((r, parent))
    if not rows:
        return []
    lines = [
        "| ablation | of | dev strict (Δ) | test strict (Δ) | strict A − B [95% CI] | McNemar p "
        "| PPL_512 (× base) | active / dead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, parent in rows:
        c = compare_results(r, parent)["strict"]
        dev, pdev = _dev(r), _dev(parent)
        cells = [
            _name(r),
            _name(parent),
            f"{dev[0]} ({dev[0] - pdev[0]:+d})" if dev and pdev else "–",
            f"{r['gsm8k']['strict']['correct']} "
            f"({r['gsm8k']['strict']['correct'] - parent['gsm8k']['strict']['correct']:+d})",
            _difference(c["bootstrap"]),
            f"{c['mcnemar']['p_value']:.3f}",
            _ppl(r, 512),
            _active(r),
        ]
        lines.append(_row(cells))
    return lines


def compare_table(paths: list[str | Path]) -> list[str]:
    """One row per ``schemabank compare --output`` file."""
    if not paths:
        return []
    lines = [
        "| A | B | problems | strict A − B [95% CI] | McNemar p | flexible A − B [95% CI] | McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(map(str, paths)):
        try:
            c = json.loads(Path(path).read_text(encoding="utf-8"))
            a, b = c["a"], c["b"]
            cells = [f"{a['name']}_seed{a['seed']}", f"{b['name']}_seed{b['seed']}", str(c["n"])]
            for key in ("strict", "flexible"):
                cells.append(_difference(c[key]["bootstrap"]))
                cells.append(f"{c[key]['mcnemar']['p_value']:.3f}")
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SchemaBankError(
                f"{path}: not a `schemabank compare --output` file ({exc})"
            ) from None
        lines.append(_row(cells))
    return lines


def results_table(run_paths: list[str | Path], compare_paths: list[str | Path] = ()) -> str:
    """The Markdown block: the runs, the best picks, the seed summary and the comparisons.
    ``run_paths`` as :func:`expand` takes them."""
    run_files, found = expand(run_paths)
    compare_paths = [*found, *compare_paths]
    runs = load_runs(run_files)
    best = best_runs(runs)
    out = [
        f"Generated by `schemabank table` from {len(runs)} results.json files; do not edit by hand.",
        "",
        *runs_table(runs, best),
        "",
        *(
            ["† resumed from its saved training state (training time summed over the processes)."]
            if any((r.get("training") or {}).get("resumed") for r in runs)
            else []
        ),
        "Best by the selection rule (most strict dev answers, PPL_512 within "
        f"{PPL_LIMIT:.2f}× the base model's, seed 42, ablations left out), in bold: "
        + (", ".join(f"{MODE_LABEL[m]} `{_name(r)}`" for m, r in best.items()) or "none yet")
        + ".",
    ]
    seeds = seeds_table(runs)
    if seeds:
        out += ["", *seeds]
    ablations = ablations_table(runs)
    if ablations:
        out += ["", "Ablations (A = the ablation, B = the run it ablates):", "", *ablations]
    comparisons = compare_table(list(compare_paths))
    if comparisons:
        out += ["", *comparisons]
    return "\n".join(out)


def _split(path: str | Path) -> tuple[str, str, str]:
    text = Path(path).read_text(encoding="utf-8")
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise SchemaBankError(f"{path}: needs one {START} line followed by one {END} line")
    head, rest = text.split(START)
    body, tail = rest.split(END)
    return head, body, tail


def update_readme(path: str | Path, table: str) -> None:
    head, _, tail = _split(path)
    Path(path).write_text(f"{head}{START}\n{table}\n{END}{tail}", encoding="utf-8")


def check_readme(path: str | Path, table: str) -> None:
    _, body, _ = _split(path)
    if body.strip() != table.strip():
        raise SchemaBankError(
            f"{path}: the results table is out of date; run `schemabank table ... --readme {path}`"
        )

"""``schemabank report``: ``report.md`` with PNG figures, made from the files a run left behind.

First a summary table of the runs (run directories, or results files such as
``eval_results.json``); with several runs accuracy side by side, and a perplexity table; with two
(A and B, evaluated on the same problems), a few of the problems that A alone, B alone, both and
neither solved (strict), from their samples.jsonl.

Then a section per run with its figures (:mod:`.figures`): training curves, skipped when there
is no training log (evaluations of a checkpoint or a base model); schema usage with each layer's
routing summary; the tag x schema heatmap; the routers' fit to the tag targets; routing by tag;
one routed test solution.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..results import load_results, load_samples
from .figures import (
    ACTIVE_SHARE,
    ReportError,
    plot_accuracy,
    plot_schema_usage,
    plot_tag_routing,
    plot_tag_schema,
    plot_token_routing,
    plot_training_curves,
)


@dataclass
class RunData:
    """What the report reads of one run: its results, its training log (or None), a label."""

    path: Path
    results: dict
    log: list[dict] | None
    label: str = ""
    slug: str = ""
    figures: dict[str, dict] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading runs


def read_training_log(path: Path) -> list[dict]:
    """The training log's records in step order, one per step.

    A step logged twice (a resumed run repeats the steps after its last checkpoint) keeps its
    last record, so the curves show the training the final weights actually got.
    """
    by_step: dict[int, dict] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ReportError(f"{path}:{n}: malformed JSON line") from None
        if not isinstance(record, dict) or "step" not in record or "stage" not in record:
            raise ReportError(f"{path}:{n}: not a training-log record (no step / stage)")
        by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def load_run(path: str | Path) -> RunData:
    """A run directory (its results.json) or a results file, with the training log beside it.

    The log is ``training_log.jsonl`` in the same folder; it is optional (base-model and
    checkpoint evaluations written elsewhere have none).
    """
    path = Path(path)
    if not path.exists():
        raise ReportError(f"run not found: {path}")
    results = load_results(path)
    folder = path if path.is_dir() else path.parent
    log_path = folder / "training_log.jsonl"
    log = read_training_log(log_path) if log_path.is_file() else None
    return RunData(path=path, results=results, log=log)


def _label_runs(runs: list[RunData]) -> None:
    """Give each run a readable label and a unique file-name prefix."""
    for run in runs:
        exp = run.results["experiment"]
        kind = run.results.get("kind", "train")
        run.label = exp["name"] if kind == "train" else f"{exp['name']} ({kind})"
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:  # same experiment twice: tell them apart by folder
            folder = run.path if run.path.is_dir() else run.path.parent
            where = folder.name if run.path.is_dir() else f"{folder.name}/{run.path.name}"
            run.label = f"{run.label} [{where}]"
    slugs: list[str] = []
    for i, run in enumerate(runs):
        slug = re.sub(r"[^A-Za-z0-9]+", "_", run.label).strip("_").lower() or "run"
        run.slug = slug if slug not in slugs else f"{slug}_{i + 1}"
        slugs.append(run.slug)


def pick_sample(samples: list[dict]) -> dict | None:
    """The sample to draw: the first one solved (strict-match), else the first; only samples
    that carry per-token routing (``tokens`` and ``top1``) count."""
    routed = [s for s in samples if s.get("tokens") and s.get("top1")]
    solved = [s for s in routed if s.get("strict_correct")]
    return (solved or routed or [None])[0]


# ---------------------------------------------------------------------------------------------
# Tables and the report


def routing_fit_lines(fit: dict) -> list[str]:
    """A Markdown table of :func:`schemabank.evaluation.routing_fit` per split and region."""
    rows = []
    for split, f in fit.items():
        for region, v in f["regions"].items():
            closed = "–" if v["gap_closed"] is None else f"{v['gap_closed']:.2f}"
            rows.append(
                [
                    split,
                    region,
                    f"{v['ce']:.3f}",
                    f"{f['uniform']:.3f}",
                    f"{v['perfect']:.3f}",
                    closed,
                ]
            )
    return _table(["split", "tokens", "router CE", "uniform", "perfect", "gap closed"], rows)


def perplexity_rows(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the perplexity table: per run and window, PPL, the base model's, ratio."""
    windows = sorted(
        {
            int(w)
            for r in runs
            if r.results.get("perplexity")
            for w in r.results["perplexity"]["windows"]
        }
    )
    header = ["run"]
    for w in windows:
        header += [f"PPL_{w}", f"base PPL_{w}", "ratio"]
    rows = []
    for run in runs:
        ppl = run.results.get("perplexity")
        row = [run.label]
        for w in windows:
            value = ppl.get(f"ppl_{w}") if ppl else None
            base = ppl.get(f"base_ppl_{w}") if ppl else None
            row += [
                _num(value),
                _num(base),
                f"{value / base:.3f}" if value is not None and base else "–",
            ]
        rows.append(row)
    return header, rows


def _num(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def summary_rows(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    """One row per run: kind, mode, model, problems, both accuracies, routing summary, params."""
    header = [
        "run",
        "kind",
        "mode",
        "base model",
        "strict",
        "flexible",
        "active schemas",
        "entropy (bits)",
        "reuse",
        "trainable params",
        "steps",
    ]
    rows = []
    for run in runs:
        r = run.results
        g = r["gsm8k"]
        routing = r.get("routing")
        s = routing["summary"] if routing else None
        params = r.get("parameters")
        training = r.get("training")

        def acc(key, g=g):
            a = g[key]
            lo, hi = a["ci95"]
            return (
                f"{a['correct']}/{a['total']} = {100 * a['accuracy']:.1f}% "
                f"[{100 * lo:.1f}, {100 * hi:.1f}]"
            )

        rows.append(
            [
                run.label,
                r.get("kind", "train"),
                str(r["experiment"].get("mode")),
                str(r["base_model"].get("name")),
                acc("strict"),
                acc("flexible"),
                f"{s['active']:.0f}/{routing['num_schemas']}" if s else "–",
                f"{s['entropy_bits']:.2f}" if s else "–",
                f"{r.get('schema_reuse', 0.0):.2f}",
                f"{params['total']:,}" if params else "–",
                str(training["total_steps"]) if training else "–",
            ]
        )
    return header, rows


OUTCOMES = {
    (True, False): "A only",
    (False, True): "B only",
    (True, True): "both",
    (False, False): "neither",
}


def outcome_examples(a: list[dict], b: list[dict], per_kind: int = 3) -> dict[str, dict]:
    """Problems by which of two runs solved them (strict), from their samples.jsonl records (the
    same problems in the same order): ``{kind: {"count": n, "rows": [the first per_kind
    positions]}}`` for each kind of :data:`OUTCOMES`, in that order."""
    out = {kind: {"count": 0, "rows": []} for kind in OUTCOMES.values()}
    for j, (ra, rb) in enumerate(zip(a, b, strict=True)):
        entry = out[OUTCOMES[(bool(ra["strict_correct"]), bool(rb["strict_correct"]))]]
        entry["count"] += 1
        if len(entry["rows"]) < per_kind:
            entry["rows"].append(j)
    return out


def _answer(record: dict) -> str:
    """A run's final answer: the strict extraction, else – (with the flexible one if any)."""
    if record["strict_pred"] is not None:
        return record["strict_pred"]
    flexible = record["flexible_pred"]
    return "–" if flexible is None else f"– (flexible {flexible})"


def _cell(text: str) -> str:
    """Text fit for one markdown table cell."""
    return text.replace("|", "\\|")


def outcome_lines(a: RunData, b: RunData, per_kind: int = 3) -> list[str]:
    """The report's section on the problems A alone, B alone, both and neither solved (strict),
    with up to ``per_kind`` of each: the question's first line, the gold answer and both runs'
    answers. One sentence instead when a run has no samples.jsonl or the problems differ."""
    md = ["## Problems solved by A only, B only, both, neither", ""]
    samples = [load_samples(r.path) for r in (a, b)]
    missing = [f"`{r.path}`" for r, s in zip((a, b), samples, strict=True) if s is None]
    if missing:
        return md + [
            f"No samples.jsonl for {' and '.join(missing)} (made before every generation was "
            "kept): per-problem examples skipped.",
            "",
        ]
    sa, sb = samples

    def key(records):
        return [(r["index"], r["gold"], r["question"]) for r in records]

    if key(sa) != key(sb):
        return md + [
            "The two runs' samples.jsonl hold different problems: per-problem examples skipped.",
            "",
        ]
    picked = outcome_examples(sa, sb, per_kind)
    counts = ", ".join(f"{kind} {v['count']}" for kind, v in picked.items())
    md += [
        f"A = `{a.label}`, B = `{b.label}`, strict-match outcomes of each problem from their "
        f"samples.jsonl: {counts}. Up to {per_kind} problems of each kind, in test-set order, "
        "with each run's final answer (strict extraction).",
        "",
    ]
    rows = [
        [
            kind,
            str(sa[j]["index"]),
            _cell((sa[j]["question"].splitlines() or [""])[0]),
            _cell(str(sa[j]["gold"])),
            _cell(_answer(sa[j])),
            _cell(_answer(sb[j])),
        ]
        for kind, v in picked.items()
        for j in v["rows"]
    ]
    header = ["solved by", "problem", "question (first line)", "gold", "A's answer", "B's answer"]
    return md + _table(header, rows) + [""]


def _ranges(ids: list[int]) -> str:
    """``[16, 17, 18, 20]`` as ``16-18, 20``."""
    parts: list[list[int]] = []
    for i in sorted(ids):
        if parts and i == parts[-1][1] + 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts) or "none"


def _image(alt: str, name: str) -> str:
    """A markdown image line (brackets kept out of the alt text)."""
    return f"![{re.sub(r'[][]', '', alt)}]({name})"


def _run_section(run: RunData, out: Path) -> list[str]:
    """Figures of one run, written to ``out``; returns the markdown of its section."""
    r = run.results
    routing = r.get("routing")
    md = [f"## {run.label}", "", f"Source: `{run.path}`", ""]
    if run.log:
        name = f"{run.slug}_training.png"
        run.figures[name] = plot_training_curves(
            run.log, out / name, run.label, routing["num_schemas"] if routing else None
        )
        if {x["stage"] for x in run.log} == {"lora"}:
            caption = "LoRA-only baseline: one stage, LM loss on the answer tokens."
        else:
            caption = (
                "Shaded bands are the stages: stage 1 trains only the routers, towards the tag "
                "target, while the tag dropout follows the curriculum; stages 2 and 3 optimise the "
                "LM loss (+ ortho) without tags. See docs/training.md."
            )
        md += [
            "### Training curves",
            "",
            caption,
            "",
            _image(f"training curves of {run.label}", name),
            "",
        ]
    else:
        md += ["No training log beside this results file: training curves skipped.", ""]
    if not routing:
        md += ["No schema bank in this run (LoRA baseline or base model): no routing figures.", ""]
        return md
    name = f"{run.slug}_schema_usage.png"
    run.figures[name] = plot_schema_usage(routing, out / name, run.label)
    md += ["### Schema usage", "", _image(f"schema usage of {run.label}", name), ""]
    for layer, entry in routing["layers"].items():
        top = ", ".join(f"{t['schema']} ({100 * t['share']:.1f}%)" for t in entry["top"])
        md.append(
            f"- layer {layer}: {entry['active']}/{len(entry['share'])} active, dead "
            f"{_ranges(entry['dead_schemas'])}; top schemas {top}; entropy "
            f"{entry['entropy_bits']:.2f} of {entry['max_entropy_bits']:.2f} bits; reuse "
            f"{entry['schema_reuse']:.2f}; NMI(tags, dominant schema) "
            f"{entry['nmi_tags_dominant']:.3f}"
        )
    md.append("")
    name = f"{run.slug}_tag_schema.png"
    run.figures[name] = plot_tag_schema(routing, out / name, run.label)
    md += ["### Tag x schema", "", _image(f"tag x schema heatmap of {run.label}", name), ""]
    if r.get("routing_fit"):
        md += [
            "### Routing against the tag targets",
            "",
            "Cross-entropy of the routers to the stage-1 routing targets on held-out problems "
            "without the tag line, by token region, with the share of the gap between a uniform "
            "and a perfect router that they close (`routing_fit` in results.json).",
            "",
            *routing_fit_lines(r["routing_fit"]),
            "",
        ]
    if any("tag_routing" in v for v in routing["layers"].values()):
        name = f"{run.slug}_tag_routing.png"
        run.figures[name] = plot_tag_routing(routing, out / name, run.label)
        md += [
            "### Routing precision and recall by tag",
            "",
            _image(f"tag routing of {run.label}", name),
            "",
        ]
    sample = pick_sample(r["gsm8k"].get("samples", []))
    md += ["### Routed tokens", ""]
    if sample is None:
        md += [
            "The samples in this results file carry no per-token routing (an older format): "
            "token figure skipped.",
            "",
        ]
        return md
    for layer in sample["top1"]:
        name = f"{run.slug}_tokens_layer{layer}.png"
        run.figures[name] = plot_token_routing(
            sample, layer, routing["num_schemas"], out / name, run.label
        )
        md += [_image(f"routed tokens of {run.label}, layer {layer}", name), ""]
    return md


def write_report(paths: list[str | Path], output_dir: str | Path) -> dict:
    """Write ``report.md`` and its PNG figures for one or more runs into ``output_dir``.

    Returns ``{"report": path of report.md, "figures": {png name: plotted data}}``.
    """
    if not paths:
        raise ReportError("no run given")
    runs = [load_run(p) for p in paths]
    _label_runs(runs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict] = {}
    md = ["# SchemaBank report", ""]
    md += ["Runs: " + ", ".join(f"`{r.label}` (`{r.path}`)" for r in runs), ""]
    md += ["## Summary", ""]
    md += _table(*summary_rows(runs))
    md += [
        "",
        "Accuracy is correct/total with the 95% Wilson interval; schemas count as active at "
        f">= {100 * ACTIVE_SHARE:g}% of the routing slots.",
        "",
    ]
    if len(runs) > 1:
        figures["accuracy.png"] = plot_accuracy(runs, out / "accuracy.png")
        md += ["## Accuracy", "", "![GSM8K accuracy of the runs](accuracy.png)", ""]
        ns = {r.results["gsm8k"]["n"] for r in runs}
        if len(ns) > 1:
            md += [
                f"Note: the runs were evaluated on different numbers of problems ({sorted(ns)}); "
                "`schemabank compare` needs the same problems.",
                "",
            ]
    if len(runs) == 2:
        md += outcome_lines(*runs)
    if any(r.results.get("perplexity") for r in runs):
        md += ["## Perplexity (WikiText-2 test)", ""]
        md += _table(*perplexity_rows(runs))
        md += ["", "Disjoint windows (stride = window); ratio = PPL / base PPL.", ""]
    for run in runs:
        md += _run_section(run, out)
        figures.update(run.figures)
    report = out / "report.md"
    report.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return {"report": report, "figures": figures}


def default_output_dir(paths: list[str | Path]) -> Path:
    """``<run>/report`` for one run (the results file's folder), ``report`` for several."""
    if len(paths) == 1:
        p = Path(paths[0])
        return (p if p.is_dir() else p.parent) / "report"
    return Path("report")

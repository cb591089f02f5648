"""A run report: ``report.md`` with PNG figures, made from the files a run left behind.

Per run (a run directory, or a results file such as ``eval_results.json``):

- training curves per stage from ``training_log.jsonl`` (loss, LM loss, routing loss, ortho,
  learning rate, tag dropout); skipped when there is no log (evaluations of a checkpoint or a
  base model);
- schema usage: each schema's share of the routing slots, coloured by the tag that owns it, dead
  schemas marked;
- the tag x schema table as a heatmap (each tag's routing slots spread over the schemas), with
  each tag's own block of schemas (its stage-1 routing target) outlined;
- one test problem's generated solution with every token on the colour of its top-1 schema.

With several runs also: accuracy (strict and flexible, 95% Wilson intervals) side by side, and a
perplexity table; with two (A and B, evaluated on the same problems), a few of the problems that A
alone, B alone, both and neither solved (strict), from their samples.jsonl. Each ``plot_*``
function writes one PNG and returns the data it plotted, as plain lists, so that tests can compare
the figures with results.json and the training log. Figures are drawn on matplotlib's Agg canvas
directly, without pyplot: no display is needed and no global backend is switched for whoever
imports this module.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..errors import SchemaBankError
from ..results import load_results, load_samples

STAGE_COLORS = {
    "router_pretrain": "#1f77b4",
    "schema_train": "#ff7f0e",
    "joint_finetune": "#2ca02c",
    "lora": "#7f7f7f",
}
STAGE_NAMES = {
    "router_pretrain": "1 router pre-training",
    "schema_train": "2 schema training",
    "joint_finetune": "3 joint fine-tuning",
    "lora": "LoRA baseline",
}
# (log field, panel title, y-axis label, kind): "noisy" curves get a moving average over long
# runs, "log" ones a log axis when they span decades, "schedule" ones are drawn as steps from 0.
CURVES = (
    ("loss", "Optimised loss", "nats / token", "noisy"),
    ("lm_loss", "LM loss (answer tokens)", "cross-entropy, nats / token", "noisy"),
    ("route_loss", "Routing loss (to the tag target)", "cross-entropy, nats / token", "noisy"),
    ("ortho", "Orthonormality penalty ‖UᵀU−I‖² + ‖VVᵀ−I‖²", "squared Frobenius norm", "log"),
    ("lr", "Learning rate", "learning rate", "schedule"),
    ("tag_dropout", "Tag dropout", "P(tag line removed)", "schedule"),
)
ACTIVE_SHARE = 0.001  # a schema is active at >= 0.1% of the routing slots (metrics.schema_usage)
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 110,
    "savefig.dpi": 110,
}


class ReportError(SchemaBankError):
    """A run cannot be read for the report (missing results, malformed training log)."""


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


# ---------------------------------------------------------------------------------------------
# Figures


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")


def _stage_spans(steps: list[int], stages: list[str]) -> list[tuple[str, int, int]]:
    """Consecutive runs of one stage: ``[(stage, first step, last step), ...]``."""
    spans: list[tuple[str, int, int]] = []
    for step, stage in zip(steps, stages, strict=True):
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], step)
        else:
            spans.append((stage, step, step))
    return spans


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points, ignoring NaNs (shorter at the start)."""
    valid = ~np.isnan(y)
    csum = np.concatenate([[0.0], np.cumsum(np.where(valid, y, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    count = ccount[idx] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (csum[idx] - csum[lo]) / count
    return np.where(valid, out, np.nan)


def plot_training_curves(
    log: list[dict], path: Path, title: str, num_schemas: int | None = None
) -> dict:
    """Loss, LM loss, routing loss, ortho, learning rate and tag dropout against the step, each
    stage in its own colour over a shaded band. With ``num_schemas`` the routing-loss panel
    shows ``ln S``, the cross-entropy of a router that has learnt nothing (uniform over S).

    Curves of more than 60 steps (noisy at batch size 1) get a moving average over about 1/40 of
    the run drawn over the raw values. Returns ``{"step", "stage", <field>: values (None where
    not logged), "stages": [[stage, first, last], ...]}``.
    """
    steps = [int(r["step"]) for r in log]
    stages = [r["stage"] for r in log]
    spans = _stage_spans(steps, stages)
    data: dict = {"step": steps, "stage": stages, "stages": [list(s) for s in spans]}
    smooth = max(1, len(steps) // 40) if len(steps) > 60 else 1
    with rc_context(STYLE):
        fig = _new_figure(11, 8.5)
        axes = fig.subplots(3, 2, sharex=True).ravel()
        for ax, (key, panel_title, ylabel, kind) in zip(axes, CURVES, strict=True):
            values = [r.get(key) for r in log]
            data[key] = values
            y = np.array([np.nan if v is None else float(v) for v in values])
            ax.set_title(panel_title)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            for stage, first, last in spans:
                ax.axvspan(first - 0.5, last + 0.5, color=STAGE_COLORS.get(stage, "k"), alpha=0.07)
            if np.all(np.isnan(y)):
                why = " (no schema bank)" if set(stages) == {"lora"} else ""
                ax.text(
                    0.5,
                    0.5,
                    f"{key} not logged in this run{why}",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    color="0.4",
                )
                ax.set_yticks([])
                ax.set_ylabel("")
                continue
            x = np.array(steps)
            for stage, first, last in spans:
                sel = (x >= first) & (x <= last)
                color = STAGE_COLORS.get(stage, "k")
                if kind == "schedule":  # a value holds over its whole step: [step - ½, step + ½]
                    edges = np.append(x[sel] - 0.5, x[sel][-1] + 0.5)
                    ax.stairs(y[sel], edges, baseline=None, color=color, lw=1.8)
                elif smooth > 1 and kind == "noisy":
                    ax.plot(x[sel], y[sel], color=color, lw=0.6, alpha=0.35)
                    ax.plot(x[sel], _moving_average(y[sel], smooth), color=color, lw=1.8)
                else:
                    ax.plot(
                        x[sel],
                        y[sel],
                        color=color,
                        lw=1.5,
                        marker="o" if smooth == 1 else None,
                        ms=3,
                    )
            finite = y[~np.isnan(y)]
            if kind == "log" and np.all(finite > 0) and finite.max() / finite.min() > 100:
                ax.set_yscale("log")
            if key == "tag_dropout":
                ax.set_ylim(-0.05, 1.05)
            if key == "route_loss" and num_schemas:
                ax.axhline(np.log(num_schemas), color="0.3", ls="--", lw=1)
                ax.text(
                    ax.get_xlim()[1],
                    np.log(num_schemas),
                    f"uniform router: ln {num_schemas} = {np.log(num_schemas):.2f}",
                    ha="right",
                    va="bottom",
                    fontsize=8,
                )
            if key == "lr":  # from 0, so that a constant rate reads as constant
                ax.set_ylim(0, 1.15 * max(finite.max(), 1e-12))
                ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0), useOffset=False)
        for ax in axes[-2:]:
            ax.set_xlabel("training step")
        handles = [
            Patch(color=STAGE_COLORS.get(s, "k"), label=STAGE_NAMES.get(s, s))
            for s in dict.fromkeys(stages)
        ]
        note = f"; thin: raw, thick: mean of {smooth} steps" if smooth > 1 else ""
        fig.suptitle(
            f"{title}: training curves by stage ({len(steps)} steps{note})", parse_math=False
        )
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
        _save(fig, path)
    return data


def _tag_owner(tags: list[str], num_schemas: int) -> list[int | None]:
    """Index of the tag owning each schema (the rule of :func:`schemabank.tags.owned_schemas`:
    tag ``t`` owns the block of ``S // T`` schemas from ``t · S // T``), None for leftovers."""
    block = num_schemas // len(tags) if tags else 0
    return [s // block if block and s // block < len(tags) else None for s in range(num_schemas)]


def _tag_colors(n: int) -> list:
    """tab10 without its grey, which marks schemas that no tag owns."""
    cmap = colormaps["tab10"]
    hues = [i for i in range(10) if i != 7]
    return [cmap(hues[i % len(hues)]) for i in range(n)]


def _mark_dead_ticks(ax, num_schemas: int, dead: list[int]) -> None:
    """Schema ids on the x axis (every one up to 40, else every other), dead ones in red."""
    stride = 1 if num_schemas <= 40 else 2
    ticks = list(range(0, num_schemas, stride))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks], fontsize=8)
    for label, t in zip(ax.get_xticklabels(), ticks, strict=True):
        if t in dead:
            label.set_color("#d62728")


def plot_schema_usage(routing: dict, path: Path, title: str) -> dict:
    """Each bank's usage share per schema as bars coloured by the owning tag, dead schemas
    (share below 0.1%) marked with a red x, and the uniform share 1/S for reference.

    Returns ``{layer: {"share": [...], "dead_schemas": [...], "active": n}}`` (shares as
    fractions, as in results.json).
    """
    layers = routing["layers"]
    data: dict = {}
    with rc_context(STYLE):
        fig = _new_figure(11, 1.0 + 3.2 * len(layers))
        axes = np.atleast_1d(fig.subplots(len(layers), 1, squeeze=False).ravel())
        for ax, (layer, entry) in zip(axes, layers.items(), strict=True):
            share = np.asarray(entry["share"], dtype=float)
            S = len(share)
            dead = [int(s) for s in entry["dead_schemas"]]
            tags = entry.get("tag_schema", {}).get("tags", [])
            owner = _tag_owner(tags, S)
            colors = _tag_colors(len(tags))
            bar_colors = ["0.6" if o is None else colors[o] for o in owner]
            ax.bar(np.arange(S), 100 * share, color=bar_colors, width=0.8)
            if dead:
                ax.plot(dead, [0] * len(dead), "x", color="#d62728", ms=7, mew=2, clip_on=False)
            ax.axhline(100 / S, color="0.3", ls="--", lw=1)
            ax.text(
                S - 0.5, 100 / S, f"uniform {100 / S:.1f}%", ha="right", va="bottom", fontsize=8
            )
            for i in np.argsort(-share, kind="stable")[:3]:
                if share[i] > 0:
                    ax.text(
                        i,
                        100 * share[i],
                        f"{100 * share[i]:.1f}%",
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
            ax.set_xlim(-0.7, S - 0.3)
            ax.set_ylim(0, max(100 * share.max() * 1.15, 100 / S * 1.5))
            _mark_dead_ticks(ax, S, dead)
            ax.set_xlabel("schema id (red: dead)")
            ax.set_ylabel("share of routing slots (%)")
            ax.set_title(
                f"bank at layer {layer}: {entry['active']}/{S} schemas active, "
                f"{len(dead)} dead (x, < {100 * ACTIVE_SHARE:g}%), entropy "
                f"{entry['entropy_bits']:.2f} of {np.log2(S):.2f} bits, "
                f"{entry.get('tokens', 0):,} tokens"
            )
            data[layer] = {
                "share": [float(s) for s in share],
                "dead_schemas": dead,
                "active": entry["active"],
            }
        handles = [Patch(color=c, label=f"owned by {t}") for t, c in zip(tags, colors, strict=True)]
        if any(o is None for o in owner):
            handles.append(Patch(color="0.6", label="no owner"))
        handles.append(axes[0].plot([], [], "x", color="#d62728", mew=2, label="dead schema")[0])
        fig.legend(
            handles=handles, loc="outside lower center", ncol=min(len(handles), 5), frameon=False
        )
        fig.suptitle(
            f"{title}: schema usage on the GSM8K test problems (top-k slots, prompt + generation)"
        )
        _save(fig, path)
    return data


def plot_tag_schema(routing: dict, path: Path, title: str) -> dict:
    """Heatmap of the tag x schema table: for each tag (from the gold solutions), how its
    problems' routing slots spread over the schemas, in % of the tag's slots. Each tag's own
    block of schemas (its stage-1 routing target) is outlined.

    Returns ``{layer: {"tags": [...], "counts": [[...]], "percent": [[...]]}}`` (percent is NaN
    for a tag without test problems).
    """
    layers = routing["layers"]
    data: dict = {}
    with rc_context(STYLE):
        fig = _new_figure(11, 1.2 + 3.6 * len(layers))
        axes = fig.subplots(len(layers), 1, squeeze=False).ravel()
        for ax, (layer, entry) in zip(axes, layers.items(), strict=True):
            table = entry["tag_schema"]
            tags = list(table["tags"])
            counts = np.asarray(table["counts"], dtype=float)
            S = counts.shape[1]
            totals = counts.sum(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                percent = np.where(totals > 0, 100 * counts / totals, np.nan)
            vmax = max(float(np.nanmax(percent)) if np.isfinite(percent).any() else 1.0, 1.0)
            image = ax.imshow(percent, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
            for t in np.flatnonzero(totals[:, 0] == 0):
                ax.text(
                    S / 2 - 0.5,
                    t,
                    "no test problem has this tag",
                    ha="center",
                    va="center",
                    color="0.4",
                )
            owner = _tag_owner(tags, S)
            for t in range(len(tags)):
                owned = [s for s in range(S) if owner[s] == t]
                if owned:
                    ax.add_patch(
                        Rectangle(
                            (owned[0] - 0.5, t - 0.5),
                            len(owned),
                            1,
                            fill=False,
                            edgecolor="#ff4040",
                            lw=1.6,
                        )
                    )
            ax.set_yticks(range(len(tags)))
            ax.set_yticklabels(
                [f"{t} ({int(n):,} slots)" for t, n in zip(tags, totals[:, 0], strict=True)]
            )
            _mark_dead_ticks(ax, S, [int(s) for s in entry.get("dead_schemas", [])])
            ax.spines[:].set_visible(False)
            ax.set_xlabel("schema id (red: dead)")
            ax.set_ylabel("tag of the problem")
            ax.set_title(
                f"bank at layer {layer}; red boxes: the schemas each tag owns (its stage-1 "
                f"routing target); NMI(tags, dominant schema) = "
                f"{entry.get('nmi_tags_dominant', float('nan')):.3f}",
                fontsize=10,
            )
            fig.colorbar(
                image, ax=ax, label="% of the tag's routing slots", fraction=0.04, pad=0.01
            )
            data[layer] = {
                "tags": tags,
                "counts": counts.astype(int).tolist(),
                "percent": percent.tolist(),
            }
        fig.suptitle(
            f"{title}: tag x schema co-occurrence on the GSM8K test problems", parse_math=False
        )
        _save(fig, path)
    return data


def plot_tag_routing(routing: dict, path: Path, title: str) -> dict:
    """Per-tag routing precision and recall (one panel per bank), as
    :func:`schemabank.metrics.tag_routing_scores` defines them."""
    layers = {k: v["tag_routing"] for k, v in routing["layers"].items() if "tag_routing" in v}
    fig = _new_figure(7.0, 2.6 * len(layers))
    axes = fig.subplots(len(layers), 1, squeeze=False)[:, 0]
    data = {}
    for ax, (layer, sc) in zip(axes, layers.items(), strict=True):
        x = np.arange(len(sc["tags"]))
        prec = [np.nan if v is None else v for v in sc["precision"]]
        rec = [np.nan if v is None else v for v in sc["recall"]]
        ax.bar(x - 0.2, prec, 0.4, label="precision")
        ax.bar(x + 0.2, rec, 0.4, label="recall")
        ax.set_xticks(x, [f"{t}\n(n={n})" for t, n in zip(sc["tags"], sc["support"], strict=True)])
        ax.set_ylim(0, 1)
        ax.set_ylabel("share")
        ax.set_title(
            f"layer {layer}: routed to a tag = its block gets >= {sc['threshold_share']:.2f} of the slots"
        )
        ax.legend(loc="upper right", fontsize=8)
        data[layer] = {"precision": prec, "recall": rec, "tags": sc["tags"]}
    fig.suptitle(f"{title}: routing by tag (test problems)")
    _save(fig, path)
    return data


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


def _schema_palette(order: list[int]) -> dict[int, tuple]:
    """Distinct colours for the schemas in ``order`` (most used first): tab10, then tab20's
    light shades, then tab20b; enough for 40 schemas."""
    base = [colormaps["tab10"](i) for i in range(10)]
    base += [colormaps["tab20"](2 * i + 1) for i in range(10)]
    base += [colormaps["tab20b"](i) for i in range(20)]
    gray = colormaps["Greys"]
    return {
        s: base[i] if i < len(base) else gray(0.2 + 0.6 * (i % 7) / 6) for i, s in enumerate(order)
    }


def _text_color(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _layout_tokens(tokens: list[str], width: int) -> list[tuple[int, int, str, int]]:
    """Place tokens on lines of ``width`` characters: ``[(token index, row, col, text)]``.

    A newline inside a token is drawn as ``↵`` and ends the line; a token that does not fit the
    rest of a line starts the next one; a token longer than a line is cut into pieces.
    """
    placed = []
    row, col = 0, 0
    for i, tok in enumerate(tokens):
        parts = tok.replace("\t", "    ").split("\n")
        for j, part in enumerate(parts):
            text = part + ("↵" if j < len(parts) - 1 else "")
            if not text:
                continue
            while text:
                if col and col + len(text) > width:
                    row, col = row + 1, 0
                piece, text = text[:width], text[width:]
                placed.append((i, row, col, piece))
                col += len(piece)
            if j < len(parts) - 1:
                row, col = row + 1, 0
    return placed


def pick_sample(samples: list[dict]) -> dict | None:
    """The sample to draw: the first one solved (strict-match), else the first; only samples
    that carry per-token routing (``tokens`` and ``top1``) count."""
    routed = [s for s in samples if s.get("tokens") and s.get("top1")]
    solved = [s for s in routed if s.get("strict_correct")]
    return (solved or routed or [None])[0]


def plot_token_routing(
    sample: dict, layer: str, num_schemas: int, path: Path, title: str, width: int = 96
) -> dict:
    """One generated solution as wrapped monospace text, each token on the colour of its top-1
    schema at the bank of ``layer``; white gaps separate tokens. The legend lists the schemas the
    solution uses, most used first (they get the most distinct colours), with their token counts.

    Returns ``{"index", "tokens", "top1", "legend": [[schema, count], ...]}``.
    """
    tokens = list(sample["tokens"])
    top1 = [int(s) for s in sample["top1"][layer]]
    if len(tokens) != len(top1):
        raise ReportError(
            f"sample {sample.get('index')}: {len(tokens)} tokens but {len(top1)} routing ids"
        )
    ids, counts = np.unique(top1, return_counts=True)
    order = [int(ids[i]) for i in np.lexsort((ids, -counts))]
    count_of = {int(s): int(c) for s, c in zip(ids, counts, strict=True)}
    palette = _schema_palette(order)
    placed = _layout_tokens(tokens, width)
    rows = (placed[-1][1] + 1) if placed else 1

    # Layout in inches, top to bottom: title, header, tokens, legend.
    fontsize = 10
    char_w = 0.6021 * fontsize / 72  # advance of DejaVu Sans Mono
    row_h = 1.8 * fontsize / 72
    margin = 0.2
    fig_w = width * char_w + 2 * margin
    wrap = int((fig_w - 2 * margin) / (0.56 * 9 / 72))  # characters of 9-pt sans per line
    strict = sample.get("strict_pred")
    header = textwrap.wrap(
        f"Test problem {sample.get('index')}: {sample.get('question', '')}", wrap
    )
    header = header[:5] + [
        f"gold answer {sample.get('gold')}, strict-match prediction "
        f"{'none' if strict is None else strict} ({'solved' if sample.get('strict_correct') else 'not solved'}); "
        f"{len(tokens)} generated tokens, {len(order)} distinct top-1 "
        f"schema{'' if len(order) == 1 else 's'}"
    ]
    ncol = max(1, int((fig_w - 2 * margin) // 1.15))
    legend_rows = -(-len(order) // ncol)
    heights = [0.45, 0.17 * len(header) + 0.15, rows * row_h, 0.3 + 0.2 * legend_rows + 0.1]
    fig_h = sum(heights)
    with rc_context(STYLE):
        fig = Figure(figsize=(fig_w, fig_h))
        FigureCanvasAgg(fig)
        top = fig_h
        fig.text(
            margin / fig_w,
            (top - 0.12) / fig_h,
            f"{title}: top-1 schema of each generated token (bank at layer {layer}, "
            f"{num_schemas} schemas)",
            fontsize=11,
            va="top",
            parse_math=False,
        )
        top -= heights[0]
        fig.text(
            margin / fig_w,
            top / fig_h,
            "\n".join(header),
            fontsize=9,
            va="top",
            linespacing=1.35,
            parse_math=False,
        )
        top -= heights[1]
        ax = fig.add_axes(
            (
                margin / fig_w,
                (top - heights[2]) / fig_h,
                (fig_w - 2 * margin) / fig_w,
                heights[2] / fig_h,
            )
        )
        ax.set_xlim(0, width)
        ax.set_ylim(rows, 0)
        ax.axis("off")
        for i, row, col, piece in placed:  # boxes first, so that no box covers a glyph
            ax.add_patch(
                Rectangle(
                    (col, row + 0.05),
                    len(piece),
                    0.9,
                    facecolor=palette[top1[i]],
                    edgecolor="white",
                    lw=1.0,
                )
            )
        for i, row, col, piece in placed:
            color = palette[top1[i]]
            ax.text(
                col,
                row + 0.52,
                piece,
                family="DejaVu Sans Mono",
                fontsize=fontsize,
                va="center_baseline",
                ha="left",
                color=_text_color(color),
                parse_math=False,
            )
        top -= heights[2]
        handles = [Patch(color=palette[s], label=f"schema {s} ({count_of[s]})") for s in order]
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(margin / fig_w, (top - 0.05) / fig_h),
            ncol=ncol,
            frameon=False,
            fontsize=8,
            title="top-1 schema (tokens it gets in this solution); ↵ marks a newline token",
            title_fontsize=8,
            alignment="left",
            handlelength=1.2,
            columnspacing=1.0,
        )
        _save(fig, path)
    return {
        "index": sample.get("index"),
        "tokens": tokens,
        "top1": top1,
        "legend": [[s, count_of[s]] for s in order],
    }


def plot_accuracy(runs: list[RunData], path: Path) -> dict:
    """GSM8K strict and flexible accuracy of several runs side by side, with 95% Wilson
    intervals as error bars and ``correct/total`` over each bar.

    Returns ``{label: {"strict": {"accuracy", "ci95", "correct", "total"}, "flexible": ...}}``.
    """
    data: dict = {}
    keys = ("strict", "flexible")
    colors = {"strict": "#1f77b4", "flexible": "#ff7f0e"}
    horizontal = len(runs) > 6  # a study of many runs reads better as one row per run
    with rc_context(STYLE):
        if horizontal:
            fig = _new_figure(11.0, 0.42 * len(runs) + 1.6)
        else:
            fig = _new_figure(max(6.0, 1.9 * len(runs) + 2), 4.8)
        ax = fig.subplots()
        x = np.arange(len(runs))
        bar_w = 0.38
        top = 0.0
        for j, key in enumerate(keys):
            acc = [run.results["gsm8k"][key] for run in runs]
            y = np.array([100 * a["accuracy"] for a in acc])
            lo = np.array([100 * a["ci95"][0] for a in acc])
            hi = np.array([100 * a["ci95"][1] for a in acc])
            pos = x + (j - 0.5) * bar_w
            label = f"{key}-match" if key == "strict" else "flexible-extract"
            err = [y - lo, hi - y]
            if horizontal:
                ax.barh(pos, y, bar_w, color=colors[key], label=label)
                ax.errorbar(y, pos, xerr=err, fmt="none", ecolor="black", capsize=2, lw=0.8)
            else:
                ax.bar(pos, y, bar_w, color=colors[key], label=label)
                ax.errorbar(pos, y, yerr=err, fmt="none", ecolor="black", capsize=4, lw=1)
            for p, a, h in zip(pos, acc, hi, strict=True):
                text = f"{a['correct']}/{a['total']}"
                if horizontal:
                    ax.text(h, p, " " + text, ha="left", va="center", fontsize=7)
                else:
                    ax.text(p, h, text, ha="center", va="bottom", fontsize=8)
            top = max(top, float(hi.max()))
            for run, a in zip(runs, acc, strict=True):
                data.setdefault(run.label, {})[key] = {
                    "accuracy": a["accuracy"],
                    "ci95": list(a["ci95"]),
                    "correct": a["correct"],
                    "total": a["total"],
                }
        if horizontal:
            ax.set_yticks(x)
            ax.set_yticklabels([r.label for r in runs], fontsize=8, parse_math=False)
            ax.invert_yaxis()  # the first run on top
            ax.set_xlabel("GSM8K accuracy (%)")
            ax.set_xlim(0, max(top * 1.15, 1.0))
            ax.grid(axis="x", alpha=0.3)
            ax.legend(frameon=False, loc="lower right")
        else:
            ax.set_xticks(x)
            ax.set_xticklabels(
                ["\n".join(textwrap.wrap(r.label, 22)) for r in runs], fontsize=9, parse_math=False
            )
            ax.set_ylabel("GSM8K accuracy (%)")
            ax.set_ylim(0, max(top * 1.18, 1.0))
            ax.grid(axis="y", alpha=0.3)
            ax.legend(frameon=False, loc="upper left")
        ns = sorted({r.results["gsm8k"]["n"] for r in runs})
        ax.set_title(
            f"GSM8K accuracy with 95% Wilson intervals ({' / '.join(f'{n:,}' for n in ns)} problems)"
        )
        _save(fig, path)
    return data


# ---------------------------------------------------------------------------------------------
# Tables and the report


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

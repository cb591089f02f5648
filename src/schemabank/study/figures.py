"""The figures of a run report, as PNG files drawn with matplotlib.

Per run: training curves per stage from ``training_log.jsonl`` (loss, LM loss, routing loss,
ortho, learning rate, tag dropout); schema usage, each schema's share of the routing slots
coloured by the tag that owns it, dead schemas marked; the tag x schema table as a heatmap (each
tag's routing slots spread over the schemas) with each tag's own block of schemas (its stage-1
routing target) outlined; routing precision and recall by tag; one test problem's generated
solution with every token on the colour of its top-1 schema. With several runs also accuracy
(strict and flexible, 95% Wilson intervals) side by side.

Each ``plot_*`` function writes one PNG and returns the data it plotted, as plain lists, so that
tests can compare the figures with results.json and the training log. Figures are drawn on
matplotlib's Agg canvas directly, without pyplot: no display is needed and no global backend is
switched for whoever imports this module. :mod:`.document` lays them out in ``report.md``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..errors import SchemaBankError

if TYPE_CHECKING:
    from .document import RunData

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
    """A run cannot be read for the report (missing results, malformed training log, a sample
    whose tokens and routing ids disagree)."""


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
    """Index of the tag owning each schema (the rule of :func:`schemabank.method.tags.owned_schemas`:
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

"""Linear probes: how well a problem's tags can be read off the frozen base model's hidden states.

Stage 1 trains each bank's router to predict a problem's tags from one token's RMS-normed hidden
state. A probe asks whether that information is there at all, and where: for each decoder layer
and each of four inputs a router could be given, a logistic regression per tag is fitted on the
features of training problems and scored (ROC AUC, balanced accuracy) on held-out problems.

Inputs (all RMS-normed without weight, as the router sees them, at the output of decoder layer
``l``: ``hidden_states[l + 1]``, where a bank at ``schemabank.layers: [l]`` acts):

============ =====================================================================================
input        rows
============ =====================================================================================
token        the state of one token, at up to ``positions_per_problem`` random positions a problem
prefix_mean  at the same positions, the mean of the states of positions ``0..t``: what a token
             generated at ``t`` can see of the text before it
last_prompt  the state of the prompt's last token (``...\\nAnswer:``), one row a problem
last         the state of the text's last token (the EOS after the solution), one row a problem
============ =====================================================================================

The text is the training text (:func:`schemabank.data.encode_all`), with the tag line before
``Question:`` when ``tagged`` (as stage 1 sees it before tag dropout; the sampled tokens then
include the tag line's own) and without it otherwise (as at evaluation). For the last layer,
transformers returns the state after the model's final norm; its per-channel weight is undone by
the features' standardisation, up to a per-token scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import rc_context
from scipy.stats import rankdata

from ..config import BankConfig
from ..data import Problem, collate, encode_all
from ..errors import SchemaBankError
from ..method.bank import RMS_EPS
from ..method.router import prefix_mean
from ..method.tags import TAGS
from ..runtime import autocast
from .figures import STYLE, _new_figure, _save

INPUTS = ("token", "prefix_mean", "last_prompt", "last")
METRICS = ("auc", "balanced_accuracy", "positives")
TEXTS = {"untagged": "text without tag line", "tagged": "tag line before Question:"}


class ProbeError(SchemaBankError):
    """A probe cannot be run or drawn (a layer the model lacks, a malformed probes.json)."""


def default_layers(num_layers: int) -> list[int]:
    """Every third layer from layer 2, the last layer, and the default bank layer when the model
    has it: 2, 5, ..., 29 for 30 layers (the default bank layer, -10, is 20)."""
    layers = {*range(2, num_layers, 3), num_layers - 1}
    bank = BankConfig().layers[0]
    if -num_layers <= bank < num_layers:
        layers.add(bank % num_layers)
    return sorted(layers)


def tag_matrix(problems: list[Problem]) -> torch.Tensor:
    """(N, len(TAGS)) float 0/1: which tags each problem has."""
    return torch.tensor([[float(t in p.tags) for t in TAGS] for p in problems])


# ---------------------------------------------------------------------------------------------
# Features


@torch.no_grad()
def probe_features(
    model,
    tokenizer,
    problems: list[Problem],
    layers: list[int],
    tagged: bool,
    device: torch.device,
    positions_per_problem: int = 16,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int = 512,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{input: (x, problem)}`` for each input of :data:`INPUTS`: ``x`` (len(layers), N, H)
    float32 on the CPU, the features of each layer in the order of ``layers``, and ``problem``
    (N,) the index into ``problems`` of each row. Rows come in problem order.

    The sampled positions depend on ``seed`` and the problems' token counts only (not on the
    batching), so ``token`` and ``prefix_mean`` rows are the same positions.
    """
    n_layers = model.config.num_hidden_layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ProbeError(
            f"layers {bad} out of range: the model has decoder layers 0..{n_layers - 1}"
        )
    tags = [p.tags if tagged else None for p in problems]
    encoded = encode_all(tokenizer, problems, max_length, tags)
    lengths = [len(ids) for ids, _ in encoded]
    # The prompt ends where the labels start (all of the text when truncation left no answer).
    prompt_end = [
        next((t for t, y in enumerate(lab) if y != -100), len(lab)) - 1 for _, lab in encoded
    ]
    gen = torch.Generator().manual_seed(seed)
    positions = [
        torch.randperm(n, generator=gen)[:positions_per_problem].sort().values for n in lengths
    ]

    # Longest first, so that batches hold texts of similar lengths (little padding).
    order = sorted(range(len(problems)), key=lambda i: -lengths[i])
    H = model.config.hidden_size
    rows: dict[str, list[torch.Tensor]] = {kind: [] for kind in INPUTS}
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id)
        with autocast(device, device.type == "cuda"):
            out = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                output_hidden_states=True,
                use_cache=False,
                logits_to_keep=1,  # the logits are not needed
            )
        # (row in batch, position) of each sampled token, and of each problem's two last tokens
        tok_b = torch.cat([torch.full_like(positions[i], j) for j, i in enumerate(idx)])
        tok_t = torch.cat([positions[i] for i in idx])
        at = {
            "token": (tok_b, tok_t),
            "last_prompt": (torch.arange(len(idx)), torch.tensor([prompt_end[i] for i in idx])),
            "last": (torch.arange(len(idx)), torch.tensor([lengths[i] - 1 for i in idx])),
        }
        at = {kind: (b_.to(device), t_.to(device)) for kind, (b_, t_) in at.items()}
        per_layer: dict[str, list[torch.Tensor]] = {kind: [] for kind in INPUTS}
        for layer in layers:
            h = F.rms_norm(out.hidden_states[layer + 1].float(), (H,), eps=RMS_EPS)  # (B, T, H)
            prefix, _ = prefix_mean(h, None, None)  # (B, T, H); right padding comes after
            per_layer["prefix_mean"].append(prefix[at["token"]].cpu())  # (sampled, H)
            for kind, where in at.items():
                per_layer[kind].append(h[where].cpu())  # (sampled or B, H)
        for kind in INPUTS:
            rows[kind].append(torch.stack(per_layer[kind]))  # (L, rows of the batch, H)

    problem_of = {
        "token": torch.cat([torch.full_like(positions[i], i) for i in order]),
        "last_prompt": torch.tensor(order),
        "last": torch.tensor(order),
    }
    problem_of["prefix_mean"] = problem_of["token"]
    features = {}
    for kind in INPUTS:
        back = torch.argsort(problem_of[kind], stable=True)  # batch order -> problem order
        features[kind] = (torch.cat(rows[kind], dim=1)[:, back], problem_of[kind][back])
    return features


# ---------------------------------------------------------------------------------------------
# Probes


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half; NaN with one class."""
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates; NaN with one class."""
    pos, pred = labels.astype(bool), pred.astype(bool)
    if pos.all() or not pos.any():
        return math.nan
    return float((pred[pos].mean() + (~pred[~pos]).mean()) / 2)


def fit_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_eval: torch.Tensor,
    y_eval: torch.Tensor,
    l2: float = 1e-3,
    steps: int = 200,
) -> dict[str, list]:
    """Fit one L2-regularised logistic regression per tag and score it on the eval rows.

    ``x_*``: (N, d) features; ``y_*``: (N, K) 0/1 labels. The features are standardised with the
    training rows' mean and standard deviation; the K regressions are independent (one column
    each of a (d, K) weight matrix, the loss a sum over them) and fitted together by full-batch
    L-BFGS on whatever device ``x_train`` is on. Returns ``{"auc": [K], "balanced_accuracy": [K]
    (at p = 0.5), "positives": [K] (eval rows)}``; a metric is NaN for a tag whose eval rows are
    all of one class.
    """
    device = x_train.device
    x_train, x_eval = x_train.float(), x_eval.to(device).float()
    y_train = y_train.to(device).float()
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6)
    x_train, x_eval = (x_train - mean) / std, (x_eval - mean) / std
    w = torch.zeros(x_train.shape[1], y_train.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(y_train.shape[1], device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, bias], max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        logits = x_train @ w + bias  # (N, K)
        bce = F.binary_cross_entropy_with_logits(logits, y_train, reduction="none").mean(dim=0)
        loss = bce.sum() + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        scores = (x_eval @ w + bias).cpu().numpy()  # (N_eval, K) logits
    labels = y_eval.cpu().numpy()
    return {
        "auc": [roc_auc(scores[:, k], labels[:, k]) for k in range(labels.shape[1])],
        "balanced_accuracy": [
            balanced_accuracy(scores[:, k] > 0, labels[:, k]) for k in range(labels.shape[1])
        ],
        "positives": [int(labels[:, k].sum()) for k in range(labels.shape[1])],
    }


def _json_number(v: float) -> float | None:
    return None if isinstance(v, float) and math.isnan(v) else v


def run_probes(
    model,
    tokenizer,
    fit_problems: list[Problem],
    eval_problems: list[Problem],
    layers: list[int],
    device: torch.device,
    positions_per_problem: int = 16,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int = 512,
    l2: float = 1e-3,
    steps: int = 200,
    progress=None,
) -> dict:
    """Probe every (tagged, input, layer): fitted on ``fit_problems``, scored on ``eval_problems``.

    Returns a JSON-able dict (NaN written as null)::

        {"tags": [...], "layers": [...], "inputs": [...],
         "results": {"untagged" | "tagged": {input: {"auc": [[tag x layer]],
                                                      "balanced_accuracy": [[tag x layer]],
                                                      "positives": [[tag x layer]]}}},
         "rows": {"untagged" | "tagged": {input: {"fit": n, "eval": n}}},
         "settings": {...}}

    ``progress``, if given, is called with a line of text after each (tagged, input).
    """
    kw = dict(
        positions_per_problem=positions_per_problem,
        seed=seed,
        batch_size=batch_size,
        max_length=max_length,
    )
    y_fit, y_eval = tag_matrix(fit_problems), tag_matrix(eval_problems)
    results: dict = {}
    rows: dict = {}
    for name, tagged in (("untagged", False), ("tagged", True)):
        fit = probe_features(model, tokenizer, fit_problems, layers, tagged, device, **kw)
        ev = probe_features(model, tokenizer, eval_problems, layers, tagged, device, **kw)
        results[name], rows[name] = {}, {}
        for kind in INPUTS:
            (x_fit, p_fit), (x_ev, p_ev) = fit[kind], ev[kind]
            x_fit = x_fit.to(device)
            per_layer = [
                fit_probe(x_fit[j], y_fit[p_fit], x_ev[j], y_eval[p_ev], l2=l2, steps=steps)
                for j in range(len(layers))
            ]
            results[name][kind] = {  # each metric as [tag][layer]
                m: [[_json_number(r[m][k]) for r in per_layer] for k in range(len(TAGS))]
                for m in METRICS
            }
            rows[name][kind] = {"fit": len(p_fit), "eval": len(p_ev)}
            if progress:
                mean = mean_auc(results[name][kind]["auc"])
                progress(f"{name} {kind}: mean AUC by layer " + " ".join(f"{a:.3f}" for a in mean))
    return {
        "tags": list(TAGS),
        "layers": list(layers),
        "inputs": list(INPUTS),
        "results": results,
        "rows": rows,
        "settings": {
            "fit_problems": len(fit_problems),
            "eval_problems": len(eval_problems),
            **kw,
            "l2": l2,
            "steps": steps,
        },
    }


# ---------------------------------------------------------------------------------------------
# Reading and showing results


def load_probes(path: str | Path) -> dict:
    """A probes.json written by :func:`run_probes` (checked for the keys the figure needs)."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"probes file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProbeError(f"{path}: not a JSON file") from None
    if not isinstance(data, dict) or not {"tags", "layers", "inputs", "results"} <= data.keys():
        raise ProbeError(f"{path}: not a probes file (needs tags, layers, inputs and results)")
    return data


def _auc(data: dict, name: str, kind: str) -> np.ndarray:
    """(tags, layers) AUC with null as NaN."""
    return np.array(data["results"][name][kind]["auc"], dtype=float)


def mean_auc(auc) -> np.ndarray:
    """(layers,) mean AUC over the tags that could be scored (NaN where none could)."""
    auc = np.array(auc, dtype=float)  # (tags, layers)
    scored = ~np.isnan(auc)
    total = np.where(scored, auc, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore"):
        return total / scored.sum(axis=0)


def plot_probes(data: dict, path: str | Path, title: str | None = None) -> None:
    """One PNG: a tag x layer heatmap of eval ROC AUC for each input (rows) and for the text
    without and with the tag line (columns), on a common 0.5 (chance) to 1.0 scale."""
    tags, layers, inputs = data["tags"], data["layers"], data["inputs"]
    names = [n for n in ("untagged", "tagged") if n in data["results"]]
    if title is None:
        s = data.get("settings", {})
        model = data.get("model", {}).get("name", "the base model")
        title = (
            f"Linear probes for the tags on frozen {model}: ROC AUC on "
            f"{s.get('eval_problems', '?')} held-out problems (fitted on {s.get('fit_problems', '?')})"
        )
    with rc_context(STYLE):
        fig = _new_figure(
            1.2 + len(names) * (0.5 * len(layers) + 1.4),
            1.0 + len(inputs) * (0.3 * len(tags) + 0.9),
        )
        axes = fig.subplots(len(inputs), len(names), squeeze=False)
        image = None
        for r, kind in enumerate(inputs):
            for c, name in enumerate(names):
                ax = axes[r, c]
                auc = _auc(data, name, kind)
                image = ax.imshow(auc, cmap="viridis", vmin=0.5, vmax=1.0, aspect="auto")
                for (k, j), v in np.ndenumerate(auc):
                    color = "0.4" if np.isnan(v) else "black" if v > 0.8 else "white"
                    text = "–" if np.isnan(v) else f"{v:.2f}"
                    ax.text(j, k, text, ha="center", va="center", fontsize=7, color=color)
                ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
                ax.set_yticks(range(len(tags)), tags)
                ax.set_title(f"{kind} · {TEXTS[name]}")
                if r == len(inputs) - 1:
                    ax.set_xlabel("decoder layer")
        fig.colorbar(image, ax=axes, shrink=0.6, label="ROC AUC (0.5 = chance)")
        fig.suptitle(title)
        _save(fig, Path(path))


def probe_table(data: dict, name: str = "untagged") -> str:
    """A Markdown table of the mean AUC over tags (tags with one class left out), input x layer."""
    layers = data["layers"]
    lines = [
        "| input | " + " | ".join(f"layer {layer}" for layer in layers) + " |",
        "|---|" + "---:|" * len(layers),
    ]
    for kind in data["inputs"]:
        mean = mean_auc(_auc(data, name, kind))
        lines.append(f"| {kind} | " + " | ".join(f"{a:.3f}" for a in mean) + " |")
    return "\n".join(lines)

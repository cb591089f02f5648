"""Metrics of SPEC section 6 as pure functions over plain data (strings, lists, arrays).

GSM8K scoring follows the lm-evaluation-harness ``gsm8k`` task: *strict-match* takes the first
``#### <number>``; *flexible-extract* takes the last number-like match. Both sides are normalised by
removing ``,`` and ``$`` and a trailing ``.``, then compared exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from scipy import stats

STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
STOP_STRING = "Question:"


def normalize_number(text: str | None) -> str | None:
    """Remove ``,`` and ``$`` and a trailing ``.``; None stays None."""
    if text is None:
        return None
    out = text.replace(",", "").replace("$", "").strip()
    return out[:-1] if out.endswith(".") else out


def extract_strict(output: str) -> str | None:
    """The number after the first ``#### `` in a generated solution, normalised."""
    m = STRICT_RE.search(output)
    return normalize_number(m.group(1)) if m else None


def extract_flexible(output: str) -> str | None:
    """The last number-like token of a generated solution, normalised."""
    matches = FLEXIBLE_RE.findall(output)
    if not matches:
        return None
    a, b = matches[-1]
    return normalize_number(a or b)


def truncate_at_stop(text: str, stop: str = STOP_STRING) -> str:
    """Cut a generation where the model starts a new ``Question:``."""
    i = text.find(stop)
    return text if i < 0 else text[:i]


def score(output: str, gold: str) -> dict:
    """Both extractions of one generated solution and whether each matches the gold answer."""
    gold_n = normalize_number(gold)
    strict, flexible = extract_strict(output), extract_flexible(output)
    return {
        "strict_pred": strict,
        "flexible_pred": flexible,
        "strict_correct": strict is not None and strict == gold_n,
        "flexible_correct": flexible is not None and flexible == gold_n,
    }


# ---------------------------------------------------------------------------------------------
# Statistics


def question_hash(question: str) -> str:
    """A problem's identity for paired comparisons: sha256 of its question text (16 hex digits)."""
    import hashlib

    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if total == 0:
        return (0.0, 1.0)
    ci = stats.binomtest(correct, total).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def accuracy_summary(correct: Sequence[bool]) -> dict:
    """``{"correct", "total", "accuracy", "ci95": [lo, hi]}`` of a list of outcomes."""
    k, n = int(sum(bool(c) for c in correct)), len(correct)
    lo, hi = wilson_interval(k, n)
    return {"correct": k, "total": n, "accuracy": k / n if n else 0.0, "ci95": [lo, hi]}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test of two paired lists of outcomes (two-sided binomial on discordant pairs).

    ``b01``: problems only ``b`` solved; ``b10``: problems only ``a`` solved.
    """
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    b10 = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b01 = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = b10 + b01
    p = 1.0 if n == 0 else float(stats.binomtest(b10, n, 0.5).pvalue)
    return {"only_a": b10, "only_b": b01, "discordant": n, "p_value": p}


def paired_bootstrap(
    a: Sequence[bool],
    b: Sequence[bool],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Accuracy difference ``a − b`` with a paired-bootstrap percentile interval."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean()) if len(x) else 0.0
    if len(x) < 2 or np.all(x - y == (x - y)[0]):
        return {"difference": diff, "ci95": [diff, diff]}
    res = stats.bootstrap(
        (x, y),
        lambda u, v, axis=-1: u.mean(axis) - v.mean(axis),
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return {
        "difference": diff,
        "ci95": [float(res.confidence_interval.low), float(res.confidence_interval.high)],
    }


def pooled_paired(
    a_runs: Sequence[Sequence[bool]],
    b_runs: Sequence[Sequence[bool]],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Pool paired comparisons over seeds: run ``a_runs[k]`` against ``b_runs[k]``, every pair
    evaluated on the same problems.

    The unit is the problem, since every seed is scored on the same problems (their outcomes are
    correlated across seeds, so the seeds' discordant pairs are not independent and summing
    McNemar counts over seeds would overstate the evidence). Each problem gets ``d_i``, the mean
    over seeds of ``a - b`` (each in {-1, 0, 1}); the pooled difference is ``mean(d)``, with a
    percentile interval from resampling problems (the same problems for every seed) and the
    two-sided p-value of a sign-flip permutation test on ``d``: under the null that A and B are
    exchangeable on each problem, each ``d_i`` is as likely to be ``-d_i``.
    """
    x = np.asarray(a_runs, dtype=float)  # (K, N)
    y = np.asarray(b_runs, dtype=float)
    if x.shape != y.shape or x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("pooled_paired needs K >= 1 pairs of outcome lists of one length")
    d = (x - y).mean(0)  # (N,): each problem's seed-averaged difference
    diff = float(d.mean()) if d.size else 0.0
    out = {"seeds": int(x.shape[0]), "n": int(x.shape[1]), "difference": diff}
    out["per_seed_difference"] = [float(v) for v in (x - y).mean(1)]
    if d.size < 2 or np.all(d == d[0]):
        return {**out, "ci95": [diff, diff], "p_value": 1.0 if np.all(d == 0) else 0.0}
    rng = np.random.default_rng(seed)
    boot = stats.bootstrap(
        (d,),
        np.mean,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=rng,
    )
    perm = stats.permutation_test(
        (d,),
        lambda u, axis=-1: u.mean(axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        random_state=rng,
    )
    return {
        **out,
        "ci95": [float(boot.confidence_interval.low), float(boot.confidence_interval.high)],
        "p_value": float(perm.pvalue),
        "test": "problem-level sign-flip permutation test of the seed-averaged difference",
    }


# ---------------------------------------------------------------------------------------------
# Routing


def schema_usage(
    topk_ids: np.ndarray, num_schemas: int, active_threshold: float = 0.001, top: int = 5
) -> dict:
    """Usage of each schema as its share of all top-k routing slots.

    ``topk_ids``: integer array (N, k) of the schemas chosen for N tokens. A schema is *active*
    when its share is at least ``active_threshold`` (0.1%). Entropy is in bits (max log2 S).
    """
    counts = np.bincount(np.asarray(topk_ids).reshape(-1), minlength=num_schemas).astype(float)
    share = counts / max(counts.sum(), 1.0)
    active = int((share >= active_threshold).sum())
    nz = share[share > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    order = [i for i in np.argsort(-share, kind="stable")[:top] if share[i] > 0]
    return {
        "share": [float(s) for s in share],
        "active": active,
        "dead": num_schemas - active,
        "dead_schemas": [int(i) for i in np.flatnonzero(share < active_threshold)],
        "top": [{"schema": int(i), "share": float(share[i])} for i in order],
        "entropy_bits": entropy,
        "max_entropy_bits": math.log2(num_schemas),
        "tokens": int(np.asarray(topk_ids).shape[0]),
    }


def dominant(ids: Sequence[int]) -> int:
    """The most frequent id (the smallest one on a tie). ``ids``: schema ids, non-negative."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64))  # argmax: the first of the largest
    return int(counts.argmax())


def reuse_count(step_top1: Sequence[Sequence[int]]) -> int:
    """Steps of one solution whose dominant schema was already dominant in an earlier step.

    ``step_top1``: for each step (line) of a generated solution, the top-1 schema of its tokens;
    steps without tokens are skipped.
    """
    seen: set[int] = set()
    reused = 0
    for ids in step_top1:
        if len(ids) == 0:
            continue
        d = dominant(ids)
        reused += d in seen
        seen.add(d)
    return reused


def schema_reuse(solutions: Sequence[Sequence[Sequence[int]]]) -> float:
    """Mean reuse count per problem (:func:`reuse_count`); 0.0 for no problems."""
    return float(np.mean([reuse_count(s) for s in solutions])) if len(solutions) else 0.0


def tag_schema_table(
    problem_tags: Sequence[Sequence[str]],
    problem_topk: Sequence[np.ndarray],
    tags: Sequence[str],
    num_schemas: int,
) -> list[list[int]]:
    """Tag x schema co-occurrence: routing slots to each schema from the tokens of problems with
    each tag. ``problem_topk[i]``: (N_i, k) schema ids of problem i's tokens."""
    table = np.zeros((len(tags), num_schemas), dtype=np.int64)
    index = {t: j for j, t in enumerate(tags)}
    for ptags, ids in zip(problem_tags, problem_topk, strict=True):
        counts = np.bincount(np.asarray(ids).reshape(-1), minlength=num_schemas)
        for t in ptags:
            table[index[t]] += counts
    return table.tolist()


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(x: Sequence, y: Sequence) -> float:
    """NMI of two label sequences, ``I(X;Y) / mean(H(X), H(Y))`` (scikit-learn's default).

    1.0 when each is a relabelling of the other (also when both are constant, as in
    scikit-learn); 0.0 when they are independent (also when only one is constant).
    """
    if len(x) != len(y):
        raise ValueError("label sequences must have the same length")
    if len(x) == 0:
        return 0.0
    _, xi = np.unique(np.asarray(x, dtype=object).astype(str), return_inverse=True)
    _, yi = np.unique(np.asarray(y, dtype=object).astype(str), return_inverse=True)
    joint = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(joint, (xi, yi), 1)
    hx, hy = _entropy(joint.sum(1)), _entropy(joint.sum(0))
    if hx == 0 and hy == 0:
        return 1.0 if joint.shape == (1, 1) else 0.0
    mi = hx + hy - _entropy(joint.reshape(-1))
    denom = (hx + hy) / 2
    return float(max(mi, 0.0) / denom) if denom > 0 else 0.0


def tag_schema_nmi(problem_tags: Sequence[Sequence[str]], problem_dominant: Sequence[int]) -> float:
    """NMI between a problem's tags and its dominant schema, over (problem, tag) pairs (a
    problem with several tags counts once per tag; problems without tags are left out)."""
    pairs = [(t, d) for tags, d in zip(problem_tags, problem_dominant, strict=True) for t in tags]
    if not pairs:
        return 0.0
    x, y = zip(*pairs, strict=True)
    return normalized_mutual_info(x, y)


def tag_routing_scores(
    problem_tags: Sequence[Sequence[str]],
    problem_topk: Sequence[np.ndarray],
    tags: Sequence[str],
    num_schemas: int,
) -> dict:
    """Per-tag routing precision and recall over problems.

    Tag ``j`` owns the block of ``S // T`` schemas starting at ``j * (S // T)`` (see
    :mod:`schemabank.method.tags`). A problem is *routed to* a tag when that block receives at least
    twice its uniform share (``2 · (S // T) / S``) of the problem's top-k routing slots: a router
    following the tags gives a problem's block(s) all of its slots (a half each with two tags),
    a uniform one an eighth. Precision: of the problems routed to the tag, the share that have
    it; recall: of the problems that have it, the share routed to it (None when undefined).
    """
    T = len(tags)
    block = num_schemas // T
    threshold = 2 * block / num_schemas
    index = {t: j for j, t in enumerate(tags)}
    truth = np.zeros((len(problem_tags), T), dtype=bool)
    routed = np.zeros_like(truth)
    for i, (ptags, ids) in enumerate(zip(problem_tags, problem_topk, strict=True)):
        for t in ptags:
            truth[i, index[t]] = True
        counts = np.bincount(np.asarray(ids).reshape(-1), minlength=num_schemas)
        share = counts[: T * block].reshape(T, block).sum(1) / max(counts.sum(), 1)
        routed[i] = share >= threshold
    hits = (truth & routed).sum(0)

    def ratio(num, den):
        return [float(n / d) if d else None for n, d in zip(num, den, strict=True)]

    return {
        "tags": list(tags),
        "threshold_share": threshold,
        "precision": ratio(hits, routed.sum(0)),
        "recall": ratio(hits, truth.sum(0)),
        "support": truth.sum(0).tolist(),
        "routed": routed.sum(0).tolist(),
    }

"""Paired comparison of two runs evaluated on the same GSM8K problems.

For strict and flexible accuracy: both accuracies, the exact McNemar test on the problems only one
run solved, the difference A − B with a paired-bootstrap 95% interval, and on how many problems
the two extracted answers differ (right or wrong: how far two decoders or retrainings agree).
Several pairs (one per seed) are also pooled (:func:`schemabank.metrics.pooled_paired`).
"""

from __future__ import annotations

from .. import metrics
from ..errors import SchemaBankError
from ..results import load_results


def _outcomes(results: dict, key: str) -> list[bool]:
    return [bool(p[f"{key}_correct"]) for p in results["gsm8k"]["problems"]]


def _identity(p: dict, hashed: bool) -> tuple:
    """A problem by content, its question's hash and gold answer (for results from before the
    hash was recorded: its index and gold answer)."""
    return (p["question_sha256"] if hashed else p["index"], p["gold"])


def check_same_problems(pa: list[dict], pb: list[dict]) -> None:
    """Raise :class:`SchemaBankError` saying how two runs' problem lists differ, unless they are
    the same problems in the same order."""
    if len(pa) != len(pb):
        raise SchemaBankError(
            f"the runs were not evaluated on the same problems ({len(pa)} vs {len(pb)}); "
            "re-evaluate them with the same --limit"
        )
    hashed = all("question_sha256" in p for p in pa + pb)
    ka, kb = [_identity(p, hashed) for p in pa], [_identity(p, hashed) for p in pb]
    differ = [i for i, (x, y) in enumerate(zip(ka, kb, strict=True)) if x != y]
    if differ:
        what = "questions or gold answers" if hashed else "gold answers"
        raise SchemaBankError(
            f"the runs were not evaluated on the same problems: {len(differ)} of {len(pa)} differ "
            f"in their {what} (first at position {differ[0]}); were they evaluated on different "
            "data files?"
        )


def compare_results(a: dict, b: dict, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Paired comparison of two results dicts (strict and flexible): both accuracies, the exact
    McNemar test and the bootstrap interval of A − B. The runs must have been evaluated on the
    same problems (the same questions, by hash, and gold answers, in the same order), else
    :class:`SchemaBankError` (:func:`check_same_problems`)."""
    pa, pb = a["gsm8k"]["problems"], b["gsm8k"]["problems"]
    check_same_problems(pa, pb)
    out = {"n": len(pa), "a": a["experiment"], "b": b["experiment"]}
    for key in ("strict", "flexible"):
        xa, xb = _outcomes(a, key), _outcomes(b, key)
        out[key] = {
            "accuracy_a": a["gsm8k"][key]["accuracy"],
            "accuracy_b": b["gsm8k"][key]["accuracy"],
            "mcnemar": metrics.mcnemar_exact(xa, xb),
            "bootstrap": metrics.paired_bootstrap(xa, xb, n_resamples=n_resamples, seed=seed),
            "answers_differ": answers_differ(pa, pb, f"{key}_pred"),
        }
    return out


def answers_differ(pa: list[dict], pb: list[dict], field: str) -> int | None:
    """On how many paired problems the extracted answers (``field``) differ; None when either
    run's problems do not record them."""
    if not all(field in p for p in pa) or not all(field in p for p in pb):
        return None
    return sum(x[field] != y[field] for x, y in zip(pa, pb, strict=True))


def compare_runs(run_a: str, run_b: str) -> dict:
    """Compare two run directories (or results.json files)."""
    return compare_results(load_results(run_a), load_results(run_b))


def pool_comparisons(pairs: list[tuple[str, str]], n_resamples: int = 10_000) -> dict:
    """Each pair's comparison, and their pooled difference and test (strict and flexible).
    Every run must have been evaluated on the same problems."""
    loaded = [(load_results(a), load_results(b)) for a, b in pairs]
    out = {"pairs": [compare_results(a, b, n_resamples) for a, b in loaded], "pooled": {}}
    first = loaded[0][0]["gsm8k"]["problems"]
    for a, _ in loaded[1:]:
        check_same_problems(first, a["gsm8k"]["problems"])
    for key in ("strict", "flexible"):
        out["pooled"][key] = metrics.pooled_paired(
            [_outcomes(a, key) for a, _ in loaded],
            [_outcomes(b, key) for _, b in loaded],
            n_resamples=n_resamples,
        )
    return out


def format_pooled(c: dict) -> list[str]:
    """:func:`pool_comparisons` as lines: each pair's, then the pooled ones."""
    lines = [line for pair in c["pairs"] for line in format_comparison(pair)]
    lines.append(f"pooled over {len(c['pairs'])} pairs (sign-flip permutation test over problems)")
    for key in ("strict", "flexible"):
        r = c["pooled"][key]
        lines.append(
            f"  {key:9s} mean A-B {100 * r['difference']:+.2f} pts (95% CI "
            f"{100 * r['ci95'][0]:+.2f} to {100 * r['ci95'][1]:+.2f}), p = {r['p_value']:.4g}"
        )
    return lines


def format_comparison(c: dict) -> list[str]:
    """A comparison from :func:`compare_results` as a few human-readable lines."""
    lines = [
        f"A = {c['a']['name']} ({c['a']['mode']}), B = {c['b']['name']} ({c['b']['mode']}), "
        f"{c['n']} paired problems"
    ]
    for key in ("strict", "flexible"):
        r = c[key]
        m, bs = r["mcnemar"], r["bootstrap"]
        lines.append(
            f"  {key:9s} A {100 * r['accuracy_a']:.1f}%  B {100 * r['accuracy_b']:.1f}%  "
            f"A-B {100 * bs['difference']:+.1f} pts (95% CI {100 * bs['ci95'][0]:+.1f} to {100 * bs['ci95'][1]:+.1f})  "
            f"only A {m['only_a']}, only B {m['only_b']}, McNemar p = {m['p_value']:.4g}"
        )
        if r["answers_differ"] is not None:
            lines[-1] += f", answers differ on {r['answers_differ']}"
    return lines

"""Metrics of SPEC section 6 on hand-written cases; expected values come from closed forms written
out here (Wilson, binomial tails, entropies), not from the library under test."""

from __future__ import annotations

import math
import re
from statistics import NormalDist

import numpy as np
import pytest

from schemabank.metrics import (
    accuracy_summary,
    dominant,
    extract_flexible,
    extract_strict,
    mcnemar_exact,
    normalize_number,
    normalized_mutual_info,
    paired_bootstrap,
    reuse_count,
    schema_reuse,
    schema_usage,
    score,
    tag_schema_nmi,
    tag_schema_table,
    truncate_at_stop,
    wilson_interval,
)

# ---------------------------------------------------------------------------------------------
# Answer extraction

# lm-evaluation-harness tasks/gsm8k/gsm8k.yaml, written out independently of schemabank.metrics.
LM_EVAL_STRICT = r"#### (\-?[0-9\.\,]+)"
LM_EVAL_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
LM_EVAL_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def lm_eval_filter(resp: str, pattern: str, group_select: int) -> str:
    """lm-eval's RegexFilter followed by take_first."""
    match = re.findall(pattern, resp)
    if not match:
        return "[invalid]"
    match = match[group_select]
    if isinstance(match, tuple):
        match = [m for m in match if m]
        match = match[0] if match else "[invalid]"
    return match.strip()


def lm_eval_exact_match(pred: str, reference: str) -> bool:
    for r in LM_EVAL_IGNORE:
        pred, reference = re.sub(r, "", pred), re.sub(r, "", reference)
    return pred.lower() == reference.lower()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,000", "1000"),
        ("$1,000", "1000"),
        ("18.", "18"),
        ("2.50", "2.50"),  # only a trailing '.' goes; trailing zeros stay
        ("-3", "-3"),
        (" 42 ", "42"),
        ("$35.50.", "35.50"),
        (None, None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


# (output, gold answer, strict, flexible)
EXTRACTION_CASES = {
    "plain": ("3+5=8 apples.\n#### 8", "8", "8", "8"),
    "dollar_after_hashes": ("She pays $1,000.\n#### $1,000", "1000", None, "1000"),
    "commas": ("Each gets 1,000/4 = 250.\n#### 1,250", "1250", "1250", "1250"),
    "negative": ("It is 2-5 = -3 degrees.\n#### -3", "-3", "-3", "-3"),
    "trailing_zero": ("#### 2.50", "2.5", "2.50", "2.50"),
    "trailing_period": ("So the answer is\n#### 18.", "18", "18", "18"),
    "no_hashes": ("So she has 5 apples and 3 pears, total 8 fruits.", "8", None, "8"),
    "no_hashes_sentence_end": ("The answer is 42.", "42", None, "42"),
    "money_no_hashes": ("He pays $1,200 and gets $35.50 back.", "35.50", None, "35.50"),
    "hashes_without_space": ("####8", "8", None, "8"),
    "two_hashes": ("#### 5\nWait, no.\n#### 7", "7", "5", "7"),
    "number_after_hashes": ("#### 12\nThat is 3 boxes.", "12", "12", "3"),
    "trailing_commas": ("I have 3, you have 4, total 7, right", "7", None, "7"),
    "no_number": ("I do not know.", "5", None, None),
    "empty": ("", "5", None, None),
}


@pytest.mark.parametrize("name", list(EXTRACTION_CASES))
def test_extraction(name):
    output, _, strict, flexible = EXTRACTION_CASES[name]
    assert extract_strict(output) == strict
    assert extract_flexible(output) == flexible


@pytest.mark.parametrize("name", list(EXTRACTION_CASES))
def test_score_matches_lm_eval_harness(name):
    output, gold, strict, flexible = EXTRACTION_CASES[name]
    reference = f"Some reasoning.\n#### {gold}"  # a gold solution, as lm-eval scores it
    s = score(output, gold)
    assert s["strict_pred"] == strict
    assert s["flexible_pred"] == flexible
    assert s["strict_correct"] == lm_eval_exact_match(
        lm_eval_filter(output, LM_EVAL_STRICT, 0), reference
    )
    assert s["flexible_correct"] == lm_eval_exact_match(
        lm_eval_filter(output, LM_EVAL_FLEXIBLE, -1), reference
    )


def test_score_exact_after_normalisation():
    # "2.50" and "2.5" are different strings after normalisation: not a match (lm-eval agrees).
    assert score("#### 2.50", "2.5") == {
        "strict_pred": "2.50",
        "flexible_pred": "2.50",
        "strict_correct": False,
        "flexible_correct": False,
    }
    # '$' after '####' defeats strict-match (its regex has no '$'), flexible still finds it.
    s = score("#### $1,000", "1,000")
    assert (s["strict_correct"], s["flexible_correct"]) == (False, True)
    # Gold is normalised too.
    assert score("#### 1000", "$1,000.")["strict_correct"] is True
    assert score("#### -3", "-3")["strict_correct"] is True
    assert score("#### 3", "-3")["strict_correct"] is False
    # Nothing extracted is never correct, even against an empty gold.
    assert score("no digits", "") == {
        "strict_pred": None,
        "flexible_pred": None,
        "strict_correct": False,
        "flexible_correct": False,
    }


def test_truncate_at_stop():
    assert truncate_at_stop("3+5=8\n#### 8\n\nQuestion: next one\nAnswer: 4") == "3+5=8\n#### 8\n\n"
    assert truncate_at_stop("#### 8") == "#### 8"
    assert truncate_at_stop("Question: at the start") == ""
    assert truncate_at_stop("#### 8<eos>junk", stop="<eos>") == "#### 8"
    # Truncation happens before extraction: the number of the next question must not count.
    assert extract_flexible(truncate_at_stop("#### 8\nQuestion: Tom has 3 apples")) == "8"


# ---------------------------------------------------------------------------------------------
# Wilson interval


def wilson_closed_form(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("k", "n"), [(27, 500), (59, 500), (0, 10), (10, 10), (1, 1), (3, 7), (660, 1319)]
)
def test_wilson_against_closed_form(k, n):
    lo, hi = wilson_interval(k, n)
    exp_lo, exp_hi = wilson_closed_form(k, n)
    assert lo == pytest.approx(exp_lo, abs=1e-9)
    assert hi == pytest.approx(exp_hi, abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_known_values():
    assert wilson_interval(27, 500) == pytest.approx((0.03737, 0.07743), abs=5e-6)
    # k = 0 and k = n: the interval touches the boundary, the other end is z^2 / (n + z^2).
    z2 = NormalDist().inv_cdf(0.975) ** 2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)), abs=1e-9)
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_other_confidence():
    lo90, hi90 = wilson_interval(27, 500, confidence=0.90)
    assert (lo90, hi90) == pytest.approx(wilson_closed_form(27, 500, 0.90), abs=1e-9)
    lo95, hi95 = wilson_interval(27, 500)
    assert lo95 < lo90 < hi90 < hi95


def test_accuracy_summary():
    outcomes = [True] * 27 + [False] * 473
    s = accuracy_summary(outcomes)
    assert (s["correct"], s["total"]) == (27, 500)
    assert s["accuracy"] == pytest.approx(0.054)
    assert s["ci95"] == pytest.approx(list(wilson_closed_form(27, 500)), abs=1e-9)
    assert accuracy_summary([]) == {"correct": 0, "total": 0, "accuracy": 0.0, "ci95": [0.0, 1.0]}


# ---------------------------------------------------------------------------------------------
# Paired comparison


def paired(only_a: int, only_b: int, both: int = 5, neither: int = 7) -> tuple[list, list]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def mcnemar_closed_form(only_a: int, only_b: int) -> float:
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("only_a", "only_b"), [(3, 10), (10, 3), (0, 6), (5, 5), (1, 0), (7, 20)])
def test_mcnemar_exact(only_a, only_b):
    a, b = paired(only_a, only_b)
    res = mcnemar_exact(a, b)
    assert res["only_a"] == only_a
    assert res["only_b"] == only_b
    assert res["discordant"] == only_a + only_b
    assert res["p_value"] == pytest.approx(mcnemar_closed_form(only_a, only_b), rel=1e-9)


def test_mcnemar_known_values():
    assert mcnemar_exact(*paired(3, 10))["p_value"] == pytest.approx(0.09229, abs=5e-6)
    assert mcnemar_exact(*paired(0, 6))["p_value"] == pytest.approx(1 / 32)
    res = mcnemar_exact(*paired(0, 0))
    assert res == {"only_a": 0, "only_b": 0, "discordant": 0, "p_value": 1.0}
    assert mcnemar_exact([], [])["p_value"] == 1.0


def test_mcnemar_length_mismatch():
    with pytest.raises(ValueError):
        mcnemar_exact([True, False], [True])


def test_bootstrap_identical_runs():
    a = [True, False, True, True, False] * 20
    assert paired_bootstrap(a, a, n_resamples=500) == {"difference": 0.0, "ci95": [0.0, 0.0]}


def test_bootstrap_constant_difference():
    assert paired_bootstrap([True] * 10, [False] * 10) == {"difference": 1.0, "ci95": [1.0, 1.0]}
    assert paired_bootstrap([], []) == {"difference": 0.0, "ci95": [0.0, 0.0]}


def test_bootstrap_clearly_better_run_excludes_zero():
    # b solves 80 of 200; a solves those and 60 more: difference 0.3.
    b = [True] * 80 + [False] * 120
    a = [True] * 140 + [False] * 60
    res = paired_bootstrap(a, b, n_resamples=2000, seed=1)
    lo, hi = res["ci95"]
    assert res["difference"] == pytest.approx(0.3)
    assert 0.0 < lo < 0.3 < hi
    # Normal approximation of the paired difference: 0.3 +- 1.96 * sqrt(0.3 * 0.7 / 200).
    half = 1.96 * math.sqrt(0.3 * 0.7 / 200)
    assert lo == pytest.approx(0.3 - half, abs=0.02)
    assert hi == pytest.approx(0.3 + half, abs=0.02)
    # Swapping the runs flips the sign; the interval then excludes 0 from below.
    res_ba = paired_bootstrap(b, a, n_resamples=2000, seed=1)
    assert res_ba["difference"] == pytest.approx(-0.3)
    assert res_ba["ci95"][1] < 0.0


def test_bootstrap_reproducible_with_seed():
    rng = np.random.default_rng(123)
    a = (rng.random(150) < 0.4).tolist()
    b = (rng.random(150) < 0.35).tolist()
    r1 = paired_bootstrap(a, b, n_resamples=1000, seed=7)
    r2 = paired_bootstrap(a, b, n_resamples=1000, seed=7)
    assert r1 == r2
    assert r1["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert r1["ci95"][0] <= r1["difference"] <= r1["ci95"][1]


# ---------------------------------------------------------------------------------------------
# Schema usage


def test_schema_usage_uniform_over_four_of_eight():
    ids = np.array([[0, 1], [2, 3]] * 3)  # (6, 2)
    u = schema_usage(ids, 8, top=3)
    assert u["share"] == pytest.approx([0.25] * 4 + [0.0] * 4)
    assert u["active"] == 4
    assert u["dead"] == 4
    assert u["dead_schemas"] == [4, 5, 6, 7]
    assert u["entropy_bits"] == pytest.approx(2.0)
    assert u["max_entropy_bits"] == pytest.approx(3.0)
    assert u["tokens"] == 6
    assert [t["schema"] for t in u["top"]] == [0, 1, 2]  # ties: smaller id first


def test_schema_usage_shares_order_and_entropy():
    ids = np.array([[3, 1], [3, 1], [3, 0], [3, 0]])  # shares: 3 -> 1/2, 0 and 1 -> 1/4
    u = schema_usage(ids, 32)
    assert u["top"][:3] == [
        {"schema": 3, "share": 0.5},
        {"schema": 0, "share": 0.25},
        {"schema": 1, "share": 0.25},
    ]
    assert u["entropy_bits"] == pytest.approx(1.5)
    assert u["max_entropy_bits"] == pytest.approx(5.0)
    assert (u["active"], u["dead"]) == (3, 29)
    assert sum(u["share"]) == pytest.approx(1.0)


def test_schema_usage_active_threshold():
    # 2,000 routing slots: schema 5 has exactly 0.1% (active), schema 6 has 0.05% (dead).
    slots = [0] * 1000 + [1] * 997 + [5] * 2 + [6] * 1
    ids = np.array(slots).reshape(1000, 2)
    u = schema_usage(ids, 8)
    assert u["share"][5] == pytest.approx(0.001)
    assert u["active"] == 3
    assert u["dead"] == 5
    assert u["dead_schemas"] == [2, 3, 4, 6, 7]
    expected_h = -sum(p * math.log2(p) for p in (1000 / 2000, 997 / 2000, 2 / 2000, 1 / 2000))
    assert u["entropy_bits"] == pytest.approx(expected_h)


def test_schema_usage_single_schema_has_zero_entropy():
    u = schema_usage(np.zeros((10, 1), dtype=int), 4)
    assert u["entropy_bits"] == 0.0
    assert (u["active"], u["dead"]) == (1, 3)


# ---------------------------------------------------------------------------------------------
# Schema reuse


def test_dominant_ties_go_to_smallest_id():
    assert dominant([3, 3, 1, 1, 2]) == 1
    assert dominant([5, 2, 5]) == 5
    assert dominant([9]) == 9
    assert dominant(np.array([4, 2])) == 2
    assert dominant(np.array([7, 0, 7, 0, 3], dtype=np.int32)) == 0  # numpy ids, tie, id 0
    with pytest.raises(ValueError):
        dominant([])


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # dominants 1, 1 (reuse), 4, (empty, skipped), 2 (appeared before but never dominant)
        ([[1, 1, 2], [1, 3, 1], [4], [], [2, 2]], 1),
        # dominants (ties -> smallest) 1, 1 (reuse), 5, 1 (reuse)
        ([[1, 2], [2, 1], [5, 5, 1], [1]], 2),
        ([[7], [7], [7]], 2),
        ([[1], [2], [3]], 0),
        ([[2, 2, 1], [1, 1, 2], [2], [1]], 2),
        ([], 0),
        ([[], []], 0),
        ([np.array([3, 3]), np.array([], dtype=int), np.array([3])], 1),
    ],
)
def test_reuse_count(steps, expected):
    assert reuse_count(steps) == expected


def test_schema_reuse_mean_per_problem():
    solutions = [
        [[1, 1, 2], [1, 3, 1], [4], [], [2, 2]],  # 1
        [[1, 2], [2, 1], [5, 5, 1], [1]],  # 2
        [[7], [7], [7]],  # 2
        [],  # 0
    ]
    assert schema_reuse(solutions) == pytest.approx(5 / 4)
    assert schema_reuse([]) == 0.0
    assert isinstance(schema_reuse([[[1], [1]]]), float)


# ---------------------------------------------------------------------------------------------
# Routing patterns


def test_tag_schema_table():
    problem_tags = [["add"], ["add", "mul"], []]
    problem_topk = [
        np.array([[0, 1], [0, 2]]),  # schema 0 twice, 1 and 2 once
        np.array([[1, 3]]),
        np.array([[0, 1]]),  # no tags: counted nowhere
    ]
    table = tag_schema_table(problem_tags, problem_topk, ("add", "mul", "div"), 4)
    assert table == [
        [2, 2, 1, 1],
        [0, 1, 0, 1],
        [0, 0, 0, 0],
    ]


def entropy(counts: list[int]) -> float:
    n = sum(counts)
    return -sum(c / n * math.log(c / n) for c in counts if c)


def test_nmi_identical_and_permuted_labels():
    x = ["add", "add", "mul", "mul", "div"]
    assert normalized_mutual_info(x, x) == pytest.approx(1.0)
    assert normalized_mutual_info(x, [2, 2, 0, 0, 1]) == pytest.approx(1.0)
    assert normalized_mutual_info([2, 2, 0, 0, 1], x) == pytest.approx(1.0)


def test_nmi_independent_balanced_labels():
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    assert normalized_mutual_info(["a"] * 4, [0, 1, 2, 3]) == pytest.approx(0.0, abs=1e-12)


def test_nmi_hand_computed_intermediate_value():
    # x = [0, 0, 1, 1], y = [0, 0, 0, 1]; joint counts {(0,0): 2, (1,0): 1, (1,1): 1}.
    hx, hy, hxy = entropy([2, 2]), entropy([3, 1]), entropy([2, 1, 1])
    expected = (hx + hy - hxy) / ((hx + hy) / 2)
    assert expected == pytest.approx(0.34371, abs=1e-5)
    assert normalized_mutual_info([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(expected)


def test_nmi_one_way_determination_is_below_one():
    # y is a function of x but not the reverse: MI = H(Y) = ln 2, H(X) = 2 ln 2, NMI = 2/3.
    assert normalized_mutual_info([0, 1, 2, 3], [0, 0, 1, 1]) == pytest.approx(2 / 3)


def test_nmi_edge_cases():
    assert normalized_mutual_info([], []) == 0.0
    # Both constant: 1.0, the scikit-learn convention (one labelling determines the other).
    assert normalized_mutual_info(["a", "a"], [3, 3]) == 1.0
    with pytest.raises(ValueError):
        normalized_mutual_info([1, 2], [1])


def test_tag_schema_nmi_over_problem_tag_pairs():
    # Pairs: (add, 0), (mul, 1), (add, 2), (mul, 2); the untagged problem is left out.
    tags = [["add"], ["mul"], ["add", "mul"], []]
    dom = [0, 1, 2, 9]
    # H(X) = ln 2, H(Y) = 1.5 ln 2, H(X, Y) = 2 ln 2: MI = 0.5 ln 2, NMI = 0.5 / 1.25 = 0.4.
    assert tag_schema_nmi(tags, dom) == pytest.approx(0.4)
    assert tag_schema_nmi(tags[:3], dom[:3]) == pytest.approx(0.4)
    assert tag_schema_nmi([["add"], ["mul"], ["add"]], [3, 4, 3]) == pytest.approx(1.0)
    assert tag_schema_nmi([[], []], [0, 1]) == 0.0
    assert tag_schema_nmi([], []) == 0.0


def test_pooled_paired_by_hand():
    from schemabank.metrics import pooled_paired

    a = [[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]]
    b = [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]
    out = pooled_paired(a, b)
    assert out["seeds"] == 2 and out["n"] == 8
    assert out["per_seed_difference"] == [7 / 8, 1.0]
    assert out["difference"] == pytest.approx(15 / 16)
    # every problem's seed-averaged difference is positive: of the 2^8 sign patterns only the
    # all-positive and the all-negative one are as extreme (an exact two-sided test)
    assert out["p_value"] == pytest.approx(2 / 256)
    assert out["ci95"][0] <= out["difference"] <= out["ci95"][1]
    same = pooled_paired(a, a)
    assert same["difference"] == 0 and same["p_value"] == 1.0 and same["ci95"] == [0.0, 0.0]


def test_pooled_paired_keeps_a_problem_together_across_seeds():
    """The same problems in every seed: a problem that flips A/B in opposite directions in two
    seeds contributes 0, not two discordant pairs."""
    from schemabank.metrics import pooled_paired

    a = [[1, 0] * 20, [0, 1] * 20]
    b = [[0, 1] * 20, [1, 0] * 20]
    out = pooled_paired(a, b)
    assert out["difference"] == 0 and out["p_value"] == 1.0
    with pytest.raises(ValueError):
        pooled_paired([[1, 0]], [[1, 0, 1]])


def test_compare_identifies_problems_by_their_questions():
    """Two runs on different questions with the same gold answers are not paired."""
    from schemabank.errors import SchemaBankError
    from schemabank.metrics import question_hash
    from schemabank.study.compare import check_same_problems

    def probs(questions):
        return [
            {"index": i, "question_sha256": question_hash(q), "gold": "8"}
            for i, q in enumerate(questions)
        ]

    check_same_problems(probs(["a", "b"]), probs(["a", "b"]))
    with pytest.raises(SchemaBankError, match=r"1 of 2 differ in their questions .*position 1"):
        check_same_problems(probs(["a", "b"]), probs(["a", "c"]))
    with pytest.raises(SchemaBankError, match=r"\(2 vs 1\)"):
        check_same_problems(probs(["a", "b"]), probs(["a"]))
    old = [{"index": i, "gold": g} for i, g in enumerate(["8", "9"])]  # before the hash
    check_same_problems(old, old)
    with pytest.raises(SchemaBankError, match="gold answers"):
        check_same_problems(old, [{"index": 0, "gold": "8"}, {"index": 1, "gold": "7"}])


def test_compare_counts_the_answers_that_differ():
    """``answers_differ`` counts problems whose extracted answers differ, right or wrong: two
    wrong answers that differ count, two equal ones do not, and neither changes the McNemar
    counts."""
    from schemabank.study.compare import compare_results

    def results(preds):
        problems = [
            {
                "index": i,
                "gold": "8",
                "strict_pred": p,
                "flexible_pred": p,
                "strict_correct": p == "8",
                "flexible_correct": p == "8",
            }
            for i, p in enumerate(preds)
        ]
        acc = sum(p == "8" for p in preds) / len(preds)
        return {
            "experiment": {"name": "x", "mode": "baseline"},
            "gsm8k": {
                "problems": problems,
                "strict": {"accuracy": acc},
                "flexible": {"accuracy": acc},
            },
        }

    a = results(["8", "7", "6", None, "8"])
    b = results(["8", "5", "6", "3", "9"])
    c = compare_results(a, b, n_resamples=100)
    for key in ("strict", "flexible"):
        assert c[key]["answers_differ"] == 3  # 7/5, None/3, 8/9
        assert (c[key]["mcnemar"]["only_a"], c[key]["mcnemar"]["only_b"]) == (1, 0)
    assert compare_results(a, a, n_resamples=100)["strict"]["answers_differ"] == 0
    for p in b["gsm8k"]["problems"]:  # results that do not record the extracted answers
        del p["strict_pred"]
    c = compare_results(a, b, n_resamples=100)
    assert c["strict"]["answers_differ"] is None and c["flexible"]["answers_differ"] == 3

"""Evaluation: perplexity against a hand computation, greedy generation independent of the batch
size, stop handling, the routing report on constructed traces, and the per-problem records of
samples.jsonl."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TEST, TRAIN
from transformers import AutoModelForCausalLM, AutoTokenizer

from schemabank.data import Problem
from schemabank.evaluation import (
    Generation,
    TokenizedText,
    _kept_tokens,
    build_prompts,
    evaluate_gsm8k,
    evaluate_perplexity,
    generate,
    nll_sum,
    perplexity,
    routing_report,
    sample_records,
    solution_steps,
    step_top1,
    token_pieces,
    write_samples,
)
from schemabank.method.attach import BankSet
from schemabank.results import load_samples, samples_path

CPU = torch.device("cpu")


def load(path):
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def hand_perplexity(model, ids: list[int], window: int) -> float:
    """exp(mean NLL) over disjoint windows, each scored position by position in float64."""
    nll, n = 0.0, 0
    for start in range(0, len(ids), window):
        w = ids[start : start + window]
        if len(w) < 2:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([w])).logits[0].double()
        for t in range(1, len(w)):
            row = logits[t - 1]
            nll -= (row[w[t]] - torch.logsumexp(row, 0)).item()
            n += 1
    return math.exp(nll / n)


@pytest.mark.parametrize("n_tokens,window", [(64, 16), (70, 16), (65, 16), (40, 64)])
def test_perplexity_matches_hand_computation(tiny_llama, n_tokens, window):
    tok, model = load(tiny_llama)
    text = " ".join(q for q, _ in TRAIN)
    ids = tok(text).input_ids[:n_tokens]
    got = perplexity(model, torch.tensor(ids), window, CPU, False, tokens_per_batch=32)
    assert got["ppl"] == pytest.approx(hand_perplexity(model, ids, window), rel=1e-5)
    full, rest = divmod(n_tokens, window)
    assert got["windows"] == full + (rest >= 2)
    assert got["tokens"] == full * (window - 1) + (rest - 1 if rest >= 2 else 0)


@pytest.mark.parametrize("chunk", [5, 8192])
def test_nll_sum_equals_the_models_own_logits(tiny_llama, chunk):
    """The chunked head over the decoder's states gives the full logits' summed cross-entropy,
    with a LoRA adapter and an active bank in the model (their hooks run in the decoder)."""
    from peft import LoraConfig, get_peft_model

    tok, model = load(tiny_llama)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    banks = BankSet.attach(model, [-1], 8, 4, 2, 4)
    with torch.no_grad():
        next(iter(banks)).gain.fill_(3.0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)  # an adapter that changes the output
        ids = torch.tensor([tok(q).input_ids[:12] for q, _ in TRAIN[:3]])  # (3, 12)
        logits = model(input_ids=ids).logits[:, :-1]
        want = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"
        )
        got = nll_sum(model, ids, chunk=chunk)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_nll_sum_uses_the_models_logits_when_the_head_caps_them(tiny_llama):
    """A model whose head does more than a projection (here: a forward that halves the logits,
    flagged by ``final_logit_softcapping``) is scored on its own logits, not on head(states)."""
    tok, model = load(tiny_llama)
    ids = torch.tensor([tok(TRAIN[0][0]).input_ids[:10]])
    with torch.no_grad():
        plain = nll_sum(model, ids, chunk=3).item()
        forward = model.forward

        def capped(*args, **kwargs):
            out = forward(*args, **kwargs)
            out.logits = out.logits * 0.5
            return out

        model.forward = capped
        model.config.final_logit_softcapping = 30.0
        got = nll_sum(model, ids, chunk=3).item()
        logits = model(input_ids=ids).logits[:, :-1]
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[0, 1:], reduction="sum")
    assert got == pytest.approx(want.item(), rel=1e-6)
    assert got != pytest.approx(plain, rel=1e-3)


def test_perplexity_reports_base_beside_adapter(tiny_llama):
    tok, model = load(tiny_llama)
    banks = BankSet.attach(model, [-1], 8, 4, 2, 4)
    with torch.no_grad():
        next(iter(banks)).gain.fill_(3.0)
    text = " ".join(a for _, a in TRAIN)
    out = evaluate_perplexity(model, tok, text, [16, 32], 100, CPU, False, banks.disabled)
    for w in (16, 32):
        assert out[f"ppl_{w}"] != out[f"base_ppl_{w}"]
        assert out["windows"][str(w)]["ratio_to_base"] == pytest.approx(
            out[f"ppl_{w}"] / out[f"base_ppl_{w}"]
        )
    with banks.disabled():
        plain = evaluate_perplexity(model, tok, text, [16], 100, CPU, False)
    assert plain["ppl_16"] == pytest.approx(out["base_ppl_16"]) and "base_ppl_16" not in plain


def test_perplexity_of_a_text_tokenised_in_the_background(tiny_llama):
    """A :class:`TokenizedText` (what a run makes before training) gives the text's own
    perplexity; a tokenizer error reaches the caller when the ids are asked for."""
    tok, model = load(tiny_llama)
    text = " ".join(a for _, a in TRAIN)
    pre = TokenizedText(tok, text)
    got = evaluate_perplexity(model, tok, pre, [16, 32], 100, CPU, False)
    assert got == evaluate_perplexity(model, tok, text, [16, 32], 100, CPU, False)
    with pytest.raises(ValueError, match="text input must be"):
        TokenizedText(tok, 12345).ids()


def test_greedy_generation_does_not_depend_on_batch_size(tiny_qwen2):
    tok, model = load(tiny_qwen2)
    prompts = [f"Question: {q}\nAnswer:" for q, _ in TRAIN[:5]]
    one = generate(model, tok, prompts, 1, 10, CPU, False)
    many = generate(model, tok, prompts, 4, 10, CPU, False)
    assert [g.text for g in one] == [g.text for g in many]
    assert [g.gen_ids for g in one] == [g.gen_ids for g in many]
    assert one[0].prompt_ids == tok(prompts[0]).input_ids


def test_kept_tokens_stop_at_eos_and_question(tiny_llama):
    tok, _ = load(tiny_llama)
    answer = tok(" 3+5=8\n#### 8\n\n", add_special_tokens=False).input_ids
    more = tok("Question: next one", add_special_tokens=False).input_ids
    ids, text = _kept_tokens(tok, answer + more, "Question:")
    assert text == " 3+5=8\n#### 8\n\n" and ids == answer
    ids, text = _kept_tokens(tok, answer + [tok.eos_token_id] + more, "Question:")
    assert ids == answer and "Question" not in text


class CharTok:
    """A tokenizer stub with one character per token id (its code point)."""

    def batch_decode(self, ids, skip_special_tokens=True):
        return [chr(i[0]) for i in ids]


def test_step_top1_splits_lines():
    gen = [ord(c) for c in "ab\n\n cd\ne"]
    top1 = np.arange(len(gen))
    # whitespace-only tokens belong to no step; an empty line is an empty step
    assert step_top1(CharTok(), gen, top1) == [[0, 1], [], [5, 6], [8]]


def test_routing_report_on_a_constructed_trace():
    problems = [Problem(q, a) for q, a in TEST[:2]]

    text0, text1 = "ab\ncd\nef", "x\ny"
    gens = [
        Generation([1, 2], [ord(c) for c in text0], text0),
        Generation([1], [ord(c) for c in text1], text1),
    ]
    # top-1 schema per token (prompt first); second column is the second choice
    top1_0 = [0, 0, 5, 5, 9, 6, 6, 9, 5, 5]  # steps: ab->5, cd->6, ef->5 (reused once)
    top1_1 = [1, 2, 9, 2]  # steps: x->2, y->2 (reused once)
    routes = {3: [np.stack([top1_0, [7] * 10], 1), np.stack([top1_1, [7] * 4], 1)]}
    rep = routing_report(CharTok(), gens, routes, problems, num_schemas=10)
    layer = rep["layers"]["3"]
    assert layer["schema_reuse"] == 1.0  # (1 + 1) / 2
    assert layer["dominant_schema"] == [5, 2]
    assert layer["tokens"] == 14
    assert layer["share"][7] == pytest.approx(14 / 28)
    assert sum(layer["share"]) == pytest.approx(1.0)
    assert rep["summary"]["schema_reuse"] == 1.0
    counts = np.array(layer["tag_schema"]["counts"])
    # every tag of a problem gets all its routing slots: 10 tokens x 2 and 4 tokens x 2
    assert counts.sum() == len(problems[0].tags) * 20 + len(problems[1].tags) * 8


def test_evaluate_gsm8k_scores_and_routes(tiny_llama):
    tok, model = load(tiny_llama)
    banks = BankSet.attach(model, [0, 1], 8, 4, 2, 4)
    problems = [Problem(q, a) for q, a in TEST]
    shots = [Problem(q, a) for q, a in TRAIN[:2]]
    out = evaluate_gsm8k(model, tok, problems, shots, banks, 3, 5, CPU, False, num_samples=2)
    g = out["gsm8k"]
    assert g["n"] == 4 and g["shots"] == 2 and len(g["problems"]) == 4 and len(g["samples"]) == 2
    assert g["strict"]["total"] == 4 and g["problems"][3]["gold"] == "250"
    assert g["samples"][0]["question"] == TEST[0][0]
    assert set(out["routing"]["layers"]) == {"0", "1"}
    prompt_tokens = sum(len(tok(p).input_ids) for p in build_prompts(problems, shots))
    for layer in out["routing"]["layers"].values():
        assert len(layer["dominant_schema"]) == 4
        # every prompt token and every kept generated token (at most 5 a problem) is routed
        assert prompt_tokens < layer["tokens"] <= prompt_tokens + 4 * 5


def test_samples_carry_per_token_routing(tiny_llama):
    tok, model = load(tiny_llama)
    banks = BankSet.attach(model, [1], 8, 4, 2, 4)
    problems = [Problem(q, a) for q, a in TEST[:2]]
    out = evaluate_gsm8k(model, tok, problems, [], banks, 2, 6, CPU, False, num_samples=2)
    for sample in out["gsm8k"]["samples"]:
        assert "".join(sample["tokens"]) == sample["output"]
        assert len(sample["top1"]["1"]) == len(sample["tokens"])
        assert all(0 <= s < 8 for s in sample["top1"]["1"])


def test_token_pieces_equal_each_generations_own_decoding(tiny_llama):
    """Decoding each distinct token once gives every generation's pieces as decoding its own
    tokens one by one does, special tokens (skipped: '') and split characters included."""
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    texts = ["Natalia sold 48 clips.\n\nShe sold 24 × 2 = 48 €", "Answer: 72\n#### 72", ""]
    gens = [Generation([1], tok(t, add_special_tokens=False)["input_ids"], t) for t in texts]
    gens[1].gen_ids.append(tok.eos_token_id)
    assert any(len(g.gen_ids) > 5 for g in gens)
    expected = [tok.batch_decode([[t] for t in g.gen_ids], skip_special_tokens=True) for g in gens]
    assert token_pieces(tok, gens) == expected
    assert expected[1][-1] == ""


def test_records_name_each_lines_dominant_schema():
    gen = Generation([7, 7], [ord(c) for c in "ab\n\n cd"], "ab\n\n cd")
    routes = {
        1: [np.array([[0, 1], [0, 1], [3, 0], [4, 0], [9, 9], [9, 9], [9, 9], [5, 0], [5, 0]])]
    }
    steps = solution_steps(CharTok(), [gen], routes)
    assert steps == {1: [[[3, 4], [], [5, 5]]]}
    scored = [{"strict_pred": None, "strict_correct": False}]
    (record,) = sample_records([Problem(*TEST[0])], ["prompt"], [gen], scored, steps)
    # line "ab": schemas 3 and 4 once each (the smaller wins); "" has no text; " cd": 5
    assert record["dominant_schemas"] == {"1": [3, None, 5]}
    assert record["gold"] == "13" and record["prompt"] == "prompt" and record["index"] == 0


@pytest.mark.parametrize("with_banks", [True, False], ids=["banks", "no-banks"])
def test_records_keep_every_generation(tiny_llama, with_banks):
    """One samples.jsonl record per problem, in test-set order, agreeing with the per-problem
    outcomes; dominant schemas per line and bank only with banks."""
    tok, model = load(tiny_llama)
    banks = BankSet.attach(model, [0, 1], 8, 4, 2, 4) if with_banks else None
    problems = [Problem(q, a) for q, a in TEST]
    shots = [Problem(q, a) for q, a in TRAIN[:1]]
    out = evaluate_gsm8k(model, tok, problems, shots, banks, 3, 8, CPU, False, num_samples=1)
    records, g = out["records"], out["gsm8k"]
    assert len(records) == len(problems)
    assert [r["index"] for r in records] == list(range(len(problems)))
    assert [r["question"] for r in records] == [q for q, _ in TEST]
    assert [r["prompt"] for r in records] == build_prompts(problems, shots)
    assert records[0]["output"] == g["samples"][0]["output"]
    fields = ("gold", "strict_pred", "flexible_pred", "strict_correct", "flexible_correct")
    assert [{k: r[k] for k in fields} for r in records] == [
        {k: p[k] for k in fields} for p in g["problems"]
    ]
    for r in records:
        assert ("dominant_schemas" in r) == with_banks
        for steps in r.get("dominant_schemas", {}).values():
            assert len(steps) == r["output"].count("\n") + 1
            assert all(s is None or 0 <= s < 8 for s in steps)
    if with_banks:
        assert set(records[0]["dominant_schemas"]) == {"0", "1"}


def test_samples_file_round_trip_and_naming(tmp_path):
    records = [
        {"index": 0, "output": "x\n#### 1", "dominant_schemas": {"1": [3, None]}},
        {"index": 1},
    ]
    write_samples(tmp_path / "samples.jsonl", records)
    lines = (tmp_path / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
    assert load_samples(tmp_path) == records == load_samples(tmp_path / "results.json")
    assert load_samples(tmp_path / "eval_results.json") is None  # an older run: none
    named = {
        "results.json": "samples.jsonl",
        "eval_results.json": "eval_samples.jsonl",
        "limit2.json": "limit2_samples.jsonl",
        "oracle_results_seed42.json": "oracle_samples_seed42.jsonl",
    }
    for results, samples in named.items():
        assert samples_path(tmp_path / "runs" / results) == tmp_path / "runs" / samples
    assert len({samples_path(tmp_path / n) for n in named}) == len(named)  # none overwritten


def test_prompts_longer_than_the_context_lose_their_start_and_are_counted(tiny_llama, capsys):
    tok, model = load(tiny_llama)
    room = len(tok(f"Question: {TEST[0][0]}\nAnswer:").input_ids) + 2
    model.config.max_position_embeddings = room + 6  # a short context: `room` prompt tokens
    long_q = " ".join(q for q, _ in TRAIN)  # far longer
    problems = [Problem(long_q, TRAIN[0][1]), Problem(*TEST[0])]
    out = evaluate_gsm8k(model, tok, problems, [], None, 2, 6, CPU, False)["gsm8k"]
    assert out["max_prompt_tokens"] == room and out["truncated_prompts"] == 1
    assert "1 of 2 prompts were longer than the model's context" in capsys.readouterr().err
    prompt = f"Question: {long_q}\nAnswer:"
    gens = generate(model, tok, [prompt], 1, 6, CPU, False, max_prompt_tokens=room)
    full = tok(prompt).input_ids
    assert gens[0].prompt_ids == full[-room:] and gens[0].truncated == len(full) - room


def test_windows_longer_than_the_context_are_refused(tiny_llama):
    from schemabank.config import EvalConfig
    from schemabank.errors import SchemaBankError
    from schemabank.evaluation import check_context

    tok, model = load(tiny_llama)
    model.config.max_position_embeddings = 64
    with pytest.raises(
        SchemaBankError, match=r"a window of 128 tokens is longer than the model's context \(64"
    ):
        check_context(model, EvalConfig(ppl_windows=[16, 128]))
    with pytest.raises(SchemaBankError, match="max_new_tokens: 64 leaves no room"):
        check_context(model, EvalConfig(ppl_windows=[16], max_new_tokens=64))
    check_context(model, EvalConfig(ppl_windows=[16, 64], max_new_tokens=8))
    with pytest.raises(SchemaBankError, match="longer than the model's context"):
        evaluate_perplexity(model, tok, " ".join(q for q, _ in TRAIN) * 4, [128], None, CPU, False)

"""Evaluation (SPEC section 6): GSM8K accuracy, perplexity and routing statistics.

GSM8K: batched greedy generation with left padding (prompts sorted by length, results put back in
test-set order), at most ``max_new_tokens`` new tokens, stopping at EOS or ``Question:``. Every
token's top-k schemas at every bank (prompt and kept generation) are kept by the static decoder as
it routes them; after HF ``generate`` they are read in one teacher-forced pass over each prompt
plus its kept generation (the same routing the tokens got during generation, since the bank acts
token by token on a causal model).

Perplexity: token perplexity of WikiText-2 test text in disjoint windows (stride = window); each
window predicts its tokens 2..W from the earlier ones in the window; the last window may be
shorter.

Every test problem's generation is also kept, one record a problem (:func:`sample_records`), for
samples.jsonl beside results.json (format in :mod:`schemabank.results`).

With several processes (:mod:`schemabank.distributed`), the problems and the perplexity batches
are shared out and their per-problem (per-batch) results gathered in order before any metric is
computed, so the results are those of one process (``eval.batch_size`` is then per process).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig

from . import distributed, metrics
from .checkpoint import load_checkpoint
from .config import Config, EvalConfig, for_device
from .data import (
    Problem,
    collate,
    encode_all,
    fewshot_prompt,
    load_gsm8k,
    load_wikitext,
    question_prompt,
    split_dev,
)
from .decode import DEFAULT_ATTENTION, DEFAULT_CAPTURE, StaticDecoder, stop_test
from .errors import SchemaBankError
from .files import atomic_write_text
from .method.adapter import adapter_parameters, base_only, merged_lora
from .method.attach import BankSet
from .method.tags import TAGS, routing_targets
from .models import head_nll_sum, load_base_model, plain_head_base, resolve_base_model
from .results import build_results
from .runtime import autocast, environment, use_bf16, weight_dtype


@dataclass
class Generation:
    """One problem's generation: prompt ids, kept generated ids and the decoded text."""

    prompt_ids: list[int]
    gen_ids: list[int]
    text: str
    truncated: int = 0
    """Tokens cut from the prompt's start to fit the model's context."""
    routes: dict[int, np.ndarray] | None = None
    """Per bank layer, the top-k schema ids (L, k) of the prompt's and the kept tokens, as the
    static decoder routed them (:meth:`~schemabank.decode.StaticDecoder.decode`'s ``record``);
    None from HF ``generate`` (:func:`route_tokens` then reads them)."""


def build_prompts(problems: list[Problem], shots: list[Problem]) -> list[str]:
    """Evaluation prompts: zero-shot ``Question: ...\\nAnswer:`` for a fine-tuned model, the
    lm-evaluation-harness k-shot format when ``shots`` are given (SPEC section 5)."""
    if shots:
        return [fewshot_prompt(p.question, shots) for p in problems]
    return [question_prompt(p.question) for p in problems]


def _kept_tokens(tokenizer, ids: list[int], stop: str) -> tuple[list[int], str]:
    """Generated ids up to EOS / the stop string, and their text (stop string cut off)."""
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if stop not in text:
        return ids, text
    cut = text.index(stop)
    pieces = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=True)
    n, pos = 0, 0
    while n < len(ids) and pos + len(pieces[n]) <= cut:
        pos += len(pieces[n])
        n += 1
    return ids[:n], text[:cut]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
    bf16: bool,
    desc: str = "gsm8k",
    banks: BankSet | None = None,
    route_masks: torch.Tensor | None = None,
    max_prompt_tokens: int | None = None,
    decoder: str = "hf",
    compile_decoder: bool = False,
    decoder_attention: str | None = None,
    decoder_capture: str | None = None,
    decoder_shrink: bool = False,
    keep_routes: bool = True,
) -> list[Generation]:
    """Greedy generations for ``prompts`` (in their order). With ``route_masks`` (N, S) bool,
    one row per prompt, each prompt's tokens are routed only among its row's schemas
    (oracle routing; :meth:`BankSet.restricted`). ``decoder``: ``hf`` (HF ``generate``) or
    ``static`` (:class:`~schemabank.decode.StaticDecoder`, the same tokens; its single-token step
    captured as a CUDA graph with ``compile_decoder``, as ``decoder_capture`` says,
    :data:`~schemabank.decode.CAPTURES`, None: ``graph``; dropping finished rows as it goes
    with ``decoder_shrink``; its new tokens' attention
    ``decoder_attention``, :data:`~schemabank.decode.ATTENTIONS`, None: ``grouped``; with banks
    and ``keep_routes`` it keeps each token's schemas in :attr:`Generation.routes`)."""
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p).input_ids for p in prompts]
    cut = [max(0, len(ids) - (max_prompt_tokens or len(ids))) for ids in encoded]
    encoded = [ids[n:] for ids, n in zip(encoded, cut, strict=True)]  # from the left
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=[metrics.STOP_STRING],
    )
    static = None
    if decoder == "static" and prompts:
        longest = max(len(ids) for ids in encoded)
        static = static_decoder(
            model,
            tokenizer,
            longest + max_new_tokens,
            max_new_tokens,
            compile_decoder,
            decoder_attention,
            decoder_capture,
            decoder_shrink,
        )
    # the banks whose routing the static decoder keeps; a captured one always keeps it (0.13 s of
    # the test set's 5 s on the H200), so that its step keeps one graph: a call without routes
    # (the dev split) would otherwise compile and capture the step again
    record = []
    if static is not None and banks is not None and (keep_routes or static.graphs):
        record = list(banks)
    pad_to = None  # a captured step keeps one batch size: every batch is padded to it
    if static is not None and static.graphs:
        pad_to = captured_rows(static.batch_size, min(batch_size, len(order)), batch_size)
    stopped = stop_test(tokenizer, metrics.STOP_STRING)
    out: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(
        total=len(prompts),
        desc=desc,
        unit="problem",
        leave=False,
        disable=not distributed.is_main(),
    )
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows = idx + [idx[-1]] * (pad_to - len(idx)) if pad_to else idx
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt").to(
            device
        )
        with _restricted(banks, route_masks, rows, device), autocast(device, bf16):
            if static is not None:
                new = static.decode(
                    batch["input_ids"], batch["attention_mask"], stopped, record=record
                ).tolist()
            else:
                seqs = model.generate(**batch, generation_config=gen_cfg, tokenizer=tokenizer)
                new = seqs[:, batch["input_ids"].shape[1] :].tolist()
        P = batch["input_ids"].shape[1]
        for r, (i, ids) in enumerate(zip(idx, new[: len(idx)], strict=True)):
            kept, text = _kept_tokens(tokenizer, ids, metrics.STOP_STRING)
            routes = None
            # the prompt's real tokens (left-padded to P), then the kept ones
            if record and keep_routes:
                L = len(encoded[i])
                routes = {
                    layer: torch.cat([prompt[r, P - L :], fed[r, : len(kept)]]).numpy()
                    for layer, (prompt, fed) in zip(banks.banks, static.routes, strict=True)
                }
            out[i] = Generation(encoded[i], kept, text, cut[i], routes)
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]


def captured_rows(captured: int | None, needed: int, limit: int) -> int:
    """Rows of each batch for a captured decoder: ``needed`` (the call's batch size, its last
    batch padded up to it), or ``captured``, the batch size an earlier call captured the step
    at (the test set's, for the dev split after it), when it lies between ``needed`` and the
    call's ``limit``. Padding rows cost some decode time; a new batch size costs a compilation
    and a capture (on an H200, the dev split's 500 problems took as long as the test set's
    1,319 when they were captured apart: ``results/bench/speed_2026-12-02/``)."""
    return captured if captured is not None and needed <= captured <= limit else needed


# One static decoder per model, kept between generate calls (test, dev): its captured step and
# cache are reused while they fit.
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
CACHE_ROUNDING = (
    128  # static cache lengths are multiples of this: calls of similar prompts share one
)


def static_decoder(
    model,
    tokenizer,
    needed: int,
    max_new_tokens: int,
    compile: bool,
    attention: str | None = None,
    capture: str | None = None,
    shrink: bool = False,
) -> StaticDecoder:
    """The model's :class:`~schemabank.decode.StaticDecoder` for caches of ``needed`` tokens:
    the one kept from an earlier call when its cache is long enough and its settings match, else
    a new one (kept in its place). ``attention``, ``capture``, ``shrink``:
    :class:`StaticDecoder`'s."""
    attention, capture = attention or DEFAULT_ATTENTION, capture or DEFAULT_CAPTURE
    dec = _DECODERS.get(model)
    if (
        dec is None
        or dec.cache_len < needed
        or dec.max_new_tokens != max_new_tokens
        or dec.compiled != compile
        or dec.attention_name != attention
        or dec.capture != capture
        or dec.shrink != shrink
        or (dec.eos, dec.pad_id) != (tokenizer.eos_token_id, tokenizer.pad_token_id)
    ):
        length = -(-needed // CACHE_ROUNDING) * CACHE_ROUNDING
        dec = StaticDecoder(
            model,
            length,
            max_new_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            compile=compile,
            attention=attention,
            capture=capture,
            shrink=shrink,
        )
        _DECODERS[model] = dec
    return dec


def context_length(model) -> int | None:
    """The model's context in tokens (``max_position_embeddings``), if its config says."""
    return getattr(model.config, "max_position_embeddings", None)


def check_windows(model, windows: list[int]) -> None:
    """Refuse perplexity windows longer than the model's context."""
    ctx = context_length(model)
    too_long = [w for w in windows if ctx is not None and w > ctx]
    if too_long:
        raise SchemaBankError(
            f"eval.ppl_windows: a window of {too_long[0]} tokens is longer than the model's "
            f"context ({ctx} tokens)"
        )


def check_context(model, ecfg) -> None:
    """Refuse, before any long work, an evaluation the model's context cannot hold: perplexity
    windows longer than it, or ``max_new_tokens`` that leave no room for a prompt."""
    check_windows(model, ecfg.ppl_windows)
    ctx = context_length(model)
    if ctx is not None and ecfg.max_new_tokens >= ctx:
        raise SchemaBankError(
            f"eval.max_new_tokens: {ecfg.max_new_tokens} leaves no room for a prompt in the "
            f"model's context ({ctx} tokens)"
        )


def _restricted(banks: BankSet | None, route_masks: torch.Tensor | None, idx: list[int], device):
    """Oracle routing for the batch of rows ``idx`` of ``route_masks``, or nothing."""
    if banks is None or route_masks is None:
        return nullcontext()
    return banks.restricted(route_masks[idx].to(device))


def oracle_masks(problems: list[Problem], num_schemas: int) -> torch.Tensor:
    """(N, S) bool: the schemas each problem's tags own (all schemas for a problem without tags),
    the support of its routing target."""
    return routing_targets([p.tags for p in problems], num_schemas) > 0


@torch.no_grad()
def route_tokens(
    model,
    banks: BankSet,
    sequences: list[list[int]],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    bf16: bool,
    route_masks: torch.Tensor | None = None,
) -> dict[int, list[np.ndarray]]:
    """Top-k schema ids of every token of each sequence, per bank: ``{layer: [(L_i, k) arrays]}``
    (under oracle routing with ``route_masks``, as in :func:`generate`)."""
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in banks.banks}
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        rows = list(range(start, start + len(chunk)))
        with (
            banks.capturing(),
            _restricted(banks, route_masks, rows, device),
            autocast(device, bf16),
        ):
            model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
            topk = [b.slots(b.last_logits).cpu().numpy() for b in banks]
        for layer, t in zip(banks.banks, topk, strict=True):
            out[layer].extend(t[i, : len(s)] for i, s in enumerate(chunk))
    return out


def step_top1(tokenizer, gen_ids: list[int], top1: np.ndarray) -> list[list[int]]:
    """Split a generation's top-1 schema ids into steps (lines of the generated text)."""
    return _split_steps(
        tokenizer.batch_decode([[t] for t in gen_ids], skip_special_tokens=True), top1
    )


def _split_steps(pieces: list[str], top1: np.ndarray) -> list[list[int]]:
    """:func:`step_top1` given the text of each generated token."""
    steps: list[list[int]] = [[]]
    for piece, s in zip(pieces, np.asarray(top1).tolist(), strict=True):
        if piece.strip():
            steps[-1].append(s)
        steps.extend([] for _ in range(piece.count("\n")))
    return steps


def solution_steps(
    tokenizer, generations: list[Generation], routes: dict[int, list[np.ndarray]]
) -> dict[int, list[list[list[int]]]]:
    """Per bank, each generation's top-1 schemas split into steps (:func:`step_top1`), each
    generation's tokens decoded once for every bank (:func:`token_pieces`). ``routes``: as
    :func:`route_tokens`."""
    out: dict[int, list] = {layer: [] for layer in routes}
    pieces_of = token_pieces(tokenizer, generations)
    for i, (g, pieces) in enumerate(zip(generations, pieces_of, strict=True)):
        for layer, per_problem in routes.items():
            out[layer].append(_split_steps(pieces, per_problem[i][len(g.prompt_ids) :, 0]))
    return out


def token_pieces(tokenizer, generations: list[Generation]) -> list[list[str]]:
    """Each generation's tokens as text, one string a token (special tokens as ''), as
    ``tokenizer.batch_decode([[t] for t in gen_ids], skip_special_tokens=True)`` gives them, with
    each distinct token decoded once (a whole test set's tokens one by one took over a second)."""
    ids = sorted({t for g in generations for t in g.gen_ids})
    pieces = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=True)
    text = dict(zip(ids, pieces, strict=True))
    return [[text[t] for t in g.gen_ids] for g in generations]


def sample_records(
    problems: list[Problem],
    prompts: list[str],
    generations: list[Generation],
    scored: list[dict],
    steps: dict[int, list[list[list[int]]]] | None = None,
) -> list[dict]:
    """One samples.jsonl record per problem, in test-set order: the question, the exact prompt,
    the generated text kept, the gold answer, both extractions and outcomes, and with ``steps``
    (:func:`solution_steps`) each line's dominant schema per bank (None for a line without
    text)."""
    records = []
    for i, (p, prompt, g, s) in enumerate(zip(problems, prompts, generations, scored, strict=True)):
        record = {
            "index": i,
            "question": p.question,
            "prompt": prompt,
            "output": g.text,
            "gold": metrics.normalize_number(p.gold),
            **s,
        }
        if steps is not None:
            record["dominant_schemas"] = {
                str(layer): [metrics.dominant(ids) if ids else None for ids in per_problem[i]]
                for layer, per_problem in steps.items()
            }
        records.append(record)
    return records


def write_samples(path: Path, records: list[dict]) -> None:
    """Write samples.jsonl atomically: one JSON object a line, in the records' order."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def routing_report(
    tokenizer,
    generations: list[Generation],
    routes: dict[int, list[np.ndarray]],
    problems: list[Problem],
    num_schemas: int,
    steps: dict[int, list[list[list[int]]]] | None = None,
) -> dict:
    """Usage, entropy, reuse, tag x schema table and NMI per bank, and their means. ``steps``:
    :func:`solution_steps` of the generations, when already made."""
    tags = [p.tags for p in problems]
    steps = steps or solution_steps(tokenizer, generations, routes)
    layers = {}
    for layer, per_problem in routes.items():
        usage = metrics.schema_usage(np.concatenate(per_problem), num_schemas)
        solutions = steps[layer]
        dominant = [metrics.dominant(r[:, 0]) for r in per_problem]
        layers[str(layer)] = {
            **usage,
            "schema_reuse": metrics.schema_reuse(solutions),
            "tag_schema": {
                "tags": list(TAGS),
                "counts": metrics.tag_schema_table(tags, per_problem, TAGS, num_schemas),
            },
            "dominant_schema": dominant,
            "nmi_tags_dominant": metrics.tag_schema_nmi(tags, dominant),
            "tag_routing": metrics.tag_routing_scores(tags, per_problem, TAGS, num_schemas),
        }
    keys = ("active", "dead", "entropy_bits", "schema_reuse", "nmi_tags_dominant")
    summary = {k: float(np.mean([v[k] for v in layers.values()])) for k in keys}
    return {"num_schemas": num_schemas, "summary": summary, "layers": layers}


@torch.no_grad()
def routing_fit(
    model,
    tokenizer,
    banks: BankSet,
    problems: list[Problem],
    max_length: int,
    batch_size: int,
    device: torch.device,
    bf16: bool,
) -> dict:
    """How close the routers come to stage 1's routing targets on ``problems`` (held out, as
    training text without the tag line), in nats of cross-entropy.

    For each region of tokens (``all``; ``question``, the prompt ``Question: ...\nAnswer:``;
    ``answer``, the reference solution; ``last``, each problem's last token, which has seen the
    whole solution), the router's cross-entropy to the problem's target (mean over tokens and
    banks), the uniform router's ``ln S`` and the perfect router's (the mean entropy of the
    targets over the same tokens), and the share of the gap between them that the router closes:
    ``(ln S - ce) / (ln S - perfect)`` (1: perfect, 0: no better than uniform). Per bank too.
    """
    S = next(iter(banks)).num_schemas
    encoded = encode_all(tokenizer, problems, max_length)
    targets = routing_targets([p.tags for p in problems], S)  # (N, S)
    entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1)  # (N,)
    regions = ("all", "question", "answer", "last")
    sums = {layer: dict.fromkeys(regions, 0.0) for layer in banks.banks}
    perfect, count = dict.fromkeys(regions, 0.0), dict.fromkeys(regions, 0)
    for start in range(0, len(problems), batch_size):
        batch = collate(encoded[start : start + batch_size], tokenizer.pad_token_id)
        tgt = targets[start : start + batch_size].to(device)  # (B, S)
        ent = entropy[start : start + batch_size]  # (B,)
        real = batch["attention_mask"].bool()  # (B, T)
        last = torch.zeros_like(real)
        last[torch.arange(len(real)), real.sum(1) - 1] = True
        where = {
            "all": real,
            "question": real & (batch["labels"] == -100),
            "answer": batch["labels"] != -100,
            "last": last,
        }
        with banks.capturing(), autocast(device, bf16):
            model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                logits_to_keep=1,
            )
            ce = {  # (B, T) per bank: each token's cross-entropy to its problem's target
                layer: -(b.last_logits.float().log_softmax(-1) * tgt[:, None, :]).sum(-1).cpu()
                for layer, b in banks.banks.items()
            }
        for region, m in where.items():
            count[region] += int(m.sum())
            perfect[region] += float((ent[:, None] * m).sum())
            for layer, c in ce.items():
                sums[layer][region] += float(c[m].sum())

    def summary(ce_sum: dict) -> dict:
        out = {}
        for r in regions:
            ce, best = ce_sum[r] / max(count[r], 1), perfect[r] / max(count[r], 1)
            gap = math.log(S) - best
            out[r] = {
                "ce": ce,
                "perfect": best,
                "gap_closed": (math.log(S) - ce) / gap if gap > 0 else None,
                "tokens": count[r],
            }
        return out

    mean = {r: float(np.mean([sums[layer][r] for layer in sums])) for r in regions}
    return {
        "problems": len(problems),
        "uniform": math.log(S),
        "regions": summary(mean),
        "layers": {str(layer): summary(v) for layer, v in sums.items()},
    }


def evaluate_gsm8k(
    model,
    tokenizer,
    problems: list[Problem],
    shots: list[Problem],
    banks: BankSet | None,
    batch_size: int | None,
    max_new_tokens: int,
    device: torch.device,
    bf16: bool,
    num_samples: int = 10,
    oracle: bool = False,
    report_routing: bool = True,
    decoder: str = "hf",
    compile_decoder: bool = False,
    decoder_attention: str | None = None,
    decoder_capture: str | None = None,
    decoder_shrink: bool = False,
    merge_lora: bool = False,
) -> dict:
    """Accuracy (strict and flexible, with Wilson intervals), per-problem outcomes, samples, and
    the routing report when banks are attached; ``records``: every problem's
    :func:`sample_records` (for samples.jsonl). ``batch_size`` None picks one for the device.
    With several processes, each generates for its :func:`~schemabank.distributed.shard` of the
    problems. ``oracle``: route each problem's tokens among its tags' schemas only (the tags of
    its reference solution; :func:`oracle_masks`). ``report_routing`` False leaves out the
    routing report (the banks still act). ``decoder``, ``compile_decoder``,
    ``decoder_attention``, ``decoder_capture``, ``decoder_shrink``: as
    :func:`generate`. ``merge_lora``: generate with the LoRA weights merged into the base
    weights (:func:`~schemabank.method.adapter.merged_lora`), restored afterwards."""
    # One batch of the whole test set is the fastest on a GPU: each step then serves every problem
    # (docs/log.md#speed has the measurement).
    batch_size = batch_size or (1536 if device.type == "cuda" else 16)
    t0 = time.perf_counter()
    prompts = build_prompts(problems, shots)
    mine = distributed.shard(len(problems))
    masks = None
    if oracle and banks is not None:
        masks = oracle_masks([problems[i] for i in mine], next(iter(banks)).num_schemas)
    ctx = context_length(model)
    max_prompt = ctx - max_new_tokens if ctx else None  # longer prompts lose their start
    with merged_lora(model) if merge_lora else nullcontext():
        my_gens = generate(
            model,
            tokenizer,
            [prompts[i] for i in mine],
            batch_size,
            max_new_tokens,
            device,
            bf16,
            banks=banks,
            route_masks=masks,
            max_prompt_tokens=max_prompt,
            decoder=decoder,
            compile_decoder=compile_decoder,
            decoder_attention=decoder_attention,
            decoder_capture=decoder_capture,
            decoder_shrink=decoder_shrink,
            keep_routes=report_routing,
        )
    gens = distributed.gather_shards(my_gens, len(problems))
    gen_time = time.perf_counter() - t0
    truncated = sum(1 for g in gens if g.truncated)
    if truncated and distributed.is_main():
        print(
            f"schemabank: warning: {truncated} of {len(gens)} prompts were longer than the "
            f"model's context leaves room for ({ctx} tokens less {max_new_tokens} new ones) and "
            "lost their start (gsm8k.truncated_prompts in results.json)",
            file=sys.stderr,
        )
    scored = [metrics.score(g.text, p.gold) for g, p in zip(gens, problems, strict=True)]
    result = {
        "n": len(problems),
        "shots": len(shots),
        "max_new_tokens": max_new_tokens,
        "max_prompt_tokens": max_prompt,
        "truncated_prompts": truncated,
        "batch_size": batch_size,
        "strict": metrics.accuracy_summary([s["strict_correct"] for s in scored]),
        "flexible": metrics.accuracy_summary([s["flexible_correct"] for s in scored]),
        "problems": [
            {
                "index": i,
                "question_sha256": metrics.question_hash(p.question),
                "gold": metrics.normalize_number(p.gold),
                **s,
            }
            for i, (p, s) in enumerate(zip(problems, scored, strict=True))
        ],
        "samples": [
            {
                "index": i,
                "question": problems[i].question,
                "gold": problems[i].gold,
                "output": gens[i].text,
                **scored[i],
            }
            for i in range(min(num_samples, len(problems)))
        ],
        "routing_mode": "oracle" if oracle and banks is not None else "learned",
        "generated_tokens": sum(len(g.gen_ids) for g in gens),
        "generation_s": gen_time,
    }
    routing, steps = None, None
    if banks is not None and report_routing:
        if all(g.routes is not None for g in my_gens):  # the static decoder kept them
            my_routes = {layer: [g.routes[layer] for g in my_gens] for layer in banks.banks}
        else:
            my_routes = route_tokens(
                model,
                banks,
                [g.prompt_ids + g.gen_ids for g in my_gens],
                tokenizer.pad_token_id,
                batch_size,
                device,
                bf16,
                masks,
            )
        per_problem = distributed.gather_shards(
            list(zip(*my_routes.values(), strict=True)), len(problems)
        )  # per problem: its (L, k) array for each bank
        routes = {layer: [arrays[b] for arrays in per_problem] for b, layer in enumerate(my_routes)}
        steps = solution_steps(tokenizer, gens, routes)
        S = next(iter(banks)).num_schemas
        routing = routing_report(tokenizer, gens, routes, problems, S, steps)
        for sample in result["samples"]:  # per generated token: its text and top-1 schema per bank
            g = gens[sample["index"]]
            sample["tokens"] = tokenizer.batch_decode([[t] for t in g.gen_ids])
            sample["top1"] = {
                str(layer): routes[layer][sample["index"]][len(g.prompt_ids) :, 0].tolist()
                for layer in routes
            }
    records = sample_records(problems, prompts, gens, scored, steps)
    result["time_s"] = time.perf_counter() - t0
    return {"gsm8k": result, "routing": routing, "records": records}


# Tokens a perplexity batch holds, per device type: on a GPU, batches large enough that the eager
# forward passes are not bound by launching kernels; on the CPU, small ones, where SDPA's
# attention weights (windows x heads x W x W floats) are materialised.
PPL_BATCH_TOKENS = {"cuda": 32768, "cpu": 8192}


def nll_sum(model, ids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Summed next-token negative log-likelihood (float32, on the device) of ``ids`` (B, W):
    position t predicts t + 1. The vocabulary projection runs on ``chunk`` positions at a time
    (:func:`~schemabank.models.head_nll_sum`), so the (B, W, V) float logits never exist whole
    (the model's own logits when its head does more than a projection,
    :func:`~schemabank.models.plain_head_base`)."""
    y = ids[:, 1:].reshape(-1)  # (B·(W-1),)
    base = plain_head_base(model)
    if base is None:
        logits = model(input_ids=ids).logits[:, :-1]  # (B, W-1, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y, reduction="sum")
    hidden = base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state  # (B, W, H)
    return head_nll_sum(base, hidden[:, :-1].reshape(-1, hidden.shape[-1]), y, chunk)


@torch.no_grad()
def perplexity(
    model,
    token_ids: torch.Tensor,
    window: int,
    device: torch.device,
    bf16: bool,
    tokens_per_batch: int | None = None,
) -> dict:
    """Token perplexity over disjoint windows of ``window`` tokens of a 1-D id tensor.

    The windows go through the model in batches of about ``tokens_per_batch`` tokens (default
    :data:`PPL_BATCH_TOKENS` of the device's type), the vocabulary projection in chunks
    (:func:`nll_sum`). With several processes, each computes a share of the batches of windows;
    the per-batch sums are gathered and added in order, as one process adds them."""
    if tokens_per_batch is None:
        tokens_per_batch = PPL_BATCH_TOKENS.get(device.type, PPL_BATCH_TOKENS["cpu"])
    starts = [s for s in range(0, len(token_ids), window) if len(token_ids) - s >= 2]
    full = [s for s in starts if s + window <= len(token_ids)]
    per_batch = max(1, tokens_per_batch // window)
    batches = [full[i : i + per_batch] for i in range(0, len(full), per_batch)]
    batches += [[s] for s in starts if s + window > len(token_ids)]
    mine = distributed.shard(len(batches))
    sums = []  # (nll, tokens) per batch of this process
    for b in tqdm(mine, desc=f"ppl@{window}", leave=False, disable=not distributed.is_main()):
        ids = torch.stack([token_ids[s : s + window] for s in batches[b]]).to(device)
        with autocast(device, bf16):
            nll = nll_sum(model, ids).item()
        sums.append((nll, ids[:, 1:].numel()))
    nll, count = 0.0, 0
    for batch_nll, batch_count in distributed.gather_shards(sums, len(batches)):
        nll += batch_nll
        count += batch_count
    return {
        "ppl": float(np.exp(nll / count)) if count else float("nan"),
        "tokens": count,
        "windows": len(starts),
    }


def text_ids(tokenizer, text: str) -> torch.Tensor:
    """A text's token ids as the perplexity reads it (1-D, no special tokens)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)


class TokenizedText:
    """:func:`text_ids` of a text, tokenised in a background thread from the moment it is made,
    by a copy of the tokenizer: a run makes it before training, so that WikiText-2 (over a
    second on one core) is ready by the evaluation (the fast tokenizer leaves the interpreter
    free while it works). :meth:`ids` waits for the result (and raises its error)."""

    def __init__(self, tokenizer, text: str):
        self.text = text
        pool = ThreadPoolExecutor(1, thread_name_prefix="schemabank-tokenize")
        self._ids = pool.submit(text_ids, copy.deepcopy(tokenizer), text)
        pool.shutdown(wait=False)  # the thread ends with its one task

    def ids(self) -> torch.Tensor:
        return self._ids.result()


def evaluate_perplexity(
    model,
    tokenizer,
    text: str | TokenizedText,
    windows: list[int],
    max_tokens: int | None,
    device: torch.device,
    bf16: bool,
    base_context=None,
) -> dict:
    """PPL at each window size; with ``base_context`` (a context manager factory that turns the
    adapter off) also the base model's, measured on the same tokens. ``text``: the text, or a
    :class:`TokenizedText` of it already under way."""
    ids = text.ids() if isinstance(text, TokenizedText) else text_ids(tokenizer, text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    out: dict = {"tokens": len(ids), "windows": {}}
    check_windows(model, windows)
    for w in windows:
        entry = perplexity(model, ids, w, device, bf16)
        out[f"ppl_{w}"] = entry["ppl"]
        if base_context is not None:
            with base_context():
                base = perplexity(model, ids, w, device, bf16)
            out[f"base_ppl_{w}"] = base["ppl"]
            entry["base_ppl"] = base["ppl"]
            entry["ratio_to_base"] = entry["ppl"] / base["ppl"]
        out["windows"][str(w)] = entry
    return out


def generation_options(ecfg: EvalConfig) -> dict:
    """The keyword arguments of :func:`evaluate_gsm8k` that say how GSM8K is generated, from
    the config's ``eval`` section: the decoder, its capture, shrinking and attention, and the
    LoRA merge."""
    return {
        "decoder": ecfg.decoder,
        "compile_decoder": ecfg.compile_decoder,
        "decoder_attention": ecfg.decoder_attention,
        "decoder_capture": ecfg.decoder_capture,
        "decoder_shrink": ecfg.decoder_shrink,
        "merge_lora": ecfg.merge_lora,
    }


def run_evaluation(
    model,
    tokenizer,
    banks: BankSet | None,
    test: list[Problem],
    shots: list[Problem],
    wikitext: str | TokenizedText | None,
    ecfg,
    device: torch.device,
    bf16: bool,
    base_context=None,
    dev: list[Problem] = (),
    oracle: bool = False,
    max_length: int = 512,
) -> dict:
    """GSM8K, routing and perplexity results for one model, as stored in results.json, and
    ``records`` for samples.jsonl; with ``dev`` problems (held out of training) also their GSM8K
    accuracy, as ``gsm8k_dev``.
    With banks, also :func:`routing_fit` on the dev and the test problems (training text of at
    most ``max_length`` tokens). ``oracle``: GSM8K with oracle routing (perplexity text has no
    tags: the routers route it)."""
    model.eval()
    t0 = time.perf_counter()
    out = evaluate_gsm8k(
        model,
        tokenizer,
        test,
        shots,
        banks,
        ecfg.batch_size,
        ecfg.max_new_tokens,
        device,
        bf16,
        ecfg.num_samples,
        oracle=oracle,
        **generation_options(ecfg),
    )
    out["schema_reuse"] = out["routing"]["summary"]["schema_reuse"] if out["routing"] else 0.0
    t1 = time.perf_counter()
    timings = {"gsm8k_s": t1 - t0}
    if dev:  # the banks stay attached; the routing report is the test set's alone
        out["gsm8k_dev"] = evaluate_gsm8k(
            model,
            tokenizer,
            dev,
            shots,
            banks,
            ecfg.batch_size,
            ecfg.max_new_tokens,
            device,
            bf16,
            num_samples=0,
            oracle=oracle,
            report_routing=False,
            **generation_options(ecfg),
        )["gsm8k"]
        timings["gsm8k_dev_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
    if banks is not None:
        fit_batch = ecfg.batch_size or (256 if device.type == "cuda" else 16)
        splits = {"dev": list(dev), "test": test} if dev else {"test": test}
        out["routing_fit"] = {
            name: routing_fit(model, tokenizer, banks, probs, max_length, fit_batch, device, bf16)
            for name, probs in splits.items()
        }
        timings["routing_fit_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
    out["perplexity"] = None
    if wikitext is not None and ecfg.ppl_windows:
        out["perplexity"] = evaluate_perplexity(
            model,
            tokenizer,
            wikitext,
            ecfg.ppl_windows,
            ecfg.ppl_max_tokens,
            device,
            bf16,
            base_context if ecfg.base_perplexity else None,
        )
    out["timings"] = {**timings, "perplexity_s": time.perf_counter() - t1}
    return out


def evaluate_run(cfg: Config, model, tokenizer, banks, test, shots, wikitext, dev, device, bf16):
    """:func:`run_evaluation` of a trained adapter as its config says: the eval section, oracle
    routing (``eval.routing``, else ``schemabank.routing``), the training text's length for the
    routing fit, and the base model's perplexity with the adapter off."""
    return run_evaluation(
        model,
        tokenizer,
        banks,
        test,
        shots,
        wikitext,
        cfg.eval,
        device,
        bf16,
        lambda: base_only(model, banks),
        dev,
        oracle=(cfg.eval.routing or cfg.schemabank.routing) == "oracle",
        max_length=cfg.training.max_length,
    )


# ---------------------------------------------------------------------------------------------
# Evaluating a saved run, or a bare base model


def load_eval_data(
    ecfg: EvalConfig, data_dir=None, dev_size: int = 0
) -> tuple[list[Problem], list[Problem], list[Problem], str | None]:
    """GSM8K test problems (the first ``limit``), the shots, the dev problems (the last
    ``dev_size`` train problems, as training held them out) and the WikiText-2 text (if needed)."""
    test = load_gsm8k("test", data_dir)[: ecfg.limit]
    train = load_gsm8k("train", data_dir) if ecfg.shots or dev_size else []
    train, dev = split_dev(train, dev_size)
    wikitext = load_wikitext(data_dir) if ecfg.ppl_windows else None
    return test, train[: ecfg.shots], dev, wikitext


def evaluate_checkpoint(
    checkpoint: Path, cfg: Config, data_dir=None, samples_path: Path | None = None
) -> dict:
    """Re-evaluate a saved run without training; results of kind ``checkpoint-eval``.

    ``cfg`` is the run's config.yaml (its eval section, device and precision are used).
    Launched as several processes, they share the evaluation out. With ``samples_path``, every
    problem's generation is written there (samples.jsonl, by rank 0).
    """
    with distributed.session(cfg.training.device) as device:
        return _evaluate_checkpoint(checkpoint, cfg, device, data_dir, samples_path)


def _keep_samples(ev: dict, samples_path: Path | None) -> None:
    """Take the records out of an evaluation and write them to ``samples_path`` (rank 0)."""
    records = ev.pop("records")
    if samples_path is not None and distributed.is_main():
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        write_samples(samples_path, records)


def _evaluate_checkpoint(
    checkpoint: Path, cfg: Config, device: torch.device, data_dir, samples_path
) -> dict:
    t0 = time.perf_counter()
    cfg = for_device(cfg, device.type, distributed.world_size())  # null speed keys decided
    bf16 = use_bf16(cfg.training.precision, device)
    test, shots, dev, wikitext = load_eval_data(cfg.eval, data_dir, cfg.data.dev_size)
    with distributed.main_first():
        tok, model, banks, info = load_checkpoint(
            checkpoint, device, weight_dtype(cfg.model.dtype, device)
        )
    check_context(model, cfg.eval)
    t1 = time.perf_counter()
    ev = evaluate_run(cfg, model, tok, banks, test, shots, wikitext, dev, device, bf16)
    _keep_samples(ev, samples_path)
    timings = {"setup_s": t1 - t0, **ev.pop("timings"), "total_s": time.perf_counter() - t0}
    return build_results(
        cfg=cfg,
        info=info,
        env=environment(device),
        evaluation=ev,
        parameters=adapter_parameters(model),
        training=None,
        timings=timings,
        kind="checkpoint-eval",
    )


def evaluate_base_model(
    name: str,
    ecfg: EvalConfig,
    data_dir=None,
    device_name: str = "auto",
    precision: str = "auto",
    dtype: str = "auto",
    samples_path: Path | None = None,
) -> dict:
    """Evaluate a bare base model (k-shot, no adapter); results of kind ``base-eval``.
    Launched as several processes, they share the evaluation out. With ``samples_path``, every
    problem's generation is written there (samples.jsonl, by rank 0)."""
    with distributed.session(device_name) as device:
        return _evaluate_base_model(name, ecfg, data_dir, device, precision, dtype, samples_path)


def _evaluate_base_model(
    name: str,
    ecfg: EvalConfig,
    data_dir,
    device: torch.device,
    precision: str,
    dtype: str,
    samples_path: Path | None,
) -> dict:
    t0 = time.perf_counter()
    ecfg = for_device(Config(eval=ecfg), device.type, distributed.world_size()).eval
    bf16 = use_bf16(precision, device)
    test, shots, _, wikitext = load_eval_data(ecfg, data_dir)
    info = resolve_base_model(name)
    with distributed.main_first():
        tok, model = load_base_model(info, device, weight_dtype(dtype, device))
    check_context(model, ecfg)
    t1 = time.perf_counter()
    ev = run_evaluation(model, tok, None, test, shots, wikitext, ecfg, device, bf16, None)
    _keep_samples(ev, samples_path)
    timings = {"setup_s": t1 - t0, **ev.pop("timings"), "total_s": time.perf_counter() - t0}
    return build_results(
        cfg=None,
        info=info,
        env=environment(device),
        evaluation=ev,
        parameters=None,
        training=None,
        timings=timings,
        kind="base-eval",
        experiment={
            "name": f"base_{Path(name).stem}",
            "seed": None,
            "mode": "base",
            "eval": dataclasses.asdict(ecfg),
        },
    )

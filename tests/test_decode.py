"""The static-KV-cache decoder: the tokens HF ``generate`` makes, for LoRA, every router design and
oracle routing; the same stops at EOS and the stop string; the captured step (``torch.compile``)
gives the eager step's tokens; the ``eval.decoder`` keys."""

from __future__ import annotations

import numpy as np
import peft
import pytest
import torch
from conftest import TRAIN, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from schemabank.config import config_from_dict, for_device
from schemabank.decode import STOP_OVERLAP, CapturedStep, StaticDecoder, stop_test
from schemabank.errors import ConfigError
from schemabank.evaluation import _kept_tokens, evaluate_gsm8k, generate, route_tokens
from schemabank.method.attach import BankSet

CPU = torch.device("cpu")
PROMPTS = [f"Question: {q}\nAnswer:" for q, _ in TRAIN[:4]]  # four lengths


def peaky(path, router_input: str | None = None, hidden: int = 0):
    """The tiny model with larger random weights (its greedy text varies, unlike at init), LoRA
    with a nonzero update and, with ``router_input``, banks of gain 0.5 on both layers."""
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for w in base.parameters():
            if w.dim() == 2:
                w.normal_(0, 0.2)
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(base, lora).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    banks = None
    if router_input is not None:
        banks = BankSet.attach(model, [0, -1], 8, 4, 2, 4, router_input, hidden)
        with torch.no_grad():
            for b in banks:
                b.gain.fill_(0.5)  # gain 0 is the identity: routing would not show
                for p in b.router.parameters():
                    p.mul_(50.0)  # decisive routers
    return tok, model, banks


# The adapters the decoder tests run: router input, router hidden size, oracle masks (a row per
# prompt) or None.
DESIGNS = {
    "lora": (None, 0, None),
    "token": ("token", 0, None),
    "prefix_mean_mlp": ("prefix_mean", 16, None),
    "token_prefix_oracle": ("token_prefix", 0, torch.eye(8, dtype=torch.bool)[[0, 2, 4, 7]]),
}


def gen_ids(model, tok, banks=None, masks=None, decoder="hf", max_new=12, attention="model"):
    gens = generate(
        model,
        tok,
        PROMPTS,
        3,
        max_new,
        CPU,
        False,
        banks=banks,
        route_masks=masks,
        decoder=decoder,
        decoder_attention=attention,
    )
    return [g.gen_ids for g in gens]


@pytest.mark.parametrize(
    "design",
    ["lora", "token", "prefix_mean_mlp", "token_prefix_oracle"],
)
def test_static_decoder_makes_hf_generates_tokens(tiny_llama, design):
    """Left-padded batches of prompts of four lengths (batches of 3 and 1): the kept tokens of
    the static decoder are HF generate's, token for token, and the banks do change them."""
    router_input, hidden, masks = DESIGNS[design]
    tok, model, banks = peaky(tiny_llama, router_input, hidden)
    hf = gen_ids(model, tok, banks, masks)
    static = gen_ids(model, tok, banks, masks, decoder="static")
    assert static == hf
    assert gen_ids(model, tok, banks, masks, decoder="static", attention="grouped") == hf
    assert len({tuple(ids) for ids in hf}) == len(PROMPTS)  # varied text, not one token repeated
    if banks is not None:
        with banks.disabled():
            assert gen_ids(model, tok, decoder="static") != hf  # routing changed them
    if masks is not None:
        assert gen_ids(model, tok, banks, decoder="static") != hf  # oracle routing acted


@pytest.mark.parametrize("design", ["token", "prefix_mean_mlp", "token_prefix_oracle"])
@pytest.mark.parametrize("max_new", [12, 1])
def test_static_decoder_keeps_the_routing_a_second_pass_reads(tiny_llama, design, max_new):
    """The schemas the static decoder records as it routes each token (prompt and kept
    generation, the last kept token included) are those of the teacher-forced pass over the
    text that the HF path uses, for every router design and under oracle routing."""
    router_input, hidden, masks = DESIGNS[design]
    tok, model, banks = peaky(tiny_llama, router_input, hidden)
    args, kw = (model, tok, PROMPTS, 3, max_new, CPU, False), dict(banks=banks, route_masks=masks)
    gens = generate(*args, **kw, decoder="static")
    sequences = [g.prompt_ids + g.gen_ids for g in gens]
    want = route_tokens(model, banks, sequences, tok.pad_token_id, 2, CPU, False, masks)
    assert all(len(g.gen_ids) >= 1 for g in gens)
    for layer, per_problem in want.items():
        for g, expected in zip(gens, per_problem, strict=True):
            assert g.routes[layer].shape == (len(g.prompt_ids) + len(g.gen_ids), 2)
            np.testing.assert_array_equal(g.routes[layer], expected)
    assert all(b.last_logits is None and not b.capture for b in banks)  # left as it found them
    hf = generate(*args, **kw)
    assert all(g.routes is None for g in hf)  # HF generate: route_tokens reads them
    unkept = generate(*args, **kw, decoder="static", keep_routes=False)
    assert [g.gen_ids for g in unkept] == [g.gen_ids for g in gens]
    assert all(g.routes is None for g in unkept)  # not asked for: not recorded


def test_generation_with_a_shrinking_decoder(tiny_llama):
    """``decoder_shrink`` reaches the static decoder that ``generate`` keeps for the model, and
    the generations and their routing are those without it."""
    from schemabank.evaluation import _DECODERS

    tok, model, banks = peaky(tiny_llama, "token", 0)
    args, kw = (model, tok, PROMPTS, 4, 12, CPU, False), dict(banks=banks, decoder="static")
    want = generate(*args, **kw)
    got = generate(*args, **kw, decoder_shrink=True)
    assert _DECODERS[model].shrink
    assert [g.gen_ids for g in got] == [g.gen_ids for g in want]
    for g, w in zip(got, want, strict=True):
        assert all(np.array_equal(g.routes[k], w.routes[k]) for k in w.routes)


@pytest.mark.parametrize("decoder", ["hf", "static"])
def test_merged_lora_makes_the_same_answers_and_gives_the_weights_back(tiny_llama, decoder):
    """``merge_lora``: GSM8K generated with the LoRA weights merged into the base weights gives
    the unmerged evaluation's answers and routing (fp32), with both decoders; afterwards every
    weight is bit for bit what it was and the LoRA layers are unmerged (a later perplexity
    runs the adapter as trained)."""
    from schemabank.data import Problem
    from schemabank.method.adapter import merged_lora

    tok, model, banks = peaky(tiny_llama, "token", 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    problems = [Problem(q, a) for q, a in TRAIN[:4]]
    args = (model, tok, problems, [], banks, 3, 10, CPU, False)
    want = evaluate_gsm8k(*args, decoder=decoder)
    with merged_lora(model):  # what merge_lora runs under: one matmul per adapted layer
        layers = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
        seen = [m.merged for m in layers]
        merged_w = layers[0].get_base_layer().weight.detach().clone()
    assert seen and all(seen)
    assert not torch.equal(merged_w, before[f"{_base_name(model, layers[0])}.weight"])
    got = evaluate_gsm8k(*args, decoder=decoder, merge_lora=True)
    assert got["records"] == want["records"] and got["routing"] == want["routing"]
    assert not any(m.merged for m in layers)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def _base_name(model, layer) -> str:
    """The parameter-name prefix of a LoRA layer's base linear layer."""
    return next(n for n, m in model.named_modules() if m is layer.get_base_layer())


def test_evaluation_reports_the_same_routing_from_either_decoder(tiny_llama):
    """The GSM8K routing report and the per-problem records are the same whether the routing
    came from the static decoder or from the teacher-forced pass after HF generate."""
    from schemabank.data import Problem

    tok, model, banks = peaky(tiny_llama, "prefix_mean", 16)
    problems = [Problem(q, a) for q, a in TRAIN[:4]]
    args = (model, tok, problems, [], banks, 3, 10, CPU, False)
    hf = evaluate_gsm8k(*args)
    static = evaluate_gsm8k(*args, decoder="static")
    assert static["routing"] == hf["routing"]
    assert static["records"] == hf["records"]
    assert static["routing"]["layers"]  # banks were reported


def eos_and_stop(model, tok, batch, max_new: int, at: int) -> tuple[int, str]:
    """Stop rules chosen from the model's own free generations of ``batch``: an EOS id that row
    0 meets at its token ``at``, and a stop word that row 1 writes before it meets that EOS."""
    P = batch["input_ids"].shape[1]
    free = model.generate(**batch, max_new_tokens=max_new, do_sample=False, pad_token_id=0)
    free = free[:, P:].tolist()
    eos = free[0][at]
    stop = next(
        s
        for t in free[1][: free[1].index(eos) if eos in free[1] else max_new]
        if (s := tok.decode([t]).strip()).isalpha() and len(s) >= 2
    )
    return eos, stop


def kept_ids(tok, ids: list[int], eos: int, stop: str) -> list[int]:
    """The tokens a caller keeps of a row: up to EOS, then cut at the stop string."""
    return _kept_tokens(tok, ids[: ids.index(eos)] if eos in ids else ids, stop)[0]


@pytest.mark.parametrize("check_every", [1, 4])
def test_static_decoder_stops_as_hf_at_eos_and_the_stop_string(tiny_llama, check_every):
    """EOS and a stop string chosen from the model's own free generations: the kept tokens are
    HF's; rows after their EOS get pad tokens as in HF's output; the loop ends before
    ``max_new_tokens`` once every row has stopped (each check decodes only the tokens since the
    last one and a few before: with ``check_every`` 1 the stop string lies beyond the first
    window)."""
    tok, model, banks = peaky(tiny_llama, "prefix_mean")
    tok.padding_side = "left"
    batch = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    P, max_new = batch["input_ids"].shape[1], 40
    eos, stop = eos_and_stop(model, tok, batch, max_new, 6)
    cfg = GenerationConfig(
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        stop_strings=[stop],
    )
    hf = model.generate(**batch, generation_config=cfg, tokenizer=tok)[:, P:].tolist()
    decoder = StaticDecoder(model, P + max_new, max_new, eos, tok.pad_token_id)
    ours = decoder.decode(
        batch["input_ids"], batch["attention_mask"], stop_test(tok, stop), check_every
    ).tolist()

    def kept(ids):
        return kept_ids(tok, ids, eos, stop)

    assert [kept(r) for r in ours] == [kept(r) for r in hf]
    assert eos in hf[0] and stop in tok.decode(hf[1])  # both rules did cut
    assert ours[0][: len(hf[0])] == hf[0]  # pad tokens after EOS, as HF
    assert len(ours[0]) < max_new  # every row stopped: the loop ended early


@pytest.mark.parametrize("check_every", [1, 4])
@pytest.mark.parametrize(
    "step",
    [
        "eager",
        "stand-in",  # the directly captured step's sequence on the CPU (ReplayedOnCPU)
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA graph"),
        ),
    ],
)
def test_a_shrinking_decoder_keeps_every_rows_tokens_and_routing(tiny_llama, check_every, step):
    """``shrink``: rows that met EOS or the stop string leave the batch at a check; the rows
    still open go on in a smaller batch (the cache, buffers, prefix carries and oracle masks
    cut to them; a directly captured step captured again). Every row keeps the tokens and the
    routing of the decoder that keeps all rows to the end, and the oracle masks are given back."""
    device = torch.device("cuda" if step == "cuda" else "cpu")
    tok, model, banks = peaky(tiny_llama, "token_prefix", 16)
    model.to(device)
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True).to(device)
    P, max_new = batch["input_ids"].shape[1], 40
    eos, stop = eos_and_stop(model, tok, batch, max_new, 5)
    args = (model, P + max_new, max_new, eos, tok.pad_token_id)
    extra = {
        "eager": {},
        "stand-in": {"compile": True, "capture": "graph", "graph_step": ReplayedOnCPU},
        "cuda": {"compile": True, "capture": "graph"},
    }[step]
    plain, shrunk = StaticDecoder(*args), StaticDecoder(*args, shrink=True, **extra)
    drops = []
    keep_rows = shrunk._keep_rows
    shrunk._keep_rows = lambda keep, rows: drops.append(len(keep)) or keep_rows(keep, rows)
    eye = torch.eye(8, dtype=torch.bool, device=device)
    mask = eye[[1, 5, 2, 7]] | eye[[3, 3, 6, 0]]
    kw = dict(stopped=stop_test(tok, stop), check_every=check_every, record=list(banks))
    with banks.restricted(mask):
        want = plain.decode(batch["input_ids"], batch["attention_mask"], **kw).tolist()
        got = shrunk.decode(batch["input_ids"], batch["attention_mask"], **kw).tolist()
        assert all(b.route_mask is mask for b in banks)
        again = shrunk.decode(batch["input_ids"], batch["attention_mask"], **kw).tolist()

    def kept(ids):
        return kept_ids(tok, ids, eos, stop)

    assert drops and drops[0] < len(PROMPTS)  # rows did leave the batch
    assert [kept(r) for r in got] == [kept(r) for r in want]
    assert len({len(kept(r)) for r in want}) > 1  # rows stopped at different lengths
    for (p_want, f_want), (p_got, f_got) in zip(plain.routes, shrunk.routes, strict=True):
        assert torch.equal(p_got, p_want)
        for r, ids in enumerate(want):
            n = len(kept(ids)) + 1  # the kept tokens and the one after (a stop string's end)
            assert torch.equal(f_got[r, :n], f_want[r, :n])
    assert [kept(r) for r in again] == [kept(r) for r in want]  # its buffers are whole again
    with pytest.raises(ValueError, match="shrink"):
        StaticDecoder(*args, shrink=True, compile=True, backend="aot_eager")


def test_stop_checks_see_every_token_in_overlapping_windows(tiny_llama):
    """Each stop check decodes the tokens since the last check and STOP_OVERLAP before them:
    the windows cover every generated token, a string split across two checks included, and
    their cost does not grow with the length."""
    tok, model, banks = peaky(tiny_llama, "token")
    tok.padding_side = "left"
    batch = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    P, max_new, every = batch["input_ids"].shape[1], 30, 4
    seen = []

    def stopped(rows):
        seen.append(rows)
        return [False] * len(rows)

    out = StaticDecoder(model, P + max_new, max_new, None, tok.pad_token_id).decode(
        batch["input_ids"], batch["attention_mask"], stopped, check_every=every
    )
    assert out.shape == (2, max_new) and len(seen) == (max_new - 1) // every
    for k, rows in enumerate(seen, start=1):  # the check before step j = k * every
        j = k * every
        start = max(0, j - every - STOP_OVERLAP)
        assert rows == out[:, start:j].tolist()
        assert len(rows[0]) <= every + STOP_OVERLAP


def test_compiled_step_gives_the_eager_steps_tokens(tiny_llama):
    """The single-token step under torch.compile (fullgraph, the aot_eager backend on CPU: the
    mutations of the cache, the buffers and the prefix routers' carry go through
    functionalisation) makes the eager decoder's tokens, batch after batch, under oracle
    routing."""
    tok, model, banks = peaky(tiny_llama, "token_prefix", 16)
    tok.padding_side = "left"
    first = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    second = tok(PROMPTS[2:4], return_tensors="pt", padding=True)
    L = max(first["input_ids"].shape[1], second["input_ids"].shape[1]) + 12
    eager = StaticDecoder(model, L, 12, tok.eos_token_id, tok.pad_token_id)
    compiled = StaticDecoder(
        model, L, 12, tok.eos_token_id, tok.pad_token_id, compile=True, backend="aot_eager"
    )
    mask = torch.eye(8, dtype=torch.bool)[[1, 5]] | torch.eye(8, dtype=torch.bool)[[3, 3]]
    torch._dynamo.reset()
    with banks.restricted(mask):
        for b in (first, second):
            want = eager.decode(b["input_ids"], b["attention_mask"])
            got = compiled.decode(b["input_ids"], b["attention_mask"])
            assert torch.equal(got, want)
            # recording the routing: the same tokens, and the schemas the eager step records
            assert torch.equal(eager.decode(**b, record=list(banks)), want)
            assert torch.equal(compiled.decode(**b, record=list(banks)), want)
            for (p_want, f_want), (p_got, f_got) in zip(eager.routes, compiled.routes, strict=True):
                assert torch.equal(p_got, p_want) and torch.equal(f_got, f_want)
                assert f_got.shape == (2, want.shape[1], 2)
            assert compiled.decode(**b) is not None and compiled.routes is None
    assert compiled.step is not compiled._step  # it did compile


class ReplayedOnCPU(CapturedStep):
    """:class:`CapturedStep`'s sequence on the CPU: a capture runs nothing (on a GPU the
    captured kernels run only when replayed), a replay runs the step again."""

    made: list = []

    def __init__(self, fn):
        super().__init__(fn)
        ReplayedOnCPU.made.append(self)

    def _capture(self) -> None:
        self.captured = self.calls

    def _replay(self):
        return self.fn()


def graph_decoders(model, tok, device):
    """Two prompt batches on ``device``, an eager decoder and one whose step is captured
    directly (``capture="graph"``: on the CPU through :class:`ReplayedOnCPU`)."""
    tok.padding_side = "left"
    first = tok(PROMPTS[:2], return_tensors="pt", padding=True).to(device)
    second = tok(PROMPTS[1:4], return_tensors="pt", padding=True).to(device)
    L = max(first["input_ids"].shape[1], second["input_ids"].shape[1]) + 12
    args = (model, L, 12, tok.eos_token_id, tok.pad_token_id)
    step = ReplayedOnCPU if device.type == "cpu" else None
    graph = StaticDecoder(*args, compile=True, capture="graph", graph_step=step)
    return (first, second), StaticDecoder(*args), graph


def assert_same_decoding(batches, eager, graph, banks):
    """Batch after batch (a new batch size too), the captured decoder's tokens and recorded
    routing are the eager decoder's; the step goes back to the eager one after each call."""
    for b in batches:
        want = eager.decode(**b, record=list(banks))
        got = graph.decode(**b, record=list(banks))
        assert torch.equal(got, want) and graph.step == graph._step
        for (p_want, f_want), (p_got, f_got) in zip(eager.routes, graph.routes, strict=True):
            assert torch.equal(p_got, p_want) and torch.equal(f_got, f_want)
        assert torch.equal(graph.decode(b["input_ids"], b["attention_mask"]), want)


def test_directly_captured_step_gives_the_eager_steps_tokens(tiny_llama):
    """``capture="graph"``: each decode call runs its first step eagerly, captures the second
    and replays from then on, with a new capture for every call; under oracle routing and the
    prefix routers' carry the tokens and the routing are the eager decoder's. Without a GPU
    (and no ``graph_step``) it stays eager."""
    tok, model, banks = peaky(tiny_llama, "token_prefix", 16)
    batches, eager, graph = graph_decoders(model, tok, CPU)
    ReplayedOnCPU.made.clear()
    mask = torch.eye(8, dtype=torch.bool)[[1, 5]] | torch.eye(8, dtype=torch.bool)[[3, 3]]
    with banks.restricted(mask[:1].expand(2, 8)):
        assert_same_decoding(batches[:1], eager, graph, banks)
    assert_same_decoding(batches[1:], eager, graph, banks)
    steps = ReplayedOnCPU.made
    assert len(steps) == 4  # one a call
    new = eager.decode(**batches[1]).shape[1]
    assert steps[2].calls == new and steps[3].calls == new - 1  # the record pass is one more
    assert all(s.captured == 2 for s in steps)
    plain = StaticDecoder(model, 64, 4, None, tok.pad_token_id, compile=True, capture="graph")
    assert plain.graph_step is None and plain.step == plain._step
    with pytest.raises(ValueError, match="capture"):
        StaticDecoder(model, 64, 4, None, tok.pad_token_id, capture="cudagraph")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captures a CUDA graph")
def test_cuda_graph_step_gives_the_eager_steps_tokens(tiny_llama):
    """On a GPU, the step captured as a real CUDA graph (fp32) makes the eager decoder's tokens
    and routing (in bf16 on the study's model: ``scripts/profile_decoder.py``, which counts
    the rows whose tokens differ)."""
    cuda = torch.device("cuda")
    tok, model, banks = peaky(tiny_llama, "token_prefix", 16)
    model.to(cuda)
    batches, eager, graph = graph_decoders(model, tok, cuda)
    assert graph.graph_step is CapturedStep
    assert_same_decoding(batches, eager, graph, banks)


def test_decoder_keys_are_validated(tiny_llama):
    ok = config_from_dict(
        tiny_config(tiny_llama, eval={"decoder": "static", "compile_decoder": True})
    )
    assert ok.eval.decoder == "static" and ok.eval.compile_decoder
    default = config_from_dict(tiny_config(tiny_llama))
    assert default.eval.decoder is None  # decided by the device: hf on the CPU, static on CUDA
    assert for_device(default, "cpu").eval.decoder == "hf"
    assert for_device(default, "cuda").eval.decoder == "static"
    with pytest.raises(ConfigError, match="eval.decoder: must be one of hf, static"):
        config_from_dict(tiny_config(tiny_llama, eval={"decoder": "fast"}))
    with pytest.raises(ConfigError, match="eval.compile_decoder: needs eval.decoder static"):
        config_from_dict(tiny_config(tiny_llama, eval={"decoder": "hf", "compile_decoder": True}))
    with pytest.raises(
        ConfigError, match="eval.decoder_attention: must be one of model, grouped or null"
    ):
        config_from_dict(tiny_config(tiny_llama, eval={"decoder_attention": "flash"}))
    with pytest.raises(ConfigError, match="eval.decoder_attention: needs eval.decoder static"):
        config_from_dict(
            tiny_config(tiny_llama, eval={"decoder": "hf", "decoder_attention": "grouped"})
        )
    graph = {"decoder": "static", "compile_decoder": True, "decoder_capture": "graph"}
    assert config_from_dict(tiny_config(tiny_llama, eval=graph)).eval.decoder_capture == "graph"
    assert config_from_dict(tiny_config(tiny_llama)).eval.decoder_capture is None  # graph
    with pytest.raises(ConfigError, match="eval.decoder_capture: must be one of compile, graph or"):
        config_from_dict(tiny_config(tiny_llama, eval={**graph, "decoder_capture": "cuda"}))
    with pytest.raises(ConfigError, match="eval.decoder_capture: needs eval.compile_decoder true"):
        config_from_dict(tiny_config(tiny_llama, eval={**graph, "compile_decoder": False}))
    shrink = {"decoder": "static", "decoder_shrink": True}
    assert config_from_dict(tiny_config(tiny_llama, eval=shrink)).eval.decoder_shrink
    assert config_from_dict(tiny_config(tiny_llama, eval={**graph, **shrink})).eval.decoder_shrink
    with pytest.raises(ConfigError, match="eval.decoder_shrink: needs eval.decoder static"):
        config_from_dict(tiny_config(tiny_llama, eval={"decoder": "hf", "decoder_shrink": True}))
    with pytest.raises(ConfigError, match="eval.decoder_shrink: not with eval.decoder_capture"):
        config_from_dict(
            tiny_config(tiny_llama, eval={**graph, **shrink, "decoder_capture": "compile"})
        )


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_grouped_attention_is_sdpa_for_one_query(mask_kind):
    """One query per row over a GQA cache (8 query heads on 2 key/value heads): the folded
    matmul gives transformers' SDPA attention (which repeats the cache per head), under a
    left-padding mask of either format."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from schemabank.decode import grouped_attention

    torch.manual_seed(0)
    B, H, Hkv, L, D = 3, 8, 2, 10, 16
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal, module.training = H // Hkv, True, False
    q = torch.randn(B, H, 1, D)
    k, v = torch.randn(B, Hkv, L, D), torch.randn(B, Hkv, L, D)
    keep = torch.ones(B, 1, 1, L, dtype=torch.bool)
    keep[0, ..., :4] = False  # row 0 left-padded
    mask = {"bool": keep, "float": torch.zeros(B, 1, 1, L).masked_fill(~keep, -1e9), "none": None}
    m = mask[mask_kind]
    got, _ = grouped_attention(module, q, k, v, m, scaling=0.3)
    want, _ = sdpa_attention_forward(module, q, k, v, m, scaling=0.3)
    assert got.shape == want.shape == (B, 1, H, D)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_grouped_attention_decoder_makes_the_same_tokens(tiny_llama):
    """StaticDecoder(attention="grouped") makes the tokens of the model's own attention, eager
    and compiled (aot_eager), with the prefix routers on, and gives the model its attention
    back afterwards."""
    tok, model, banks = peaky(tiny_llama, "token_prefix", 16)
    tok.padding_side = "left"
    b = tok(PROMPTS, return_tensors="pt", padding=True)
    L = b["input_ids"].shape[1] + 12
    args = (model, L, 12, tok.eos_token_id, tok.pad_token_id)
    from transformers import AttentionInterface

    from schemabank import decode

    want = StaticDecoder(*args, attention="model").decode(b["input_ids"], b["attention_mask"])
    calls = []  # the query lengths the grouped attention saw

    def grouped(module, query, *rest, **kwargs):
        calls.append(query.shape[2])
        return decode.grouped_attention(module, query, *rest, **kwargs)

    AttentionInterface.register(decode.GROUPED, grouped)  # eager only: a compiled step's
    try:  # appends would recompile it at every step
        dec = StaticDecoder(*args, attention="grouped")
        assert torch.equal(dec.decode(b["input_ids"], b["attention_mask"]), want)
        assert 1 in calls  # the new tokens' passes went through it
    finally:
        AttentionInterface.register(decode.GROUPED, decode.grouped_attention)
    assert model.get_base_model().config._attn_implementation == "sdpa"
    torch._dynamo.reset()
    dec = StaticDecoder(*args, attention="grouped", compile=True, backend="aot_eager")
    assert torch.equal(dec.decode(b["input_ids"], b["attention_mask"]), want)
    assert model.get_base_model().config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="attention"):
        StaticDecoder(*args, attention="flash")


def test_a_later_call_pads_to_the_captured_batch_size(tiny_llama):
    """A captured decoder kept from a call at batch 4 (the test set's) serves a later call of
    two prompts (the dev split's) at 4 rows, not a new capture at 2; the generations and their
    routing are those of an eager decode of the two alone. ``captured_rows`` pads only up to the
    call's batch size. A later call without routes records them all the same."""
    from schemabank.evaluation import _DECODERS, captured_rows

    tok, model, banks = peaky(tiny_llama, "token", 0)
    kw = dict(banks=banks, decoder="static")
    alone = generate(model, tok, PROMPTS[1:3], 4, 12, CPU, False, **kw)
    _DECODERS.pop(model, None)
    generate(model, tok, PROMPTS, 4, 12, CPU, False, **kw)
    dec = _DECODERS[model]
    assert dec.batch_size == 4
    dec.graphs, dec.checked = True, True  # as if captured: on the CPU the step stays eager
    seen = []
    decode = dec.decode
    dec.decode = lambda ids, *a, **k: seen.append(ids.shape[0]) or decode(ids, *a, **k)
    later = generate(model, tok, PROMPTS[1:3], 4, 12, CPU, False, **kw)
    assert seen == [4] and dec.batch_size == 4 and _DECODERS[model] is dec
    assert [g.gen_ids for g in later] == [g.gen_ids for g in alone]
    for g, a in zip(later, alone, strict=True):
        assert g.routes.keys() == a.routes.keys()
        assert all(np.array_equal(g.routes[k], a.routes[k]) for k in g.routes)
    # a call that keeps no routes (the dev split) still records them in the captured step, so
    # that the step keeps the graph it was captured with (a new record is a new compilation)
    records = []
    dec.decode = lambda ids, *a, **k: records.append(k["record"]) or decode(ids, *a, **k)
    unkept = generate(model, tok, PROMPTS[1:3], 4, 12, CPU, False, **kw, keep_routes=False)
    assert records == [list(banks)]
    assert [g.gen_ids for g in unkept] == [g.gen_ids for g in alone]
    assert all(g.routes is None for g in unkept)
    assert captured_rows(4, 2, 4) == 4
    assert captured_rows(8, 2, 4) == 2  # beyond the call's batch size: its own
    assert captured_rows(None, 2, 4) == captured_rows(1, 2, 4) == 2

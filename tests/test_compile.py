"""The compiled training step (``training.compile``) and the few batch shapes it needs
(``training.pad_to_multiple_of``): the same losses, gradients and updates as the eager step, for
both modes, every stage and router design, and an exact resume.

On the CPU the step is compiled with the ``aot_eager`` backend: Dynamo and AOTAutograd trace
the same graphs that inductor compiles on a GPU (where the banks' hooks, the captured router
logits and the symbolic batch length must survive), without inductor's slow C++ code
generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import tiny_config
from test_training import (
    assert_same_losses_and_gradients,
    losses_and_gradients,
    make_trainer,
    snapshot,
    wake_up,
)

from schemabank import training
from schemabank.batching import answer_positions
from schemabank.data import DataOrder, collate, pack, packed_attention_mask
from schemabank.method import shared_lora
from schemabank.method.stages import BASELINE, STAGES, param_group
from schemabank.state import load_state, save_state
from schemabank.training import answer_loss, masked_answer_loss


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(training, "COMPILE_BACKEND", "aot_eager")


def test_collate_pads_to_a_multiple():
    batch = collate([([1, 2, 3], [-100, 2, 3]), ([4] * 5, [-100] * 4 + [4])], 0, 4)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(1).tolist() == [3, 5]
    assert batch["labels"][:, 5:].eq(-100).all() and batch["input_ids"][0, 3:].eq(0).all()
    assert collate([([1] * 8, [1] * 8)], 0, 4)["input_ids"].shape == (1, 8)  # already a multiple


def test_masked_answer_loss_equals_answer_loss(tiny_llama, data_dir):
    trainer = make_trainer(tiny_llama, data_dir, mode="baseline")
    wake_up(trainer)
    batch, _, _ = trainer.batches.make_batch(BASELINE, 1.0)
    want = answer_loss(trainer.model, batch, positions=answer_positions(batch["labels"]))
    torch.testing.assert_close(masked_answer_loss(trainer.model, batch), want)


def test_the_compiled_loss_head_gives_the_eager_loss_and_gradients(aot_eager, tiny_llama):
    """``training.compile``'s compiled chunk of the vocabulary projection and cross-entropy
    (:func:`~schemabank.training.compile_chunk_nll`): the eager chunk's sum and gradient for
    every row count (one graph with a symbolic count), ignored targets
    included; a head that is not a plain ``nn.Linear`` (a LoRA layer's) runs as it is."""
    import peft
    from transformers import AutoModelForCausalLM

    from schemabank.models import head_nll_sum

    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    compiled = training.compile_chunk_nll(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    V, H = base.config.vocab_size, base.config.hidden_size
    for n, chunk in [(12, 8192), (20, 8192), (31, 8), (7, 8192)]:
        y = torch.randint(0, V, (n,), generator=gen)
        y[::5] = -100
        sums, grads = [], []
        for fn in (None, compiled):
            h = torch.randn(n, H, generator=torch.Generator().manual_seed(n), requires_grad=True)
            total = head_nll_sum(base, h, y, chunk, fn)
            total.backward()
            sums.append(total.detach())
            grads.append(h.grad)
        torch.testing.assert_close(sums[1], sums[0])
        torch.testing.assert_close(grads[1], grads[0])
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["lm_head"]))
    lora_b = lora.base_model.model.lm_head.lora_B.default.weight
    lora_b.data.copy_(torch.randn(lora_b.shape, generator=gen))  # the LoRA changes the logits
    h, y = torch.randn(6, H, generator=gen), torch.randint(0, V, (6,), generator=gen)
    want = torch.nn.functional.cross_entropy(lora.get_output_embeddings()(h), y, reduction="sum")
    plain = torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(h, lora.get_output_embeddings().weight), y, reduction="sum"
    )
    assert not torch.allclose(want, plain)
    torch.testing.assert_close(head_nll_sum(lora, h, y, 8192, compiled), want)


def _one_pass(trainer, stage):
    """One forward and backward pass of a batch of ``stage`` (:func:`losses_and_gradients`),
    every adapter parameter on a gradient path."""
    wake_up(trainer)
    trainer.enter_stage(stage)
    batch, targets, _ = trainer.batches.make_batch(stage, 0.5)
    return losses_and_gradients(trainer, stage, batch, targets)


def _one_pass_float64(trainer, stage):
    """:func:`_one_pass` with the model in float64, where a reordered sum (a fused matmul's)
    keeps the eager pass's values to rounding (float32's cancellations can leave 1e-4)."""
    trainer.model.double()
    return _one_pass(trainer, stage)


def _records(trainer, stage, steps):
    trainer.enter_stage(stage)
    out = []
    for _ in range(steps):
        rec = trainer.train_step(stage, 1e-2, 0.5)
        out.append({k: float(rec[k]) for k in ("loss", "grad_norm") if rec[k] is not None})
    return out


def _assert_same_records(want, got, rel, atol=None):
    """The same logged values (loss, gradient norm) step by step, within ``rel`` / ``atol``."""
    for x, y in zip(want, got, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=rel, abs=atol), k


def _assert_same_training(a, b, stage, steps=2, atol=1e-5):
    """Both trainers take ``steps`` steps of ``stage`` on the same batches: the same losses,
    gradient norms and parameters after each update."""
    _assert_same_records(_records(a, stage, steps), _records(b, stage, steps), 1e-5, atol)
    for (name, p), (_, q) in zip(
        a.model.named_parameters(), b.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=name)


def test_padding_to_a_multiple_keeps_the_step(tiny_llama, data_dir):
    ragged = make_trainer(tiny_llama, data_dir)
    rounded = make_trainer(tiny_llama, data_dir, training={"pad_to_multiple_of": 64})
    for t in (ragged, rounded):
        wake_up(t)
    batch, _, _ = rounded.batches.make_batch(STAGES[2], 1.0)
    assert batch["input_ids"].shape[1] % 64 == 0
    for t in (ragged, rounded):  # rewind: the same batches
        t.batches.order = DataOrder(len(t.train_set), 2, 0)
    _assert_same_training(ragged, rounded, STAGES[2])


def test_pack_places_every_example_once_in_rows_that_keep_them_apart():
    examples = [([1] * n, [-100] * (n // 2) + [7] * (n - n // 2)) for n in (5, 3, 6, 2, 4)]
    out = pack(examples, 0, 8, row_multiple=4)
    R, L = out["input_ids"].shape
    assert L == 8 and R == 4  # first-fit decreasing: [6, 2], [5, 3], [4], then a row of padding
    ex = out["example"]
    assert ex[0].tolist() == [2] * 6 + [3] * 2 and ex[1].tolist() == [0] * 5 + [1] * 3
    assert ex[2].tolist() == [4] * 4 + [-1] * 4 and ex[3].eq(-1).all()
    for i, (ids, labels) in enumerate(examples):  # each example whole, in order, positions from 0
        at = ex == i
        assert at.sum() == len(ids)
        assert out["labels"][at].tolist() == labels
        assert out["position_ids"][at].tolist() == list(range(len(ids)))
    assert out["labels"][ex < 0].eq(-100).all() and out["input_ids"][ex < 0].eq(0).all()
    mask = packed_attention_mask(ex)  # (R, 1, L, L)
    assert mask.shape == (4, 1, 8, 8)
    q, k = 7, 5  # row 0: token 7 (example 3) sees itself and token 6, not example 2's tokens
    assert mask[0, 0, q].tolist() == [False] * 6 + [True, True]
    assert mask[0, 0, k].tolist() == [True] * 6 + [False, False]  # causal within example 2
    assert mask.any(-1).all()  # every token, padding too, attends to something
    assert pack(examples, 0, 8)["input_ids"].shape == (3, 8)  # no row rounding
    with pytest.raises(ValueError, match="exceeds rows of 4"):
        pack(examples, 0, 4)


@pytest.mark.parametrize(
    ("mode", "stage", "micro"),
    [
        ("baseline", BASELINE, None),
        ("schemabank", STAGES[0], None),
        ("schemabank", STAGES[1], 2),
        ("schemabank", STAGES[2], None),
    ],
    ids=["baseline", "stage1", "stage2-micro", "stage3"],
)
def test_packing_keeps_the_step(tiny_llama, data_dir, mode, stage, micro):
    """Packed rows (several examples a row, each attending to itself alone, positions from 0)
    give the padded batch's losses (LM, routing, balance, z), gradient norm and updates."""
    sections = (
        {"schemabank": {"lambda_balance": 0.1, "lambda_z": 0.1}} if mode != "baseline" else {}
    )
    training_keys = {"batch_size": 4, "micro_batch_size": micro, "max_length": 256}
    padded = make_trainer(tiny_llama, data_dir, mode=mode, training=training_keys, **sections)
    packed = make_trainer(
        tiny_llama, data_dir, mode=mode, training={**training_keys, "packing": True}, **sections
    )
    for t in (padded, packed):
        wake_up(t)
    examples, targets, _ = packed.batches.next_examples(stage, 0.5)
    batch, per_token, _ = packed.batches.to_device(examples, targets)
    rows = batch["input_ids"].shape[0]
    assert rows < len(examples) and batch["input_ids"].shape[1] == 256  # max_length
    assert batch["attention_mask"].shape == (rows, 1, 256, 256)
    assert per_token.shape == (rows, 256, targets.shape[1])
    assert batch["token_mask"].sum() == sum(len(ids) for ids, _ in examples)
    for t in (padded, packed):  # a step without the LM loss: the same batch, no answer positions
        full, _, found = t.batches.to_device(examples, targets, 512)
        lean, _, none = t.batches.to_device(examples, targets, 512, positions=False)
        assert none is None and found.numel() % 512 == 0
        assert all(torch.equal(full[k], lean[k]) for k in full)
    for t in (padded, packed):  # rewind: the same batches
        t.batches.order = DataOrder(len(t.train_set), 4, 0)
        t.batches.tag_rng.manual_seed(1)
    padded.enter_stage(stage)
    packed.enter_stage(stage)
    a, b = padded.train_step(stage, 1e-2, 0.5), packed.train_step(stage, 1e-2, 0.5)
    assert b["tokens"] == a["tokens"] and b["padded_tokens"] % 256 == 0
    for k in ("loss", "lm_loss", "route_loss", "balance", "z_loss", "ortho", "grad_norm"):
        if a[k] is not None:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    for (name, p), (_, q) in zip(
        padded.model.named_parameters(), packed.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("scope", ["step"])  # the layers see a 4-D mask when padded too
def test_compiled_packed_step_equals_the_eager_packed_step(aot_eager, tiny_llama, data_dir, scope):
    keys = {"packing": True, "batch_size": 4, "max_length": 256}
    eager = make_trainer(tiny_llama, data_dir, training=keys)
    compiled = make_trainer(
        tiny_llama,
        data_dir,
        training={**keys, "compile": True, "compile_scope": scope},
    )
    assert compiled.batches.pack_row_multiple == 4 and eager.batches.pack_row_multiple == 1
    eager.batches.pack_row_multiple = 4  # the same rows: the compiled trainer rounds them up to 4
    for t in (eager, compiled):
        wake_up(t)
    _assert_same_training(eager, compiled, STAGES[2], steps=2)


def test_packing_refuses_prefix_routers_and_oracle_routing(tiny_llama):
    from conftest import tiny_config

    from schemabank.config import config_from_dict
    from schemabank.errors import ConfigError

    for bank in ({"router_input": "prefix_mean"}, {"routing": "oracle"}):
        with pytest.raises(ConfigError, match="training.packing: needs schemabank.router_input"):
            config_from_dict(tiny_config(tiny_llama, training={"packing": True}, schemabank=bank))
    config_from_dict(  # the baseline has no router
        tiny_config(
            tiny_llama,
            mode="baseline",
            training={"packing": True},
            schemabank={"router_input": "prefix_mean"},
        )
    )


@pytest.mark.parametrize(
    ("mode", "stage", "schemabank", "scope"),
    [
        ("baseline", BASELINE, {}, "layers"),
        ("schemabank", STAGES[0], {"router_input": "prefix_mean", "router_hidden": 16}, "step"),
        ("schemabank", STAGES[1], {"router_input": "token_prefix"}, "layers"),
        (
            "schemabank",
            STAGES[2],
            {"routing": "oracle", "lambda_balance": 0.1, "lambda_z": 0.1},
            "step",
        ),
    ],
    ids=[
        "baseline-layers",
        "stage1-prefix-mlp",
        "stage2-token-prefix-layers",
        "stage3-oracle",
    ],
)
def test_compiled_step_equals_the_eager_step(
    aot_eager, tiny_llama, data_dir, mode, stage, schemabank, scope
):
    sections = {"schemabank": schemabank} if schemabank else {}
    eager = make_trainer(
        tiny_llama, data_dir, mode=mode, training={"pad_to_multiple_of": 64}, **sections
    )
    compiled = make_trainer(
        tiny_llama,
        data_dir,
        mode=mode,
        training={"compile": True, "compile_scope": scope},
        **sections,
    )
    assert compiled.batches.pad_multiple == 64 and eager._compiled_losses is None
    assert (compiled._compiled_losses is not None) == (scope == "step")
    assert bool(compiled._regions) == (scope == "layers")
    assert (compiled._chunk_nll is not None) == (scope == "layers") and eager._chunk_nll is None
    for t in (eager, compiled):
        wake_up(t)
    _assert_same_training(eager, compiled, stage, steps=3)
    # the compiled layers run only inside the training forward: evaluation stays eager
    assert all(layer._compiled_call_impl is None for layer, _ in compiled._regions)


@pytest.mark.parametrize("scope", ["step", "layers"])
def test_a_compiled_step_on_padded_batches_builds_no_attention_mask(
    aot_eager, tiny_llama, data_dir, scope
):
    """Compiled, a padded batch's forward pass runs :data:`training.CAUSAL` and its attention is
    given no mask. transformers builds a causal mask whenever Dynamo traces its mask code (the
    whole model under ``compile_scope: step``), which would keep SDPA off its flash kernel."""
    from transformers import AttentionInterface

    given = []

    def attention(module, query, key, value, attention_mask, **kwargs):
        given.append(attention_mask)
        return training.causal_attention(module, query, key, value, attention_mask, **kwargs)

    torch._dynamo.reset()  # trace anew, through the spy
    AttentionInterface.register(training.CAUSAL, attention)
    try:
        t = make_trainer(tiny_llama, data_dir, training={"compile": True, "compile_scope": scope})
        t.enter_stage(STAGES[1])
        t.train_step(STAGES[1], 1e-3, 0.5)
    finally:
        AttentionInterface.register(training.CAUSAL, training.causal_attention)
        torch._dynamo.reset()
    assert given and all(m is None for m in given)


def test_each_attention_backend_is_registered_and_checked():
    from schemabank.config import ATTENTION_BACKENDS

    assert tuple(training.SDPA_KERNELS) == ATTENTION_BACKENDS


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_an_attention_backend_runs_only_its_kernel(tiny_llama, data_dir, monkeypatch, backend):
    """``training.attention_backend``: a padded batch's SDPA call runs with only that kernel
    allowed (on the CPU: math, or torch's CPU flash kernel), with the losses and gradients of
    torch's own choice."""
    enabled = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        b = torch.backends.cuda
        enabled.append(
            {
                "flash": b.flash_sdp_enabled(),
                "cudnn": b.cudnn_sdp_enabled(),
                "efficient": b.mem_efficient_sdp_enabled(),
                "math": b.math_sdp_enabled(),
            }
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    results, kernels = [], []  # (losses, gradients) and the kernels allowed, per trainer
    for keys in ({}, {"attention_backend": backend}):
        enabled.clear()
        t = make_trainer(tiny_llama, data_dir, training=keys)
        results.append(_one_pass(t, STAGES[2]))
        kernels.append(list(enabled))
    default, chosen = kernels
    assert default and all(all(e.values()) for e in default)  # torch's choice: all allowed
    assert chosen and all(e == {k: k == backend for k in e} for e in chosen)
    b = torch.backends.cuda  # every kernel allowed again after the pass
    assert b.flash_sdp_enabled() and b.math_sdp_enabled() and b.cudnn_sdp_enabled()
    assert_same_losses_and_gradients(*results)


def test_an_attention_backend_that_would_not_be_used_is_said(tiny_llama, data_dir, capsys):
    """``training.attention_backend`` reaches only padded batches of a model on SDPA: with
    packing, or a model on another attention, the trainer says so when it is built."""
    import dataclasses

    from schemabank.models import unwrapped

    sections = {"schemabank": {"router_input": "token"}}
    keys = {"attention_backend": "math", "packing": True}
    make_trainer(tiny_llama, data_dir, training=keys, **sections)
    assert "training.attention_backend: packed batches" in capsys.readouterr().err
    t = make_trainer(tiny_llama, data_dir, training={"attention_backend": "math"})
    assert "attention_backend" not in capsys.readouterr().err  # padded, SDPA: used
    unwrapped(t.model).config._attn_implementation = "eager"
    why = training.unused_attention_backend(t.cfg, t.model)
    assert why == "the model's attention is 'eager', not SDPA"
    unset = dataclasses.replace(t.cfg.training, attention_backend=None)
    assert (
        training.unused_attention_backend(dataclasses.replace(t.cfg, training=unset), t.model)
        is None
    )


def test_a_compiled_step_on_an_attention_backend_gives_the_eager_step(
    aot_eager, tiny_llama, data_dir
):
    """Dynamo traces the backend's ``sdpa_kernel`` block: compiled on the math kernel (the layers
    scope; the step scope traces the same attention function, 15 s more on the CPU), the step
    gives the eager step's losses, gradient norms and parameters."""
    eager = make_trainer(tiny_llama, data_dir, training={"pad_to_multiple_of": 64})
    keys = {"compile": True, "compile_scope": "layers", "attention_backend": "math"}
    compiled = make_trainer(tiny_llama, data_dir, training=keys)
    for t in (eager, compiled):
        wake_up(t)
    torch._dynamo.reset()
    try:
        _assert_same_training(eager, compiled, STAGES[2], steps=2)
    finally:
        torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
@pytest.mark.parametrize("backend", [None, "flash", "cudnn"])
@pytest.mark.parametrize("length", [80, 208, 256])
def test_each_attention_backend_on_cuda_gives_causal_attention(backend, length):
    """On a GPU, in bf16, at SmolLM2-135M's attention (9 query heads on 3 key-value heads of 64)
    and lengths that are and are not multiples of 128 (cuDNN's SDPA before 9.15.1 was wrong at
    some): the output and the gradients of q, k and v are those of fp32 math attention, within
    bf16's error, none NaN. (torch 2.11's ``efficient`` kernel takes no grouped-query inputs: "No
    available kernel".)"""
    import types

    g = torch.Generator("cuda").manual_seed(length)
    B, H, KV, D = 8, 9, 3, 64
    module = types.SimpleNamespace(num_key_value_groups=H // KV, is_causal=True)
    shapes = {"q": (B, length, H, D), "k": (B, length, KV, D), "v": (B, length, KV, D)}
    x = {n: torch.randn(s, device="cuda", generator=g) for n, s in shapes.items()}
    grad_out = torch.randn(B, length, H, D, device="cuda", generator=g)

    def run(attention, dtype):
        leaves = {n: t.detach().to(dtype).requires_grad_() for n, t in x.items()}
        q, k, v = (leaves[n].transpose(1, 2) for n in "qkv")  # (B, heads, S, D), as HF gives
        out, _ = attention(module, q, k, v, None, scaling=D**-0.5)
        out.backward(grad_out.to(dtype))
        return [out.float()] + [leaves[n].grad.float() for n in "qkv"]

    want = run(training.causal_attention_on("math"), torch.float32)
    attention = (
        training.causal_attention if backend is None else training.causal_attention_on(backend)
    )
    got = run(attention, torch.bfloat16)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert torch.isfinite(a).all(), name
        assert (a - b).norm() / b.norm() < 0.02, name


def assert_resumes_exactly(tiny_llama, data_dir, tmp_path, keys, before=2, after=2, **sections):
    """A trainer of ``keys`` that stops after ``before`` steps of stage 3, saves its state and
    resumes in a new trainer for ``after`` more logs the same values and ends with the same
    parameters as one that trained straight through."""
    straight = make_trainer(tiny_llama, data_dir, training=keys, **sections)
    first = make_trainer(tiny_llama, data_dir, training=keys, **sections)
    for t in (straight, first):
        wake_up(t)
    stage = STAGES[2]
    want = _records(straight, stage, before + after)
    got = _records(first, stage, before)
    save_state(tmp_path, first, {})
    second = make_trainer(tiny_llama, data_dir, training=keys, **sections)
    second.enter_stage(stage)
    load_state(tmp_path, second)
    got += _records(second, stage, after)
    for x, y in zip(got, want, strict=True):
        assert x == pytest.approx(y, rel=1e-6)
    for (name, p), (_, q) in zip(
        straight.model.named_parameters(), second.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)


def test_compiled_step_resumes_exactly(aot_eager, tiny_llama, data_dir, tmp_path):
    assert_resumes_exactly(tiny_llama, data_dir, tmp_path, {"compile": True})


def test_training_losses_build_no_kv_cache(tiny_llama):
    """Both LM losses run the decoder with ``use_cache=False``: a KV cache in the training
    forward is wasted memory, and under ``compile_scope: layers`` its per-layer state
    (``layers[i].is_initialized``) made every decoder layer compile its own graph (30 of them on
    SmolLM2)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    decoder = model.get_decoder()
    seen, forward = [], decoder.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("use_cache"))
        return forward(*args, **kwargs)

    decoder.forward = spy
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, -100, 7, 8, 9]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    answer_loss(model, batch)
    masked_answer_loss(model, batch)
    assert seen == [False, False]


def test_layer_graphs_keep_float_attributes_constant(tiny_llama, data_dir, monkeypatch):
    """``compile_scope: layers`` keeps the layers' float attributes (norm epsilons, LoRA
    scalings, the bank's epsilon) as constants: with ``dynamic=True`` Dynamo made them CPU
    scalar tensors read with ``.item()``, which on a GPU put CPU ops inside every layer's graph
    and crashed CUDA-graph recording (a segfault in the first training step)."""
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm.code)
        return gm.forward

    monkeypatch.setattr(training, "COMPILE_BACKEND", backend)
    t = make_trainer(tiny_llama, data_dir, training={"compile": True, "compile_scope": "layers"})
    wake_up(t)
    _records(t, STAGES[2], 3)
    assert graphs and not [code for code in graphs if ".item()" in code]


@pytest.mark.parametrize(
    ("requested", "device", "mode"),
    [
        (None, "cuda", "reduce-overhead"),
        (None, "cpu", None),
        ("default", "cuda", None),
        ("max-autotune-no-cudagraphs", "cuda", "max-autotune-no-cudagraphs"),
        ("reduce-overhead", "cpu", "reduce-overhead"),
    ],
)
def test_compile_mode_is_the_configs_or_cuda_graphs_on_cuda(requested, device, mode):
    assert training.compile_mode(torch.device(device), requested) == mode


@pytest.mark.parametrize("requested", [None, "default", "max-autotune-no-cudagraphs"])
def test_the_configured_compile_mode_reaches_every_compiled_layer(
    tiny_llama, data_dir, monkeypatch, requested
):
    """``training.compile_mode`` is the mode of every layer's ``torch.compile`` and of the loss
    head's (:func:`~schemabank.training.compile_chunk_nll`); on the CPU the step never marks
    CUDA-graph steps."""
    modes = []
    monkeypatch.setattr(
        training.torch, "compile", lambda fn, backend, mode: modes.append(mode) or fn
    )
    trainer = make_trainer(
        tiny_llama,
        data_dir,
        training={
            "compile": True,
            "compile_scope": "layers",
            "compile_mode": requested,
            "compile_combo_kernels": True,  # inductor's option on a GPU only
        },
    )
    want = None if requested in (None, "default") else requested
    assert len(modes) == len(trainer._regions) + 1 > 1 and set(modes) == {want}
    assert trainer.graphs is False


@pytest.mark.parametrize(
    ("mode", "combo", "want"),
    [
        ("reduce-overhead", False, {"mode": "reduce-overhead"}),
        (None, True, {"options": {"combo_kernels": True}}),
        ("reduce-overhead", True, {"options": {"triton.cudagraphs": True, "combo_kernels": True}}),
    ],
)
def test_combo_kernels_join_the_modes_options(monkeypatch, mode, combo, want):
    """``training.compile_combo_kernels`` reaches ``torch.compile`` as inductor's option, with the
    mode's own options spelled out (``torch.compile`` takes a mode or options, not both); another
    backend (the tests' ``aot_eager``) gets the mode alone."""
    monkeypatch.setattr(training, "COMPILE_BACKEND", "inductor")
    assert training.compile_args(mode, combo) == want
    monkeypatch.setattr(training, "COMPILE_BACKEND", "aot_eager")
    assert training.compile_args(mode, combo) == {"mode": mode}


@pytest.mark.parametrize(
    ("mode", "stage", "region"),
    [("baseline", BASELINE, 2), ("schemabank", STAGES[0], 3), ("schemabank", STAGES[2], 2)],
    ids=["baseline", "stage1-region-past-the-end", "stage3"],
)
def test_layer_regions_give_the_eager_step(aot_eager, tiny_llama, data_dir, mode, stage, region):
    """``compile_region_layers`` > 1 compiles the tiny model's two layers (the second with the
    bank) as one region, called by the first layer while the second passes its input on: the
    eager step's losses, gradients and updates, and evaluation stays eager."""
    eager = make_trainer(tiny_llama, data_dir, mode=mode, training={"pad_to_multiple_of": 64})
    compiled = make_trainer(
        tiny_llama,
        data_dir,
        mode=mode,
        training={"compile": True, "compile_scope": "layers", "compile_region_layers": region},
    )
    (first, call), (second, passed) = compiled._regions
    held = call.__self__
    assert isinstance(held, training.LayerRegion) and held.layers == [first, second]
    assert call == held.first and passed == held.passed_on
    for t in (eager, compiled):
        wake_up(t)
    _assert_same_training(eager, compiled, stage, steps=3)
    assert all(layer._compiled_call_impl is None for layer, _ in compiled._regions)


ALL_LINEAR = {
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
}


@pytest.mark.parametrize(
    ("mode", "stage"),
    [("baseline", BASELINE), ("schemabank", STAGES[2])],
    ids=["baseline", "stage3"],
)
def test_fused_lora_a_gives_the_eager_step(aot_eager, tiny_llama, data_dir, mode, stage):
    """``training.fuse_lora_a``: the compiled layers with q/k/v's and gate/up's LoRA A as one
    matmul each give the eager pass's losses and gradients; the modules and their state dict
    stay PEFT's, and outside the training forward (evaluation) nothing is shared. In float64:
    the fused sums run in another order, and in float32 cancellation made a LoRA A gradient
    part from the eager one's by 1.4e-4 of its largest element on one CPU (to 1e-15 in float64;
    :func:`_one_pass_float64`)."""
    results = []
    for keys in (
        {"pad_to_multiple_of": 64},
        {"compile": True, "compile_scope": "layers", "fuse_lora_a": True},
    ):
        t = make_trainer(tiny_llama, data_dir, mode=mode, lora=ALL_LINEAR, training=keys)
        results.append((t, _one_pass_float64(t, stage)))
    (eager, want), (fused, got) = results
    assert fused._fuse_lora_a and not eager._fuse_lora_a
    assert_same_losses_and_gradients(want, got)
    assert eager.model.state_dict().keys() == fused.model.state_dict().keys()
    products = [m._shared_product for m in fused.model.modules() if hasattr(m, "_shared_product")]
    assert len(products) == 10 and all(p is None for p in products)  # 5 projections x 2 layers
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        logits = [t.model(input_ids=ids).logits for t in (eager, fused)]
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-6)
    # after training the hooks go (as run's evaluation has it), and the model stays the same
    shared_lora.unshare_lora_inputs(fused.model)

    def hooks(model):
        return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]

    assert hooks(fused.model) == hooks(eager.model)
    assert not any(hasattr(m, "_shared_product") for m in fused.model.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused.model(input_ids=ids).logits, logits[1])


@pytest.mark.parametrize(
    ("keys", "lora", "fused"),
    [
        ({"compile": True}, ALL_LINEAR, True),
        ({"compile": True}, {}, True),  # q and v read one input
        ({}, ALL_LINEAR, False),
        ({"compile": True, "fuse_lora_a": False}, ALL_LINEAR, False),
        ({"compile": True}, {**ALL_LINEAR, "lora_dropout": 0.1}, False),
    ],
    ids=["compiled", "compiled-q-v", "eager", "off", "dropout"],
)
def test_lora_a_is_fused_where_it_applies_with_compile(tiny_llama, data_dir, keys, lora, fused):
    """``training.fuse_lora_a`` null (the default): on with ``compile``, for the projections
    that share an input and have no dropout of their own; never a config error."""
    t = make_trainer(tiny_llama, data_dir, lora=lora, training=keys)
    assert t._fuse_lora_a is fused
    hooked = [m for m in t.model.modules() if hasattr(m, "_shared_product")]
    assert bool(hooked) is fused


def test_compiled_code_is_dropped_when_the_fusion_changes(monkeypatch):
    """Dynamo does not guard on module hooks: a compiled trainer whose LoRA A fusion differs
    from the last one's drops the process's compiled code; alike trainers keep it."""
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    monkeypatch.setattr(training, "_fused_code", None)
    for fused in (True, True, False, False, True):
        training._compiled_for_fusion(fused)
    assert len(resets) == 2


def test_fused_lora_a_makes_fewer_matmuls(monkeypatch, tiny_llama, data_dir):
    """The compiled step's forward and backward graphs (after AOTAutograd's partitioner, as
    inductor gets them) with ``fuse_lora_a``: per layer two fewer matmuls for q/k/v's LoRA A
    and one fewer for gate/up's in the forward pass; in the backward, as many fewer for the
    weights' gradients and for the inputs' (but the first layer's attention's: the embedding
    is frozen). The same losses and gradients (float64), no graph breaks; the fused trainer,
    made after the other, does not reuse its compiled code."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    graphs = {"fw": [], "bw": []}

    def keeper(kind):
        def keep(gm, _):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)

        return keep

    def backend(gm, inputs):
        return aot_module_simplified(
            gm,
            inputs,
            keeper("fw"),
            keeper("bw"),
            partition_fn=min_cut_rematerialization_partition,
        )

    def matmuls(kind):
        mm = torch.ops.aten.mm.default
        return sum(n.target == mm for g in graphs[kind] for n in g.graph.nodes)

    monkeypatch.setattr(training, "COMPILE_BACKEND", backend)
    torch._dynamo.reset()
    counts, passes = [], []
    for fuse in (False, True):  # the fused trainer after the other: it must not reuse its code
        for kind in graphs:
            graphs[kind].clear()
        torch._dynamo.utils.counters.clear()
        keys = {"compile": True, "compile_scope": "step", "fuse_lora_a": fuse}
        t = make_trainer(tiny_llama, data_dir, mode="baseline", lora=ALL_LINEAR, training=keys)
        passes.append(_one_pass_float64(t, BASELINE))
        assert not torch._dynamo.utils.counters["graph_break"]
        counts.append((matmuls("fw"), matmuls("bw")))
    (fw, bw), (fw_fused, bw_fused) = counts
    layers = 2
    assert fw - fw_fused == 3 * layers
    assert bw - bw_fused == 6 * layers - 2  # the first attention's input needs no gradient
    assert_same_losses_and_gradients(*passes)


def test_a_layer_region_runs_its_layers_in_the_decoders_loop():
    """A region's first layer runs every layer of it with the loop's arguments, hooks included,
    and the later layers hand on what they are given, as a tensor or, for layers that return
    tuples (older models), as a tuple; the loop's result is the layers' own."""

    class Layer(torch.nn.Module):
        def __init__(self, k, tuples):
            super().__init__()
            self.k, self.tuples = k, tuples

        def forward(self, h, scale=1.0):
            h = h * scale + self.k
            return (h, None) if self.tuples else h

    def loop(layers, h):  # a decoder's loop, old (tuples) and new
        for layer in layers:
            out = layer(h, scale=2.0)
            h = out[0] if isinstance(out, tuple) else out
        return h

    for tuples in (False, True):
        layers = torch.nn.ModuleList(Layer(k, tuples) for k in (1.0, 2.0, 3.0))
        layers[1].register_forward_hook(
            lambda m, a, out: (out[0] + 10, None) if isinstance(out, tuple) else out + 10
        )
        want = loop(layers, torch.ones(2))
        region = training.LayerRegion(list(layers), {"mode": None})
        region.compiled = region.forward  # the same call, uncompiled
        calls = [region.first, region.passed_on, region.passed_on]
        for layer, call in zip(layers, calls, strict=True):
            layer._compiled_call_impl = call
        torch.testing.assert_close(loop(layers, torch.ones(2)), want)
        assert region.tuples is tuples
        for layer in layers:
            layer._compiled_call_impl = None


def test_layer_regions_share_compiled_code_only_when_alike():
    """Dynamo does not guard on module hooks: regions whose layers have the same modules and
    hooks share one code object (one compiled graph), a region with a hook (a bank's) has its
    own, as has one with another hook function, and one of other layers or of another length."""

    def region(*layers):
        return training.LayerRegion(list(layers), {"mode": None})

    def lin():
        return torch.nn.Linear(2, 2)

    def hooked(hook):
        layer = lin()
        layer.register_forward_hook(hook)
        return layer

    def same(m, a, out):
        return out

    a, b = region(lin(), lin()), region(lin(), lin())
    assert a.code is b.code and a.code is not training.LayerRegion.forward.__code__
    with_hook = region(lin(), hooked(same))
    assert with_hook.code is not a.code
    assert region(lin(), hooked(same)).code is with_hook.code  # the same hook function
    assert region(lin(), hooked(lambda m, a, out: out)).code is not with_hook.code
    assert region(lin(), torch.nn.Identity()).code is not a.code
    assert region(lin()).code is not a.code


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
def test_compiled_layers_on_cuda_give_the_eager_step(tiny_llama, data_dir):
    """On a GPU, through inductor and CUDA graphs (``reduce-overhead``), the layers compiled one
    by one and as one region give the eager step's losses and gradient norms over steps that
    run, record and replay the graphs. In fp32: in bf16 inductor's fused kernels round
    differently from the eager ops (on the H200 a gradient norm of the five differed by 5%,
    the two compiled forms not at all)."""
    sections = {"schemabank": {"lambda_balance": 0.1, "lambda_z": 0.1}}
    eager = {"pad_to_multiple_of": 64}  # the compiled step's batches
    trainers = [make_trainer(tiny_llama, data_dir, device="cuda", training=eager, **sections)]
    for region in (1, 2):
        training_cfg = {"compile": True, "compile_scope": "layers", "compile_region_layers": region}
        trainers.append(
            make_trainer(tiny_llama, data_dir, device="cuda", training=training_cfg, **sections)
        )
    assert trainers[1].graphs and trainers[2].graphs
    for t in trainers:
        t.bf16 = False
        wake_up(t)
    want, *compiled = (_records(t, STAGES[2], 5) for t in trainers)
    for got in compiled:
        _assert_same_records(want, got, 1e-3)


def test_compiled_code_serves_every_stage(aot_eager, tiny_llama, data_dir, monkeypatch):
    """Stage by stage in one compiled trainer: the eager trainer's losses, gradient norms and
    updates (the router's in stage 3 after stage 2 left it alone; no parameter of another stage
    moves), with no compiled code dropped: every group the run trains keeps ``requires_grad``
    through the stages (torch 2.11's Dynamo did not recompile a layer when a parameter's
    ``requires_grad`` changed, so stage 3 had given the router no gradient), each stage's
    backward pass stopping at its own groups. A stage that changes the pattern drops the code."""
    resets = []
    real_reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (resets.append(1), real_reset()))
    eager = make_trainer(tiny_llama, data_dir, training={"pad_to_multiple_of": 64})
    compiled = make_trainer(
        tiny_llama, data_dir, training={"compile": True, "compile_scope": "layers"}
    )
    for t in (eager, compiled):
        wake_up(t)
    groups = {"router", "schema", "lora"}
    for stage in STAGES:
        before = snapshot(compiled.model)
        _assert_same_training(eager, compiled, stage, steps=2)
        for name, p in compiled.model.named_parameters():
            assert p.requires_grad == (param_group(name) in groups), name
            if param_group(name) not in stage.trainable:
                assert torch.equal(p, before[name]), name
    assert not resets
    compiled._run_groups = {"lora"}  # a run that trains the LoRA alone, then a bank's stage
    compiled.enter_stage(BASELINE)
    compiled.enter_stage(STAGES[0])
    assert len(resets) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
def test_a_compiled_run_on_cuda_leaves_the_workers_out_once_its_cache_is_warm(
    tiny_llama, data_dir, tmp_path
):
    """A compiled run on a GPU marks its compile cache warm after training; the same config's
    next run then compiles without inductor's worker pool (results.json says so), and another
    config's keeps it. Each run in its own process, as the CLI runs them."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("TORCHINDUCTOR_COMPILE_THREADS", None)
    compiled = {"compile": True, "compile_scope": "layers", "device": "cuda"}
    quick = {"limit": 1, "max_new_tokens": 2, "ppl_windows": [16], "ppl_max_tokens": 40}
    warm = []
    for name, r in (("a", 2), ("b", 2), ("c", 4)):
        cfg = tiny_config(tiny_llama, training=compiled, eval=quick, lora={"r": r})
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        out = tmp_path / name
        args = ["train", "--config", str(tmp_path / f"{name}.yaml"), "--output-dir", str(out)]
        args += ["--data-dir", str(data_dir)]
        proc = subprocess.run([sys.executable, "-m", "schemabank", *args], env=env)
        assert proc.returncode == 0
        (results,) = out.glob("*/results.json")
        warm.append(json.loads(results.read_text())["training"]["compile_cache_warm"])
    assert warm == [False, True, False]
    assert len(list((tmp_path / "cache" / "schemabank_warm").iterdir())) == 2

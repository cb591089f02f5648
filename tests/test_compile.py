"""The compiled training step (``training.compile``) and the few batch shapes it needs
(``training.pad_to_multiple_of``): the same losses, gradients and updates as the eager step, for
both modes, every stage and router design, and an exact resume.

On the CPU the step is compiled with the ``aot_eager`` backend: Dynamo and AOTAutograd trace
the same graphs that inductor compiles on a GPU (where the banks' hooks, the captured router
logits and the symbolic batch length must survive), without inductor's slow C++ code
generation."""

from __future__ import annotations

import pytest
import torch
from test_training import make_trainer, wake_up

from schemabank import training
from schemabank.batching import answer_positions
from schemabank.data import DataOrder, collate
from schemabank.method.stages import BASELINE, STAGES
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


def _records(trainer, stage, steps):
    trainer.enter_stage(stage)
    out = []
    for _ in range(steps):
        rec = trainer.train_step(stage, 1e-2, 0.5)
        out.append({k: float(rec[k]) for k in ("loss", "grad_norm") if rec[k] is not None})
    return out


def _assert_same_training(a, b, stage, steps=2, atol=1e-5):
    """Both trainers take ``steps`` steps of ``stage`` on the same batches: the same losses,
    gradient norms and parameters after each update."""
    ra, rb = _records(a, stage, steps), _records(b, stage, steps)
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=atol), k
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
    for t in (eager, compiled):
        wake_up(t)
    _assert_same_training(eager, compiled, stage, steps=3)
    # the compiled layers run only inside the training forward: evaluation stays eager
    assert all(layer._compiled_call_impl is None for layer, _ in compiled._regions)


def test_compiled_step_resumes_exactly(aot_eager, tiny_llama, data_dir, tmp_path):
    straight = make_trainer(tiny_llama, data_dir, training={"compile": True})
    first = make_trainer(tiny_llama, data_dir, training={"compile": True})
    for t in (straight, first):
        wake_up(t)
    stage = STAGES[2]
    want = _records(straight, stage, 4)
    got = _records(first, stage, 2)
    save_state(tmp_path, first, {})
    second = make_trainer(tiny_llama, data_dir, training={"compile": True})
    second.enter_stage(stage)
    load_state(tmp_path, second)
    got += _records(second, stage, 2)
    for x, y in zip(got, want, strict=True):
        assert x == pytest.approx(y, rel=1e-6)
    for (name, p), (_, q) in zip(
        straight.model.named_parameters(), second.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)


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

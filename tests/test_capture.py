"""The training step captured whole (``training.capture_step``): the same losses, gradients and
updates as the uncaptured step, for both modes, every stage, across stage changes, compiled or
not, and an exact resume.

On the CPU a :class:`EagerGraph` stands in for :class:`schemabank.training.StepGraph`: it keeps
the captured function and runs it at each replay, so the Trainer's sequence (a shape's first
step uncaptured, the second captured and replayed, later ones copied into the graph's inputs and
replayed) runs as on a GPU, on the graph's own input tensors. The CUDA test captures for real."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from test_compile import ALL_LINEAR, _assert_same_records, _records, assert_resumes_exactly
from test_training import make_trainer, wake_up

from schemabank import training
from schemabank.config import config_from_dict
from schemabank.errors import ConfigError
from schemabank.method.stages import BASELINE, STAGES, param_group


class EagerGraph:
    """StepGraph's sequence without CUDA: :meth:`capture` keeps the function (runs nothing),
    :meth:`replay` runs it on the tensors it was captured with."""

    def __init__(self, pool):
        self.pool, self.inputs, self.fn, self.replays = pool, None, None, 0

    def capture(self, fn) -> None:
        self.fn = fn

    def replay(self):
        self.replays += 1
        return self.fn()


@pytest.fixture
def eager_graphs(monkeypatch):
    monkeypatch.setattr(training.Trainer, "step_graph", EagerGraph)


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(training, "COMPILE_BACKEND", "aot_eager")


SECTIONS = {"schemabank": {"lambda_balance": 0.1, "lambda_z": 0.1}}
PAD = {"pad_to_multiple_of": 64}  # few shapes: the tiny batches come in one or two lengths
KEYS = ("loss", "grad_norm")  # the logged values the equivalence tests compare


def _pair(tiny_llama, data_dir, mode="schemabank", captured=None, device="cpu", **sections):
    """An uncaptured trainer and a captured one (``captured``: more training keys)."""
    sections = {**(SECTIONS if mode == "schemabank" else {}), **sections}
    plain = make_trainer(tiny_llama, data_dir, mode=mode, device=device, training=PAD, **sections)
    keys = {**PAD, "capture_step": True, **(captured or {})}
    capt = make_trainer(tiny_llama, data_dir, mode=mode, device=device, training=keys, **sections)
    for t in (plain, capt):
        wake_up(t)
    return plain, capt


def _assert_same_params(a, b, atol=1e-5):
    for (name, p), (_, q) in zip(
        a.model.named_parameters(), b.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=name)


def _replays(trainer) -> int:
    return sum(g.replays for g in trainer._step_graphs.values())


@pytest.mark.parametrize(
    ("mode", "stage"),
    [("baseline", BASELINE), ("schemabank", STAGES[0]), ("schemabank", STAGES[1])],
    ids=["baseline", "stage1", "stage2"],
)
def test_captured_step_equals_the_uncaptured_step(eager_graphs, tiny_llama, data_dir, mode, stage):
    plain, capt = _pair(tiny_llama, data_dir, mode)
    assert capt.captured and not plain.captured
    want, got = _records(plain, stage, 6), _records(capt, stage, 6)
    _assert_same_records(want, got, 1e-5, 1e-6)
    _assert_same_params(plain, capt)
    graphs = capt._step_graphs
    assert graphs and all(key[0] == stage.key for key in graphs)
    # every graph was captured after an uncaptured step of its shape, and some replayed a later
    # batch copied into its inputs
    assert _replays(capt) > len(graphs) and len(capt._shapes_seen) >= len(graphs)


def test_captured_steps_carry_over_the_stages(eager_graphs, tiny_llama, data_dir):
    """Stage by stage in one trainer: each stage's graphs write the gradients of its own
    parameters only, and the optimiser leaves the frozen ones (and their moments) alone."""
    plain, capt = _pair(tiny_llama, data_dir)
    for stage in STAGES:
        _assert_same_records(_records(plain, stage, 4), _records(capt, stage, 4), 1e-5, 1e-6)
        _assert_same_params(plain, capt)
        others = [
            p for n, p in capt.model.named_parameters() if param_group(n) not in stage.trainable
        ]
        assert all(p.grad is None for p in others)  # the graphs wrote no gradient of theirs
        # entering a stage released the stage before's graphs: only this stage's are left
        assert capt._step_graphs and {key[0] for key in capt._step_graphs} == {stage.key}
    for (name, a), (_, b) in zip(
        plain.optimizer.state_dict()["state"].items(),
        capt.optimizer.state_dict()["state"].items(),
        strict=True,
    ):
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=f"{name}.{k}")


def test_released_step_graphs_are_captured_again(eager_graphs, tiny_llama, data_dir):
    """After :meth:`Trainer.release_step_graphs` no graph is left; a shape's next step runs
    uncaptured and the one after is captured anew, giving the uncaptured step's values. Entering
    the same stage again keeps the graphs."""
    plain, capt = _pair(tiny_llama, data_dir)
    stage = STAGES[1]
    _assert_same_records(_records(plain, stage, 4), _records(capt, stage, 4), 1e-5, 1e-6)
    old = dict(capt._step_graphs)
    capt.enter_stage(stage)  # the same stage: nothing released
    assert capt._step_graphs == old
    capt.release_step_graphs()
    assert not capt._step_graphs and not capt._shapes_seen and capt._step_graph_pool is None
    _assert_same_records(_records(plain, stage, 4), _records(capt, stage, 4), 1e-5, 1e-6)
    _assert_same_params(plain, capt)
    assert capt._step_graphs and not set(capt._step_graphs.values()) & set(old.values())


def test_captured_packed_step_equals_the_uncaptured_packed_step(eager_graphs, tiny_llama, data_dir):
    keys = {"packing": True, "batch_size": 4, "max_length": 256}
    plain = make_trainer(tiny_llama, data_dir, training=keys, **SECTIONS)
    capt = make_trainer(tiny_llama, data_dir, training={**keys, "capture_step": True}, **SECTIONS)
    for t in (plain, capt):
        wake_up(t)
    _assert_same_records(_records(plain, STAGES[2], 4), _records(capt, STAGES[2], 4), 1e-5, 1e-6)
    _assert_same_params(plain, capt)
    assert _replays(capt) > 0


@pytest.mark.parametrize("scope", ["layers", "step"])
def test_captured_compiled_step_equals_the_uncaptured_step(
    eager_graphs, aot_eager, tiny_llama, data_dir, scope
):
    keys = {"compile": True, "compile_scope": scope}
    plain, capt = _pair(tiny_llama, data_dir, captured=keys)
    assert bool(capt._regions) == (scope == "layers") and not capt.graphs  # no graphs of its own
    _assert_same_records(_records(plain, STAGES[2], 5), _records(capt, STAGES[2], 5), 1e-5, 1e-6)
    _assert_same_params(plain, capt)
    assert _replays(capt) > 0


def test_captured_step_resumes_exactly(eager_graphs, tiny_llama, data_dir, tmp_path):
    keys = {**PAD, "capture_step": True}
    assert_resumes_exactly(tiny_llama, data_dir, tmp_path, keys, before=3, **SECTIONS)


def test_captured_step_pads_to_few_lengths(eager_graphs, tiny_llama, data_dir):
    """Without ``pad_to_multiple_of``, a captured step rounds its batches' lengths to 64 as a
    compiled one does (a capture per length), and the losses stay the unrounded step's."""
    plain = make_trainer(tiny_llama, data_dir, **SECTIONS)
    capt = make_trainer(tiny_llama, data_dir, training={"capture_step": True}, **SECTIONS)
    assert plain.batches.pad_multiple is None
    assert capt.batches.pad_multiple == training.COMPILE_PAD_MULTIPLE
    for t in (plain, capt):
        wake_up(t)
    _assert_same_records(_records(plain, STAGES[1], 4), _records(capt, STAGES[1], 4), 1e-5, 1e-6)
    lengths = {dict(key[1])["input_ids"][1] for key in capt._shapes_seen}
    assert lengths and all(n % 64 == 0 for n in lengths)


def test_capture_step_runs_uncaptured_off_cuda(tiny_llama, data_dir, capsys):
    t = make_trainer(tiny_llama, data_dir, training={"capture_step": True})
    assert not t.captured
    assert "not on CUDA, the step runs uncaptured" in capsys.readouterr().err
    t.enter_stage(STAGES[1])
    t.train_step(STAGES[1], 1e-3, 0.5)
    assert not t._step_graphs


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"compile_mode": "reduce-overhead"}, "would record CUDA graphs of its own"),
        ({"micro_batch_size": 1}, "needs one micro-batch a step"),
    ],
)
def test_capture_step_refuses_what_it_cannot_capture(tiny_llama, keys, message):
    cfg = tiny_config(tiny_llama, training={"capture_step": True, **keys})
    with pytest.raises(ConfigError, match=message):
        config_from_dict(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
@pytest.mark.parametrize(
    "keys",
    [{}, {"compile": True, "compile_combo_kernels": False}, {"compile": True}],
    ids=["eager", "compiled-layers", "compiled-layers-combo-kernels"],  # combo: the default
)
def test_captured_step_on_cuda_gives_the_uncaptured_step(tiny_llama, data_dir, keys):
    """On a GPU, through real CUDA graphs (and inductor without CUDA graphs of its own, its
    kernels one by one or combined): the uncaptured step's losses, gradient norms and parameters
    over stages 2 and 3, steps that run, capture and replay. In fp32 (bf16's fused kernels round
    differently)."""
    keys = {**keys, "compile_scope": "layers"} if keys else {}
    plain, capt = _pair(tiny_llama, data_dir, captured=keys, device="cuda")
    assert capt.captured and not capt.graphs
    for t in (plain, capt):
        t.bf16 = False
    pools = []
    for stage in STAGES[1:]:
        _assert_same_records(_records(plain, stage, 5), _records(capt, stage, 5), 1e-4)
        pools.append(capt._step_graph_pool)
        assert {key[0] for key in capt._step_graphs} == {stage.key}
    _assert_same_params(plain, capt, atol=1e-4)
    assert all(isinstance(g, training.StepGraph) for g in capt._step_graphs.values())
    assert None not in pools and pools[0] != pools[1]  # stage 3 captured into a new pool
    capt.release_step_graphs()  # the graphs and their pool go; the memory returns to the device
    assert not capt._step_graphs and capt._step_graph_pool is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
def test_captured_fused_step_on_cuda_gives_the_uncaptured_fused_step(tiny_llama, data_dir):
    """``fuse_lora_a`` (LoRA on every linear layer, so that q/k/v and gate/up share) in the
    captured step with compiled layers: each step, from the same weights, gives the uncaptured
    fused step's loss and gradient norm (the same compiled layers, without CUDA graphs) over
    stages 2 and 3, steps that run, capture and replay, and the eager step's loss; a replay that
    read stale weights or inputs would not. The weights are copied before each step: this tiny
    model at this learning rate turns float-level differences into large ones within three
    updates (results/bench/speed_2026-12-03g). The fused gradients against the eager ones:
    test_compile's test_fused_lora_a_gives_the_eager_step."""
    keys = {"compile": True, "compile_scope": "layers", "fuse_lora_a": True}
    eager, capt = _pair(tiny_llama, data_dir, captured=keys, device="cuda", lora=ALL_LINEAR)
    uncapt = make_trainer(
        tiny_llama,
        data_dir,
        device="cuda",
        training={**PAD, **keys, "compile_mode": "default"},  # no CUDA graphs of inductor's
        lora=ALL_LINEAR,
        **SECTIONS,
    )
    assert capt._fuse_lora_a and uncapt._fuse_lora_a and capt.captured and not uncapt.captured
    trainers = (eager, uncapt, capt)
    for t in trainers:
        t.bf16 = False
    steps = 5
    for stage in STAGES[1:]:
        for t in trainers:
            t.enter_stage(stage)
        for _ in range(steps):
            with torch.no_grad():
                for t in trainers[:2]:
                    for p, q in zip(capt.model.parameters(), t.model.parameters(), strict=True):
                        q.copy_(p)
            want, plain, got = (
                {k: float(v) for k, v in t.train_step(stage, 1e-2, 0.5).items() if k in KEYS}
                for t in trainers
            )
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), (want, plain, got)
            _assert_same_records([plain], [got], 1e-4)
        # each shape ran once uncaptured, then was captured and replayed: some steps replayed
        assert capt._step_graphs and len(capt._shapes_seen) + len(capt._step_graphs) < steps

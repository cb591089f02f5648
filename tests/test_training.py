"""Training stages: each step changes exactly the parameters its stage trains (SPEC section 4),
the losses are the stage's, the data order is shared by both modes, and the schedule is right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from schemabank.config import config_from_dict
from schemabank.data import load_gsm8k, split_dev
from schemabank.errors import TrainingError
from schemabank.method.adapter import build_adapter, matched_rank
from schemabank.method.stages import BASELINE, STAGES, count_parameters, param_group
from schemabank.steplog import pack_values, unpack_values
from schemabank.telemetry import JsonlLogger, read_jsonl
from schemabank.training import Trainer, lr_factor, stage_plan


class _Bar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass


def make_trainer(base_path, data_dir, mode="schemabank", device="cpu", **sections):
    """A Trainer of the tiny model on ``device`` (bf16 autocast on CUDA, as a run's ``auto``)."""
    cfg = config_from_dict(tiny_config(base_path, mode=mode, **sections))
    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path)
    base.requires_grad_(False)
    torch.manual_seed(0)
    model, banks, _ = build_adapter(base, cfg)
    device = torch.device(device)
    model.to(device)
    train_set = load_gsm8k("train", data_dir)
    return Trainer(cfg, model, banks, tok, train_set, device, device.type == "cuda")


def wake_up(trainer):
    """Give every adapter parameter a non-zero gradient path: at init gain = 0 and LoRA B = 0
    block the gradients of U, V, A, G and LoRA A, which would hide a wrong freeze."""
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if name.endswith("gain") or "lora_B" in name:
                p.fill_(0.5)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.key)
def test_each_stage_changes_exactly_its_parameters(stage, tiny_model, data_dir, tmp_path):
    trainer = make_trainer(
        tiny_model, data_dir, schemabank={"lambda_balance": 0.1, "lambda_z": 0.1}
    )
    wake_up(trainer)
    before = snapshot(trainer.model)
    with JsonlLogger(tmp_path / "log.jsonl") as log:
        trainer.train_stage(stage, 1, 1e-2, log, _Bar())
    after = snapshot(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    expected = {n for n in before if param_group(n) in stage.trainable}
    assert expected, "the stage must have parameters to train"
    assert changed == expected
    (line,) = read_jsonl(tmp_path / "log.jsonl")
    assert line["stage"] == stage.label
    assert (line["route_loss"] is not None) == ("route" in stage.losses)
    assert (line["lm_loss"] is not None) == ("lm" in stage.losses)
    if stage.key == "stage3_joint_finetune":
        assert line["balance"] is not None and line["z_loss"] is not None
        assert line["loss"] == pytest.approx(
            line["lm_loss"] + 0.1 * line["ortho"] + 0.1 * line["balance"] + 0.1 * line["z_loss"],
            rel=1e-5,
        )


def test_baseline_changes_only_lora(tiny_llama, data_dir, tmp_path):
    trainer = make_trainer(tiny_llama, data_dir, mode="baseline")
    assert trainer.banks is None
    wake_up(trainer)
    before = snapshot(trainer.model)
    with JsonlLogger(tmp_path / "log.jsonl") as log:
        trainer.train_stage(BASELINE, 2, 1e-2, log, _Bar())
    after = snapshot(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {n for n in before if "lora_" in n}
    lines = read_jsonl(tmp_path / "log.jsonl")
    assert [x["step"] for x in lines] == [1, 2] and all(x["route_loss"] is None for x in lines)


def test_both_modes_share_data_order_and_lora_init(tiny_llama, data_dir):
    a = make_trainer(tiny_llama, data_dir, mode="schemabank")
    b = make_trainer(tiny_llama, data_dir, mode="baseline")
    lora_a = {n: p for n, p in a.model.named_parameters() if "lora_" in n}
    lora_b = {n: p for n, p in b.model.named_parameters() if "lora_" in n}
    assert lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[n], lora_b[n]) for n in lora_a)
    # tag dropout draws from its own generator, so both modes see the same problems in order
    for stage_a, p_drop in ((STAGES[0], 1.0), (STAGES[0], 0.5), (STAGES[1], 1.0), (STAGES[2], 1.0)):
        batch_a, _, _ = a.batches.make_batch(stage_a, p_drop)
        batch_b, _, _ = b.batches.make_batch(BASELINE, 1.0)
        if p_drop == 1.0:  # no tag line: identical inputs
            assert torch.equal(batch_a["input_ids"], batch_b["input_ids"])


def test_stage1_targets_follow_tags(tiny_llama, data_dir):
    trainer = make_trainer(tiny_llama, data_dir)
    batch, targets, n_tokens = trainer.batches.make_batch(STAGES[0], 0.0)
    assert targets.shape == (2, 8)
    torch.testing.assert_close(targets.sum(-1), torch.ones(2))
    assert n_tokens == int(batch["attention_mask"].sum())
    text = trainer.tok.decode(batch["input_ids"][0])
    assert text.startswith("Tags: ")  # p = 0 keeps every tag line


def test_lr_schedules():
    assert [lr_factor(s, 10, 0, "constant") for s in (0, 9)] == [1.0, 1.0]
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(0, 10, 0, "linear") == 1.0 and lr_factor(5, 10, 0, "linear") == 0.5
    assert lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 0, "cosine") == pytest.approx(0.0)


def test_stage_plan_uses_stage_learning_rates(tiny_llama):
    sections = {"training": {**tiny_config(tiny_llama)["training"]}}
    sections["training"]["stages"]["stage1_router_pretrain"]["learning_rate"] = 0.5
    cfg = config_from_dict(tiny_config(tiny_llama, **sections))
    plan = stage_plan(cfg)
    assert [(s.key, n) for s, n, _ in plan] == [(s.key, 2) for s in STAGES]
    assert [lr for _, _, lr in plan] == [0.5, 1e-2, 1e-2]
    base = config_from_dict(tiny_config(tiny_llama, mode="baseline"))
    assert [(s.key, n) for s, n, _ in stage_plan(base)] == [("baseline", 6)]


def test_parameter_matched_baseline(tiny_llama):
    cfg = config_from_dict(tiny_config(tiny_llama, mode="baseline", lora={"match_params": True}))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    r = matched_rank(base, cfg)
    sb_cfg = config_from_dict(tiny_config(tiny_llama))
    sb_model, _, _ = build_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama), sb_cfg)
    target = count_parameters(sb_model)["total"]
    model, banks, rank = build_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama), cfg)
    assert banks is None and rank == r > cfg.lora.r
    got = count_parameters(model)["total"]
    per_rank = got // r
    assert abs(got - target) <= per_rank / 2  # the closest rank
    assert model.peft_config["default"].lora_alpha == pytest.approx(
        cfg.lora.lora_alpha * r / cfg.lora.r
    )


def test_non_finite_loss_stops_with_step_and_stage(tiny_llama, data_dir, tmp_path):
    trainer = make_trainer(tiny_llama, data_dir)
    with torch.no_grad():
        next(iter(trainer.banks)).router.weight.fill_(float("nan"))
    with (
        JsonlLogger(tmp_path / "log.jsonl") as log,
        pytest.raises(TrainingError, match=r"step 1 \(stage router_pretrain\)"),
    ):
        trainer.train_stage(STAGES[0], 2, 1e-2, log, _Bar())


def test_max_length_without_answer_tokens_is_an_error(tiny_llama, data_dir, tmp_path):
    trainer = make_trainer(tiny_llama, data_dir, training={"max_length": 16})
    with (
        JsonlLogger(tmp_path / "log.jsonl") as log,
        pytest.raises(TrainingError, match="training.max_length"),
    ):
        trainer.train_stage(STAGES[1], 1, 1e-2, log, _Bar())


def test_answer_loss_equals_the_models_own_loss(tiny_model, data_dir):
    """The fast loss (vocabulary projection on answer positions only, chunked) is the Hugging Face
    causal-LM loss, with LoRA and banks active."""
    from schemabank.batching import answer_positions
    from schemabank.training import answer_loss

    trainer = make_trainer(tiny_model, data_dir)
    wake_up(trainer)
    batch, _, _ = trainer.batches.make_batch(STAGES[1], 1.0)
    expected = trainer.model(**batch).loss
    positions = answer_positions(batch["labels"])
    for chunk, given in ((8192, None), (7, None), (8192, positions), (7, positions)):
        torch.testing.assert_close(
            answer_loss(trainer.model, batch, chunk=chunk, positions=given),
            expected,
            rtol=1e-5,
            atol=1e-6,
        )
    padded = answer_positions(batch["labels"], 64)  # a captured step's: a fixed number
    assert len(padded) % 64 == 0 and len(padded) > len(positions)
    torch.testing.assert_close(
        answer_loss(trainer.model, batch, chunk=7, positions=padded, padded=True),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
    grads = []
    for fn in (
        lambda: trainer.model(**batch).loss,
        lambda: answer_loss(trainer.model, batch, chunk=5),
    ):
        trainer.model.zero_grad()
        fn().backward()
        grads.append(
            {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        )
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def losses_and_gradients(trainer, stage, batch, targets):
    """One forward and backward pass of ``batch``: the stage's losses and the parameters'
    gradients."""
    parts = trainer.losses(stage, batch, targets)
    trainer.total_loss(stage, parts).backward()
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in parts.items()}, grads


def assert_same_losses_and_gradients(want, got):
    """Two :func:`losses_and_gradients`: the same losses and gradients, within float error."""
    (losses, grads), (got_losses, got_grads) = want, got
    assert losses.keys() == got_losses.keys()
    for k in losses:
        torch.testing.assert_close(got_losses[k], losses[k], rtol=1e-5, atol=1e-6, msg=k)
    assert grads.keys() == got_grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(got_grads[n], grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("router", ["token", "token_prefix"])
@pytest.mark.parametrize("stage", [*STAGES, BASELINE], ids=lambda s: s.key)
def test_a_padded_batch_needs_no_attention_mask(stage, router, tiny_llama, data_dir, monkeypatch):
    """A padded training batch runs without its attention mask, its attention switched to causal
    SDPA for the pass (:func:`model_mask`, :func:`padded_attention`: SDPA's flash kernel on a
    GPU, compiled or not): its examples are right-padded, so every loss of every stage and its
    gradients are those of the model's own attention with the mask, prefix routers included."""
    import schemabank.training as training
    from schemabank.models import unwrapped

    mode = "baseline" if stage is BASELINE else "schemabank"
    real = training.model_mask
    results = []
    for masked in (True, False):
        trainer = make_trainer(tiny_llama, data_dir, mode=mode, schemabank={"router_input": router})
        wake_up(trainer)
        trainer.enter_stage(stage)
        batch, targets, _ = trainer.batches.make_batch(stage, 0.5)
        lengths = batch["attention_mask"].sum(1)
        assert lengths.min() < lengths.max() == batch["attention_mask"].shape[1]  # padding
        config = unwrapped(trainer.model).config
        seen = []  # each model_mask call: what training gives, and the attention then

        def mask(b, masked=masked, seen=seen, config=config):
            seen.append((real(b), config._attn_implementation))
            return b["attention_mask"] if masked else seen[-1][0]

        monkeypatch.setattr(training, "model_mask", mask)
        results.append(losses_and_gradients(trainer, stage, batch, targets))
        assert seen and all(m is None for m, _ in seen)  # what training gives: no mask
        attention = {a for _, a in seen}
        assert attention == {"sdpa"} if masked else training.CAUSAL in attention
        assert config._attn_implementation == "sdpa"  # the model's own again after the pass
    assert set(stage.losses) <= results[0][0].keys()
    assert_same_losses_and_gradients(*results)


@pytest.mark.parametrize("stage", [*STAGES, BASELINE], ids=lambda s: s.key)
def test_a_padded_batch_is_not_searched_for_packed_sequences(
    stage, tiny_llama, data_dir, monkeypatch
):
    """Given no mask, transformers' mask code looks at the position ids for packed sequences
    unless the attention has no mask function: outside Dynamo that asks the GPU for a value
    (``.all()``) and made every step wait for the GPU's queued work. :data:`CAUSAL` has none."""
    import transformers.masking_utils as masking_utils

    searched = []
    real = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(
        masking_utils,
        "find_packed_sequence_indices",
        lambda position_ids: searched.append(position_ids.shape) or real(position_ids),
    )
    trainer = make_trainer(
        tiny_llama, data_dir, mode="baseline" if stage is BASELINE else "schemabank"
    )
    trainer.enter_stage(stage)
    trainer.train_step(stage, 1e-3, 0.5)
    assert searched == []
    batch, _, _ = trainer.batches.make_batch(stage, 0.5)
    trainer.model(input_ids=batch["input_ids"], use_cache=False)  # outside training's pass
    assert searched  # the spy sees transformers' search where the model's own attention runs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
@pytest.mark.parametrize("stage", [*STAGES, BASELINE], ids=lambda s: s.key)
def test_a_training_step_never_waits_for_the_gpu(stage, tiny_llama, data_dir):
    """:class:`Trainer`'s promise on a GPU: a step only queues work, so the host prepares the next
    batch while the GPU runs. torch's sync debug mode raises at any operation that would wait
    for the GPU (a value read back, a synchronous copy)."""
    mode = "baseline" if stage is BASELINE else "schemabank"
    trainer = make_trainer(tiny_llama, data_dir, mode=mode, device="cuda")
    trainer.enter_stage(stage)
    trainer.train_step(stage, 1e-3, 0.5)  # the first step makes the optimiser's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        record = trainer.train_step(stage, 1e-3, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert record["step"] == 2 and record["loss"].device.type == "cuda"


def test_answer_positions_point_at_the_tokens_before_each_answer_token():
    from schemabank.batching import answer_positions

    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    pos = answer_positions(labels)
    assert pos.tolist() == [1, 2, 5]  # rows of T = 5: (0, 1), (0, 2), (1, 0)
    assert labels.reshape(-1)[pos + 1].tolist() == [7, 8, 5]
    padded = answer_positions(labels, 4)  # a multiple of 4, padded with an ignored label's
    assert padded[:3].tolist() == [1, 2, 5] and len(padded) == 4
    assert labels.reshape(-1)[padded[3] + 1] == -100
    assert len(answer_positions(labels, 3)) == 3  # already a multiple
    with pytest.raises(ValueError, match="no position to pad with"):
        answer_positions(torch.tensor([[-100, 1, 2]]), 4)


def test_prepared_examples_are_those_drawn_without_preparation(tiny_llama, data_dir, monkeypatch):
    """Batches.prepare moves the tokenisation, answer counts and routing targets out of the
    steps: the batches are the same, and the steps no longer call the tokenizer."""
    lazy, ready = make_trainer(tiny_llama, data_dir), make_trainer(tiny_llama, data_dir)
    drops = (0.0, 0.5, 1.0)
    expected = [lazy.batches.next_examples(STAGES[0], p_drop) for p_drop in drops]
    ready.batches.prepare(STAGES[0])

    def no_tokenizer(*args, **kwargs):
        pytest.fail("a step tokenised")

    monkeypatch.setattr("schemabank.batching.encode_all", no_tokenizer)
    for p_drop, (ex_l, targets_l, n_l) in zip(drops, expected, strict=True):
        ex_r, targets_r, n_r = ready.batches.next_examples(STAGES[0], p_drop)
        assert ex_r == ex_l and n_r == n_l and torch.equal(targets_r, targets_l)
        assert n_r == [sum(x != -100 for x in labels[1:]) for _, labels in ex_r]


@pytest.mark.parametrize("stage", [STAGES[0], STAGES[1], BASELINE], ids=lambda s: s.key)
def test_micro_batches_give_the_same_step_as_one_batch(stage, tiny_llama, data_dir):
    """Gradient accumulation over length-grouped micro-batches is the full batch's step."""
    mode = "baseline" if stage is BASELINE else "schemabank"
    results = []
    for micro in (None, 1, 2):
        trainer = make_trainer(
            tiny_llama, data_dir, mode=mode, training={"batch_size": 4, "micro_batch_size": micro}
        )
        wake_up(trainer)
        trainer.enter_stage(stage)
        record = trainer.train_step(stage, 1e-2, 0.5)
        params = {
            n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad
        }
        results.append((record, params))
    (ref, ref_params), others = results[0], results[1:]
    for record, params in others:
        for key in ("loss", "lm_loss", "route_loss", "ortho", "grad_norm"):
            if ref[key] is not None:
                torch.testing.assert_close(record[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
        assert record["tokens"] == ref["tokens"] and record["padded_tokens"] <= ref["padded_tokens"]
        for n in ref_params:
            torch.testing.assert_close(params[n], ref_params[n], rtol=1e-5, atol=1e-6, msg=n)


def test_step_values_reach_the_host_in_one_packed_copy():
    """A step record's tensors (scalars and the stop flags) are copied to the host as one flat
    tensor and come back as the values ``.item()`` / ``.tolist()`` give."""
    record = {
        "step": 3,
        "loss": torch.tensor(1.25),
        "lm_loss": None,
        "grad_norm": torch.tensor(0.1, dtype=torch.bfloat16),
        "stop": torch.tensor([0.0, 1.0]),
        "tokens": 17,
    }
    keys, flat = pack_values(record)
    assert keys == [("loss", 1), ("grad_norm", 1), ("stop", 2)] and flat.dtype == torch.float32
    out = unpack_values(record, keys, flat.tolist())
    assert out == {
        "step": 3,
        "loss": 1.25,
        "lm_loss": None,
        "grad_norm": record["grad_norm"].item(),
        "stop": [0.0, 1.0],
        "tokens": 17,
    }
    assert unpack_values({"step": 1}, *pack_values({"step": 1})[:1], []) == {"step": 1}


def test_dev_split_is_held_out_and_evaluated(tiny_llama, data_dir, tmp_path, monkeypatch):
    from schemabank import training
    from schemabank.errors import ConfigError

    train = load_gsm8k("train", data_dir)
    kept, dev = split_dev(train, 3)
    assert kept + dev == train and dev == train[-3:]
    assert split_dev(train, 0) == (train, [])
    with pytest.raises(ConfigError, match="data.dev_size"):
        split_dev(train, len(train))

    seen = []  # every problem the trainer was given
    real_init = Trainer.__init__

    def spy(self, cfg, model, banks, tok, train_set, *args, **kw):
        seen.extend(train_set)
        real_init(self, cfg, model, banks, tok, train_set, *args, **kw)

    monkeypatch.setattr(Trainer, "__init__", spy)
    cfg = config_from_dict(
        tiny_config(
            tiny_llama,
            "baseline",
            data={"dev_size": 3},
            eval={"limit": 2, "batch_size": 2, "max_new_tokens": 4, "ppl_windows": []},
        )
    )
    run_dir = training.run(cfg, tmp_path, data_dir)
    r = json.loads((run_dir / "results.json").read_text())
    assert seen == train[:-3]
    d = r["gsm8k_dev"]
    assert d["n"] == 3 and [p["gold"] for p in d["problems"]] == [p.gold for p in dev]
    assert d["strict"]["total"] == 3 and d["samples"] == []
    assert r["gsm8k"]["n"] == 2 and r["timings"]["gsm8k_dev_s"] > 0
    # re-evaluating the checkpoint holds out, and scores, the same dev problems
    from schemabank.evaluation import evaluate_checkpoint

    again = evaluate_checkpoint(run_dir / "checkpoint", cfg, data_dir)
    assert again["gsm8k_dev"]["problems"] == d["problems"]


def test_saved_state_restores_the_grouped_data_order_with_its_carried_problems(
    tiny_llama, data_dir, tmp_path
):
    """8 problems in length-grouped batches of 3: after two batches, 2 problems wait to be
    carried into the next epoch's grouping; a restored trainer draws the same batches after."""
    from schemabank.state import load_state, save_state

    grouped = {"batch_size": 3, "group_by_length": True}
    a = make_trainer(tiny_llama, data_dir, training=grouped)
    for _ in range(2):
        a.batches.next_examples(BASELINE, 1.0)
    order = a.batches.order
    assert order.carry and order.pos == len(order.perm)  # the next batch needs them
    save_state(tmp_path, a, {})
    b = make_trainer(tiny_llama, data_dir, training=grouped)
    load_state(tmp_path, b)
    assert [order.next_batch() for _ in range(9)] == [
        b.batches.order.next_batch() for _ in range(9)
    ]


def test_split_batch_shares_strided_and_pads_each_micro_batch_to_its_longest():
    from schemabank.batching import padded_tokens, split_batch

    lengths = [5, 1, 4, 2, 7, 3]
    assert split_batch(lengths, 0, 1, None) == [[1, 3, 5, 2, 0, 4]]
    assert split_batch(lengths, 0, 1, 4) == [[1, 3, 5, 2], [0, 4]]
    assert split_batch(lengths, 0, 2, 2) == [[2, 0], [4]]  # examples 0, 2, 4
    assert split_batch(lengths, 1, 2, 2) == [[1, 3], [5]]  # examples 1, 3, 5
    assert padded_tokens(lengths, 1, 4) == [4 * 4 + 2 * 7]
    assert padded_tokens(lengths, 2, 2) == [2 * 5 + 7, 2 * 2 + 3]


def test_padding_script_counts_what_the_trainer_computes(
    tiny_llama, data_dir, tmp_path, capsys, monkeypatch
):
    import re

    import yaml

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import padding

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_llama)))
    args = ["--config", str(path), "--data-dir", str(data_dir), "--batch-size", "4", "--steps", "6"]
    assert padding.main([*args, "--micro-batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count(" 0.0% padding") == 2  # micro-batches of one example are not padded
    speedup = float(re.search(r"leaves to 2 processes: ([\d.]+) x", out).group(1))
    assert 1.0 < speedup <= 2.0  # the busier process of each step sets the pace
    assert padding.main([*args, "--micro-batch-size", "0", "--nproc", "4"]) == 0
    one, four = capsys.readouterr().out.splitlines()[1:3]
    # one process pads the batch to its longest; four of one example each pad nothing
    assert "1 process:" in one and "0.0% padding" not in one
    assert "4 processes:" in four and "0.0% padding" in four
    # training.packing: micro-batches of one example are one row of max_length (128) tokens each
    assert (
        padding.main([*args, "--micro-batch-size", "1", "--packing", "--rows-multiple", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "rows of 128 tokens" in out and "{1: 24}" in out
    assert f"1 process: {6 * 4 * 128:,} tokens computed" in out


def _patience_config(tiny_llama, **training):
    raw = tiny_config(
        tiny_llama,
        data={"dev_size": 2},
        eval={"limit": 2, "batch_size": 2, "max_new_tokens": 2, "ppl_windows": []},
    )
    raw["training"] |= {"total_steps": 6, **training}
    raw["training"]["stages"] = {
        "stage1_router_pretrain": {
            "steps": 4,
            "patience": 1,
            "eval_every": 1,
            "tag_curriculum": {"dropout_schedule": [0.0, 0.5]},
        },
        "stage2_schema_train": {"steps": 2},
        "stage3_joint_finetune": {"steps": 0},
    }
    return config_from_dict(raw)


HELDOUT = {1: 3.0, 2: 2.9, 3: 2.95, 4: 2.8}  # held-out routing loss after each global step


def test_stage1_patience_ends_it_and_gives_its_steps_to_stage2(
    tiny_llama, data_dir, tmp_path, monkeypatch
):
    from schemabank import training

    monkeypatch.setattr(Trainer, "heldout_route_ce", lambda self: HELDOUT[self.step])
    run_dir = training.run(_patience_config(tiny_llama), tmp_path, data_dir)
    log = read_jsonl(run_dir / "training_log.jsonl")
    assert [x["stage"] for x in log] == ["router_pretrain"] * 3 + ["schema_train"] * 3
    assert [x["step"] for x in log] == list(range(1, 7))
    stages = json.loads((run_dir / "results.json").read_text())["training"]["stages"]
    held = stages["router_pretrain"]["heldout"]
    assert held["evals"] == [[1, 3.0], [2, 2.9], [3, 2.95]] and held["steps_run"] == 3
    assert stages["router_pretrain"]["steps"] == 4 and stages["schema_train"]["steps"] == 3


def test_stage1_patience_resumes_exactly(tiny_llama, data_dir, tmp_path, monkeypatch):
    """Stopped by SIGTERM in stage 2 (after stage 1 ended early) and resumed: the same log as
    an uninterrupted run."""
    import signal

    from schemabank import training
    from schemabank.training import TrainingInterrupted

    monkeypatch.setattr(Trainer, "heldout_route_ce", lambda self: HELDOUT[self.step])
    whole = training.run(_patience_config(tiny_llama), tmp_path / "a", data_dir)
    real_step = Trainer.train_step

    def interrupted_step(self, *args, **kw):
        record = real_step(self, *args, **kw)
        if self.step == 2:  # in stage 1, before its end: the held-out record must survive
            self.stop_signal = signal.SIGTERM
        return record

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    cfg = _patience_config(tiny_llama)
    with pytest.raises(TrainingInterrupted):
        training.run(cfg, tmp_path / "b", data_dir)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = training.run(cfg, tmp_path / "b", data_dir, resume=True)
    a = read_jsonl(whole / "training_log.jsonl")
    b = read_jsonl(resumed / "training_log.jsonl")
    assert [x["stage"] for x in b] == [x["stage"] for x in a]
    assert [x["loss"] for x in b] == pytest.approx([x["loss"] for x in a], rel=1e-5)
    ra = json.loads((whole / "results.json").read_text())["training"]["stages"]
    rb = json.loads((resumed / "results.json").read_text())["training"]["stages"]
    assert rb["router_pretrain"]["heldout"] == ra["router_pretrain"]["heldout"]


def test_stage1_patience_needs_a_dev_split(tiny_llama):
    from schemabank.errors import ConfigError

    raw = tiny_config(tiny_llama)
    raw["training"]["stages"]["stage1_router_pretrain"] |= {"patience": 2, "eval_every": 0}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert "needs held-out problems" in str(err.value) and "eval_every" in str(err.value)


def test_heldout_route_ce_is_the_routing_fit_over_all_tokens(tiny_llama, data_dir):
    trainer = make_trainer(tiny_llama, data_dir)
    trainer.heldout = load_gsm8k("train", data_dir)[-2:]
    ce = trainer.heldout_route_ce()
    assert 0 < ce < 10 and trainer.model.training


def test_a_perplexity_window_beyond_the_context_is_refused_before_training(
    tiny_llama, data_dir, tmp_path
):
    from schemabank import training
    from schemabank.errors import SchemaBankError

    cfg = config_from_dict(tiny_config(tiny_llama, eval={"ppl_windows": [16, 16384]}))
    with pytest.raises(SchemaBankError, match=r"16384 tokens is longer than the model's context"):
        training.run(cfg, tmp_path, data_dir)
    assert not (tmp_path / cfg.run_name).exists()  # nothing trained, nothing written


def test_profile_steps_profile_windows_of_the_run_and_change_no_step(
    tiny_llama, data_dir, tmp_path, capsys
):
    """``schemabank train --profile-steps FIRST:N`` (repeatable) runs N of the run's own steps
    under the profiler and writes their summary to profile.json; a window that reaches past its
    stage ends with it; the training is the same as without the profiler."""
    from schemabank import training
    from schemabank.telemetry import read_jsonl

    cfg = config_from_dict(
        tiny_config(tiny_llama, eval={"limit": 1, "max_new_tokens": 2, "ppl_windows": []})
    )
    plain = training.run(cfg, tmp_path / "plain", data_dir)
    profiled = training.run(cfg, tmp_path / "profiled", data_dir, profile_steps=[(1, 2), (4, 3)])
    assert not (plain / "profile.json").exists()
    first, second = json.loads((profiled / "profile.json").read_text())["windows"]
    assert (first["first_step"], first["steps"], first["stage"]) == (1, 2, "router_pretrain")
    # step 4 (stage 2's last) only: the window's other steps belong to stage 3
    assert (second["first_step"], second["steps"], second["stage"]) == (4, 1, "schema_train")
    for p in (first, second):
        assert p["wall_ms"] > 0 and p["device_ms"] == 0  # no GPU here
        assert p["kernel_launches"] == 0 and p["graph_launches"] == 0
        assert p["top_host_ms"] and all(ms > 0 for _, ms in p["top_host_ms"])
    err = capsys.readouterr().err
    assert "steps 1-2 (router_pretrain) profiled over 2 steps" in err
    assert "steps 4-4 (schema_train) profiled over 1 steps" in err

    def losses(run_dir):
        return [x["loss"] for x in read_jsonl(run_dir / "training_log.jsonl")]

    assert losses(profiled) == losses(plain)

    # a window the run never reaches writes nothing (and says so)
    late = training.run(
        cfg, tmp_path / "late", data_dir, profile_steps=[(len(losses(plain)) + 1, 1)]
    )
    assert not (late / "profile.json").exists()
    assert "was not run here; not profiled" in capsys.readouterr().err


def test_an_unwritable_profile_is_a_warning_and_the_run_finishes(
    tiny_llama, data_dir, tmp_path, capsys, monkeypatch
):
    from schemabank import training

    real_write = training.write_json

    def full_disk(path, data):
        if path.name == "profile.json":
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(training, "write_json", full_disk)
    cfg = config_from_dict(
        tiny_config(tiny_llama, eval={"limit": 1, "max_new_tokens": 2, "ppl_windows": []})
    )
    run_dir = training.run(cfg, tmp_path, data_dir, profile_steps=[(1, 1)])
    assert (run_dir / "results.json").exists() and (run_dir / "checkpoint").is_dir()
    assert not (run_dir / "profile.json").exists()
    err = capsys.readouterr().err
    assert "warning: cannot write" in err and "No space left on device" in err
    assert "steps 1-1 (router_pretrain) profiled over 1 steps" in err


def test_profile_windows_are_checked():
    from schemabank.profiling import parse_windows

    assert parse_windows(["5:2", "1:3"], 10) == [(1, 3), (5, 2)]
    assert parse_windows(["10:1"], 10) == [(10, 1)]
    with pytest.raises(ValueError, match="1:3 and 3:1 overlap"):
        parse_windows(["3:1", "1:3"], 10)
    with pytest.raises(ValueError, match="the run has 10 steps"):
        parse_windows(["9:3"], 10)
    for bad in ("5", "0:2", "2:0", "a:b", "1:2:3"):
        with pytest.raises(ValueError, match="expected FIRST:N"):
            parse_windows([bad], 10)

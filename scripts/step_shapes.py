"""The step shapes a run's captured training step meets, counted on the CPU from its data order.

Usage, from the repository root, on any machine (CPU only, under a minute: the tokenizer and the
training data, no GPU):

    python scripts/step_shapes.py --config configs/gsm8k/sb_b32_split50.yaml
    python scripts/step_shapes.py --config configs/gsm8k/sb_b32_split50.yaml --answer-multiple 512

With ``training.capture_step`` each new (stage, batch shape, answer positions) of a run is run
uncaptured once (with ``training.compile``, its graphs come from the compile cache, or are
compiled) and captured the next time: what a run's first steps of each shape cost
(docs/performance.md). The script draws the run's batches as the trainer does (its data order,
stage 1's tag dropout, each batch padded to a multiple of ``--pad``, by default
``training.pad_to_multiple_of`` or the compiled step's 64) and counts, per stage, the shapes,
those met at least twice (captured), the batch shapes and the answer-position counts (the LM
loss's positions, padded to a multiple of ``--answer-multiple``, by default
:data:`~schemabank.training.ANSWER_POSITION_MULTIPLE`), and the answer positions a step projects
on average against the real ones. The batches are the trainer's own
(:meth:`~schemabank.batching.Batches.to_device`), packed rows included with ``training.packing``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch

from schemabank.batching import Batches
from schemabank.config import load_config
from schemabank.data import load_gsm8k, split_dev
from schemabank.errors import SchemaBankError
from schemabank.method.tags import dropout_for_step
from schemabank.models import load_base_model, resolve_base_model
from schemabank.training import ANSWER_POSITION_MULTIPLE, COMPILE_PAD_MULTIPLE, stage_plan


def step_shapes(cfg, tokenizer, train_set, pad: int, multiple: int) -> dict:
    """``shapes``: a Counter of ``(stage label, (batch, length), answer positions or None)`` over
    the run's steps (stage 1 has no LM loss), and the mean real and padded answer positions of
    the steps with an LM loss."""
    batches = Batches(cfg, tokenizer, train_set, torch.device("cpu"), pad)
    schedule = cfg.training.stages.stage1_router_pretrain.tag_curriculum.dropout_schedule
    shapes, real, padded = Counter(), [], []
    for stage, steps, _ in stage_plan(cfg):
        batches.prepare(stage)
        for i in range(steps):
            p_drop = dropout_for_step(i, steps, schedule) if stage.tagged else 1.0
            examples, targets, n_ans = batches.next_examples(stage, p_drop)
            lm = "lm" in stage.losses
            batch, _, found = batches.to_device(examples, targets, multiple, positions=lm)
            positions = None if found is None else len(found)
            if lm:
                real.append(sum(n_ans))
                padded.append(positions)
            shapes[(stage.label, tuple(batch["input_ids"].shape), positions)] += 1
    return {
        "shapes": shapes,
        "answer_positions": sum(real) / len(real) if real else 0.0,
        "padded_answer_positions": sum(padded) / len(padded) if padded else 0.0,
    }


def report(result: dict) -> list[str]:
    shapes = result["shapes"]
    lines = [
        f"{len(shapes)} step shapes, {sum(1 for n in shapes.values() if n >= 2)} met at least "
        f"twice (captured); {len({s for _, s, _ in shapes})} batch shapes, "
        f"{len({p for _, _, p in shapes if p is not None})} answer-position counts"
    ]
    for stage in dict.fromkeys(label for label, _, _ in shapes):
        mine = {k: n for k, n in shapes.items() if k[0] == stage}
        batch_shapes = sorted({s for _, s, _ in mine})
        counts = sorted({p for _, _, p in mine if p is not None})
        lines.append(
            f"  {stage:18s} {len(mine):3d} shapes over {sum(mine.values())} steps; batch shapes "
            f"{batch_shapes}" + (f"; answer positions {counts}" if counts else "")
        )
    if result["answer_positions"]:
        lines.append(
            f"answer positions a step: {result['padded_answer_positions']:,.0f} projected, "
            f"{result['answer_positions']:,.0f} real"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/gsm8k/sb_b32_split50.yaml")
    p.add_argument("--set", action="append", default=[], help="a config override, key=value")
    p.add_argument("--data-dir", help="folder with gsm8k/ (default: $SCHEMABANK_DATA_DIR)")
    p.add_argument("--pad", type=int, help="batch lengths' multiple (default: as the trainer)")
    p.add_argument("--answer-multiple", type=int, default=ANSWER_POSITION_MULTIPLE)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        pad = args.pad or cfg.training.pad_to_multiple_of or COMPILE_PAD_MULTIPLE
        train, _ = split_dev(load_gsm8k("train", args.data_dir or cfg.data.dir), cfg.data.dev_size)
        tok, _ = load_base_model(
            resolve_base_model(cfg.model.base_model), torch.device("cpu"), torch.float32
        )
        print("\n".join(report(step_shapes(cfg, tok, train, pad, args.answer_multiple))))
    except SchemaBankError as exc:
        sys.exit(f"error: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

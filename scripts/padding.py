"""Padding of length-grouped training batches on one process and on N, and the speed-up it allows.

Usage, from the repository root, on any machine (CPU only, about a minute: it needs the tokenizer
and the training data, not a GPU):

    python scripts/padding.py --batch-size 384 --micro-batch-size 192 --steps 120 --nproc 2

With ``--random`` the batches are drawn as the study's configs train (``group_by_length`` off);
``--multiple M`` pads each micro-batch's length up to a multiple of M, as
``training.pad_to_multiple_of`` does for a compiled step, and the padded lengths (each a shape
the compiled step meets) are counted too. The study's settings with the compiled step's default:

    python scripts/padding.py --config configs/gsm8k/sb_b32_split50.yaml --random \
        --batch-size 32 --micro-batch-size 0 --steps 1000 --nproc 1 --multiple 64
``--packing`` counts the tokens of ``training.packing`` instead (one process): each micro-batch
packed into rows of ``training.max_length`` tokens, their number rounded up to ``--rows-multiple``
(4, as with a compiled step).

It draws the first ``--steps`` global batches of a config's training order with
``training.group_by_length`` on, as training does, and splits each as the Trainer does for 1
process and for N (:func:`schemabank.batching.split_batch`: every N-th example of the batch to
each process, sorted by length, cut into micro-batches that are each padded to their longest).
It prints the share of computed tokens that are padding, and the speed-up over one process that
the padding leaves to N processes if a step's time is proportional to the tokens of its busiest
process: ``sum(tokens of 1 process) / sum(max over processes of tokens)``. Lengths are those of
the untagged prompts (stage 1's tag line adds a few tokens to some).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch

from schemabank.batching import padded_tokens, split_batch
from schemabank.config import load_config
from schemabank.data import (
    DataOrder,
    encode_all,
    load_gsm8k,
    pack_rows,
    padded_length,
    split_dev,
)
from schemabank.errors import SchemaBankError
from schemabank.models import load_base_model, resolve_base_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/smollm2/schemabank.yaml")
    p.add_argument("--nproc", type=int, default=2, help="processes to compare with one")
    p.add_argument("--steps", type=int, default=120, help="global batches to draw")
    p.add_argument("--batch-size", type=int, default=384, help="global batch")
    p.add_argument("--micro-batch-size", type=int, default=192, help="per process (0: none)")
    p.add_argument("--data-dir", help="folder with gsm8k/ (default: $SCHEMABANK_DATA_DIR)")
    p.add_argument("--random", action="store_true", help="random batches, not length groups")
    p.add_argument("--multiple", type=int, default=1, help="pad lengths to a multiple of this")
    p.add_argument(
        "--packing",
        action="store_true",
        help="training.packing: rows of max_length (rounded up to --multiple) tokens, one process",
    )
    p.add_argument(
        "--rows-multiple", type=int, default=4, help="with --packing: rows rounded up to this"
    )
    return p.parse_args(argv)


def padded_lengths(lengths: list[int], micro: int | None, multiple: int) -> list[int]:
    """The padded length of each micro-batch of one batch on one process (:func:`split_batch`),
    rounded up to a multiple of ``multiple``: the shapes a compiled step meets."""
    return [
        padded_length(max(lengths[j] for j in chunk), multiple)
        for chunk in split_batch(lengths, 0, 1, micro)
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
        train, _ = split_dev(load_gsm8k("train", args.data_dir), cfg.data.dev_size)
        tok, _ = load_base_model(
            resolve_base_model(cfg.model.base_model), torch.device("cpu"), torch.float32
        )
    except SchemaBankError as exc:
        sys.exit(f"padding: {exc}")
    lengths = [len(ids) for ids, _ in encode_all(tok, train, cfg.training.max_length)]
    order = DataOrder(
        len(train), args.batch_size, cfg.experiment.seed, None if args.random else lengths
    )
    batches = [[lengths[i] for i in order.next_batch()] for _ in range(args.steps)]
    micro = args.micro_batch_size or None
    real = sum(sum(b) for b in batches)
    m = args.multiple
    per_step = {
        w: [padded_tokens(b, w, micro, m) for b in batches] for w in dict.fromkeys((1, args.nproc))
    }
    print(
        f"{args.steps} {'random' if args.random else 'length-grouped'} batches of {args.batch_size} "
        f"(micro-batches of {micro or 'the whole share'}), {real:,} tokens, seed {cfg.experiment.seed}"
        + (f", lengths padded to multiples of {m}" if m > 1 else "")
    )
    if args.packing:  # one process: each micro-batch packed into rows of max_length tokens
        L = padded_length(cfg.training.max_length, m)
        rows = [
            padded_length(len(pack_rows([b[j] for j in chunk], L)), args.rows_multiple)
            for b in batches
            for chunk in split_batch(b, 0, 1, micro)
        ]
        computed = sum(rows) * L
        print(
            f"  packed into rows of {L} tokens (row counts rounded up to a multiple of "
            f"{args.rows_multiple}), micro-batches of each row count: "
            f"{dict(sorted(Counter(rows).items()))}"
        )
        print(f"  1 process: {computed:,} tokens computed, {1 - real / computed:.1%} padding")
        return 0
    if m > 1:
        counts = Counter(n for b in batches for n in padded_lengths(b, micro, m))
        print(
            f"  padded lengths (1 process), micro-batches of each: {dict(sorted(counts.items()))}"
        )
    for w, steps in per_step.items():
        computed = sum(sum(s) for s in steps)
        print(
            f"  {w} process{'es' if w > 1 else ''}: {computed:,} tokens computed, "
            f"{1 - real / computed:.1%} padding"
        )
    if args.nproc == 1:
        return 0
    busiest = sum(max(s) for s in per_step[args.nproc])
    one = sum(s[0] for s in per_step[1])
    print(f"  speed-up the padding leaves to {args.nproc} processes: {one / busiest:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

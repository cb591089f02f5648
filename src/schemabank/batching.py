"""Training batches: from the training problems to padded tensors on the device.

Every process draws the same global batch (the seeded data order, tag dropout from its own
generator) and computes its share of it (:func:`split_batch`). Tokenisation is memoised and done
per stage before its steps (:meth:`Batches.prepare`), and the copy to the device goes through
pinned memory, so that the training step never waits on the host.
"""

from __future__ import annotations

import torch

from .config import Config
from .data import (
    DataOrder,
    Problem,
    collate,
    encode_all,
    pack,
    packed_attention_mask,
    padded_length,
)
from .errors import TrainingError
from .method.stages import Stage
from .method.tags import routing_targets

# training.packing with training.compile: the rows of a packed batch are rounded up to a multiple
# of this, so that the compiled step meets few shapes.
PACK_ROW_MULTIPLE = 4


class Batches:
    """A run's training batches: the data order, the tag-dropout generator, each problem's
    tokenised example (with and without its tag line) and routing target, and the padding."""

    def __init__(
        self,
        cfg: Config,
        tokenizer,
        train_set: list[Problem],
        device: torch.device,
        pad_multiple: int | None,
    ):
        self.cfg, self.tok, self.train_set, self.device = cfg, tokenizer, train_set, device
        self.pad_multiple = pad_multiple  # batch lengths rounded up to a multiple of it
        t = cfg.training
        # training.packing: rows of this many tokens, their number rounded up to a multiple of
        # PACK_ROW_MULTIPLE when compiling (None: one padded row per example)
        self.pack_length = padded_length(t.max_length, pad_multiple) if t.packing else None
        self.pack_row_multiple = PACK_ROW_MULTIPLE if t.compile else 1
        seed = cfg.experiment.seed
        self._encoded: dict[tuple[int, bool], tuple[list[int], list[int]]] = {}
        self._n_ans: dict[tuple[int, bool], int] = {}  # answer tokens the LM loss trains on
        self._targets: torch.Tensor | None = None  # (N, S): each problem's routing target
        lengths = None
        if cfg.training.group_by_length:
            keys = [(i, False) for i in range(len(train_set))]
            self.encode_many(keys)
            lengths = [len(self._encoded[k][0]) for k in keys]
        self.order = DataOrder(len(train_set), cfg.training.batch_size, seed, lengths)
        self.tag_rng = torch.Generator().manual_seed(seed + 1)

    def encode_many(self, keys: list[tuple[int, bool]]) -> None:
        """Tokenise the training examples ``keys`` (``(problem index, tagged)`` pairs) not yet
        done, in one batched tokenizer call, and count their answer tokens (the labels after the
        first that are not -100: what the LM loss predicts). Memoised: epochs repeat them."""
        missing = list(dict.fromkeys(k for k in keys if k not in self._encoded))
        if not missing:
            return
        probs = [self.train_set[i] for i, _ in missing]
        tags = [p.tags if tagged else None for p, (_, tagged) in zip(probs, missing, strict=True)]
        encoded = encode_all(self.tok, probs, self.cfg.training.max_length, tags)
        for key, (ids, labels) in zip(missing, encoded, strict=True):
            self._encoded[key] = (ids, labels)
            self._n_ans[key] = sum(x != -100 for x in labels[1:])

    def next_examples(self, stage: Stage, p_drop: float):
        """The next (global) batch's (ids, labels) pairs, routing targets (B, S) and answer
        token counts, on the host; every process draws the same."""
        examples, n_ans = [], []
        max_length = self.cfg.training.max_length
        drawn = [
            (i, stage.tagged and bool(torch.rand((), generator=self.tag_rng) >= p_drop))
            for i in self.order.next_batch()
        ]
        self.encode_many(drawn)  # the ones not yet memoised, in one batched tokenizer call
        for i, keep in drawn:
            ids, labels = self._encoded[(i, keep)]
            n_ans.append(self._n_ans[(i, keep)])
            if "lm" in stage.losses and n_ans[-1] == 0:
                raise TrainingError(
                    f"training.max_length: {max_length} tokens leave no answer tokens for training problem "
                    f"{i} (its prompt is {len(ids)}+ tokens); raise training.max_length"
                )
            examples.append((ids, labels))
        return examples, self.routing_targets()[[i for i, _ in drawn]], n_ans

    def routing_targets(self) -> torch.Tensor:
        """(N, S): every training problem's routing target (computed once)."""
        if self._targets is None:
            S = self.cfg.schemabank.num_schemas
            self._targets = routing_targets([p.tags for p in self.train_set], S)
        return self._targets

    def prepare(self, stage: Stage) -> None:
        """Everything about the training examples that :meth:`next_examples` needs for the
        stage, made before its steps (where each process would otherwise redo the whole batch's
        share of it, while the GPU waits): every prompt the stage may draw tokenised, in batched
        calls, with its answer-token count, and the routing targets."""
        variants = (True, False) if stage.tagged else (False,)
        self.encode_many([(i, v) for v in variants for i in range(len(self.train_set))])
        self.routing_targets()

    def move(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device, copied asynchronously: through pinned memory on a GPU,
        since a copy from pageable memory may wait for the GPU's queued work."""
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def to_device(
        self,
        examples,
        targets: torch.Tensor,
        multiple: int | None = None,
        positions: bool = True,
    ):
        """Examples as one padded batch on the device, their routing targets (B, S), and the
        batch's :func:`answer_positions` (found on the host, so that the loss need not ask the
        GPU; ``multiple``: their number padded up to a multiple of it; ``positions`` False:
        None, not found, for a step without the LM loss). With
        ``training.packing``, the examples packed into rows (:func:`~schemabank.data.pack`):
        the batch then also holds position_ids, its attention_mask is the (R, 1, L, L) block
        mask and ``token_mask`` (R, L) marks the real tokens, and the routing targets are each
        token's, (R, L, S) (zero on padding)."""
        if self.pack_length is None:
            host = collate(examples, self.tok.pad_token_id, self.pad_multiple)
            found = answer_positions(host["labels"], multiple) if positions else None
            return (
                {k: self.move(v) for k, v in host.items()},
                self.move(targets),
                None if found is None else self.move(found),
            )
        host = pack(examples, self.tok.pad_token_id, self.pack_length, self.pack_row_multiple)
        found = answer_positions(host["labels"], multiple) if positions else None
        example = self.move(host.pop("example"))  # (R, L), -1 on padding
        batch = {k: self.move(v) for k, v in host.items()}
        real = example >= 0
        batch["attention_mask"] = packed_attention_mask(example)  # made on the device
        batch["token_mask"] = real.long()
        per_token = self.move(targets)[example.clamp_min(0)] * real[..., None]  # (R, L, S)
        return batch, per_token, None if found is None else self.move(found)

    def make_batch(self, stage: Stage, p_drop: float):
        """The next batch as one padded batch on the device, its targets and non-padding tokens."""
        examples, targets, _ = self.next_examples(stage, p_drop)
        batch, targets, _ = self.to_device(examples, targets, positions=False)
        return batch, targets, sum(len(ids) for ids, _ in examples)


def split_batch(lengths: list[int], rank: int, world: int, micro: int | None) -> list[list[int]]:
    """The micro-batches (indices into a global batch of examples of ``lengths`` tokens) that
    process ``rank`` of ``world`` computes: every ``world``-th example (strided, so that a batch
    of similar lengths is shared evenly), sorted by length and cut into micro-batches of ``micro``
    examples (the whole share when None), so that each is padded only to its own longest."""
    share = sorted(range(rank, len(lengths), world), key=lambda j: lengths[j])
    size = micro or len(share)
    return [share[i : i + size] for i in range(0, len(share), size)]


def padded_tokens(
    lengths: list[int], world: int, micro: int | None, multiple: int | None = None
) -> list[int]:
    """Tokens each process computes for a batch (its micro-batches padded, their lengths rounded
    up to a multiple of ``multiple`` as ``training.pad_to_multiple_of``), :func:`split_batch`
    applied to every rank."""
    return [
        sum(
            len(chunk) * padded_length(max(lengths[j] for j in chunk), multiple)
            for chunk in split_batch(lengths, r, world, micro)
        )
        for r in range(world)
    ]


def answer_positions(labels: torch.Tensor, multiple: int | None = None) -> torch.Tensor:
    """Flat indices ``b * T + t`` into a (B, T) batch of the positions that predict an answer
    token (``labels[b, t + 1] != -100``), in row-major order. ``multiple``: their number padded
    up to a multiple of it (few shapes, for a captured step) with a position whose next label is
    ignored, which adds nothing to the loss."""
    T = labels.shape[1]
    b, t = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    positions = b * T + t
    extra = padded_length(len(positions), multiple) - len(positions)
    if extra:
        ignored = (labels.reshape(-1)[1:] == -100).nonzero()
        if not len(ignored):
            raise ValueError("answer_positions: no position to pad with (every label is an answer)")
        positions = torch.cat([positions, ignored[0].expand(extra)])
    return positions

"""GSM8K and WikiText-2: finding, reading and validating them; prompts; training batches.

Sources, in order: ``--data-dir`` (or ``data.dir`` in the config), ``$SCHEMABANK_DATA_DIR``, then
the Hugging Face hub (``openai/gsm8k`` main, ``Salesforce/wikitext`` wikitext-2-raw-v1, which needs
the optional ``datasets`` package and a network). A data folder is laid out as::

    <dir>/gsm8k/train.jsonl      {"question": ..., "answer": "... #### 72"} per line
    <dir>/gsm8k/test.jsonl
    <dir>/wikitext-2/test.txt

Prompts (SPEC section 5): training text is ``Question: {q}\\nAnswer: {a}<eos>`` with the loss on
the answer tokens; a fine-tuned model is evaluated zero-shot on ``Question: {q}\\nAnswer:``; a base
model k-shot in the lm-evaluation-harness ``gsm8k`` format (the first k training problems as shots,
joined by a blank line).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError
from .method.tags import derive_tags, tag_line

ENV_DATA_DIR = "SCHEMABANK_DATA_DIR"
GSM8K_SPLITS = ("train", "test")


@dataclass(frozen=True)
class Problem:
    """One GSM8K problem."""

    question: str
    answer: str
    """The reference solution, ending with ``#### <number>``."""

    @cached_property
    def tags(self) -> list[str]:
        return derive_tags(self.question, self.answer)

    @property
    def gold(self) -> str:
        return self.answer.rsplit("####", 1)[-1].strip()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The local data folder to use, or None to fall back to the hub."""
    chosen = data_dir or os.environ.get(ENV_DATA_DIR)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory not found: {path}")
    return path


def parse_gsm8k_jsonl(path: Path) -> list[Problem]:
    """Read a GSM8K JSONL file, naming the file and line of the first malformed record."""
    if not path.is_file():
        raise DataError(f"GSM8K file not found: {path}")
    problems = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not UTF-8 text (byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: malformed JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object with question and answer")
            for key in ("question", "answer"):
                if not isinstance(rec.get(key), str) or not rec[key].strip():
                    raise DataError(f"{where}: missing or empty string field {key!r}")
            if "####" not in rec["answer"]:
                raise DataError(f"{where}: answer has no '#### <number>' final line")
            problems.append(Problem(rec["question"], rec["answer"]))
    if not problems:
        raise DataError(f"{path}: no problems in file")
    return problems


def _hub_dataset(*args, **kwargs):
    try:
        import datasets
    except ImportError:
        raise DataError(
            "no local data (pass --data-dir or set SCHEMABANK_DATA_DIR) and the hub fallback needs "
            "the datasets package: pip install 'schemabank[hub]'"
        ) from None
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:
        raise DataError(
            f"no local data (pass --data-dir or set SCHEMABANK_DATA_DIR) and the hub failed for "
            f"{args[0]} ({type(exc).__name__})"
        ) from None


def load_gsm8k(split: str, data_dir: str | os.PathLike | None = None) -> list[Problem]:
    """GSM8K ``train`` (7,473) or ``test`` (1,319) problems."""
    if split not in GSM8K_SPLITS:
        raise ValueError(f"unknown GSM8K split {split!r}")
    root = resolve_data_dir(data_dir)
    if root is not None:
        return parse_gsm8k_jsonl(root / "gsm8k" / f"{split}.jsonl")
    ds = _hub_dataset("openai/gsm8k", "main", split=split)
    return [Problem(r["question"], r["answer"]) for r in ds]


def split_dev(train: list[Problem], dev_size: int) -> tuple[list[Problem], list[Problem]]:
    """``(train, dev)``: the last ``dev_size`` train problems are the dev set (none when 0)."""
    if dev_size == 0:
        return train, []
    if dev_size >= len(train):
        raise ConfigError(
            f"data.dev_size: {dev_size} leaves no training problems (the train split has {len(train)})"
        )
    return train[:-dev_size], train[-dev_size:]


def load_wikitext(data_dir: str | os.PathLike | None = None) -> str:
    """The WikiText-2 test text."""
    root = resolve_data_dir(data_dir)
    if root is not None:
        path = root / "wikitext-2" / "test.txt"
        if not path.is_file():
            raise DataError(f"WikiText-2 file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        if not text.strip():
            raise DataError(f"{path}: file is empty")
        return text
    ds = _hub_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")
    return "\n\n".join(ds["text"])


# ---------------------------------------------------------------------------------------------
# Prompts


def question_prompt(question: str, tags: list[str] | None = None) -> str:
    """``[Tags: ...\\n]Question: {q}\\nAnswer:``"""
    return f"{tag_line(tags or [])}Question: {question}\nAnswer:"


def fewshot_prompt(question: str, shots: list[Problem]) -> str:
    """k-shot prompt in the lm-evaluation-harness gsm8k format."""
    parts = [f"Question: {s.question}\nAnswer: {s.answer}" for s in shots]
    return "\n\n".join([*parts, question_prompt(question)])


# ---------------------------------------------------------------------------------------------
# Training batches


def _join(prompt: list[int], answer: list[int], max_length: int) -> tuple[list[int], list[int]]:
    ids = (prompt + answer)[:max_length]
    labels = ([-100] * len(prompt) + answer)[:max_length]
    return ids, labels


def encode_example(
    tokenizer, problem: Problem, tags: list[str] | None, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one training example; labels are -100 outside the answer.

    The prompt and the answer are tokenised separately so the prompt's tokens are exactly those
    seen at evaluation time.
    """
    prompt = tokenizer(question_prompt(problem.question, tags)).input_ids
    answer = tokenizer(" " + problem.answer, add_special_tokens=False).input_ids
    return _join(prompt, answer + [tokenizer.eos_token_id], max_length)


@contextmanager
def tokenizer_threads():
    """The tokenizers library's threads on for the calls inside. The CLI turns them off
    (``TOKENIZERS_PARALLELISM=false``), since a process forked after they have run warns and may
    deadlock; a batched call over thousands of texts gains from them (a run's stage 1 tokenises
    every training problem twice), and the variable is back to its value before anything forks.
    The library reads it at each call."""
    key = "TOKENIZERS_PARALLELISM"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def encode_all(
    tokenizer,
    problems: list[Problem],
    max_length: int,
    tags: list[list[str] | None] | None = None,
) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_example` for many problems (with ``tags[k]`` for problem k; none without
    ``tags``), in two batched tokenizer calls, on the tokenizer's threads
    (:func:`tokenizer_threads`)."""
    tags = tags or [None] * len(problems)
    texts = [question_prompt(p.question, t) for p, t in zip(problems, tags, strict=True)]
    with tokenizer_threads():
        prompts = tokenizer(texts).input_ids
        answers = tokenizer([" " + p.answer for p in problems], add_special_tokens=False).input_ids
    eos = [tokenizer.eos_token_id]
    return [_join(p, a + eos, max_length) for p, a in zip(prompts, answers, strict=True)]


def padded_length(n: int, multiple: int | None) -> int:
    """``n`` tokens rounded up to a multiple of ``multiple`` (unchanged when it is None)."""
    return -(-n // multiple) * multiple if multiple else n


def collate(
    examples: list[tuple[list[int], list[int]]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a list of (ids, labels) into input_ids, attention_mask and labels (B, T), with
    ``T`` the longest example rounded up to a multiple of ``pad_to_multiple_of`` when given.

    Each of ids and labels is filled from one flat array (a Python loop per token, at numpy's
    speed) through numpy's boolean indexing (torch's took 2 ms a batch of 192 on the H200's
    host), since the training step waits for it."""
    lengths = np.array([len(ids) for ids, _ in examples], dtype=np.int64)
    if any(len(lab) != len(ids) for ids, lab in examples):
        raise ValueError("collate: every example's ids and labels must have the same length")
    T = padded_length(int(lengths.max()), pad_to_multiple_of)
    mask = np.arange(T) < lengths[:, None]  # (B, T)
    total = int(lengths.sum())

    def padded(rows, fill: int) -> torch.Tensor:
        out = np.full(mask.shape, fill, dtype=np.int64)
        out[mask] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=total)
        return torch.from_numpy(out)

    return {
        "input_ids": padded((ids for ids, _ in examples), pad_id),
        "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        "labels": padded((lab for _, lab in examples), -100),
    }


def pack(
    examples: list[tuple[list[int], list[int]]],
    pad_id: int,
    row_length: int,
    row_multiple: int = 1,
) -> dict[str, torch.Tensor]:
    """Pack (ids, labels) examples into rows of ``row_length`` tokens (:func:`pack_rows`) instead
    of one padded row each, the number of rows rounded up to a multiple of ``row_multiple`` (rows
    of padding alone).

    Returns input_ids, labels (-100 on padding), position_ids (each example's from 0) and
    ``example`` (R, L): the index in ``examples`` of the example each token belongs to, -1 for
    padding; :func:`packed_attention_mask` of ``example`` keeps the examples apart. Filled as
    :func:`collate` fills, from flat arrays (the training step waits for it)."""
    lengths = np.array([len(ids) for ids, _ in examples])  # (N,)
    if any(len(lab) != n for (_, lab), n in zip(examples, lengths, strict=True)):
        raise ValueError("pack: every example's ids and labels must have the same length")
    rows = pack_rows(lengths.tolist(), row_length)
    R = padded_length(len(rows), row_multiple)
    start = np.empty(len(examples), dtype=np.int64)  # (N,): each example's first flat index
    for r, row in enumerate(rows):
        start[row] = r * row_length + np.concatenate([[0], np.cumsum(lengths[row])[:-1]])
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # each token's example's first token
    position = np.arange(lengths.sum()) - first  # (tokens,): position within its example
    flat = torch.from_numpy(np.repeat(start, lengths) + position)  # (tokens,) into (R·L)

    def filled(values: np.ndarray, fill: int) -> torch.Tensor:  # (tokens,) -> (R, L)
        out = torch.full((R * row_length,), fill, dtype=torch.long)
        out[flat] = torch.from_numpy(values)
        return out.view(R, row_length)

    def tokens(rows) -> np.ndarray:  # the examples' lists, concatenated
        return np.fromiter(chain.from_iterable(rows), dtype=np.int64)

    return {
        "input_ids": filled(tokens(ids for ids, _ in examples), pad_id),
        "labels": filled(tokens(lab for _, lab in examples), -100),
        "position_ids": filled(position, 0),
        "example": filled(np.repeat(np.arange(len(examples)), lengths), -1),
    }


def pack_rows(lengths: list[int], row_length: int) -> list[list[int]]:
    """:func:`pack`'s rows: the indices of the examples of ``lengths`` tokens that each row
    holds, first-fit decreasing (the longest first, each into the first row with room)."""
    if max(lengths) > row_length:
        raise ValueError(f"pack: an example of {max(lengths)} tokens exceeds rows of {row_length}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            free.append(row_length)
        rows[r].append(i)
        free[r] -= lengths[i]
    return rows


def packed_attention_mask(example: torch.Tensor) -> torch.Tensor:
    """(R, 1, L, L) bool, True where a query token may attend to a key: causal, within its own
    example (:func:`pack`'s ``example`` (R, L)). The padding of a row is one block of its own, so
    that no token attends to nothing (SDPA's output would be NaN)."""
    L = example.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=example.device).tril()  # (L, L)
    same = example[:, :, None] == example[:, None, :]  # (R, L, L)
    return (same & causal)[:, None]


class DataOrder:
    """The sequence of training-problem indices: seeded epochs of random permutations.

    Both modes draw the same order for the same seed; it is independent of the tag dropout.
    With ``lengths`` (group by length: token counts, since characters predict them too poorly),
    each epoch's permutation is cut into mega-batches of
    ``group_factor`` batches whose problems are sorted by length before being split into batches,
    and the batches of the epoch are shuffled: batches of similar lengths, so little padding, in
    a still random order (as Hugging Face's ``group_by_length``). A grouped epoch holds whole
    batches only: the problems left over (fewer than a batch, the end of the permutation) are
    carried into the next epoch's grouping, since a batch made of the end of one epoch and the
    start of the next would mix lengths and put every later batch boundary inside a group.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        lengths: list[int] | None = None,
        group_factor: int = 50,
    ):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.lengths, self.group_factor = lengths, group_factor
        self.perm: list[int] = []
        self.pos = 0
        self.carry: list[int] = []  # grouped: the problems left over from the last epoch

    def _epoch(self) -> list[int]:
        perm = torch.randperm(self.n, generator=self.gen).tolist()
        if self.lengths is None:
            return perm
        pool = self.carry + perm
        whole = len(pool) - len(pool) % self.batch_size
        perm, self.carry = pool[:whole], pool[whole:]
        size = self.batch_size * self.group_factor
        batches = []
        for m in range(0, len(perm), size):
            mega = sorted(perm[m : m + size], key=lambda i: -self.lengths[i])
            batches += [mega[b : b + self.batch_size] for b in range(0, len(mega), self.batch_size)]
        order = torch.randperm(len(batches), generator=self.gen).tolist()
        return [i for b in order for i in batches[b]]

    def next_batch(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            while self.pos >= len(self.perm):  # a grouped epoch can be empty (n < batch)
                self.perm = self._epoch()
                self.pos = 0
            out.append(self.perm[self.pos])
            self.pos += 1
        return out

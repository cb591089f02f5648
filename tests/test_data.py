"""GSM8K / WikiText-2 files, prompts and training batches (SPEC section 5), on files written here
and the tiny test tokenizer. Nothing touches the network."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TRAIN, make_tokenizer

from schemabank.data import (
    ENV_DATA_DIR,
    DataOrder,
    Problem,
    collate,
    encode_all,
    encode_example,
    fewshot_prompt,
    load_gsm8k,
    load_wikitext,
    parse_gsm8k_jsonl,
    question_prompt,
)
from schemabank.errors import DataError, SchemaBankError

P1 = Problem(
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "He has 3+5=<<3+5=8>>8 apples.\n#### 8",
)
P2 = Problem(
    "A pen costs $2. How much do 4 pens cost?",
    "4 pens cost 4*2=<<4*2=8>>8 dollars.\n#### 8",
)
P3 = Problem(
    "Kim splits 1,000 dollars among 4 people. How much does each get?",
    "Each gets 1000/4=<<1000/4=250>>250.\n#### 1,000",
)


def record(p: Problem) -> str:
    return json.dumps({"question": p.question, "answer": p.answer})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def make_data_dir(root: Path, train=(P1, P2), test=(P3,), wiki: str | None = "Some text .\n"):
    if train is not None:
        write_lines(root / "gsm8k" / "train.jsonl", [record(p) for p in train])
    if test is not None:
        write_lines(root / "gsm8k" / "test.jsonl", [record(p) for p in test])
    if wiki is not None:
        (root / "wikitext-2").mkdir(parents=True, exist_ok=True)
        (root / "wikitext-2" / "test.txt").write_text(wiki, encoding="utf-8")
    return root


def data_error(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# Parsing GSM8K JSONL


def test_parse_valid_file(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [record(P1), record(P2), record(P3)])
    assert parse_gsm8k_jsonl(path) == [P1, P2, P3]


def test_parse_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", ["", record(P1), "   ", "\t", record(P2), ""])
    assert parse_gsm8k_jsonl(path) == [P1, P2]


def test_parse_malformed_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [record(P1), record(P2), '{"question": "x", '])
    message = data_error(parse_gsm8k_jsonl, path)
    assert "train.jsonl:3" in message
    assert str(path) in message
    assert "malformed JSON" in message


def test_parse_line_numbers_count_blank_lines(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [record(P1), "", "", "not json"])
    assert "train.jsonl:4" in data_error(parse_gsm8k_jsonl, path)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (json.dumps({"question": "How many?"}), "'answer'"),
        (json.dumps({"answer": "#### 3"}), "'question'"),
        (json.dumps({"question": "", "answer": "#### 3"}), "'question'"),
        (json.dumps({"question": "How many?", "answer": 3}), "'answer'"),
        (json.dumps({"question": "How many?", "answer": "It is 3."}), "####"),
        (json.dumps(["How many?", "#### 3"]), "JSON object"),
    ],
)
def test_parse_bad_record_names_the_line(tmp_path, bad, fragment):
    path = write_lines(tmp_path / "test.jsonl", [record(P1), bad])
    message = data_error(parse_gsm8k_jsonl, path)
    assert f"{path}:2" in message
    assert fragment in message


def test_parse_empty_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("")
    assert "no problems" in data_error(parse_gsm8k_jsonl, path)
    path.write_text("\n\n  \n")
    assert "no problems" in data_error(parse_gsm8k_jsonl, path)


def test_parse_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    message = data_error(parse_gsm8k_jsonl, path)
    assert "not found" in message and str(path) in message


def test_data_error_is_a_schemabank_error():
    assert issubclass(DataError, SchemaBankError)


# ---------------------------------------------------------------------------------------------
# Finding the data


def test_load_gsm8k_and_wikitext_from_dir(tmp_path):
    root = make_data_dir(tmp_path, wiki=" = Title = \n\n Some text .\n")
    assert load_gsm8k("train", root) == [P1, P2]
    assert load_gsm8k("test", str(root)) == [P3]
    assert load_wikitext(root) == " = Title = \n\n Some text .\n"


def test_load_gsm8k_from_shared_fixture(data_dir):
    train, test = load_gsm8k("train", data_dir), load_gsm8k("test", data_dir)
    assert len(train) > 0 and len(test) > 0
    for p in train + test:
        assert p.gold.replace(",", "").lstrip("-").isdigit()
        assert p.tags  # every fixture solution has at least one annotation


def test_load_gsm8k_missing_split_file_names_the_path(tmp_path):
    root = make_data_dir(tmp_path, test=None)
    message = data_error(load_gsm8k, "test", root)
    assert str(root / "gsm8k" / "test.jsonl") in message
    assert load_gsm8k("train", root) == [P1, P2]


def test_load_wikitext_missing_file_names_the_path(tmp_path):
    root = make_data_dir(tmp_path, wiki=None)
    message = data_error(load_wikitext, root)
    assert str(root / "wikitext-2" / "test.txt") in message


def test_load_wikitext_empty_or_not_utf8(tmp_path):
    root = make_data_dir(tmp_path, wiki="  \n\n")
    assert "empty" in data_error(load_wikitext, root)
    (root / "wikitext-2" / "test.txt").write_bytes(b"caf\xe9\n")
    assert "UTF-8" in data_error(load_wikitext, root)


def test_nonexistent_data_dir(tmp_path):
    missing = tmp_path / "no_such_dir"
    for fn, args in ((load_gsm8k, ("train", missing)), (load_wikitext, (missing,))):
        message = data_error(fn, *args)
        assert "data directory not found" in message and str(missing) in message


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    assert "data directory not found" in data_error(load_gsm8k, "train", path)


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="validation"):
        load_gsm8k("validation", make_data_dir(tmp_path))


def test_env_var_is_used(tmp_path, monkeypatch):
    root = make_data_dir(tmp_path / "envdata")
    monkeypatch.setenv(ENV_DATA_DIR, str(root))
    assert ENV_DATA_DIR == "SCHEMABANK_DATA_DIR"
    assert load_gsm8k("train") == [P1, P2]
    assert load_wikitext() == "Some text .\n"


def test_explicit_dir_wins_over_env_var(tmp_path, monkeypatch):
    root = make_data_dir(tmp_path / "explicit", train=(P3,))
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "missing"))
    assert load_gsm8k("train", root) == [P3]


def test_env_var_pointing_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "missing"))
    message = data_error(load_gsm8k, "train")
    assert str(tmp_path / "missing") in message


# ---------------------------------------------------------------------------------------------
# Problems and prompts


def test_problem_gold_and_tags():
    assert P1.gold == "8"
    assert P3.gold == "1,000"  # raw; scoring normalises both sides
    assert Problem("q", "a #### 3\nthen #### 4 ").gold == "4"  # the last '####'
    assert Problem("q", "#### -3").gold == "-3"
    assert P1.tags == ["add"]
    assert P2.tags == ["mul", "money"]
    assert P3.tags == ["div"]


def test_question_prompt():
    assert question_prompt("How many?") == "Question: How many?\nAnswer:"
    assert question_prompt("How many?", []) == "Question: How many?\nAnswer:"
    assert question_prompt("How many?", None) == "Question: How many?\nAnswer:"
    assert (
        question_prompt("How many?", ["mul", "money", "multistep"])
        == "Tags: mul, money, multistep\nQuestion: How many?\nAnswer:"
    )


def test_fewshot_prompt_lm_eval_format():
    shots = [Problem("Q1?", "A1.\n#### 1"), Problem("Q2?", "A2.\n#### 2")]
    assert fewshot_prompt("Q3?", shots) == (
        "Question: Q1?\nAnswer: A1.\n#### 1\n\n"
        "Question: Q2?\nAnswer: A2.\n#### 2\n\n"
        "Question: Q3?\nAnswer:"
    )
    assert fewshot_prompt("Q3?", []) == question_prompt("Q3?")


# ---------------------------------------------------------------------------------------------
# Training examples


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("tags", [None, ["add"], ["mul", "money", "multistep"]])
@pytest.mark.parametrize("problem", [P1, P2, P3], ids=["p1", "p2", "p3"])
def test_encode_example_masks_exactly_the_prompt(tok, problem, tags):
    ids, labels = encode_example(tok, problem, tags, max_length=512)
    prompt = tok(question_prompt(problem.question, tags)).input_ids
    n = len(prompt)
    assert len(ids) == len(labels) > n
    assert ids[:n] == prompt  # the same prompt tokens the evaluation feeds the model
    assert labels[:n] == [-100] * n
    assert labels[n:] == ids[n:]
    assert -100 not in labels[n:]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n:-1]) == " " + problem.answer
    assert tok.decode(ids[:-1]) == question_prompt(problem.question, tags) + " " + problem.answer


def test_encode_example_tags_only_change_the_prompt(tok):
    plain_ids, plain_labels = encode_example(tok, P2, None, 512)
    tagged_ids, tagged_labels = encode_example(tok, P2, ["mul", "money"], 512)
    answer = [x for x in plain_labels if x != -100]
    assert [x for x in tagged_labels if x != -100] == answer
    assert tagged_ids[-len(answer) :] == plain_ids[-len(answer) :]
    assert len(tagged_ids) > len(plain_ids)


def test_encode_example_truncates(tok):
    full_ids, full_labels = encode_example(tok, P1, None, 512)
    n = len(tok(question_prompt(P1.question)).input_ids)
    ids, labels = encode_example(tok, P1, None, n + 3)
    assert ids == full_ids[: n + 3]
    assert labels == full_labels[: n + 3]
    assert sum(x != -100 for x in labels) == 3
    assert tok.eos_token_id not in ids  # the eos is cut off with the rest of the answer
    # A limit inside the prompt leaves no supervised token.
    ids, labels = encode_example(tok, P1, None, n - 2)
    assert len(ids) == len(labels) == n - 2
    assert set(labels) == {-100}


def test_collate_pads_right():
    examples = [([5, 6, 7], [-100, 6, 7]), ([1, 2, 3, 4, 9], [-100, -100, 3, 4, 9])]
    batch = collate(examples, pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for v in batch.values():
        assert v.dtype == torch.long and v.shape == (2, 5)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [1, 2, 3, 4, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, -100, 3, 4, 9]]


def test_collate_refuses_labels_of_another_length():
    with pytest.raises(ValueError, match="same length"):
        collate([([1, 2, 3], [-100, 2])], pad_id=0)


def test_collate_encoded_examples(tok):
    examples = [encode_example(tok, p, None, 512) for p in (P1, P2, P3)]
    batch = collate(examples, tok.pad_token_id)
    lengths = [len(ids) for ids, _ in examples]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for i, (ids, labels) in enumerate(examples):
        assert batch["input_ids"][i, : len(ids)].tolist() == ids
        assert batch["labels"][i, : len(labels)].tolist() == labels
        assert (batch["labels"][i, len(ids) :] == -100).all()
        assert (batch["input_ids"][i, len(ids) :] == tok.pad_token_id).all()


# ---------------------------------------------------------------------------------------------
# Data order


def take(order: DataOrder, batches: int) -> list[list[int]]:
    return [order.next_batch() for _ in range(batches)]


def test_data_order_same_seed_same_sequence():
    assert take(DataOrder(50, 4, seed=3), 30) == take(DataOrder(50, 4, seed=3), 30)
    assert take(DataOrder(50, 4, seed=3), 30) != take(DataOrder(50, 4, seed=4), 30)


def test_data_order_covers_every_index_once_per_epoch():
    n, bs = 10, 3
    batches = take(DataOrder(n, bs, seed=0), 10)  # 30 indices: exactly three epochs
    assert all(len(b) == bs for b in batches)
    flat = [i for b in batches for i in b]
    for epoch in range(3):
        assert sorted(flat[epoch * n : (epoch + 1) * n]) == list(range(n))
    # Batch 4 spans the boundary: the last index of epoch 1, then the first two of epoch 2.
    assert batches[3] == [flat[9], flat[10], flat[11]]
    assert flat[:10] != flat[10:20]  # each epoch is a fresh permutation


def test_data_order_batch_larger_than_dataset():
    batches = take(DataOrder(3, 5, seed=1), 3)
    flat = [i for b in batches for i in b]
    assert all(len(b) == 5 for b in batches)
    for epoch in range(5):
        assert sorted(flat[epoch * 3 : (epoch + 1) * 3]) == [0, 1, 2]


def test_no_local_data_and_no_hub_is_a_clear_error(monkeypatch):
    """Without a data folder the loaders fall back to the hub; without the datasets package (or a
    network) that is a one-line DataError saying what to do."""
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.delenv("SCHEMABANK_DATA_DIR", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    for load in (lambda: load_gsm8k("test"), load_wikitext):
        with pytest.raises(DataError, match="--data-dir") as exc:
            load()
        assert "\n" not in str(exc.value)


def test_group_by_length_batches_similar_lengths_and_covers_the_epoch():
    lengths = [(i * 37) % 101 for i in range(400)]
    plain = DataOrder(400, 8, seed=3)
    grouped = DataOrder(400, 8, seed=3, lengths=lengths, group_factor=10)
    epoch = [grouped.next_batch() for _ in range(50)]
    assert sorted(i for b in epoch for i in b) == list(range(400))

    def spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)

    assert spread(epoch) < spread([plain.next_batch() for _ in range(50)]) / 4
    again = DataOrder(400, 8, seed=3, lengths=lengths, group_factor=10)
    assert [again.next_batch() for _ in range(50)] == epoch


def test_group_by_length_keeps_batches_inside_groups_when_the_epoch_does_not_divide():
    """403 problems in batches of 8: the 3 left over are carried into the next epoch's grouping,
    so no batch mixes the end of one epoch with the start of the next (which would put every
    later batch boundary inside a length group)."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randperm(1000, generator=gen)[:403].tolist()
    order = DataOrder(403, 8, seed=3, lengths=lengths, group_factor=100)  # one group per epoch
    batches = [order.next_batch() for _ in range(200)]  # 1,600 problems: within 5 epochs
    assert all(len(b) == 8 for b in batches)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    # Batches of one epoch are disjoint slices of its sorted problems: their spreads add up to
    # at most the range of all lengths, per epoch.
    assert spread <= 5 * (max(lengths) - min(lengths))
    counts = Counter(i for b in batches for i in b)
    assert len(counts) == 403 and max(counts.values()) - min(counts.values()) <= 2


def test_group_by_length_batch_larger_than_dataset():
    order = DataOrder(3, 5, seed=1, lengths=[4, 9, 6])
    batches = [order.next_batch() for _ in range(6)]
    assert all(len(b) == 5 for b in batches)
    assert Counter(i for b in batches for i in b) == {0: 10, 1: 10, 2: 10}


def test_encode_all_equals_encode_example():
    tok = make_tokenizer()
    problems = [Problem(q, a) for q, a in TRAIN]
    assert encode_all(tok, problems, 40) == [encode_example(tok, p, None, 40) for p in problems]
    # tagged and untagged problems mixed in one call, as stage 1 draws them
    tags = [["mul", "money"] if k % 2 else None for k in range(len(problems))]
    assert encode_all(tok, problems, 40, tags) == [
        encode_example(tok, p, t, 40) for p, t in zip(problems, tags, strict=True)
    ]


@pytest.mark.parametrize("before", ["false", None])
def test_encode_all_tokenises_on_the_tokenizers_threads_then_restores_the_switch(
    monkeypatch, before
):
    """The CLI sets TOKENIZERS_PARALLELISM=false (no threads before a fork); the batched calls
    turn the threads on for themselves alone."""
    import os

    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    tok = make_tokenizer()
    seen = []

    class Spy:
        def __call__(self, *args, **kwargs):
            seen.append(os.environ.get("TOKENIZERS_PARALLELISM"))
            return tok(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(tok, name)

    problems = [Problem(q, a) for q, a in TRAIN]
    assert encode_all(Spy(), problems, 40) == encode_all(tok, problems, 40)
    assert seen == ["true", "true"]
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before

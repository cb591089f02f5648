"""Shared fixtures: a hand-written mini data folder, and tiny random Llama / Qwen2 models with a
small BPE tokenizer trained on that data. Nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from schemabank.config import config_from_dict

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAIN = [
    (
        "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "He has 3+5=<<3+5=8>>8 apples.\n#### 8",
    ),
    ("A pen costs $2. How much do 4 pens cost?", "4 pens cost 4*2=<<4*2=8>>8 dollars.\n#### 8"),
    ("Sara had 10 candies and ate 4. How many are left?", "She has 10-4=<<10-4=6>>6 left.\n#### 6"),
    (
        "12 cookies are shared by 3 kids. How many does each get?",
        "Each gets 12/3=<<12/3=4>>4 cookies.\n#### 4",
    ),
    (
        "A shirt costs $20 and is 10% off. What is the price?",
        "The discount is 20*10/100=<<20*10/100=2>>2 dollars.\nThe price is 20-2=<<20-2=18>>18.\n#### 18",
    ),
    (
        "Ann walks 2.5 miles a day. How far does she walk in 2 days?",
        "She walks 2.5*2=<<2.5*2=5>>5 miles.\n#### 5",
    ),
    (
        "Bob has 4 boxes of 6 eggs, breaks 3, buys 5 and gives away half. How many does he keep?",
        "He has 4*6=<<4*6=24>>24 eggs.\nAfter breaking 24-3=<<24-3=21>>21.\n"
        "After buying 21+5=<<21+5=26>>26.\nHe keeps 26/2=<<26/2=13>>13.\n#### 13",
    ),
    (
        "Lia reads 7 pages a day for 3 days. How many pages does she read?",
        "She reads 7*3=<<7*3=21>>21 pages.\n#### 21",
    ),
]
TEST = [
    (
        "Max has 6 marbles and finds 7. How many marbles does he have?",
        "He has 6+7=<<6+7=13>>13 marbles.\n#### 13",
    ),
    (
        "A book costs $15. How much do 2 books cost?",
        "They cost 15*2=<<15*2=30>>30 dollars.\n#### 30",
    ),
    (
        "There are 20 birds and 8 fly away. How many stay?",
        "20-8=<<20-8=12>>12 birds stay.\n#### 12",
    ),
    (
        "Kim splits 1,000 dollars among 4 people. How much does each get?",
        "Each gets 1000/4=<<1000/4=250>>250.\n#### 250",
    ),
]
WIKI = (
    " = Valkyria Chronicles = \n\n The game began development in 2010 , carrying over a large portion of the "
    "work done on the previous game . The story follows a squad of soldiers during a war . "
    "It was released in January 2011 in Japan and received favourable reviews . \n"
) * 8


def write_data(root: Path) -> Path:
    (root / "gsm8k").mkdir(parents=True, exist_ok=True)
    (root / "wikitext-2").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", TRAIN), ("test", TEST)):
        with open(root / "gsm8k" / f"{name}.jsonl", "w") as f:
            for q, a in rows:
                f.write(json.dumps({"question": q, "answer": a}) + "\n")
    (root / "wikitext-2" / "test.txt").write_text(WIKI)
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [f"Question: {q}\nAnswer: {a}" for q, a in TRAIN + TEST] + [
        WIKI,
        "Tags: add, sub, mul, div",
    ]
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def make_tiny_model(arch: str, path: Path, seed: int = 0) -> Path:
    """A 2-layer random ``llama`` or ``qwen2`` model with the test tokenizer, saved to ``path``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tok = make_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return make_tiny_model("qwen2", tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}")


def tiny_config(base_model: Path, mode: str = "schemabank", **sections) -> dict:
    """A config dict for a seconds-long run on a tiny model; ``sections`` update it."""
    cfg = {
        "experiment": {"name": f"tiny_{mode}", "seed": 0, "mode": mode},
        "model": {"base_model": str(base_model)},
        "lora": {"r": 2, "lora_alpha": 4},
        "schemabank": {"num_schemas": 8, "rank": 4, "topk": 2, "attr_dim": 4, "layers": [-1]},
        "training": {
            "total_steps": 6,
            "batch_size": 2,
            "learning_rate": 1e-2,
            "max_length": 128,
            "stages": {
                "stage1_router_pretrain": {
                    "steps": 2,
                    "tag_curriculum": {"dropout_schedule": [0.0, 0.5]},
                },
                "stage2_schema_train": {"steps": 2},
                "stage3_joint_finetune": {"steps": 2},
            },
        },
        "eval": {
            "limit": 3,
            "batch_size": 2,
            "max_new_tokens": 6,
            "ppl_windows": [16, 64],
            "ppl_max_tokens": 200,
            "num_samples": 2,
        },
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


@pytest.fixture
def tiny_cfg(tiny_llama):
    return config_from_dict(tiny_config(tiny_llama))

"""Checkpoints: save, reload and evaluate give identical logits; bad checkpoints are refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from schemabank.checkpoint import load_checkpoint, save_checkpoint
from schemabank.config import config_from_dict
from schemabank.errors import CheckpointError
from schemabank.method.adapter import build_adapter
from schemabank.models import resolve_base_model

CPU = torch.device("cpu")


def trained_like(base_path, mode="schemabank"):
    """An adapter with every parameter moved away from its initial value."""
    cfg = config_from_dict(tiny_config(base_path, mode=mode, schemabank={"layers": [0, -1]}))
    base = AutoModelForCausalLM.from_pretrained(base_path)
    model, banks, _ = build_adapter(base, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "schemabank" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval(), banks


@pytest.mark.parametrize("mode", ["schemabank", "baseline"])
def test_save_reload_gives_identical_logits(tiny_model, tmp_path, mode):
    model, banks = trained_like(tiny_model, mode)
    info = resolve_base_model(str(tiny_model))
    save_checkpoint(tmp_path / "checkpoint", model, banks, info)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok(["Question: Tom has 3 apples and 5 pens.\nAnswer: 8"], return_tensors="pt").input_ids
    tok2, model2, banks2, info2 = load_checkpoint(tmp_path / "checkpoint", CPU, torch.float32)
    with torch.no_grad():
        expected = model(ids).logits
        got = model2(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    assert torch.equal(expected, got)
    assert not torch.allclose(expected, base)  # the adapter is really there
    assert info2.sha256 == info.sha256
    assert (banks2 is None) == (mode == "baseline")
    assert not any(p.requires_grad for p in model2.parameters())


def test_saving_again_replaces_the_checkpoint_whole(tiny_llama, tmp_path):
    model, banks = trained_like(tiny_llama)
    info = resolve_base_model(str(tiny_llama))
    save_checkpoint(tmp_path / "checkpoint", model, banks, info)
    save_checkpoint(tmp_path / "checkpoint", model, None, info)  # a baseline-shaped save
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "base_model.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no temporary folders left


@pytest.fixture
def saved(tiny_llama, tmp_path):
    model, banks = trained_like(tiny_llama)
    return save_checkpoint(
        tmp_path / "checkpoint", model, banks, resolve_base_model(str(tiny_llama))
    )


@pytest.mark.parametrize(
    "missing",
    [
        "adapter_model.safetensors",
        "adapter_config.json",
        "base_model.json",
        "schemabank.safetensors",
        "schemabank_config.json",
    ],
)
def test_missing_file_is_refused(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        load_checkpoint(saved, CPU, torch.float32)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "schemabank.safetensors"])
def test_truncated_weights_are_refused(saved, name):
    path = saved / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(saved, CPU, torch.float32)


def test_other_base_model_is_refused(saved, tmp_path):
    other = make_tiny_model("llama", tmp_path / "other", seed=1)  # same shapes, other weights
    meta = json.loads((saved / "base_model.json").read_text())
    meta["name"] = meta["path"] = str(other)
    (saved / "base_model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="another base model"):
        load_checkpoint(saved, CPU, torch.float32)


def test_bank_shape_mismatch_is_refused(saved):
    cfg = json.loads((saved / "schemabank_config.json").read_text())
    cfg["rank"] = 3
    (saved / "schemabank_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="banks"):
        load_checkpoint(saved, CPU, torch.float32)


def test_no_pickles_are_written(saved):
    for path in saved.iterdir():
        assert path.read_bytes()[:1] != b"\x80"  # every pickle protocol >= 2 starts so
        assert path.suffix in (".safetensors", ".json") or path.name == "README.md"

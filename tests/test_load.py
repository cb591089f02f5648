"""schemabank.load: a trained run in Python with its banks; checkpoints that load on another
machine (a copied folder, another cache); plain PEFT loads the LoRA part; the quickstart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForCausalLM

import schemabank
from schemabank import training
from schemabank.checkpoint import load_checkpoint, save_checkpoint
from schemabank.config import config_from_dict
from schemabank.method.adapter import build_adapter
from schemabank.models import BaseModelInfo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama, data_dir) -> Path:
    raw = tiny_config(
        tiny_llama,
        schemabank={"router_input": "prefix_mean"},
        eval={"limit": 1, "batch_size": 1, "max_new_tokens": 2, "ppl_windows": []},
    )
    return training.run(config_from_dict(raw), tmp_path_factory.mktemp("load"), data_dir)


def test_load_from_a_copied_folder_with_another_cache(run_dir, tmp_path, monkeypatch, tiny_llama):
    copied = tmp_path / "elsewhere" / "checkpoint"
    shutil.copytree(run_dir / "checkpoint", copied)
    monkeypatch.setenv("SCHEMABANK_CACHE", str(tmp_path / "another_cache"))
    model, tok = schemabank.load(copied)
    assert model.banks is not None and list(model.banks.banks) == [1]
    assert model.device.type == "cpu" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    _, original, _, _ = load_checkpoint(run_dir / "checkpoint", torch.device("cpu"), torch.float32)
    ids = tok(["Question: Tom has 3 apples.\nAnswer:"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 3)
    assert schemabank.load(run_dir)[0].banks is not None  # a run directory works too
    acfg = json.loads((copied / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == str(tiny_llama)


def test_adapter_config_names_the_base_model_as_the_config_did(tmp_path, tiny_llama):
    """The recorded name, never the folder the weights were loaded from (a GGUF cache)."""
    cfg = config_from_dict(tiny_config(tiny_llama, "baseline"))
    model, banks, _ = build_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama), cfg)
    info = BaseModelInfo("smollm2-135m-instruct", "embedded", "/cache/gguf/abcd", "0" * 64)
    save_checkpoint(tmp_path / "ck", model, banks, info)
    acfg = json.loads((tmp_path / "ck" / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == "smollm2-135m-instruct"
    card = (tmp_path / "ck" / "README.md").read_text()
    assert "schemabank.load" in card and "banks" not in card  # a LoRA-only checkpoint


def test_plain_peft_loads_the_lora_part(run_dir, tiny_llama):
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = peft.PeftModel.from_pretrained(base, str(run_dir / "checkpoint"))
    names = [n for n, _ in model.named_parameters()]
    assert any("lora_A" in n for n in names) and not any("schemabank" in n for n in names)
    card = (run_dir / "checkpoint" / "README.md").read_text()
    assert "only the LoRA part" in card and "schemabank.load" in card


def test_quickstart_runs_on_a_run(run_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "banks: dict_keys([1])" in proc.stderr

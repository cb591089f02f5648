"""The throughput benchmark runs end to end on a tiny model and reports consistent figures."""

from __future__ import annotations

import json

from conftest import tiny_config

from schemabank.bench import format_bench, run_bench
from schemabank.cli import main
from schemabank.config import config_from_dict


def test_bench_measures_training_and_evaluation(tiny_llama, data_dir):
    cfg = config_from_dict(
        tiny_config(tiny_llama, training={"batch_size": 4, "micro_batch_size": 2})
    )
    r = run_bench(cfg, data_dir=data_dir, steps=4, warmup=1, limit=3)
    t = r["training"]
    for mode in ("baseline", "schemabank_stage3"):
        x = t[mode]
        assert x["steps"] == 4 and x["batch_size"] == 4 and x["micro_batch_size"] == 2
        assert x["tokens_per_s"] > 0 and 0 <= x["padding_share"] < 1
        assert (
            abs(x["tokens_per_s"] * x["step_ms"] / 1000 - x["tokens_per_step"])
            < 1e-6 * x["tokens_per_step"] + 1e-3
        )
    assert (
        t["stage3_over_baseline_step_time"]
        == t["schemabank_stage3"]["step_ms"] / t["baseline"]["step_ms"]
    )
    g = r["evaluation"]["gsm8k"]
    assert g["problems"] == 3 and g["generated_tokens"] > 0 and g["time_s"] >= g["generation_s"]
    assert r["evaluation"]["perplexity"]["tokens"] == 200
    assert r["environment"]["torch"] and r["settings"]["train_batch_size"] == 4
    text = "\n".join(format_bench(r))
    assert "schemabank_stage3" in text and "gsm8k: 3 problems" in text


def test_bench_cli_writes_json(tiny_llama, data_dir, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_llama)))
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--config",
            str(cfg),
            "--data-dir",
            str(data_dir),
            "--steps",
            "2",
            "--warmup",
            "0",
            "--only",
            "train",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert "training" in r and "evaluation" not in r
    assert "stage-3 / baseline step time" in capsys.readouterr().out
    assert main(["bench", "--config", str(cfg), "--steps", "0"]) == 1
    assert "--steps" in capsys.readouterr().err

"""scripts/routing_study.py: stage-1-only runs of two router designs, the table and the choice,
and the full configs it writes for the chosen design."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import tiny_config

from schemabank import training
from schemabank.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "routing_study", ROOT / "scripts" / "routing_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def design_runs(tmp_path_factory, tiny_llama, data_dir) -> Path:
    out = tmp_path_factory.mktemp("designs")
    for name, router_input, hidden in (("s1_token", "token", 0), ("s1_prefix", "prefix_mean", 8)):
        raw = tiny_config(
            tiny_llama,
            experiment={"name": name},
            schemabank={"router_input": router_input, "router_hidden": hidden},
            data={"dev_size": 2},
            eval={"limit": 2, "batch_size": 2, "max_new_tokens": 2, "ppl_windows": []},
        )
        raw["training"] |= {"total_steps": 4, "learning_rate": 1e-2}
        raw["training"]["stages"] = {
            "stage1_router_pretrain": {
                "steps": 4,
                "tag_curriculum": {"dropout_schedule": [0.0, 1.0]},
            },
            "stage2_schema_train": {"steps": 0},
            "stage3_joint_finetune": {"steps": 0},
        }
        training.run(config_from_dict(raw), out, data_dir)
    return out


def test_design_table_choice_and_configs(design_runs, tmp_path, capsys):
    study = load_script()
    rows = study.design_rows(design_runs)
    assert [r["name"] for r in rows] == ["s1_prefix", "s1_token"]
    chosen = study.choose(rows)
    assert chosen["closed"]["all"] == max(r["closed"]["all"] for r in rows)
    table = study.markdown(rows, chosen)
    assert f"| **{chosen['name']}** |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 3
    assert study.main([str(design_runs), "--write", str(tmp_path)]) == 0
    assert "Chosen by the rule" in capsys.readouterr().out
    cfg = load_config(tmp_path / "sb_routed.yaml")
    assert cfg.schemabank.router_input == chosen["router_input"]
    assert cfg.schemabank.router_hidden == chosen["router_hidden"]
    s = cfg.training.stages
    assert s.stage1_router_pretrain.steps == 4 and s.stage3_joint_finetune.steps == 300
    assert s.stage2_schema_train.steps == 1000 - 4 - 300
    assert cfg.lora.r == 32 and cfg.training.batch_size == 32 and cfg.data.dev_size == 500
    oracle = load_config(tmp_path / "sb_routed_oracle.yaml")
    assert oracle.schemabank.routing == "oracle"
    assert oracle.experiment.ablation_of == "sb_routed"


def test_a_folder_without_design_runs_is_an_error(tmp_path, capsys):
    assert load_script().main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no stage-1 runs" in err


def test_committed_design_configs_train_stage_1_alone():
    for path in sorted((ROOT / "configs" / "gsm8k" / "routing").glob("*.yaml")):
        cfg = load_config(path)
        s = cfg.training.stages
        assert s.stage1_router_pretrain.steps == cfg.training.total_steps, path
        assert s.stage2_schema_train.steps == s.stage3_joint_finetune.steps == 0
        assert cfg.data.dev_size == 500 and cfg.experiment.mode == "schemabank"

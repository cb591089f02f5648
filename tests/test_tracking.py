"""training.report_to: the training log and the results mirrored to TensorBoard / wandb /
trackio (stand-ins here: the packages are optional and not installed), a missing one refused
in one line before the model loads."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import tiny_config

from schemabank import training
from schemabank.config import config_from_dict
from schemabank.errors import ConfigError
from schemabank.telemetry import read_jsonl


def cfg_with(tiny_llama, *trackers):
    raw = tiny_config(
        tiny_llama, eval={"limit": 1, "batch_size": 1, "max_new_tokens": 2, "ppl_windows": []}
    )
    raw["training"]["report_to"] = list(trackers)
    return config_from_dict(raw)


def test_tensorboard_gets_every_step_and_the_results(tiny_llama, data_dir, tmp_path, monkeypatch):
    scalars, closed = [], []

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_text(self, tag, text):
            pass

        def add_scalar(self, key, value, step):
            scalars.append((key, value, step))

        def close(self):
            closed.append(True)

    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    run_dir = training.run(cfg_with(tiny_llama, "tensorboard"), tmp_path, data_dir)
    log = read_jsonl(run_dir / "training_log.jsonl")
    losses = [(v, s) for k, v, s in scalars if k == "train/loss"]
    assert losses == [(pytest.approx(x["loss"]), x["step"]) for x in log]
    assert {k for k, _, _ in scalars} >= {"train/lr", "train/grad_norm", "train/tag_dropout"}
    evals = {k: v for k, v, s in scalars if k.startswith("eval/")}
    assert "eval/gsm8k_strict" in evals and "eval/routing_entropy_bits" in evals
    assert closed == [True]


def test_wandb_and_trackio_share_the_run_logger(tiny_llama, data_dir, tmp_path, monkeypatch):
    calls = []
    for name in ("wandb", "trackio"):
        mod = types.ModuleType(name)
        mod.init = lambda project, name, config, _n=name, **kw: calls.append((_n, "init", name))
        mod.log = lambda values, step, _n=name: calls.append((_n, "log", step))
        mod.finish = lambda _n=name: calls.append((_n, "finish", None))
        monkeypatch.setitem(sys.modules, name, mod)
    training.run(cfg_with(tiny_llama, "wandb", "trackio"), tmp_path, data_dir)
    for name in ("wandb", "trackio"):
        mine = [c for c in calls if c[0] == name]
        assert mine[0] == (name, "init", "tiny_schemabank_seed0")
        assert [c[2] for c in mine if c[1] == "log"][:6] == [1, 2, 3, 4, 5, 6]
        assert mine[-1] == (name, "finish", None)


def test_a_missing_tracker_is_refused_before_the_model_loads(
    tiny_llama, data_dir, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails
    monkeypatch.setattr(training, "load_base_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(
        ConfigError, match=r"wandb needs the wandb package: pip install 'schemabank\[wandb\]'"
    ):
        training.run(cfg_with(tiny_llama, "wandb"), tmp_path, data_dir)


def test_an_unknown_tracker_is_a_config_error(tiny_llama):
    with pytest.raises(ConfigError, match="training.report_to: 'mlflow' is not a tracker"):
        cfg_with(tiny_llama, "mlflow")

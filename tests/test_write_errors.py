"""Output that cannot be written: refused before the long work, one line naming the path and the
cause, and the work already done kept (a training state to resume, a checkpoint to evaluate)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from conftest import tiny_config
from test_cli import assert_user_error, call_main

from schemabank import training
from schemabank.config import config_from_dict
from schemabank.errors import SchemaBankError
from schemabank.state import STATE_DIR


def small(tiny_llama, **training_keys):
    raw = tiny_config(
        tiny_llama, eval={"limit": 1, "batch_size": 1, "max_new_tokens": 2, "ppl_windows": []}
    )
    raw["training"] |= training_keys
    return config_from_dict(raw)


def test_output_dir_that_is_a_file_is_refused_before_loading(
    capsys, tmp_path, tiny_llama, data_dir, monkeypatch
):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(tiny_config(tiny_llama)))
    monkeypatch.setattr(training, "load_base_model", lambda *a: pytest.fail("the model was loaded"))
    code, err = call_main(
        capsys,
        "train",
        "--config",
        cfg_path,
        "--output-dir",
        blocker / "runs",
        "--data-dir",
        data_dir,
    )
    assert_user_error(code, err, "blocker", "is an existing file")


def test_eval_output_that_cannot_be_written_is_refused_before_evaluating(
    capsys, tmp_path, tiny_llama, data_dir
):
    run_dir = training.run(small(tiny_llama), tmp_path / "runs", data_dir)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = call_main(
        capsys, "eval", "--checkpoint", run_dir / "checkpoint", "--output", blocker / "eval.json",
        "--data-dir", data_dir,
    )  # fmt: skip
    assert_user_error(code, err, "is an existing file")


def test_a_checkpoint_write_error_keeps_a_state_to_resume(
    tmp_path, tiny_llama, data_dir, monkeypatch
):
    """A full disk at the final checkpoint: the state of the last step is saved (or kept), the
    message says where and how to resume, and the resumed run finishes."""
    real = training.save_checkpoint

    def full_disk(directory, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(training, "save_checkpoint", full_disk)
    cfg = small(tiny_llama, checkpoint_every=4)  # 6 steps: a state at 4, then one at 6
    with pytest.raises(SchemaBankError) as exc:
        training.run(cfg, tmp_path, data_dir)
    run_dir = tmp_path / cfg.run_name
    message = str(exc.value)
    assert "No space left on device" in message and "step 6" in message
    assert f"--resume {run_dir}" in message and (run_dir / STATE_DIR).is_dir()
    monkeypatch.setattr(training, "save_checkpoint", real)
    done = training.run(cfg, tmp_path, data_dir, resume=True)
    assert (done / "results.json").is_file() and not (done / STATE_DIR).exists()


def test_a_results_write_error_points_at_the_checkpoint(
    tmp_path, tiny_llama, data_dir, monkeypatch
):
    def full_disk(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(training, "write_json", full_disk)
    cfg = small(tiny_llama)
    with pytest.raises(SchemaBankError, match="schemabank eval --checkpoint") as exc:
        training.run(cfg, tmp_path, data_dir)
    assert "No space left on device" in str(exc.value)
    assert (tmp_path / cfg.run_name / "checkpoint" / "adapter_model.safetensors").is_file()


def test_any_write_error_in_a_command_is_one_line(capsys, tmp_path, tiny_llama, data_dir):
    run_dir = training.run(small(tiny_llama), tmp_path / "runs", data_dir)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = call_main(capsys, "compare", run_dir, run_dir, "--output", blocker / "c.json")
    assert_user_error(code, err, "file")


def _weights(run_dir):
    from safetensors.torch import load_file

    ck = run_dir / "checkpoint"
    return {
        **load_file(ck / "adapter_model.safetensors"),
        **load_file(ck / "schemabank.safetensors"),
    }


def test_every_write_of_a_run_failing_in_turn_is_recovered_exactly(
    tmp_path, tiny_llama, data_dir, monkeypatch
):
    """Every file a run writes is renamed into place (os.replace): make each of those renames fail
    in turn (the config, each training state, the checkpoint, the samples, the results). The run
    either finishes or, resumed from its state (started again when it had none), ends with the
    weights and results of an uninterrupted run."""
    import os

    import torch

    cfg = small(tiny_llama, checkpoint_every=3)  # 6 steps: states at 3 and 6
    real = os.replace
    calls = []

    def counting(src, dst, *a, **k):
        calls.append(Path(dst).name)
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", counting)
    reference = training.run(cfg, tmp_path / "ref", data_dir)
    monkeypatch.setattr(os, "replace", real)
    assert {"config.yaml", STATE_DIR, "checkpoint", "results.json"} <= set(calls)
    want = _weights(reference)
    want_results = json.loads((reference / "results.json").read_text())["gsm8k"]["problems"]

    def fail_at(n):  # os.replace whose n-th call fails
        count = [0]

        def failing(src, dst, *a, **kw):
            count[0] += 1
            if count[0] == n:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
            return real(src, dst, *a, **kw)

        return failing

    for k in range(len(calls)):
        out = tmp_path / f"fail{k}"
        monkeypatch.setattr(os, "replace", fail_at(k + 1))
        try:
            training.run(cfg, out, data_dir)
            failed = False
        except (SchemaBankError, OSError):
            failed = True
        monkeypatch.setattr(os, "replace", real)
        run_dir = out / cfg.run_name
        if failed:
            resume = (run_dir / STATE_DIR).is_dir()
            training.run(cfg, out, data_dir, resume=resume, overwrite=not resume)
        got = _weights(run_dir)
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want), (
            k,
            calls[k],
        )
        problems = json.loads((run_dir / "results.json").read_text())["gsm8k"]["problems"]
        assert problems == want_results, (k, calls[k])


def test_a_read_only_or_full_output_folder_is_refused_before_loading(tmp_path, monkeypatch):
    """As root, permissions do not stop a write: the file system's refusal is simulated."""
    import tempfile

    from schemabank.files import check_writable

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(SchemaBankError, match="cannot be written: Read-only file system"):
        check_writable(tmp_path / "runs")

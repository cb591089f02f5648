"""The GGUF conversion cache leaves no temporaries behind: not on Ctrl-C, and the ones of a
process killed outright are removed by the next conversion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schemabank import models
from schemabank.models import BaseModelInfo


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


class _Interrupting:
    """Stands in for the tokenizer and model transformers loads: saving them is interrupted."""

    def __init__(self, *args, **kwargs):
        self.config = object()

    def save_pretrained(self, path):
        (Path(path) / "model.safetensors").write_bytes(b"x" * 1000)  # half written
        raise KeyboardInterrupt


def test_ctrl_c_during_conversion_leaves_no_temporary(tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("SCHEMABANK_CACHE", str(tmp_path / "cache"))
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", lambda *a, **k: _Interrupting())
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    info = BaseModelInfo("m.gguf", "gguf", str(gguf), "ab" * 32)
    with pytest.raises(KeyboardInterrupt):
        models._gguf_cache(info)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("SCHEMABANK_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "gguf"
    target = folder / ("cd" * 32)[:16]
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # converted already
    stale = folder / f".tmp-{dead_pid()}-abc"
    live = folder / f".tmp-{os.getpid()}-def"  # a conversion under way in a live process
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
    info = BaseModelInfo("m.gguf", "gguf", str(tmp_path / "m.gguf"), "cd" * 32)
    assert models._gguf_cache(info) == target
    assert not stale.exists() and live.exists()

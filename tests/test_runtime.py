"""Provenance in results.json's ``environment``: a package version and a hash of the source that
are never empty, even for a run from an exported copy of the source without ``.git``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata

import torch

from schemabank import __version__, runtime
from schemabank.runtime import PACKAGE_DIR, tree_sha256

PRINT_ENVIRONMENT = (
    "import json, torch, schemabank, schemabank.runtime as r; "
    "print(json.dumps({'file': schemabank.__file__, **r.environment(torch.device('cpu'))}))"
)


def test_exported_copy_records_version_and_source_hash_without_git(tmp_path):
    copy = tmp_path / "export" / "src" / "schemabank"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    original = tree_sha256(PACKAGE_DIR)  # right after the copy: the same files
    proc = subprocess.run(
        [sys.executable, "-c", PRINT_ENVIRONMENT],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(copy.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = json.loads(proc.stdout.splitlines()[-1])
    assert env["file"] == str(copy / "__init__.py")  # the copy ran, not the checkout
    assert env["schemabank"]
    assert env["source_sha256"] == original == tree_sha256(copy)
    assert env["git"] is None

    path = copy / "metrics.py"
    data = bytearray(path.read_bytes())
    data[-2] ^= 1  # one byte of one file
    path.write_bytes(bytes(data))
    assert tree_sha256(copy) != original


def test_hash_covers_file_names_and_only_python_files(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    before = tree_sha256(tmp_path)
    (tmp_path / "notes.txt").write_text("not source")
    (tmp_path / "__pycache__").mkdir()
    assert tree_sha256(tmp_path) == before
    (tmp_path / "a.py").rename(tmp_path / "b.py")
    assert tree_sha256(tmp_path) != before


def test_version_falls_back_to_the_package_when_metadata_is_missing(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(runtime.metadata, "version", missing)
    env = runtime.environment(torch.device("cpu"))
    assert env["schemabank"] == __version__
    assert env["source_sha256"] == runtime.source_sha256()


def test_cudagraph_skips_are_reported(capsys):
    from torch._dynamo.utils import counters

    from schemabank.runtime import cudagraph_skips, warn_cudagraph_skips

    before = cudagraph_skips()
    warn_cudagraph_skips(before, "the step")
    assert capsys.readouterr().err == ""
    counters["inductor"]["cudagraph_skips"] += 2
    try:
        assert cudagraph_skips() == before + 2
        warn_cudagraph_skips(before, "the step")
        assert "the step runs without CUDA graphs (2 graph(s) skipped" in capsys.readouterr().err
    finally:
        counters["inductor"]["cudagraph_skips"] -= 2


def test_a_warm_cache_marker_leaves_out_the_compile_workers(tmp_path, monkeypatch):
    """A run's marker names its config's graphs: found, inductor compiles in the process (no
    worker pool) inside the context and gets its own choice back after it; a changed section,
    a missing marker or an explicit TORCHINDUCTOR_COMPILE_THREADS keep the pool."""
    import torch._inductor.config as inductor_config

    from schemabank.config import Config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    monkeypatch.setattr(inductor_config, "compile_threads", 8)
    cpu = torch.device("cpu")
    cfg = Config()
    marker = runtime.warm_cache_marker(cfg, "abc", cpu)
    assert marker.parent == tmp_path / "schemabank_warm"
    cfg.experiment.seed = 7  # the seed and the name change no graph
    assert runtime.warm_cache_marker(cfg, "abc", cpu) == marker
    cfg.lora.r *= 2
    assert runtime.warm_cache_marker(cfg, "abc", cpu) != marker
    assert runtime.warm_cache_marker(Config(), "other base", cpu) != marker

    with runtime.compile_workers_unless_warm(None) as left_out:  # not compiled on CUDA
        assert left_out is None and inductor_config.compile_threads == 8
    with runtime.compile_workers_unless_warm(marker) as left_out:  # cold: no marker yet
        assert not left_out and inductor_config.compile_threads == 8
    runtime.mark_cache_warm(marker)
    with runtime.compile_workers_unless_warm(marker) as left_out:
        assert left_out and inductor_config.compile_threads == 1
    assert inductor_config.compile_threads == 8
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "4")
    with runtime.compile_workers_unless_warm(marker) as left_out:
        assert not left_out and inductor_config.compile_threads == 8

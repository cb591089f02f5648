"""Fuzzing the CLI's file inputs: a results file given to compare / table / verify / report, or a
checkpoint folder given to eval, whatever it holds, ends in success or in one line on stderr and
a non-zero exit, never a traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemabank.cli import main

REPO = Path(__file__).resolve().parents[1]
REAL = json.loads((REPO / "results" / "sb_routed_seed43" / "results.json").read_text())
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def paths(d, prefix=(), depth=0):
    """Key paths into a results dict (lists: their first item), a few levels deep."""
    out = [prefix] if prefix else []
    if depth < 4 and isinstance(d, dict):
        for k, v in list(d.items())[:40]:
            out += paths(v, (*prefix, k), depth + 1)
    elif depth < 4 and isinstance(d, list) and d:
        out += paths(d[0], (*prefix, 0), depth + 1)
    return out


PATHS = paths(REAL)


@st.composite
def broken_results(draw):
    data = copy.deepcopy(REAL)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = data
        try:  # an earlier change may have removed or replaced the way there
            for part in path[:-1]:
                node = node[part]
        except (KeyError, IndexError, TypeError):
            continue
        if draw(st.booleans()) and isinstance(node, dict):
            node.pop(path[-1], None)
        elif isinstance(node, dict) or isinstance(node, list) and len(node) > path[-1]:
            node[path[-1]] = draw(VALUES)
    return json.dumps(data)


def assert_clean(code: int, err: str) -> None:
    assert "Traceback" not in err, err[-2000:]
    if code != 0:
        lines = [x for x in err.splitlines() if x.strip()]
        assert lines and lines[-1].startswith("schemabank: error: "), err[-2000:]
        assert sum("error:" in x for x in lines) == 1, err[-2000:]


def run(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


@SETTINGS
@given(text=st.one_of(broken_results(), st.text(max_size=100), st.binary(max_size=100)))
def test_any_results_file_is_read_or_refused_in_one_line(text, tmp_path_factory, capsys):
    d = tmp_path_factory.mktemp("fuzz")
    run_dir = d / "run"
    run_dir.mkdir()
    f = run_dir / "results.json"
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text)
    good = REPO / "results" / "sb_routed_seed43"
    expected = d / "expected.yaml"
    expected.write_text("gsm8k.strict.accuracy: {min: 0.0, max: 1.0}\n")
    for argv in (
        ("compare", f, good),
        ("table", f),
        ("verify", f, "--expected", expected),
        ("report", f, "--output", d / "report"),
    ):
        assert_clean(*run(capsys, *argv))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama, data_dir):
    from conftest import tiny_config

    from schemabank import training
    from schemabank.config import config_from_dict

    raw = tiny_config(
        tiny_llama, eval={"limit": 1, "batch_size": 1, "max_new_tokens": 2, "ppl_windows": []}
    )
    return training.run(config_from_dict(raw), tmp_path_factory.mktemp("fuzzrun"), data_dir)


CHECKPOINT_JSON = ("adapter_config.json", "schemabank_config.json", "base_model.json")


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    name=st.sampled_from(CHECKPOINT_JSON),
    key=st.sampled_from(
        [
            "r",
            "target_modules",
            "layers",
            "num_schemas",
            "rank",
            "topk",
            "router_input",
            "name",
            "sha256",
            "hidden_size",
        ]
    ),
    value=VALUES,
    raw=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_any_checkpoint_file_is_loaded_or_refused_in_one_line(
    name, key, value, raw, tiny_run, tmp_path_factory, data_dir, capsys
):
    import shutil

    d = tmp_path_factory.mktemp("ckfuzz")
    ckpt = d / "run" / "checkpoint"
    shutil.copytree(tiny_run / "checkpoint", ckpt)
    shutil.copy(tiny_run / "config.yaml", d / "run" / "config.yaml")
    if raw is not None:
        (ckpt / name).write_bytes(raw)
    else:
        data = json.loads((ckpt / name).read_text())
        data[key] = value
        (ckpt / name).write_text(json.dumps(data))
    code, err = run(
        capsys, "eval", "--checkpoint", ckpt, "--limit", 1, "--output", d / "e.json",
        "--data-dir", data_dir, "--set", "eval.max_new_tokens=2", "--set", "eval.ppl_windows=[]",
    )  # fmt: skip
    assert_clean(code, err)

"""Property-based tests (hypothesis): whatever the config or the data line, the outcome is a valid
run or a one-line error naming the problem with a non-zero exit, never a traceback."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config, write_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemabank.training
from schemabank.cli import main
from schemabank.data import parse_gsm8k_jsonl
from schemabank.errors import DataError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 3000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-40, 40), max_size=4),
    st.lists(st.floats(-1.0, 2.0), max_size=5),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


def leaf_paths(d: dict, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out += leaf_paths(v, (*prefix, k)) if isinstance(v, dict) else [(*prefix, k)]
    return out


BASE = tiny_config(Path("/nonexistent-model"))
PATHS = leaf_paths(BASE)


@st.composite
def mutated_configs(draw):
    """A valid tiny config with a few values replaced, keys added or sections broken."""
    cfg = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS + [("training", "nokey"), ("extra",), ("schemabank",)]))
        node = cfg
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node
        if isinstance(node, dict):
            node[path[-1]] = draw(VALUES)
    return cfg


class ReachedTraining(Exception):
    """The config passed every check (the stub stands in for the training run)."""


def one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    lines = [x for x in re.split(r"[\r\n]+", err) if x.strip()]
    assert "Traceback" not in err
    assert len(lines) >= 1 and lines[-1].startswith("schemabank: error: "), err
    assert sum("error:" in x for x in lines) == 1, err
    for needle in needles:
        assert needle in lines[-1]
    return lines[-1]


@SETTINGS
@given(cfg=mutated_configs())
def test_any_config_is_accepted_or_refused_in_one_line(cfg, tmp_path_factory, monkeypatch, capsys):
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))

    def stub(*args, **kwargs):
        raise ReachedTraining

    monkeypatch.setattr(schemabank.training, "run", stub)
    capsys.readouterr()
    try:
        code = main(["train", "--config", str(path)])
    except ReachedTraining:
        return  # a valid config
    assert code == 1
    one_line_error(capsys)


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_yaml_file_is_accepted_or_refused_in_one_line(
    text, tmp_path_factory, monkeypatch, capsys
):
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(
        schemabank.training, "run", lambda *a, **k: (_ for _ in ()).throw(ReachedTraining())
    )
    capsys.readouterr()
    try:
        code = main(["train", "--config", str(path)])
    except ReachedTraining:
        return
    assert code == 1
    one_line_error(capsys)


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "question": JSON_VALUES | st.text(max_size=40),
        "answer": JSON_VALUES | st.text(max_size=40).map(lambda s: s + " #### 5"),
    },
)
LINES = st.one_of(
    RECORDS.map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.text(max_size=80).filter(lambda s: "\n" not in s and "\r" not in s),
)


@SETTINGS
@given(lines=st.lists(LINES, min_size=1, max_size=5), good_first=st.booleans())
def test_any_data_lines_parse_or_name_file_and_line(lines, good_first, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    good = json.dumps({"question": "How many?", "answer": "2+2=4\n#### 4"})
    body = [good] + lines if good_first else lines
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    try:
        problems = parse_gsm8k_jsonl(path)
    except DataError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert re.match(rf"{re.escape(str(path))}(:\d+)?: ", msg), msg
        return
    assert all(isinstance(p.question, str) and "####" in p.answer for p in problems)


@pytest.mark.parametrize(
    "junk", [b"\xff\xfe\x00garbage\n", b'{"question": "q", "answer": "a #### 1"}\n\x80\n']
)
def test_binary_data_is_a_data_error(junk, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(junk)
    with pytest.raises(DataError, match=re.escape(str(path))):
        parse_gsm8k_jsonl(path)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    split=st.lists(st.integers(0, 3), min_size=3, max_size=3),
    batch=st.integers(1, 3),
    max_length=st.sampled_from([16, 40, 128]),
    mode=st.sampled_from(["schemabank", "baseline"]),
)
def test_real_tiny_runs_finish_or_fail_in_one_line(
    split, batch, max_length, mode, tiny_llama, tmp_path_factory, capsys
):
    """A few real runs over drawn stage splits, batch sizes and lengths: each ends with a results
    file or a one-line error (e.g. a max_length that leaves no answer tokens)."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_data(tmp / "data")
    cfg = tiny_config(
        tiny_llama,
        mode=mode,
        eval={"limit": 1, "max_new_tokens": 2, "ppl_windows": [16], "ppl_max_tokens": 40},
    )
    cfg["training"].update(total_steps=sum(split), batch_size=batch, max_length=max_length)
    for key, n in zip(
        ("stage1_router_pretrain", "stage2_schema_train", "stage3_joint_finetune"),
        split,
        strict=True,
    ):
        cfg["training"]["stages"][key]["steps"] = n
    cfg["training"]["stages"]["stage1_router_pretrain"]["tag_curriculum"]["dropout_schedule"] = [
        0.5
    ]
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = main(
        ["train", "--config", str(path), "--output-dir", str(tmp / "out"), "--data-dir", str(data)]
    )
    if code == 0:
        results = json.loads((tmp / "out" / f"tiny_{mode}_seed0" / "results.json").read_text())
        assert results["training"]["total_steps"] == sum(split) or mode == "baseline"
    else:
        assert code == 1
        one_line_error(capsys)

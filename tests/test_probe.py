"""Linear probes (schemabank.study.probe) and scripts/probe_tags.py on the tiny random Llama."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schemabank.data import collate, encode_all, load_gsm8k, question_prompt
from schemabank.method.tags import TAGS
from schemabank.models import load_base_model, resolve_base_model
from schemabank.study.probe import (
    INPUTS,
    default_layers,
    fit_probe,
    plot_probes,
    probe_features,
    probe_table,
    run_probes,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probe_tags.py"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def llama(tiny_llama):
    tok, model = load_base_model(resolve_base_model(str(tiny_llama)), CPU, torch.float32)
    return tok, model


@pytest.fixture(scope="module")
def problems(data_dir):
    return load_gsm8k("train", data_dir)


def normed_states(model, tok, problems, tagged: bool, layer: int):
    """(B, T, H) RMS-normed output of ``layer`` and the encoded examples, computed directly."""
    encoded = encode_all(tok, problems, 512, [p.tags if tagged else None for p in problems])
    batch = collate(encoded, tok.pad_token_id)
    with torch.no_grad():
        out = model(
            **{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True
        )
    h = out.hidden_states[layer + 1].float()
    return F.rms_norm(h, (h.shape[-1],), eps=1e-6), encoded


@pytest.mark.parametrize("tagged", [False, True])
def test_feature_shapes_and_rows(llama, problems, tagged):
    tok, model = llama
    feats = probe_features(
        model, tok, problems, [0, 1], tagged, CPU, positions_per_problem=5, batch_size=3
    )
    assert set(feats) == set(INPUTS)
    lengths = [
        len(ids)
        for ids, _ in encode_all(tok, problems, 512, [p.tags if tagged else None for p in problems])
    ]
    n_tok = sum(min(5, n) for n in lengths)
    for kind, (x, prob) in feats.items():
        rows = n_tok if kind in ("token", "prefix_mean") else len(problems)
        assert x.shape == (2, rows, model.config.hidden_size) and x.dtype == torch.float32
        assert prob.shape == (rows,) and prob.tolist() == sorted(prob.tolist())


def test_token_and_prefix_mean_match_hidden_states(llama, problems):
    tok, model = llama
    layer, k = 1, 6
    feats = probe_features(
        model, tok, problems, [layer], False, CPU, positions_per_problem=k, seed=3, batch_size=3
    )
    h, encoded = normed_states(model, tok, problems, False, layer)
    # the same positions, drawn as probe_features draws them
    gen = torch.Generator().manual_seed(3)
    pos = [torch.randperm(len(ids), generator=gen)[:k].sort().values for ids, _ in encoded]
    want_tok = torch.cat([h[i, p] for i, p in enumerate(pos)])
    want_mean = torch.cat(
        [torch.stack([h[i, : t + 1].mean(0) for t in p.tolist()]) for i, p in enumerate(pos)]
    )
    # batches of 3 have other padding than the one batch here: equal up to float rounding
    torch.testing.assert_close(feats["token"][0][0], want_tok, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats["prefix_mean"][0][0], want_mean, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tagged", [False, True])
def test_last_prompt_and_last(llama, problems, tagged):
    tok, model = llama
    feats = probe_features(model, tok, problems, [1], tagged, CPU, batch_size=4)
    h, encoded = normed_states(model, tok, problems, tagged, 1)
    for i, p in enumerate(problems):
        prompt = tok(question_prompt(p.question, p.tags if tagged else None)).input_ids
        assert encoded[i][0][len(prompt) - 1] == prompt[-1]  # ...Answer:
        torch.testing.assert_close(
            feats["last_prompt"][0][0][i], h[i, len(prompt) - 1], atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            feats["last"][0][0][i], h[i, len(encoded[i][0]) - 1], atol=1e-4, rtol=1e-4
        )


def test_bad_layer(llama, problems):
    from schemabank.errors import SchemaBankError

    tok, model = llama
    with pytest.raises(SchemaBankError, match="out of range"):
        probe_features(model, tok, problems, [2], False, CPU)


def test_default_layers():
    assert default_layers(30) == list(range(2, 30, 3))
    assert 20 in default_layers(30)
    assert default_layers(2) == [1]
    assert default_layers(12) == [2, 5, 8, 11]


def synthetic(n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, len(TAGS), generator=g)
    return x, (x @ w > 0).float()


def test_fit_probe_separable_and_random():
    x, y = synthetic(600, 16, 0)
    r = fit_probe(x[:400], y[:400], x[400:], y[400:])
    assert min(r["auc"]) > 0.95 and min(r["balanced_accuracy"]) > 0.85
    assert r["positives"] == y[400:].sum(0).int().tolist()
    noise = (torch.rand(600, len(TAGS), generator=torch.Generator().manual_seed(1)) > 0.5).float()
    r = fit_probe(x[:400], noise[:400], x[400:], noise[400:], l2=1e-1)
    assert abs(np.mean(r["auc"]) - 0.5) < 0.07
    one_class = torch.zeros(200, len(TAGS))
    r = fit_probe(x[:400], y[:400], x[400:], one_class)
    assert all(np.isnan(r["auc"])) and all(np.isnan(r["balanced_accuracy"]))


@pytest.fixture(scope="module")
def probes(llama, problems):
    tok, model = llama
    return run_probes(
        model, tok, problems[:5], problems[5:], [0, 1], CPU, positions_per_problem=4, steps=20
    )


def test_run_probes_plot_and_table(probes, tmp_path):
    json.loads(json.dumps(probes, allow_nan=False))  # JSON-able, NaN written as null
    assert probes["tags"] == list(TAGS) and probes["inputs"] == list(INPUTS)
    for name in ("untagged", "tagged"):
        for kind in INPUTS:
            auc = probes["results"][name][kind]["auc"]
            assert len(auc) == len(TAGS) and all(len(row) == 2 for row in auc)
    plot_probes(probes, tmp_path / "probes.png")
    assert (tmp_path / "probes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = probe_table(probes).splitlines()
    assert table[0] == "| input | layer 0 | layer 1 |" and len(table) == 2 + len(INPUTS)


def script(capsys, *args) -> tuple[int, str, str]:
    """Run scripts/probe_tags.py's main in this process: (exit status, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("probe_tags", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    rc = module.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_script_plot_and_errors(probes, tmp_path, capsys):
    path = tmp_path / "probes.json"
    path.write_text(json.dumps(probes))
    rc, out, err = script(capsys, "--plot", str(path))
    assert rc == 0, err
    assert (tmp_path / "probes.png").is_file() and "| token |" in out
    rc, out, err = script(
        capsys, "--data-dir", str(tmp_path / "missing"), "--output", str(tmp_path)
    )
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("probe_tags: error: data directory not found")
    rc, out, err = script(capsys, "--plot", str(tmp_path / "nope.json"))
    assert rc == 1 and err.startswith("probe_tags: error: probes file not found")


def test_script_runs_on_tiny_model(tiny_llama, data_dir, tmp_path, capsys):
    rc, out, err = script(
        capsys, "--model", str(tiny_llama), "--data-dir", str(data_dir), "--dev-size", "3",
        "--positions", "4", "--steps", "10", "--device", "cpu", "--output", str(tmp_path),
    )  # fmt: skip
    assert rc == 0, err
    data = json.loads((tmp_path / "probes.json").read_text())
    assert data["layers"] == [1] and data["settings"]["fit_problems"] == 5
    assert data["settings"]["eval_problems"] == 3 and (tmp_path / "probes.png").is_file()
    assert "| last_prompt |" in out

"""The config key reference: docs/configuration.md is what the dataclasses give (CI), every key has
a meaning, and the markers are rewritten and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemabank import config_doc
from schemabank.config import Config
from schemabank.errors import SchemaBankError

REPO = Path(__file__).resolve().parents[1]


def flat_keys(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += flat_keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def test_committed_reference_is_up_to_date():
    """CI: docs/configuration.md holds exactly what `python -m schemabank.config_doc` renders."""
    config_doc.check(REPO / "docs" / "configuration.md")


def test_every_key_is_listed_once_with_a_meaning():
    keys = flat_keys(Config().to_dict())
    assert config_doc.keys() == keys
    assert config_doc.undocumented() == []
    text = config_doc.render()
    for key in keys:
        assert text.count(f"| `{key}` |") == 1, key


def test_rows_show_type_default_and_markdown_meaning():
    text = config_doc.render()
    assert "| `experiment.seed` | int | `42` | Seeds the weights' initialisation" in text
    assert "| `lora.target_modules` | list of str or null | `null` |" in text
    assert "| `eval.ppl_windows` | list of int | `[512, 4096]` |" in text
    assert "``" not in text and ":mod:" not in text  # reST turned into Markdown


def test_field_docs_reads_the_string_after_each_field():
    from schemabank.config import EvalConfig

    docs = config_doc.field_docs(EvalConfig)
    assert docs["limit"].startswith("Evaluate the first N GSM8K test problems")
    assert "\n" not in config_doc._markdown("a\n    b | c")


def test_write_and_check(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    page.write_text(f"# hand-written\n\n{config_doc.START}\nold\n{config_doc.END}\nafter\n")
    with pytest.raises(SchemaBankError, match="out of date"):
        config_doc.check(page)
    assert config_doc.main(["--check", str(page)]) == 1
    assert config_doc.main(["--write", str(page)]) == 0
    config_doc.check(page)
    text = page.read_text()
    assert text.startswith("# hand-written\n\n") and text.endswith(f"{config_doc.END}\nafter\n")
    page.write_text("no markers\n")
    with pytest.raises(SchemaBankError, match="needs one"):
        config_doc.write(page)
    capsys.readouterr()
    assert config_doc.main([]) == 0
    assert capsys.readouterr().out == config_doc.render()

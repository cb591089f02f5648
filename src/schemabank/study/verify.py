"""The reproduction check: a run's results.json against recorded expected values and tolerances.

An *expected file* (YAML; JSON is valid YAML too) records what a known run produced and how far a
re-run may drift::

    format: schemabank-expected-v1
    description: configs/smoke.yaml, CPU fp32 (two runs: ...)   # free text, optional
    metrics:
      config.training.total_steps: {value: 12}                  # exact
      gsm8k.strict.correct:        {value: 1, abs: 1}           # |x - 1| <= 1
      perplexity.ppl_512:          {value: 20.1, rel: 0.02}     # |x - 20.1| <= 2% of 20.1
      perplexity.windows.512.ratio_to_base: {max: 1.05}         # x <= 1.05
      experiment.mode:             {value: schemabank}          # strings and booleans: exact

Each key of ``metrics`` is a dotted path into results.json (dictionary keys, or list indices such
as ``gsm8k.strict.ci95.0``). An entry holds either ``value`` with optional tolerances ``abs``
and/or ``rel`` (a number is in range when it is within *either* tolerance, as in
:func:`math.isclose`; with neither it must be equal), or bounds ``min`` and/or ``max``
(inclusive). A path that does not exist in the results is an error in the expected file; a path
whose value is null (``routing`` of a baseline) is out of range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import SchemaBankError
from ..results import load_results

FORMAT = "schemabank-expected-v1"
ENTRY_KEYS = {"value", "abs", "rel", "min", "max", "note"}


class ExpectedFileError(SchemaBankError):
    """An expected-values file is missing, malformed, or names a metric results.json lacks."""


@dataclass
class Check:
    """One metric's verdict: its path, the run's value, the expectation, and whether it holds."""

    path: str
    actual: object
    expected: dict
    ok: bool

    def describe_expectation(self) -> str:
        """The expectation in words, e.g. ``20.1 ± 0.402 (rel 2%)`` or ``<= 1.05``."""
        e = self.expected
        if "value" not in e:
            parts = []
            if "min" in e:
                parts.append(f">= {_fmt(e['min'])}")
            if "max" in e:
                parts.append(f"<= {_fmt(e['max'])}")
            return " and ".join(parts)
        value = e["value"]
        if not _is_number(value) or ("abs" not in e and "rel" not in e):
            return f"== {_fmt(value)}"
        tol = _tolerance(e)
        how = []
        if "abs" in e:
            how.append(f"abs {_fmt(e['abs'])}")
        if "rel" in e:
            how.append(f"rel {100 * e['rel']:g}%")
        return f"{_fmt(value)} ± {_fmt(tol)} ({', '.join(how)})"


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _fmt(x) -> str:
    """A value for the one-line report: floats to 6 significant digits, long strings (hashes)
    cut to their first 16 characters."""
    if isinstance(x, float):
        return f"{x:.6g}"
    text = str(x)
    return text if len(text) <= 20 else text[:16] + "…"


def _tolerance(entry: dict) -> float:
    """The allowed absolute deviation: the larger of ``abs`` and ``rel · |value|``."""
    return max(entry.get("abs", 0.0), entry.get("rel", 0.0) * abs(entry["value"]))


def load_expected(path: str | Path) -> dict[str, dict]:
    """Read and validate an expected-values file; returns ``{metric path: entry}``.

    Every problem (not YAML, wrong format tag, an entry without ``value`` / ``min`` / ``max``, a
    negative or non-numeric tolerance, an unknown entry key) raises :class:`ExpectedFileError`
    naming the file and the metric, so a typo cannot silently pass a run.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpectedFileError(f"expected-values file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ExpectedFileError(f"{path}: not valid YAML{line}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ExpectedFileError(f"{path}: not an expected-values file (format: {FORMAT})")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ExpectedFileError(f"{path}: 'metrics' must be a non-empty mapping of metric paths")
    out = {}
    for name, entry in metrics.items():
        where = f"{path}: metric {name!r}"
        if not isinstance(entry, dict):
            raise ExpectedFileError(f"{where}: must be a mapping like {{value: 1.0, abs: 0.1}}")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise ExpectedFileError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(ENTRY_KEYS))})"
            )
        if "value" in entry and ("min" in entry or "max" in entry):
            raise ExpectedFileError(f"{where}: give either value (with abs/rel) or min/max")
        if not {"value", "min", "max"} & set(entry):
            raise ExpectedFileError(f"{where}: needs value, min or max")
        for key in ("abs", "rel", "min", "max"):
            if key in entry and not _is_number(entry[key]):
                raise ExpectedFileError(f"{where}: {key} must be a number, got {entry[key]!r}")
        for key in ("abs", "rel"):
            if key in entry and (entry[key] < 0 or "value" not in entry):
                raise ExpectedFileError(f"{where}: {key} must be >= 0 and go with a value")
        if ("abs" in entry or "rel" in entry) and not _is_number(entry["value"]):
            raise ExpectedFileError(f"{where}: abs/rel need a numeric value")
        out[str(name)] = entry
    return out


def lookup(results: dict, path: str):
    """The value at a dotted ``path`` of a results dict (list items by index).

    Raises :class:`ExpectedFileError` when a key does not exist; returns None when the walk
    meets a null on the way (``routing.summary.active`` of a baseline), which then fails the
    check rather than the file.
    """
    node = results
    walked = []
    for part in path.split("."):
        if node is None:
            return None
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif (
            isinstance(node, list)
            and part.lstrip("-").isdigit()
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            at = ".".join(walked) or "the top level"
            hint = (
                f" (keys: {', '.join(sorted(map(str, node))[:12])})"
                if isinstance(node, dict)
                else ""
            )
            raise ExpectedFileError(f"unknown metric path {path!r}: no {part!r} in {at}{hint}")
        walked.append(part)
    return node


def in_range(actual, entry: dict) -> bool:
    """Whether ``actual`` meets an expected entry (see the module docstring)."""
    if actual is None:
        return False
    if "value" in entry:
        value = entry["value"]
        if isinstance(value, bool) or isinstance(actual, bool):  # True is not 1 here
            return type(actual) is type(value) and actual == value
        if not (_is_number(value) and _is_number(actual)):
            return actual == value
        if not math.isfinite(actual):
            return actual == value
        return abs(actual - value) <= _tolerance(entry)
    if not _is_number(actual) or not math.isfinite(actual):
        return False
    return entry.get("min", -math.inf) <= actual <= entry.get("max", math.inf)


def verify_results(results: dict, expected: dict[str, dict]) -> list[Check]:
    """Check every expected metric against a results dict, in the expected file's order."""
    return [
        Check(name, (actual := lookup(results, name)), entry, in_range(actual, entry))
        for name, entry in expected.items()
    ]


def verify_run(run: str | Path, expected_file: str | Path) -> list[Check]:
    """Check a run directory (or results file) against an expected-values file."""
    expected = load_expected(expected_file)
    return verify_results(load_results(run), expected)


def format_checks(checks: list[Check]) -> list[str]:
    """One line per metric (``ok`` / ``OUT OF RANGE``, value, expectation), then a verdict."""
    width = max(len(c.path) for c in checks)
    lines = [
        f"{'ok' if c.ok else 'OUT OF RANGE':12s}  {c.path:{width}s}  "
        f"{'null' if c.actual is None else _fmt(c.actual):>12s}  expected {c.describe_expectation()}"
        for c in checks
    ]
    failed = [c.path for c in checks if not c.ok]
    if failed:
        lines.append(
            f"FAILED: {len(failed)} of {len(checks)} metrics out of range: {', '.join(failed)}"
        )
    else:
        lines.append(f"passed: all {len(checks)} metrics in range")
    return lines

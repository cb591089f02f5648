"""The schema of results.json, and its one-screen summary.

Top-level keys (``format: schemabank-results-v1``):

- ``experiment``: name, seed, mode (and ``ablation_of`` when the config sets it);  ``kind``: ``train`` (a trained run), ``checkpoint-eval``
  (a saved run re-evaluated) or ``base-eval`` (a bare base model, k-shot);
- ``base_model``: name, source, path, sha256, model_type, layers, hidden size;
- ``parameters``: trainable adapter parameters per group (``lora``, ``router``, ``schema``,
  ``total``), ``lora_rank`` and ``lora_target_modules``;
- ``gsm8k``: ``n``, ``shots``, ``strict`` and ``flexible`` (each ``correct``, ``total``,
  ``accuracy``, ``ci95`` Wilson interval), ``problems`` (per problem: index,
  ``question_sha256`` (its identity in paired comparisons), gold, predictions and outcomes), ``samples`` (full generated text of the first few,
  all of them in samples.jsonl below; with banks also ``tokens``, the generated tokens' text,
  and ``top1``, each token's top-1 schema per bank),
  ``generated_tokens``, ``generation_s``, ``time_s``, ``max_prompt_tokens`` (the model's context
  less ``max_new_tokens``) and ``truncated_prompts`` (prompts that lost their start to fit it);
- ``gsm8k_dev``: the same on the dev problems held out of training (``data.dev_size``; no
  routing report, no samples); null without a dev set;
- ``perplexity``: ``ppl_<W>`` and ``base_ppl_<W>`` for each window W (512 and 4096), ``tokens``,
  ``windows`` (per window: ppl, base_ppl, ratio_to_base, tokens, windows); null when not measured;
- ``schema_reuse``: mean reuse count per problem (0.0 without banks);
- ``routing``: null without banks; else ``num_schemas``, ``summary`` (means over banks of
  ``active``, ``dead``, ``entropy_bits``, ``schema_reuse``, ``nmi_tags_dominant``) and ``layers``
  (per bank: ``share`` per schema, ``active``, ``dead``, ``dead_schemas``, ``top``,
  ``entropy_bits``, ``max_entropy_bits``, ``tokens``, ``schema_reuse``, ``tag_schema`` table,
  ``dominant_schema`` per problem, ``nmi_tags_dominant``, ``tag_routing``: per-tag routing
  ``precision`` and ``recall``, ``support``, ``routed``, ``threshold_share``, as
  :func:`schemabank.metrics.tag_routing_scores` defines them); ``gsm8k.routing_mode`` says
  whether the routers (``learned``) or the problems' tags (``oracle``) routed;
- ``routing_fit``: absent without banks; else per split (``dev`` when there is one, ``test``)
  the routers' cross-entropy to the stage-1 routing targets on the problems' training text
  without the tag line, per region (``all``, ``question``, ``answer``, ``last`` token): ``ce``,
  ``perfect``, ``gap_closed`` (share of the gap from ``uniform`` = ln S to ``perfect``),
  ``tokens``; mean over banks in ``regions``, per bank in ``layers``
  (:func:`schemabank.evaluation.routing_fit`);
- ``training``: total steps, per stage (steps, learning rate, time, final loss; for a stage 1
  with ``patience``, ``heldout``: its ``evals`` as [step, routing cross-entropy] pairs,
  ``best``, and ``steps_run`` when it ended early), time, and ``resumed`` (whether it continued
  from a saved training state); null for evaluations;
- ``timings``: seconds for setup, training, GSM8K, perplexity and the whole run;
- ``environment``: python, torch, transformers, peft and schemabank versions (``schemabank``
  from the installed distribution, else the package's ``__version__``: never empty),
  ``source_sha256`` (sha256 of the package's ``*.py`` files, paths and bytes in path order:
  :func:`schemabank.runtime.tree_sha256`; it names the code even when the run was made from a
  copy without ``.git``), device, number of processes (GPUs) the run used, ``git`` commit
  (``-dirty`` with uncommitted changes; null outside a git checkout);
- ``config``: the resolved configuration.

Every generation is kept in samples.jsonl beside the results file (:func:`samples_path`; written
by rank 0 just before it, atomically): one JSON object a line, one line per GSM8K test problem,
in test-set order (as lm-evaluation-harness's ``--log_samples``, kept simple):

- ``index`` (the problem's position in the test set, as in ``gsm8k.problems``), ``question``,
  ``prompt`` (the exact text the model was given, few-shot examples included), ``output`` (the
  generated text kept: up to EOS or ``Question:``), ``gold`` (normalised answer);
- ``strict_pred``, ``flexible_pred`` (the two extractions, null when nothing matched) and
  ``strict_correct``, ``flexible_correct``, the outcomes ``gsm8k.problems`` records;
- ``dominant_schemas`` (with banks only): per bank layer, one entry per line of ``output`` (split
  at ``\\n``): the most frequent top-1 schema of the line's tokens, null for a line without text.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import Config
from .errors import SchemaBankError
from .models import BaseModelInfo

FORMAT = "schemabank-results-v1"
SAMPLES = "samples.jsonl"  # beside results.json in a run directory


def build_results(
    *,
    cfg: Config | None,
    info: BaseModelInfo,
    env: dict,
    evaluation: dict,
    parameters: dict | None,
    training: dict | None,
    timings: dict,
    kind: str = "train",
    experiment: dict | None = None,
) -> dict:
    """Assemble the results.json dict (schema in the module docstring) from a run's parts.

    ``cfg`` is None for a base-model evaluation, which passes ``experiment`` instead.
    """
    return {
        "format": FORMAT,
        "kind": kind,
        "experiment": experiment or _experiment(cfg),
        "base_model": info.to_dict(),
        "parameters": parameters,
        "gsm8k": evaluation["gsm8k"],
        "gsm8k_dev": evaluation.get("gsm8k_dev"),
        "perplexity": evaluation["perplexity"],
        "schema_reuse": evaluation["schema_reuse"],
        "routing": evaluation["routing"],
        **({"routing_fit": evaluation["routing_fit"]} if "routing_fit" in evaluation else {}),
        "training": training,
        "timings": timings,
        "environment": env,
        "config": cfg.to_dict() if cfg is not None else None,
    }


def _experiment(cfg) -> dict:
    e = cfg.experiment
    out = {"name": e.name, "seed": e.seed, "mode": e.mode}
    if e.ablation_of:
        out["ablation_of"] = e.ablation_of
    return out


def load_results(path: str | Path) -> dict:
    """Read a results.json (or the one inside a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise SchemaBankError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaBankError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "gsm8k" not in data:
        raise SchemaBankError(f"{path}: not a SchemaBank results file ({FORMAT})")
    problem = _core_problem(data)
    if problem:
        raise SchemaBankError(f"{path}: not a valid results file: {problem}")
    return data


def _core_problem(data: dict) -> str | None:
    """The first part of results.json's core (the experiment, the GSM8K accuracies and
    outcomes that every command reads) that is there but of the wrong shape, or None. (A
    missing part is met, and reported in one line, by the command that needs it.)"""
    number = (int, float)

    def bad(value, kind) -> bool:
        return isinstance(value, bool) and kind is not bool or not isinstance(value, kind)

    exp = data.get("experiment")
    if not isinstance(exp, dict):
        return "experiment: must be a mapping"
    for key, kind in (("name", str), ("mode", str), ("seed", (int, type(None)))):
        if key in exp and bad(exp[key], kind):
            return f"experiment.{key}: of the wrong type"
    g = data["gsm8k"]
    if not isinstance(g, dict):
        return "gsm8k: must be a mapping"
    for key in ("strict", "flexible"):
        a = g.get(key)
        if a is None:
            continue
        if not isinstance(a, dict) or any(k in a and bad(a[k], int) for k in ("correct", "total")):
            return f"gsm8k.{key}: correct and total must be integers"
        ci = a.get("ci95", [0, 0])
        if (
            "accuracy" in a
            and bad(a["accuracy"], number)
            or not (isinstance(ci, list) and len(ci) == 2 and not any(bad(x, number) for x in ci))
        ):
            return f"gsm8k.{key}: accuracy must be a number and ci95 two numbers"
    problems = g.get("problems", [])
    if not isinstance(problems, list):
        return "gsm8k.problems: must be a list"
    for i, p in enumerate(problems):
        if not isinstance(p, dict) or bad(p.get("index", 0), int):
            return f"gsm8k.problems[{i}]: must be a mapping with an integer index"
        if any(bad(p.get(f"{k}_correct", False), bool) for k in ("strict", "flexible")):
            return f"gsm8k.problems[{i}]: strict_correct and flexible_correct must be true/false"
    return None


def samples_path(results_path: str | Path) -> Path:
    """The samples.jsonl of a results file (or of the results.json in a run directory): beside
    it, named as it is with its last ``results`` made ``samples`` (``_samples`` added to a name
    without ``results``) and the suffix ``.jsonl``: ``results.json`` → ``samples.jsonl``,
    ``eval_results.json`` → ``eval_samples.jsonl``, ``lora.json`` → ``lora_samples.jsonl``. So
    results files of different names in one folder keep their samples apart (the one pair that
    meets is ``X.json`` with ``X_results.json``)."""
    path = Path(results_path)
    if path.is_dir():
        return path / SAMPLES
    stem, i = path.stem, path.stem.rfind("results")
    name = f"{stem[:i]}samples{stem[i + len('results') :]}" if i >= 0 else f"{stem}_samples"
    return path.with_name(f"{name}.jsonl")


def load_samples(results_path: str | Path) -> list[dict] | None:
    """The records of the samples.jsonl beside a results file or in a run directory, or None
    when there is none (runs made before it existed)."""
    path = samples_path(results_path)
    if not path.is_file():
        return None
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise SchemaBankError(f"{path}:{n}: malformed JSON line") from None
    return records


def summary_lines(results: dict) -> list[str]:
    """A few human-readable lines about a results dict."""
    g = results["gsm8k"]
    exp = results["experiment"]
    lines = [
        f"{exp['name']} (mode {exp['mode']}, seed {exp['seed']}), {g['n']} GSM8K problems, {g['shots']}-shot"
    ]
    for prefix, section in (("", g), ("dev ", results.get("gsm8k_dev"))):
        for key in ("strict", "flexible") if section else ():
            a = section[key]
            lines.append(
                f"  {prefix + key:9s} {a['correct']}/{a['total']} = {100 * a['accuracy']:.1f}% "
                f"(95% CI {100 * a['ci95'][0]:.1f}-{100 * a['ci95'][1]:.1f})"
            )
    ppl = results.get("perplexity")
    if ppl:
        for w in ppl["windows"]:
            base = ppl.get(f"base_ppl_{w}")
            extra = f" (base {base:.2f})" if base is not None else ""
            lines.append(f"  PPL_{w:<5s} {ppl[f'ppl_{w}']:.2f}{extra}")
    r = results.get("routing")
    if r:
        s = r["summary"]
        lines.append(
            f"  schemas   active {s['active']:.0f}/{r['num_schemas']}, entropy {s['entropy_bits']:.2f} bits, "
            f"reuse {s['schema_reuse']:.2f}, NMI {s['nmi_tags_dominant']:.3f}"
        )
    for split, fit in (results.get("routing_fit") or {}).items():
        closed = {k: v["gap_closed"] for k, v in fit["regions"].items()}
        lines.append(
            f"  routing   {split}: gap to the tag targets closed "
            + ", ".join(f"{k} {v:.2f}" for k, v in closed.items() if v is not None)
        )
    p = results.get("parameters")
    if p:
        lines.append(
            f"  trainable parameters {p['total']:,} (lora {p['lora']:,}, router {p['router']:,}, "
            f"schema {p['schema']:,})"
        )
    return lines

"""Throughput benchmark: training and evaluation speed, measured side by side in one process.

On real GSM8K batches and the same device: training tokens/s and step time of the LoRA baseline
and of SchemaBank stage 3 (the most expensive stage) at the same batch, peak GPU memory, the time
and generated tokens/s of the GSM8K evaluation (routing statistics included), and the time of the
perplexities. Prints a table and returns a JSON-able dict with the device, versions and settings.
The generation loop is the config's (``--set eval.decoder=static --set eval.compile_decoder=true``
times the static-cache decoder with its step captured; :mod:`schemabank.decode`).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from .adapter import base_only, build_adapter
from .config import Config
from .data import load_gsm8k, load_wikitext
from .evaluation import evaluate_gsm8k, evaluate_perplexity
from .models import load_base_model, resolve_base_model
from .runtime import environment, pick_device, seed_everything, use_bf16, weight_dtype
from .stages import BASELINE, STAGES
from .training import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def bench_training(
    cfg: Config, info, train_set, device, bf16: bool, steps: int, warmup: int, rounds: int = 2
) -> dict:
    """Step time and tokens/s of the baseline and of SchemaBank stage 3 at ``cfg``'s batch size.

    Both models are built first and timed in alternating blocks (``rounds`` each), on the same
    batches in the same order, so that neither gains from running second.
    """
    runs = {}
    for mode, stage in (("baseline", BASELINE), ("schemabank_stage3", STAGES[2])):
        c = dataclasses.replace(
            cfg, experiment=dataclasses.replace(cfg.experiment, mode=mode.split("_")[0])
        )
        tok, base = load_base_model(info, device, weight_dtype(c.model.dtype, device))
        seed_everything(c.experiment.seed)
        model, banks, _ = build_adapter(base, c)
        trainer = Trainer(c, model, banks, tok, train_set, device, bf16)
        trainer.enter_stage(stage)
        trainer.prepare_examples(stage)  # as train_stage does, before the steps
        for _ in range(warmup):
            trainer.train_step(stage, c.training.learning_rate, 1.0)
        runs[mode] = (
            trainer,
            stage,
            {"time": 0.0, "steps": 0, "tokens": 0, "padded": 0, "peak": 0.0},
        )
    per_block = max(1, steps // rounds)
    for _ in range(rounds):
        for trainer, stage, acc in runs.values():
            trainer.enter_stage(stage)
            _sync(device)
            _peak_reset(device)
            t0 = time.perf_counter()
            for _ in range(per_block):
                rec = trainer.train_step(stage, trainer.cfg.training.learning_rate, 1.0)
                acc["tokens"] += rec["tokens"]
                acc["padded"] += rec["padded_tokens"]
            _sync(device)
            acc["time"] += time.perf_counter() - t0
            acc["steps"] += per_block
            acc["peak"] = max(acc["peak"], _peak_gib(device) or 0.0)
    out = {}
    for mode, (trainer, _, acc) in runs.items():
        t = trainer.cfg.training
        out[mode] = {
            "batch_size": t.batch_size,
            "micro_batch_size": t.micro_batch_size or t.batch_size,
            "steps": acc["steps"],
            "step_ms": 1000 * acc["time"] / acc["steps"],
            "tokens_per_s": acc["tokens"] / acc["time"],
            "tokens_per_step": acc["tokens"] / acc["steps"],
            "padding_share": 1 - acc["tokens"] / acc["padded"],
            "peak_memory_gib": acc["peak"] if device.type == "cuda" else None,
        }
    out["stage3_over_baseline_step_time"] = (
        out["schemabank_stage3"]["step_ms"] / out["baseline"]["step_ms"]
    )
    return out


def bench_evaluation(
    cfg: Config, info, device, bf16: bool, data_dir, limit: int | None, checkpoint=None
) -> dict:
    """Time of the zero-shot GSM8K evaluation (with routing) and of both perplexities."""
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        tok, model, banks, _ = load_checkpoint(
            checkpoint, device, weight_dtype(cfg.model.dtype, device)
        )
    else:
        tok, base = load_base_model(info, device, weight_dtype(cfg.model.dtype, device))
        seed_everything(cfg.experiment.seed)
        model, banks, _ = build_adapter(base, cfg)
    model.eval()
    test = load_gsm8k("test", data_dir)[:limit]
    _sync(device)
    _peak_reset(device)
    t0 = time.perf_counter()
    ev = evaluate_gsm8k(
        model,
        tok,
        test,
        [],
        banks,
        cfg.eval.batch_size,
        cfg.eval.max_new_tokens,
        device,
        bf16,
        0,
        decoder=cfg.eval.decoder,
        compile_decoder=cfg.eval.compile_decoder,
    )
    _sync(device)
    t_gsm = time.perf_counter() - t0
    g = ev["gsm8k"]
    out = {
        "gsm8k": {
            "problems": len(test),
            "batch_size": g["batch_size"],
            "time_s": t_gsm,
            "generation_s": g["generation_s"],
            "routing_s": t_gsm - g["generation_s"],
            "generated_tokens": g["generated_tokens"],
            "generated_tokens_per_s": g["generated_tokens"] / g["generation_s"],
            "strict_accuracy": g["strict"]["accuracy"],
            "peak_memory_gib": _peak_gib(device),
        }
    }
    text = load_wikitext(data_dir)
    t0 = time.perf_counter()
    ppl = evaluate_perplexity(
        model,
        tok,
        text,
        cfg.eval.ppl_windows,
        cfg.eval.ppl_max_tokens,
        device,
        bf16,
        lambda: base_only(model, banks),
    )
    _sync(device)
    out["perplexity"] = {
        "time_s": time.perf_counter() - t0,
        "tokens": ppl["tokens"],
        "windows": cfg.eval.ppl_windows,
        "with_base": True,
    }
    return out


def run_bench(
    cfg: Config,
    data_dir=None,
    steps: int = 20,
    warmup: int = 5,
    limit: int | None = None,
    checkpoint=None,
    parts=("train", "eval"),
) -> dict:
    """Measure training throughput (``steps`` timed steps per mode after ``warmup``) and/or
    evaluation speed (generation for ``limit`` problems, perplexity) on this device; ``parts``
    picks which. Returns the figures with the settings and environment they were measured in."""
    device = pick_device(cfg.training.device)
    bf16 = use_bf16(cfg.training.precision, device)
    info = resolve_base_model(cfg.model.base_model)
    result = {
        "environment": environment(device),
        "settings": {
            "config": cfg.experiment.name,
            "base_model": cfg.model.base_model,
            "bf16": bf16,
            "weight_dtype": str(weight_dtype(cfg.model.dtype, device)),
            "train_batch_size": cfg.training.batch_size,
            "group_by_length": cfg.training.group_by_length,
            "max_length": cfg.training.max_length,
            "steps": steps,
            "warmup": warmup,
            "eval_batch_size": cfg.eval.batch_size,
            "max_new_tokens": cfg.eval.max_new_tokens,
            "decoder": cfg.eval.decoder,
            "compile_decoder": cfg.eval.compile_decoder,
            "limit": limit,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "layers": cfg.schemabank.layers,
            "num_schemas": cfg.schemabank.num_schemas,
        },
    }
    if "train" in parts:
        train_set = load_gsm8k("train", data_dir)
        result["training"] = bench_training(cfg, info, train_set, device, bf16, steps, warmup)
    if "eval" in parts:
        result["evaluation"] = bench_evaluation(
            cfg, info, device, bf16, data_dir, limit, checkpoint
        )
    return result


def format_bench(r: dict) -> list[str]:
    """A :func:`run_bench` result as human-readable lines."""
    env = r["environment"]
    lines = [
        f"device {env['device_name']} ({env['device']}), torch {env['torch']}, "
        f"transformers {env['transformers']}, peft {env['peft']}"
    ]
    t = r.get("training")
    if t:
        lines.append(
            f"{'training':28s} {'batch':>6s} {'micro':>6s} {'step ms':>9s} {'tokens/s':>10s} "
            f"{'padding':>8s} {'peak GiB':>9s}"
        )
        for k in ("baseline", "schemabank_stage3"):
            x = t[k]
            mem = f"{x['peak_memory_gib']:.2f}" if x["peak_memory_gib"] is not None else "-"
            lines.append(
                f"  {k:26s} {x['batch_size']:6d} {x['micro_batch_size']:6d} {x['step_ms']:9.1f} "
                f"{x['tokens_per_s']:10.0f} {100 * x['padding_share']:7.1f}% {mem:>9s}"
            )
        lines.append(f"  stage-3 / baseline step time: {t['stage3_over_baseline_step_time']:.3f}")
    e = r.get("evaluation")
    if e:
        g, s = e["gsm8k"], r.get("settings", {})
        lines.append(
            f"gsm8k: {g['problems']} problems in {g['time_s']:.1f} s (generation {g['generation_s']:.1f} s, "
            f"routing {g['routing_s']:.1f} s), {g['generated_tokens_per_s']:.0f} generated tokens/s, "
            f"batch {g['batch_size']}, decoder {s.get('decoder', 'hf')}"
            + (" (compile_decoder)" if s.get("compile_decoder") else "")
        )
        p = e["perplexity"]
        lines.append(
            f"perplexity: windows {p['windows']} on {p['tokens']} tokens, adapter and base, in {p['time_s']:.1f} s"
        )
    return lines

"""Where a GSM8K decode step's time goes, on one batch of the test set (issue 14).

Times one batch of the longest test prompts (``--batch`` rows, as ``evaluate_gsm8k`` orders
them) decoded three ways with the config's adapter (untrained, seeded; speed only, the answers are
not scored): HF ``generate``, the static-cache decoder eager, and the static decoder with its step
captured directly (``capture="graph"``) and through ``torch.compile(mode="reduce-overhead")``
(each: its first batch, which captures or compiles, and a second one); then how many rows' tokens
differ between them; with ``--graph-batches``, the directly captured step also at smaller
batches. Every decoder runs ``--new`` steps (no stop test, EOS ignored), so the ms per step
compare.
Then it profiles ``--profile-steps`` steps of the compiled decoder (the directly captured one with
``--skip-compiled``; ``torch.profiler``) and
prints the entries with the most device time (the kernels of the attention over the cache, the
copies, the matmuls).

    python scripts/profile_decoder.py --config configs/gsm8k/sb_b32_split50.yaml --batch 256

Needs CUDA for the captured decoder; on the CPU it times the eager ones only.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from schemabank.config import load_config
from schemabank.data import load_gsm8k
from schemabank.decode import DEFAULT_ATTENTION, StaticDecoder
from schemabank.evaluation import CACHE_ROUNDING, build_prompts
from schemabank.method.adapter import build_adapter
from schemabank.models import load_base_model, resolve_base_model
from schemabank.runtime import (
    autocast,
    cudagraph_skips,
    pick_device,
    seed_everything,
    use_bf16,
    weight_dtype,
)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--new", type=int, default=256, help="decode steps per batch")
    p.add_argument("--profile-steps", type=int, default=32)
    p.add_argument("--attention", default=None, help="StaticDecoder attention (default: grouped)")
    p.add_argument("--only-compiled", action="store_true", help="skip HF generate and eager")
    p.add_argument(
        "--skip-compiled",
        action="store_true",
        help="leave out the torch.compile decoder (minutes of compilation); the profile is then "
        "the directly captured one's",
    )
    p.add_argument(
        "--graph-batches",
        default="",
        help="comma-separated smaller batch sizes (the batch's first rows) at which to time the "
        "directly captured step too: how its time falls as decoded rows would leave the batch",
    )
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    a = p.parse_args()

    cfg = load_config(a.config)
    device = pick_device(cfg.training.device)
    bf16 = use_bf16(cfg.training.precision, device)
    tok, base = load_base_model(
        resolve_base_model(cfg.model.base_model), device, weight_dtype(cfg.model.dtype, device)
    )
    seed_everything(cfg.experiment.seed)
    model, banks, _ = build_adapter(base, cfg)
    model.eval()
    tok.padding_side = "left"
    prompts = build_prompts(load_gsm8k("test"), [])
    encoded = sorted((tok(q).input_ids for q in prompts), key=len, reverse=True)
    longest = len(encoded[0])
    cache_len = -(-(longest + a.new) // CACHE_ROUNDING) * CACHE_ROUNDING
    batch = tok.pad({"input_ids": encoded[: a.batch]}, return_tensors="pt").to(device)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out: dict = {
        "batch": a.batch,
        "prompt_len": ids.shape[1],
        "cache_len": cache_len,
        "new_tokens": a.new,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    extra = {"attention": a.attention}

    def timed(name, fn):
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(device, bf16):
            n = fn()
        sync(device)
        s = time.perf_counter() - t0
        out[name] = {"s": s, "steps": n, "ms_per_step": 1000 * s / n}
        print(f"{name:>24}: {s:7.2f} s, {n} steps, {1000 * s / n:6.2f} ms a step", flush=True)

    def hf():
        seqs = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=a.new,
            min_new_tokens=a.new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        return seqs.shape[1] - ids.shape[1]

    tokens = {}  # each decoder's new tokens

    def decode(name, dec):
        tokens[name] = dec.decode(ids, mask)
        return tokens[name].shape[1]

    if not a.only_compiled:
        timed("hf_generate", hf)
        eager = StaticDecoder(model, cache_len, a.new, None, tok.pad_token_id, **extra)
        timed("static_eager", lambda: decode("eager", eager))
    out["attention"] = a.attention or DEFAULT_ATTENTION
    if device.type != "cuda":
        print(json.dumps(out, indent=1))
        if a.output:
            with open(a.output, "w") as f:
                json.dump(out, f, indent=1)
        return
    skips = cudagraph_skips()
    graph = StaticDecoder(
        model, cache_len, a.new, None, tok.pad_token_id, compile=True, capture="graph", **extra
    )
    timed("static_graph_first", lambda: decode("graph", graph))
    timed("static_graph", lambda: decode("graph", graph))
    for rows in [int(x) for x in a.graph_batches.split(",") if x]:  # captured anew at each
        timed(f"static_graph_{rows}", lambda r=rows: graph.decode(ids[:r], mask[:r]).shape[1])
    dec = graph  # the decoder profiled below
    if not a.skip_compiled:
        dec = StaticDecoder(
            model,
            cache_len,
            a.new,
            None,
            tok.pad_token_id,
            compile=True,
            capture="compile",
            **extra,
        )
        timed("static_compiled_first", lambda: decode("compiled", dec))
        timed("static_compiled", lambda: decode("compiled", dec))
    out["cudagraph_skips"] = cudagraph_skips() - skips
    print(f"cudagraph skips: {out['cudagraph_skips']}", flush=True)
    for x, y in [("graph", "eager"), ("compiled", "eager"), ("graph", "compiled")]:
        if x in tokens and y in tokens:  # the rows whose new tokens differ
            rows = int((tokens[x] != tokens[y]).any(-1).sum())
            out[f"rows_differ_{x}_{y}"] = rows
            print(f"rows whose tokens differ, {x} and {y}: {rows} of {a.batch}", flush=True)

    from torch.profiler import ProfilerActivity, profile

    dec_steps = a.profile_steps
    with torch.no_grad(), autocast(device, bf16):
        dec.max_new_tokens = dec_steps
        dec.decode(ids, mask)  # warm at the profiled length
        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            dec.decode(ids, mask)
            sync(device)
            wall = time.perf_counter() - t0
    ka = prof.key_averages()
    out["profile"] = {
        "decoder": dec.capture,
        "steps": dec_steps,
        "wall_ms_per_step": 1000 * wall / dec_steps,
    }
    print(f"profiled {dec_steps} steps: {1000 * wall / dec_steps:.2f} ms a step (profiler on)")
    print(ka.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=90))
    if a.output:
        with open(a.output, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

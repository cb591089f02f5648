"""Group a `schemabank bench --profile-steps` profile's kernels (bench_patch.py keeps the top 300)
into kinds and print ms a step for each model: `python3 kernel_kinds.py BENCH.json` (not named kernels.py: transformers imports a package "kernels", and a script's folder comes first on the path)."""

import json
import re
import sys

KINDS = [
    ("flash attention", r"flash"),  # before the matmuls: its names hold "cutlass"
    ("matmul (cuBLAS)", r"nvjet|gemm|cutlass|sm90_xmma|cublas"),
    ("softmax / cross-entropy (eager or fused)", r"SoftMax|softmax|nll_loss"),
    ("inductor fused", r"^triton_"),
    ("copies / fills / casts", r"Memcpy|Memset|copy|fill|FillFunctor|direct_copy"),
    ("optimiser (fused AdamW, foreach)", r"adam|Adam|foreach|multi_tensor"),
    ("reductions / norms (eager)", r"reduce|norm"),
]


def kind(name: str) -> str:
    for label, pattern in KINDS:
        if re.search(pattern, name):
            return label
    return "other"


for path in sys.argv[1:]:
    training = json.load(open(path))["training"]
    for model, row in training.items():
        if not isinstance(row, dict) or "profile" not in row:
            continue
        p = row["profile"]
        sums: dict[str, float] = {}
        for name, ms in p["top_device_ms"]:
            sums[kind(name)] = sums.get(kind(name), 0.0) + ms
        listed = sum(ms for _, ms in p["top_device_ms"])
        print(f"{path} {model}: step {row['step_ms']:.1f} ms, {row['tokens_per_s']:,.0f} tok/s, "
              f"profiled {p['wall_ms']:.1f} ms, GPU busy {p['device_ms']:.1f} ms "
              f"({len(p['top_device_ms'])} kernels listed: {listed:.1f} ms)")
        for label, ms in sorted(sums.items(), key=lambda kv: -kv[1]):
            print(f"  {ms:7.2f} ms  {label}")
        for name, ms in p["top_device_ms"][:15]:
            print(f"    {ms:6.2f}  {name[:110]}")

"""Where the GPU idles in a `trace_patch.py` Chrome trace (a `schemabank bench --profile-steps`
profile): `python3 gaps.py TRACE.json.gz [...]`. The GPU's activities (kernels, copies, fills)
are sorted and merged; each gap between them is put in a kind: inside one launch (both
activities launched by the same host call, e.g. one CUDA graph's kernels), or between launches,
the later activity's launch named (graph, kernel, copy) with the host call and the host
operations that ran during the gap (the main thread's outermost ones). Prints the totals a
step (steps: the number of CUDA-graph launches of the largest graph) and the largest gaps."""

import gzip
import json
import sys
from collections import Counter, defaultdict

GPU = ("kernel", "gpu_memcpy", "gpu_memset")

for path in sys.argv[1:]:
    ev = json.load(gzip.open(path))["traceEvents"]
    gpu = sorted((e for e in ev if e.get("cat") in GPU), key=lambda e: e["ts"])
    runtime = {e["args"].get("correlation"): e for e in ev if e.get("cat") == "cuda_runtime"}
    ops = [e for e in ev if e.get("cat") == "cpu_op"]
    graphs = Counter(
        runtime[e["args"].get("correlation")]["args"].get("correlation")
        for e in gpu
        if runtime.get(e["args"].get("correlation"), {}).get("name", "").endswith("GraphLaunch")
    )
    launches = [e for e in runtime.values() if e["name"].endswith("GraphLaunch")]
    steps = max(1, len(launches))
    kinds = defaultdict(float)
    counts = Counter()
    gaps = []
    end, last = None, None
    for e in gpu:
        start, stop = e["ts"], e["ts"] + e.get("dur", 0)
        if end is not None and start > end:
            gap = start - end
            c0, c1 = last["args"].get("correlation"), e["args"].get("correlation")
            call = runtime.get(c1, {}).get("name", "?")
            kind = "inside one launch" if c0 == c1 else f"between launches, then {call}"
            kinds[kind] += gap
            counts[kind] += 1
            gaps.append((gap, last["name"][:60], e["name"][:60], call, end, start))
        if end is None or stop >= end:
            end, last = stop, e
    busy = sum(e.get("dur", 0) for e in gpu)
    span = (end - gpu[0]["ts"]) if gpu else 0
    print(f"== {path}: {len(gpu)} GPU activities, {steps} graph launches")
    print(f"  per step: span {span / steps / 1000:.2f} ms, busy {busy / steps / 1000:.2f} ms")
    for kind, us in sorted(kinds.items(), key=lambda x: -x[1]):
        print(f"  idle {us / steps / 1000:7.3f} ms a step in {counts[kind] / steps:7.1f} gaps: {kind}")
    sizes = Counter()
    for g in gaps:
        b = "<2us" if g[0] < 2 else "2-5us" if g[0] < 5 else "5-20us" if g[0] < 20 else "20-100us" if g[0] < 100 else "100us-1ms" if g[0] < 1000 else ">1ms"
        sizes[b] += g[0]
    print("  idle by size (ms a step): " + ", ".join(f"{k} {v / steps / 1000:.3f}" for k, v in sizes.items()))
    print("  largest gaps:")
    for gap, a, b, call, t0, t1 in sorted(gaps, reverse=True)[:12]:
        during = [o["name"] for o in ops if o["ts"] < t1 and o["ts"] + o.get("dur", 0) > t0]
        top = Counter(during).most_common(4)
        print(f"   {gap / 1000:7.3f} ms  {a} -> {b} [{call}] host: {top}")

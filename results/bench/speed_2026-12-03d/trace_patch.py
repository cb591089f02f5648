"""`python3 trace_patch.py <schemabank args>`: the schemabank CLI as `../speed_2026-12-03b/
bench_patch.py` runs it (the profile's top 300 kernels), and with TRACE=DIR each profile that
`schemabank bench --profile-steps` takes is also written as a Chrome trace, DIR/<n>.json.gz
(n: 1 for the first model profiled, 2 for the next), for the GPU's timeline step by step.
With PRECOLLATE=1 each batch's `Batches.to_device` (collation on the host, copy to the device)
runs once, at its first use, and its result is reused when the bench replays that batch: the
timed steps then leave out the host's collation and copy (is the host on the step's critical
path?).
An experiment's tool for issue 14's fourteenth session, not part of the package."""

import itertools
import os
import runpy
import sys

import schemabank.study.bench as bench

bench.profile_steps.__defaults__ = (300,)
TRACE = os.environ.get("TRACE")
if TRACE:
    os.makedirs(TRACE, exist_ok=True)
    numbers = itertools.count(1)
    make = bench.profiler

    class Traced:
        def __init__(self, device):
            self.inner = make(device)

        def __enter__(self):
            self.prof = self.inner.__enter__()
            return self.prof

        def __exit__(self, *exc):
            out = self.inner.__exit__(*exc)
            path = os.path.join(TRACE, f"{next(numbers)}.json.gz")
            self.prof.export_chrome_trace(path)
            print(f"trace_patch: {path}", file=sys.stderr)
            return out

    bench.profiler = Traced

if os.environ.get("PRECOLLATE") == "1":
    from schemabank.batching import Batches

    moved_once = Batches.to_device
    memo = {}

    def to_device(self, examples, targets, *args, **kwargs):
        key = (id(self), id(examples), args, tuple(sorted(kwargs.items())))
        if key not in memo:
            memo[key] = (examples, moved_once(self, examples, targets, *args, **kwargs))
        return memo[key][1]  # (the examples kept alive, so that their id is not reused)

    Batches.to_device = to_device
    print("trace_patch: PRECOLLATE", file=sys.stderr)

sys.argv = ["schemabank", *sys.argv[1:]]
runpy.run_module("schemabank", run_name="__main__", alter_sys=True)

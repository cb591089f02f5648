"""Where the main thread's time went in a run sampled by stack_sampler.py (weights: the time to
the next sample). Usage: python stacks_summary.py STACKS.json.gz [FIRST LAST]
Prints the slowest steps, the frames of the new-length steps, and the host time of the steps
FIRST..LAST (default 200..419, stage 2's steady steps), per step, by schemabank frame and by the
innermost frame. A sample's step is the trainer's count of steps done, so it is the log's step
that the emitted line names (the log's step N is timed from its emit to the next one, which
comes after step N + 1 has been queued)."""
import collections
import gzip
import json
import sys

d = json.load(gzip.open(sys.argv[1], "rt"))
first, last = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (200, 419)
S, sm = d["stacks"], d["samples"]
W = [sm[i + 1][0] - sm[i][0] for i in range(len(sm) - 1)] + [d["interval"]]
per = collections.defaultdict(float)
for (_, st, _), w in zip(sm, W):
    per[st] += w
print(f"{len(sm)} samples over {sm[-1][0]:.1f} s; outside train_stage {per[None]:.1f} s")
print("slowest steps (s):", [(k, round(v, 2)) for k, v in sorted(
    ((k, v) for k, v in per.items() if k is not None), key=lambda kv: -kv[1])[:12]])


def top(steps, n, depth):
    agg, tot = collections.Counter(), 0.0
    for (_, st, k), w in zip(sm, W):
        if st in steps:
            tot += w
            agg[" < ".join(reversed(S[k][-depth:]))] += w
    return tot, agg.most_common(n)


PROFILED = {815}  # the end of the --profile-steps window 811:5: torch.profiler's summary
slow = [k for k, v in per.items() if k is not None and k > 50 and v > 2.5 and k not in PROFILED]
tot, rows = top(set(slow), 12, 4)
print(f"\nsteps {sorted(slow)} (stage 2 and 3 steps over 2.5 s, the profiled one left out): {tot:.1f} s, innermost frames:")
for s, w in rows:
    print(f"  {w:6.2f} s  {s[:260]}")
steps = set(range(first, last + 1))
n = len(steps)
by_sb, by_leaf = collections.Counter(), collections.Counter()
total = 0.0
for (_, st, k), w in zip(sm, W):
    if st in steps:
        total += w
        sb = [f.split(":", 1)[1] for f in S[k] if f.startswith("schemabank/")]
        by_sb[" > ".join(sb[-3:])] += w
        by_leaf[S[k][-1].rsplit(":", 1)[0]] += w
print(f"\nsteps {first}..{last}: {1000 * total / n:.1f} ms of host time a step; by schemabank frame:")
for s, w in by_sb.most_common(12):
    print(f"  {1000 * w / n:6.2f} ms  {s}")
print("by innermost frame:")
for s, w in by_leaf.most_common(14):
    print(f"  {1000 * w / n:6.2f} ms  {s}")

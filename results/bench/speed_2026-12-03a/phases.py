"""Where a sampled run's main-thread time went, phase by phase (stack_sampler.py's output).

Usage: python phases.py STACKS.json.gz [--min 0.2] [--top 6]

A sample's phase is the schemabank function that the run's ``_run`` called (``load_base_model``,
``Trainer.__init__``, ``train_stage``, ``evaluate_run``, ...), one level deeper for
``evaluate_run`` and ``run_evaluation`` (GSM8K, routing fit, perplexity), with train_stage split
into each stage's first step (``train_stage first steps``: its compilation, cache loads and
captures) and the rest; before ``_run``, ``imports`` when an import is on the stack, else the
outermost schemabank function. Prints the timeline (consecutive samples of one phase merged,
segments of at least --min seconds), the total per phase, and each large phase's innermost
frames. A sample weighs the time to the next one."""

import argparse
import collections
import gzip
import json

p = argparse.ArgumentParser()
p.add_argument("stacks")
p.add_argument("--min", type=float, default=0.2)
p.add_argument("--top", type=int, default=6)
a = p.parse_args()
d = json.load(gzip.open(a.stacks, "rt"))
S, sm = d["stacks"], d["samples"]
W = [sm[i + 1][0] - sm[i][0] for i in range(len(sm) - 1)] + [d["interval"]]
DEEPER = {"evaluate_run", "run_evaluation"}


def func(frame: str) -> str:
    return frame.split(":")[1]


def phase(stack: list[str], step) -> str:
    sb = [f for f in stack if f.startswith("schemabank/")]
    names = [func(f) for f in sb]
    if "_run" in names:
        i = names.index("_run") + 1
        while i < len(names) and names[i] in DEEPER:
            i += 1
        if i >= len(names):
            return "_run"
        name = names[i]
        if name == "train_stage":
            inner = names[i + 1] if i + 1 < len(names) else ""
            if inner in ("enter_stage", "prepare"):
                return f"train_stage {inner}"
            return "train_stage steps"
        return name
    if any("importlib" in f for f in stack):
        return "imports"
    return names[0] if names else (func(stack[0]) if stack else "?")


labels = [phase(S[k], st) for _, st, k in sm]
# a stage's first step: the samples at the step count a stage starts from (the log's step 1,
# 51, 701 are timed from the stage's start), and every sample until the count moves on
firsts = set()
prev = None
for i, ((_, st, _), lab) in enumerate(zip(sm, labels, strict=True)):
    if lab == "train_stage steps" and st is not None and st != prev:
        firsts.add(st)
    if st is not None:
        prev = st
starts = {min(firsts)} if firsts else set()
# the steps at which a stage began: the count right after enter_stage/prepare samples
for i in range(1, len(sm)):
    if labels[i] == "train_stage steps" and labels[i - 1].startswith("train_stage ") and labels[i - 1] != labels[i]:
        starts.add(sm[i][1])
labels = [
    "train_stage first steps" if lab == "train_stage steps" and st in starts else lab
    for (_, st, _), lab in zip(sm, labels, strict=True)
]

segs = []
for (t, _, _), w, lab in zip(sm, W, labels, strict=True):
    if segs and segs[-1][0] == lab:
        segs[-1][2] += w
    else:
        segs.append([lab, t, w])
total = sum(W)
print(f"{len(sm)} samples over {total:.1f} s (module returned; exit after it not sampled)")
if "return_epoch" in d:
    print(f"start_epoch {d['start_epoch']:.3f} return_epoch {d['return_epoch']:.3f}")
print(f"\ntimeline (segments of at least {a.min} s):")
for lab, t, w in segs:
    if w >= a.min:
        print(f"  {t:7.2f} s  {w:6.2f} s  {lab}")
per = collections.Counter()
for w, lab in zip(W, labels, strict=True):
    per[lab] += w
print("\nper phase:")
for lab, w in per.most_common():
    print(f"  {w:7.2f} s  {lab}")
print(f"\ninnermost frames of the phases over 1 s (top {a.top}):")
for lab, w in per.most_common():
    if w < 1.0 or lab == "train_stage steps":
        continue
    agg = collections.Counter()
    for (_, _, k), ww, ll in zip(sm, W, labels, strict=True):
        if ll == lab:
            st = S[k]
            agg[" < ".join(reversed(st[-3:]))] += ww
    print(f" {lab} ({w:.2f} s):")
    for s, ww in agg.most_common(a.top):
        print(f"   {ww:6.2f} s  {s[:230]}")

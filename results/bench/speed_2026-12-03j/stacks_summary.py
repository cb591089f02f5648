"""Where a warm run's main thread spent its time, from py-spy's collapsed stacks (`py-spy record
-r 100 --nonblocking --subprocesses --idle -f raw`: one line a stack, `frame;frame;... count`,
100 samples a second). Usage: python stacks_summary.py w1.raw.gz

Prints the seconds under each of the run's own call sites (the main thread only: the stacks that
start at `_run_module_as_main`), then inside the training step's phases, what the compiled code's
first calls of each shape cost (Dynamo's tracing and guards, the compiled graphs loaded from the
cache), and the other processes (the compile-worker pool).
"""

import collections
import gzip
import re
import sys

HZ = 100.0


def stacks(path):
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            yield stack.split(";"), int(n)


def short(frame):
    return re.sub(r"\(.*/", "(", frame)


def after(frames, pattern, depth):
    hits = [i for i, f in enumerate(frames) if pattern in f]
    if not hits:
        return None
    i = hits[0]
    return tuple(short(f)[:90] for f in frames[i + 1 : i + 1 + depth])


def table(title, counter, minimum=0.2):
    print(f"\n{title}: {sum(counter.values()) / HZ:.1f} s")
    for key, n in counter.most_common():
        if n / HZ >= minimum:
            print(f"  {n / HZ:6.2f}  {' > '.join(key)}")


def main(path):
    sites, step, warm, others = (collections.Counter() for _ in range(4))
    for frames, n in stacks(path):
        if len(frames) > 1 and frames[1].startswith("_run_module_as_main"):
            sb = [short(f) for f in frames if "schemabank/" in f]
            sb = [f for f in sb if not f.startswith(("<module> (__main__.py", "main (cli.py"))]
            sites[tuple(sb[:4]) or ("(outside schemabank)",)] += n
            k = after(frames, "train_stage (schemabank/training.py:623)", 2)
            if k:
                step[k] += n
            if "training.py:468" in ";".join(frames) or "training.py:474" in ";".join(frames):
                joined = " ".join(frames)
                kind = (
                    "Dynamo: tracing"
                    if "symbolic_convert" in joined and "compile_fx" not in joined
                    else "Dynamo: guards"
                    if "build_guards" in joined
                    else "inductor/AOT: compiled graphs from the cache"
                    if "compile_fx" in joined
                    else "running the step (uncaptured first run, capture)"
                )
                warm[(kind,)] += n
        else:
            others[(frames[1][:60] if len(frames) > 1 else "?",)] += n
    table("main thread, by the run's call sites (first 4 frames in schemabank below cli.main)", sites, 0.3)
    table("Trainer.train_step (training.py:623), by the captured step's lines", step, 0.3)
    table("a new shape's first run and capture (training.py:468 and 474)", warm, 0.1)
    table("other threads and processes (idle included)", others, 20)


if __name__ == "__main__":
    main(sys.argv[1])

"""Per-stage step times of the runs here, from each training log's elapsed_s: it counts from the
stage's start or its last checkpoint (every 100 steps), so a line whose elapsed_s is below the one
before's took that elapsed_s (the checkpoint's own save is in no line). A line's time runs from
the line before to the queueing of the next step. Median, the steps over 0.5 s, the lines' sum."""
import gzip, json, statistics as st, sys
from pathlib import Path

for run in sys.argv[1:]:
    rows = [json.loads(x) for x in gzip.open(Path(run) / "training_log.jsonl.gz", "rt")]
    stages = {}
    for x in rows:
        stages.setdefault(x["stage"], []).append(x)
    print(run)
    for name, xs in stages.items():
        d = [xs[0]["elapsed_s"]] + [
            b["elapsed_s"] - a["elapsed_s"] if b["elapsed_s"] >= a["elapsed_s"] else b["elapsed_s"]
            for a, b in zip(xs, xs[1:])
        ]
        slow = [(x["step"], round(v, 1)) for x, v in zip(xs, d) if v > 0.5]
        print(f"  {name}: {len(d)} steps, median {1000 * st.median(d):.1f} ms, sum "
              f"{sum(d):.1f} s; over 0.5 s: {slow}")

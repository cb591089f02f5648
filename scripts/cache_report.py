"""Why a warm process compiled again: two runs' torch.compile cache logs compared.

Usage: python scripts/cache_report.py FIRST.log SECOND.log

The logs are two processes' output under
``TORCH_LOGS=+torch._inductor.codecache,+torch._functorch._aot_autograd.autograd_cache`` (the
``+``: debug level, which adds each graph's cache-key details), the second started with the
first's ``TORCHINDUCTOR_CACHE_DIR`` (``scripts/speed_study.sh cache-check``). Prints each run's
counts of inductor's FX graph cache and AOTAutograd's cache hits, misses and bypasses (with the
bypass reasons), then every miss of the second run: whether the first run had the same key (the
entry was there; its guards failed or it was not written), or else, against the first run's
graph (of the same cache) closest in its key's parts, the parts that differ (the graph's code as
a diff). Without the ``+`` only the counts and the keys can be compared."""

from __future__ import annotations

import difflib
import re
import sys
from collections import Counter
from pathlib import Path

LINE = re.compile(  # anywhere in a line: a progress bar may come before it
    r"[VIDWE]\d{4} (?P<time>[\d:.]+) (?P<pid>\d+) (?P<file>\S+):(?P<line>\d+)\] "
    r"(?P<frame>\[[^\]]*\]) (?P<msg>.*)$"
)
PART = re.compile(r"^\[(?P<hash>[a-z0-9]{32,64})\] (?P<name>[^:]+): ?(?P<value>.*)$")
EVENTS = (  # (cache, outcome, pattern)
    ("fx", "hit", re.compile(r"fx graph cache hit for key (\S+)")),
    ("fx", "miss", re.compile(r"fx graph cache miss for key (\S+)")),
    ("fx", "bypass", re.compile(r"Bypassing FX Graph Cache because '(.*)'")),
    ("aot", "hit", re.compile(r"AOTAutograd cache hit for key (\S+)")),
    ("aot", "miss", re.compile(r"AOTAutograd cache miss for key (\S+)")),
    ("aot", "bypass", re.compile(r"Bypassing autograd cache due to: (.*)")),
)
DETAILS = re.compile(r"(FX graph|Autograd graph) cache hash details for key (\S+):")


def read(path: Path):
    """(events, details): events in order as (cache, outcome, key or reason, frame); details
    per key: {"cache", "frame", "parts": {name: (hash, value)}}."""
    events, details = [], {}
    block, block_at, last = None, None, None
    for raw in path.read_text(errors="replace").splitlines():
        m = LINE.search(raw)
        if not m:
            continue
        msg, at = m["msg"], (m["time"], m["pid"], m["file"], m["line"])
        if block is not None and at == block_at:
            p = PART.match(msg)
            if p:
                last = p["name"].strip()
                block["parts"][last] = (p["hash"], p["value"])
            elif last is not None:  # a value of several lines (the graph's code)
                h, v = block["parts"][last]
                block["parts"][last] = (h, v + "\n" + msg)
            continue
        block = None
        d = DETAILS.search(msg)
        if d:
            cache = "fx" if d[1] == "FX graph" else "aot"
            block = details[d[2]] = {"cache": cache, "frame": m["frame"], "parts": {}}
            block_at, last = at, None
            continue
        for cache, outcome, pattern in EVENTS:
            e = pattern.search(msg)
            if e:
                events.append((cache, outcome, e[1].strip(), m["frame"]))
                break
    return events, details


def counts(events) -> list[str]:
    c = Counter((cache, outcome) for cache, outcome, _, _ in events)
    out = [
        f"  {cache} {outcome}: {c[cache, outcome]}"
        for cache in ("fx", "aot")
        for outcome in ("hit", "miss", "bypass")
    ]
    reasons = Counter(r[:160] for cache, outcome, r, _ in events if outcome == "bypass")
    out += [f"    bypass x{n}: {r}" for r, n in reasons.most_common()]
    return out


def closest(block: dict, candidates: list[dict]) -> tuple[dict | None, list[str]]:
    """The candidate sharing the most key parts with ``block`` and the names that differ."""
    best, best_diff = None, None
    for c in candidates:
        names = set(block["parts"]) | set(c["parts"])
        diff = sorted(
            n for n in names if block["parts"].get(n, ("",))[0] != c["parts"].get(n, ("",))[0]
        )
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = c, diff
    return best, best_diff or []


def main(first: Path, second: Path, width: int = 300) -> None:
    for path in (first, second):
        if not path.is_file():
            sys.exit(f"cache_report: {path}: no such log")
    runs = {"first": read(first), "second": read(second)}
    for name, (events, _) in runs.items():
        print(f"{name} run ({len(events)} cache events):")
        print("\n".join(counts(events)))
    events1, details1 = runs["first"]
    events2, details2 = runs["second"]
    keys1 = {key for _, _, key, _ in events1}
    misses = [(c, k, f) for c, o, k, f in events2 if o == "miss"]
    print(f"\nsecond run's misses: {len(misses)}")
    for cache, key, frame in misses:
        if key in keys1:
            print(
                f"- {cache} {frame} {key}: the first run had this key (its entry's guards failed or it was not saved)"
            )
            continue
        block = details2.get(key)
        if block is None:
            print(f"- {cache} {frame} {key}: new key, no details logged (run with TORCH_LOGS=+...)")
            continue
        match, diff = closest(block, [b for b in details1.values() if b["cache"] == cache])
        print(
            f"- {cache} {frame} {key}: new key; against the first run's closest graph, {len(diff)} parts differ:"
        )
        for n in diff[:12]:
            a = match["parts"].get(n, ("", "<absent>"))[1] if match else "<none>"
            b = block["parts"].get(n, ("", "<absent>"))[1]
            if "\n" in a or "\n" in b:  # the graph's code: the lines that differ
                lines = difflib.unified_diff(
                    a.splitlines(), b.splitlines(), "first", "second", n=1, lineterm=""
                )
                print(f"    {n}:\n" + "\n".join("      " + x[:width] for x in list(lines)[:40]))
            elif a == b:  # the hashes differ in what the log does not print
                print(f"    {n}: the same text in both logs ({a[:80]}...)")
            else:
                print(f"    {n}\n      first:  {a[:width]}\n      second: {b[:width]}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    main(Path(sys.argv[1]), Path(sys.argv[2]))

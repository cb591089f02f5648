"""Where a training step's time goes: steps run under ``torch.profiler``, summarised per step.

Used by ``schemabank bench --profile-steps N`` (N more steps of each model, after its timed
ones) and by ``schemabank train --profile-steps FIRST:N`` (N steps of the run itself, from global
step FIRST, with everything the run's loop does around them: the log line, the checks), whose
summary goes to the run's ``profile.json``.
"""

from __future__ import annotations

import time
from itertools import pairwise

import torch

# What CUPTI reports among the device's activities that is not work (the host waiting on a full
# launch queue).
OVERHEAD = ("Command Buffer Full",)
# The profiler's host-side calls that launch work on the GPU: one kernel, or one CUDA graph.
KERNEL_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profiler(device: torch.device):
    """A ``torch.profiler.profile`` of the host and, on CUDA, the GPU (not yet started)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=activities)


def prepare_for_cuda_graphs(device: torch.device) -> None:
    """Start and stop the profiler once before any CUDA graph exists: a graph made before the
    profiler's first use and replayed under it may fail (pytorch/pytorch#75504; the same as
    ``torch.profiler._utils._init_for_cuda_graphs``). Nothing off CUDA."""
    if device.type == "cuda":
        with profiler(device):
            pass


# The bounds (µs) of the idle-gap sizes :func:`device_gaps` sums separately: the gaps between
# the kernels of a CUDA graph are about a microsecond; a gap of a millisecond is the host late.
GAP_BOUNDS_US = (5, 50, 1000)


def device_gaps(spans: list[tuple[float, float, str]], steps: int = 1, top: int = 5) -> dict:
    """Where the GPU idled between its first activity and its last, from its activities'
    ``(start_us, end_us, name)`` spans (kernels, copies; overlapping ones merged): per step
    (of ``steps``), the activities, the idle time, and the idle time and number of gaps by size
    (below and above each of :data:`GAP_BOUNDS_US`); and the ``top`` largest gaps of the whole
    profile, each ``[ms, the activity before, the activity after]``."""
    n = max(steps, 1)
    labels = [f"<{GAP_BOUNDS_US[0]}us"]
    labels += [f"{a}-{b}us" for a, b in pairwise(GAP_BOUNDS_US)] + [f">{GAP_BOUNDS_US[-1]}us"]
    idle = dict.fromkeys(labels, 0.0)
    count = dict.fromkeys(labels, 0)
    gaps = []
    end, before = None, None
    for start, stop, name in sorted(spans):
        if end is not None and start > end:
            gap = start - end
            label = labels[sum(gap >= bound for bound in GAP_BOUNDS_US)]
            idle[label] += gap
            count[label] += 1
            gaps.append((gap, before, name))
        if end is None or stop >= end:
            end, before = stop, name
    largest = sorted(gaps, key=lambda g: g[0], reverse=True)[:top]
    return {
        "activities": len(spans) / n,
        "idle_ms": sum(idle.values()) / 1000 / n,
        "idle_ms_by_gap": {k: v / 1000 / n for k, v in idle.items()},
        "gaps_by_size": {k: v / n for k, v in count.items()},
        "largest_gaps": [[gap / 1000, a, b] for gap, a, b in largest],
    }


def summarise(prof, steps: int, wall: float, top: int = 8) -> dict:
    """A finished profile of ``steps`` steps that took ``wall`` seconds, per step: the wall time
    (the profiler's overhead included), the GPU's busy time (its kernels' and copies' time
    summed, ``device_ms``; 0 without CUDA), the kernels and CUDA graphs launched from the host,
    the ``top`` kernels by device time and host operations by host time (ms a step), and on
    CUDA where the GPU idled between its first and last activity (:func:`device_gaps`)."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    # the device's own entries (kernels, copies); an operator's entry repeats its kernels' time
    gpu = [e for e in events if e.device_type == DeviceType.CUDA and e.key not in OVERHEAD]
    host = [e for e in events if e.device_type == DeviceType.CPU]
    n = max(steps, 1)

    def dev_us(e) -> float:
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    def calls(names) -> float:
        return sum(e.count for e in host if e.key in names) / n

    def ranked(entries, key) -> list[list]:
        best = sorted(entries, key=key, reverse=True)[:top]
        return [[e.key, key(e) / 1000 / n] for e in best if key(e) > 0]

    spans = [
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == DeviceType.CUDA and e.name not in OVERHEAD
    ]
    return {
        "steps": steps,
        "wall_ms": 1000 * wall / n,
        "device_ms": sum(dev_us(e) for e in gpu) / 1000 / n,
        "kernel_launches": calls(KERNEL_LAUNCHES),
        "graph_launches": calls(GRAPH_LAUNCHES),
        "top_device_ms": ranked(gpu, dev_us),
        "top_host_ms": ranked(host, lambda e: e.self_cpu_time_total),
        **({"gaps": device_gaps(spans, steps)} if spans else {}),
    }


def summary_line(name: str, p: dict) -> str:
    """One line of a :func:`summarise` result, for the terminal."""
    busy = f" ({100 * p['device_ms'] / p['wall_ms']:.0f}%)" if p["device_ms"] else ""
    idle = ""
    if "gaps" in p:
        g, small = p["gaps"], GAP_BOUNDS_US[0]
        idle = (
            f"; GPU idle {g['idle_ms']:.1f} ms between {g['activities']:.0f} activities "
            f"({g['idle_ms_by_gap'][f'<{small}us']:.1f} ms in gaps under {small} us)"
        )
    return (
        f"{name} profiled over {p['steps']} steps: {p['wall_ms']:.1f} ms a step, GPU busy "
        f"{p['device_ms']:.1f} ms{busy}, {p['kernel_launches']:.0f} kernel and "
        f"{p['graph_launches']:.0f} CUDA-graph launches from the host{idle}"
    )


def parse_window(text: str) -> tuple[int, int]:
    """``FIRST:N`` (``schemabank train --profile-steps``) as ``(FIRST, N)``, both >= 1."""
    first, sep, n = text.partition(":")
    try:
        window = int(first), int(n)
    except ValueError:
        window = None
    if not sep or window is None or min(window) < 1:
        raise ValueError(
            f"--profile-steps {text!r}: expected FIRST:N, two integers >= 1, e.g. 700:5"
        )
    return window


def parse_windows(texts: list[str], total_steps: int) -> list[tuple[int, int]]:
    """Several ``FIRST:N`` windows, in step order; each must end within the run's
    ``total_steps``, and none may overlap another."""
    windows = sorted((parse_window(text), text) for text in texts)
    for (first, n), text in windows:
        if first + n - 1 > total_steps:
            raise ValueError(
                f"--profile-steps {text}: the run has {total_steps} steps (training.total_steps)"
            )
    for ((first, n), text), ((next_first, _), next_text) in pairwise(windows):
        if next_first < first + n:
            raise ValueError(f"--profile-steps {text} and {next_text} overlap")
    return [window for window, _ in windows]


class StepWindow:
    """Profiles a run's global steps ``first`` to ``first + n - 1``: :meth:`before` is called
    with the number of the step about to run, :meth:`after` with the step just run (once the
    loop's work around it is done), :meth:`close` when a stage ends (a window that reaches past
    its stage stops there: ``steps`` says how many were profiled). The device is synchronised
    before the first step and after the last, so ``wall_ms`` also holds the last step's wait."""

    def __init__(self, first: int, n: int, device: torch.device, top: int = 12):
        self.first, self.last, self.device, self.top = first, first + n - 1, device, top
        self._prof = None
        self._t0 = 0.0
        self._steps = 0
        self._stage = None
        self.result: dict | None = None

    def before(self, step: int, stage: str) -> None:
        if step == self.first and self._prof is None and self.result is None:
            sync(self.device)
            self._prof = profiler(self.device)
            self._prof.__enter__()
            self._stage = stage
            self._t0 = time.perf_counter()

    def after(self, step: int) -> None:
        if self._prof is not None:
            self._steps += 1
            if step >= self.last:
                self.close()

    def close(self) -> None:
        if self._prof is None:
            return
        sync(self.device)
        wall = time.perf_counter() - self._t0
        self._prof.__exit__(None, None, None)
        self.result = {
            "first_step": self.first,
            "stage": self._stage,
            **summarise(self._prof, self._steps, wall, self.top),
        }
        self._prof = None

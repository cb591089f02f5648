"""A training step's record, from the device to its log line, without making the GPU wait.

The step's values stay on the device; as the step ends they are packed into one tensor whose
copy to pinned host memory is queued (:func:`start_host_copy`), and the line is written once the
next step has been queued, waiting for that copy alone (:func:`finish_host_copy`, :func:`write`).
A plain ``.item()`` would queue behind the next step's work and leave the GPU idle while the host
prepares the batch after it.
"""

from __future__ import annotations

import torch

from .telemetry import LOG_FIELDS, JsonlLogger
from .tracking import step_values


def pack_values(record: dict) -> tuple[list[tuple[str, int]], torch.Tensor]:
    """The tensors of a step record, flattened into one float32 tensor: ``([(key, numel), ...],
    flat)``, for one copy to the host; :func:`unpack_values` undoes it."""
    keys = [(k, v.numel()) for k, v in record.items() if isinstance(v, torch.Tensor)]
    tensors = [record[k].detach().float().reshape(-1) for k, _ in keys]
    return keys, torch.cat(tensors) if tensors else torch.zeros(0)


def unpack_values(record: dict, keys: list[tuple[str, int]], values: list[float]) -> dict:
    """``record`` with each packed tensor replaced by its value from ``values`` (the packed
    tensor on the host, as a list): a float for a one-element tensor of no dimensions, else a
    list."""
    out, i = dict(record), 0
    for k, n in keys:
        out[k] = values[i] if record[k].dim() == 0 else values[i : i + n]
        i += n
    return out


def start_host_copy(record: dict, device: torch.device) -> dict:
    """Pack the step's device values into one tensor and, on a GPU, start copying it to pinned
    host memory now, with an event marking the copy's end; ``record`` with the copy under
    ``_packed``, for :func:`finish_host_copy`."""
    keys, flat = pack_values(record)
    done = None
    if device.type == "cuda":
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        flat = host.copy_(flat, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
    return {**record, "_packed": (keys, flat, done)}


def finish_host_copy(record: dict) -> dict:
    """The record of :func:`start_host_copy` with plain numbers, once its copy is done (waiting
    for that step only)."""
    keys, flat, done = record.pop("_packed")
    if done is not None:
        done.synchronize()
    return unpack_values(record, keys, flat.tolist())


def write(
    line: dict, seconds: float, elapsed: float, logger: JsonlLogger, trackers: list, bar
) -> None:
    """Complete a step's line with its throughput (``seconds``: the step's wall time) and
    ``elapsed`` time, then write it: to the training log, the trackers and the progress bar."""
    line["tokens_per_s"] = line["tokens"] / max(seconds, 1e-9)
    line["elapsed_s"] = elapsed
    logger.log({k: line.get(k) for k in LOG_FIELDS})
    for tracker in trackers:
        tracker.log(step_values(line), line["step"])
    bar.set_postfix(stage=line["stage"], loss=f"{line['loss']:.3f}")
    bar.update(1)

"""Several processes, one per GPU: data-parallel training and sharded evaluation.

``torchrun --nproc_per_node N -m schemabank train ...`` and ``accelerate launch -m schemabank
train ...`` start N copies of the same command and tell each its place through the environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`session` joins
them into one process group (NCCL on CUDA, gloo on the CPU), one GPU per process.

What the rest of the package does with it:

- training (:class:`schemabank.training.Trainer`): every process draws the same global batch
  (``training.batch_size`` examples, the same seeded data order and tag dropout) and computes
  the forward and backward pass of every ``world_size``-th example of it; each loss is
  normalised by the *global* batch's token counts, so summing the processes' gradients
  (:func:`sum_gradients`: one all-reduce a step, which also carries the loss totals and stop
  requests) gives exactly the gradient one process computes for the whole batch. Every process
  then takes the same optimiser step, so the weights stay identical without ever being sent
  again.
- evaluation: the GSM8K problems and the perplexity batches are shared out (:func:`shard`),
  and the per-problem results gathered back into test-set order (:func:`gather_shards`)
  before any metric is computed, so results are those of one process.
- files and output: only the main process (rank 0) writes the run directory and prints.

With one process (no ``WORLD_SIZE``, or 1) every function here is a no-op or the identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .errors import ConfigError
from .runtime import pick_device


def env_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes"
        ) from None


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0 (also before and after the group
    exists, from the launcher's ``RANK``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def check_batch_size(batch_size: int) -> None:
    """The global batch must split evenly over the processes."""
    n = env_world_size()
    if batch_size % n:
        raise ConfigError(
            f"training.batch_size: {batch_size} examples do not split evenly over {n} processes "
            f"(WORLD_SIZE); use a multiple of {n}"
        )


@contextmanager
def session(device_name: str = "auto") -> Iterator[torch.device]:
    """This process's device, inside the launcher's process group when there is one.

    With ``WORLD_SIZE`` > 1 the group is joined for the block and left after it: NCCL with GPU
    ``LOCAL_RANK`` on CUDA, gloo on the CPU. A group the caller already started is used as is.
    """
    device = pick_device(device_name)
    if device.type == "cuda" and env_world_size() > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA devices; "
                "start at most that many processes per node"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if env_world_size() == 1 or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield device
        dist.barrier()  # leave together: rank 0 may still be writing results
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first():
    """Run the block on the main process first, then on the others (e.g. converting and caching
    a model once)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place (no wait on the host)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_gradients(
    params: list[torch.nn.Parameter], totals: dict[str, torch.Tensor], extra: torch.Tensor
) -> torch.Tensor:
    """Sum ``params``' gradients and the scalar ``totals`` (both in place) and ``extra`` over the
    processes, in one all-reduce of one flat float32 buffer; return the summed ``extra``. A
    parameter without a gradient sends zeros and is left without one."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    keys = sorted(totals)
    flat = torch.cat(
        [g.reshape(-1).float() for g in grads]
        + [torch.stack([totals[k].float() for k in keys]), extra]
    )
    all_reduce_sum(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        if p.grad is not None:
            p.grad.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    for k in keys:
        totals[k] = flat[offset]
        offset += 1
    return flat[offset:]


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Give every process the main process's values of ``params`` (one flat broadcast)."""
    if not active() or not params:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).float() for p in params])
        dist.broadcast(flat, src=0)
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def shard(n: int) -> list[int]:
    """This process's share of ``n`` items: every ``world_size``-th index from its rank (strided,
    so that items sorted by size are shared out evenly)."""
    return list(range(rank(), n, world_size()))


def gather_shards(items: list, n: int) -> list:
    """All ``n`` items, in their original order, on every process, from each process's
    :func:`shard` of them (any picklable objects)."""
    if not active():
        return items
    world = world_size()
    parts: list = [None] * world
    dist.all_gather_object(parts, items)
    out: list = [None] * n
    for r, part in enumerate(parts):
        out[r::world] = part
    return out

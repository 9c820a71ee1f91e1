"""Data-parallel training across processes with ``torch.distributed`` (``torchrun``), rank 0 the writer.

One process per device; every process holds the whole model and trains on its share of each batch; the
gradients are averaged across processes before every optimiser step (an all-reduce), so all processes keep
identical weights, exactly as :class:`torch.nn.parallel.DistributedDataParallel` does, without wrapping the
model (SB3 policies and the reward network keep their types and checkpoints). With equal shares, the
averaged gradient is the gradient of the global batch's mean loss: a run on N processes with per-process
batches of ``B / N`` takes the same steps as one process with batches of ``B``, up to floating-point
summation order, as long as the networks' normalisation does not depend on the batch (batch norm in training
mode computes its statistics per process, as DDP's does by default).

    ctx = init_distributed()          # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU, nccl on CUDA
                                      # (gloo when processes share a GPU)
    ...
    loss.backward(); average_gradients(model.parameters()); optimizer.step()

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing is initialised and every helper is a
no-op for one process.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

#: seconds a collective waits for the other processes before failing (a crashed rank stops the others)
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` processes and the backend (None: one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context() -> DistributedContext:
    """The current process group's context (one process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    return DistributedContext(dist.get_rank(), dist.get_world_size(),
                              int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_backend())


def init_distributed(device: str | torch.device = "auto", backend: str | None = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext:
    """Join the process group ``torchrun`` set up (``WORLD_SIZE`` > 1 in the environment); else one process.

    :param device: the run's device; with CUDA each process takes ``cuda:LOCAL_RANK``, or, when a node runs more
        processes than it has GPUs, ``cuda:(LOCAL_RANK mod the GPU count)`` (processes share the GPUs).
    :param backend: ``None`` picks ``nccl`` for CUDA with one GPU per process and ``gloo`` otherwise (NCCL
        refuses two processes on one GPU).
    :param timeout_s: how long a collective waits for the other processes.
    :raises RuntimeError: ``WORLD_SIZE`` > 1 but torch was built without distributed support.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    if dist.is_initialized():
        return context()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available())
    shared_gpus = False
    if cuda:
        n_gpus = torch.cuda.device_count()
        if n_gpus == 0:
            raise RuntimeError(f"device {device!r} asks for CUDA but this machine has no CUDA device")
        shared_gpus = int(os.environ.get("LOCAL_WORLD_SIZE", str(world))) > n_gpus
        torch.cuda.set_device(local_rank % n_gpus)
    dist.init_process_group(backend or ("nccl" if cuda and not shared_gpus else "gloo"),
                            timeout=datetime.timedelta(seconds=timeout_s))
    return context()


def shutdown_distributed() -> None:
    """Leave the process group (after a barrier) when one was joined; a no-op for one process. A process that
    exits with the group still up can abort in gloo's thread teardown ("terminate called without an active
    exception") while the others are still in their last collective."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over all processes (one flat all-reduce); no-op for one
    process. Parameters without a gradient on this process count as zero gradients."""
    ctx = context()
    if not ctx.enabled:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        mean = flat[offset:offset + p.numel()].view_as(p)
        if p.grad is None:
            p.grad = mean.clone()
        else:
            p.grad.copy_(mean)
        offset += p.numel()


def global_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation of ``x``'s elements over all processes: what one process holding
    every process's ``x`` would compute (one all-reduce of three numbers); ``x.mean(), x.std()`` for one."""
    ctx = context()
    if not ctx.enabled:
        return x.mean(), x.std()
    x = x.detach().double()
    stats = torch.stack([x.sum(), (x * x).sum(), torch.tensor(float(x.numel()), dtype=torch.float64,
                                                              device=x.device)])
    dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    total, squares, n = stats
    mean = total / n
    var = (squares - n * mean * mean) / (n - 1).clamp(min=1)
    return mean.float(), var.clamp(min=0).sqrt().float()


def sync_buffers(module: torch.nn.Module) -> None:
    """Make the buffers (batch-norm running statistics) equal on every process: floating-point ones averaged,
    the others (counters) taken from rank 0. Each process updates them from its own share of the batches;
    syncing before every evaluation keeps the processes' models, and their decisions (early stopping, the
    reward network's checks), identical. No-op for one process."""
    if not context().enabled:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf.data, op=dist.ReduceOp.SUM)
            buf.data /= dist.get_world_size()
        else:
            dist.broadcast(buf.data, src=0)


def barrier() -> None:
    """Wait for every process (no-op for one process)."""
    if context().enabled:
        dist.barrier()


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (picklable; no-op for one process)."""
    if not context().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, to_all: bool = False) -> list[Any] | None:
    """Every process's ``obj`` (picklable), in rank order: on rank 0 only (``None`` on the others) or, with
    ``to_all``, on every process. ``[obj]`` for one process. Every process must call it."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    if to_all:
        out: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(out, obj)
        return out
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


class RankSlice(torch.utils.data.Sampler[int]):
    """This process's share of another sampler's order: positions ``rank, rank + N, ...`` of each pass,
    the pass cut to a multiple of ``N`` so every process takes the same number of steps. Every process must
    draw the same order (same seed). Batches of ``B / N`` on N processes then hold, together, exactly the
    samples of the one-process batches of ``B``."""

    def __init__(self, sampler: Iterable[int], ctx: DistributedContext | None = None) -> None:
        self.sampler, self.ctx = sampler, ctx or context()

    def __len__(self) -> int:
        return len(self.sampler) // self.ctx.world_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        order = order[: len(order) - len(order) % self.ctx.world_size]
        return iter(order[self.ctx.rank::self.ctx.world_size])


def per_process_batch(batch_size: int, ctx: DistributedContext | None = None, what: str = "batch_size") -> int:
    """``batch_size / world_size``.

    :raises ValueError: the global batch does not split evenly (the message names ``what``).
    """
    ctx = ctx or context()
    if batch_size % ctx.world_size:
        raise ValueError(f"{what}={batch_size} must be a multiple of the number of processes ({ctx.world_size})")
    return batch_size // ctx.world_size


__all__ = ["DistributedContext", "RankSlice", "average_gradients", "barrier", "broadcast_object", "context",
           "gather_objects", "global_mean_std", "init_distributed", "per_process_batch", "sync_buffers"]

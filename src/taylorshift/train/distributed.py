"""Process-group helpers for running ``taylorshift train`` under ``torchrun`` (DistributedDataParallel).

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) everything here is a no-op, so the same
training loop serves one process and many. The backend is gloo on CPU and nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistInfo:
    """Join the process group if launched by ``torchrun``; return this process's :class:`DistInfo`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(0, 1, device)
    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, device)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_ranks(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all processes (identity for one process)."""
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size


def max_over_ranks(info: DistInfo, value: int) -> int:
    """The largest ``value`` over all processes (used to agree on a step count)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.long, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def new_groups(info: DistInfo, size: int) -> tuple[object, int, int]:
    """Split the processes into consecutive groups of ``size`` ranks (sequence parallelism): this process's group
    (``torch.distributed.group.WORLD`` when there is one group), the group's index and the number of groups. Every
    process must call it (``new_group`` is collective)."""
    if info.world_size % size:
        raise ValueError(
            f"sequence_parallel ({size}) must divide the number of processes ({info.world_size}); "
            f"launch with torchrun --nproc_per_node a multiple of {size}"
        )
    count = info.world_size // size
    mine = dist.group.WORLD
    if count > 1:
        for g in range(count):
            group = dist.new_group(list(range(g * size, (g + 1) * size)))
            if g == info.rank // size:
                mine = group
    return mine, info.rank // size, count


def sum_gradients(info: DistInfo, params: list[torch.nn.Parameter], divisor: float = 1.0) -> None:
    """Sum every gradient over all processes (one all-reduce of a flat buffer) and divide by ``divisor``; a
    missing gradient counts as zero (a parameter used on some ranks only, such as a CLS token)."""
    if not info.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= divisor
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n

"""Wall-clock timing: warm-up, then the median of repeated measurements."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Calls faster than this are timed in blocks of several calls, so that timer resolution and Python
# overhead of the loop do not dominate.
MIN_BLOCK_SECONDS = 2e-3


@dataclass(frozen=True)
class Timing:
    """Seconds per call: ``median`` (the reported value), ``min``, ``max`` over ``repeats`` blocks of
    ``inner`` calls each."""

    median: float
    min: float
    max: float
    repeats: int
    inner: int


def synchronize(device: str | torch.device = "cpu") -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_call(
    fn: Callable[[], object],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    min_block_seconds: float = MIN_BLOCK_SECONDS,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed blocks; the median per call.

    A call faster than ``min_block_seconds`` (judged from the fastest warm-up call) is repeated ``inner``
    times per block so that each block lasts about that long.

    Args:
        fn: the work, a zero-argument callable.
        repeats: number of timed blocks (>= 1).
        warmup: number of untimed calls first (>= 0; at least one is made to size the blocks).
        device: device to synchronise before reading the clock.
        min_block_seconds: target minimum duration of one timed block.

    Returns:
        A :class:`Timing` in seconds per call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    fastest = math.inf
    for _ in range(max(warmup, 1)):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        fastest = min(fastest, time.perf_counter() - t0)
    inner = 1 if fastest >= min_block_seconds else min(1000, math.ceil(min_block_seconds / max(fastest, 1e-7)))
    samples = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - t0) / inner)
    return Timing(statistics.median(samples), min(samples), max(samples), repeats, inner)

"""Benchmarks of TaylorShift attention: timing, peak memory, sweeps over N, crossovers, plots.

``run_sweep(SweepConfig(...))`` is the library entry point; ``taylorshift bench`` is the command over it.
matplotlib (plots) and tqdm (progress) are imported only when used.
"""

from taylorshift.bench.backends import BACKENDS, BenchBackend, make_workload, naive_softmax_attention
from taylorshift.bench.crossover import Crossing, Crossover, find_crossings, find_crossover
from taylorshift.bench.memory import MemoryMeter, MemoryResult
from taylorshift.bench.sweep import (
    STATUSES,
    Point,
    SweepConfig,
    SweepResult,
    compute_crossovers,
    run_sweep,
    sequence_lengths,
)
from taylorshift.bench.timing import Timing, time_call

__all__ = [
    "BACKENDS",
    "STATUSES",
    "BenchBackend",
    "Crossing",
    "Crossover",
    "MemoryMeter",
    "MemoryResult",
    "Point",
    "SweepConfig",
    "SweepResult",
    "Timing",
    "compute_crossovers",
    "find_crossings",
    "find_crossover",
    "make_workload",
    "naive_softmax_attention",
    "run_sweep",
    "sequence_lengths",
    "time_call",
]

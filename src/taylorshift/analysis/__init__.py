"""Complexity model of TaylorShift attention: FLOPs, memory and crossover points (pure Python)."""

from taylorshift.analysis.complexity import (
    CRITERIA,
    FORMS,
    crossover,
    crossover_exact,
    flops_direct,
    flops_efficient,
    num_features,
    second_order_features,
)

__all__ = [
    "CRITERIA",
    "FORMS",
    "crossover",
    "crossover_exact",
    "flops_direct",
    "flops_efficient",
    "num_features",
    "second_order_features",
]

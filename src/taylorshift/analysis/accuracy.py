"""Statistics of the accuracy comparison (issue #11): paired differences over seeds with a confidence interval,
the verdict read off that interval, and the gate that decides whether a task learned at all.

The comparison is paired: for each seed, TaylorShift and softmax start from the same initial-weights seed and
see the same batches in the same order, so the per-seed difference removes the variation the seed causes in
both. The interval is Student's t over those per-seed differences (``n - 1`` degrees of freedom); with 3 seeds
it is wide (t = 4.30), which is why the verdict can be "inconclusive".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# two-sided 95 % quantiles of Student's t, t_{0.975, df}, df = 1..30 (standard table values)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

VERDICTS = ("within 1 point", "better", "worse", "inconclusive at this size")


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (the normal 1.96 beyond 30)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be a positive int, got {df!r}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; 0 for a single value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("values must not be empty")
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return m, math.sqrt(var)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over paired seeds: mean, sample std, the 95 % t-interval and the number of pairs."""

    mean: float
    std: float
    low: float
    high: float
    n: int


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Mean of ``a[i] - b[i]`` with a 95 % Student-t interval over the pairs (at least 2 pairs).

    Args:
        a, b: the same metric (for example test accuracy in points) of the two models, one entry per seed,
            in the same seed order.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up (one entry per seed), got {len(a)} and {len(b)} entries")
    if len(a) < 2:
        raise ValueError(f"a confidence interval needs at least 2 pairs, got {len(a)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    if not all(math.isfinite(d) for d in diffs):
        raise ValueError(f"differences must be finite, got {diffs}")
    m, s = mean_std(diffs)
    half = t975(len(diffs) - 1) * s / math.sqrt(len(diffs))
    return PairedDifference(m, s, m - half, m + half, len(diffs))


def verdict(diff: PairedDifference, margin: float = 1.0, units: str = "points") -> str:
    """What the interval supports, in the units of the metric (``units``: points of accuracy by default):

    - ``"within 1 point"`` when the whole interval lies inside ``[-margin, margin]``;
    - ``"better"`` / ``"worse"`` when it lies entirely above / below 0 (and is not within the margin);
    - ``"inconclusive at this size"`` otherwise (the interval straddles 0 and reaches past the margin).
    """
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin!r}")
    if -margin <= diff.low and diff.high <= margin:
        return "within 1 point" if margin == 1.0 and units == "points" else f"within {margin:g} {units}"
    if diff.low > 0:
        return "better"
    if diff.high < 0:
        return "worse"
    return "inconclusive at this size"


def learns(accuracies: Sequence[float], majority: float, margin: float = 10.0) -> bool:
    """Whether a model learned the task: its mean accuracy reaches the majority-class rate + ``margin`` (all in
    points). The issue's gate: a task enters the comparison only if both attentions pass it."""
    m, _ = mean_std(accuracies)
    return m >= majority + margin


def majority_rate(labels: Sequence[int]) -> float:
    """Frequency of the most common label, in points (what a constant predictor scores)."""
    if not len(labels):
        raise ValueError("labels must not be empty")
    counts: dict[int, int] = {}
    for y in labels:
        counts[int(y)] = counts.get(int(y), 0) + 1
    return 100.0 * max(counts.values()) / len(labels)

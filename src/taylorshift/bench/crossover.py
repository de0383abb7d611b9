"""Empirical crossover points: where one measured cost curve crosses another.

Between two neighbouring sweep points the curves are taken to be straight lines on log-log axes, so the
log-ratio ``r(N) = log(a(N) / b(N))`` is linear in ``log N`` there and its zero is found in closed form.
A sign change of ``r`` between neighbours is one crossing; a point where ``a == b`` exactly is a crossing
at that point (when the sign differs on its two sides).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Crossing:
    """One crossing at length ``n``; ``direction`` is ``-1`` where ``a`` becomes cheaper than ``b`` as N
    grows (``a/b`` goes from above 1 to below 1), ``+1`` the opposite way."""

    n: float
    direction: int


@dataclass(frozen=True)
class Crossover:
    """Where ``a`` overtakes ``b`` for good, summarised from the crossings of a sweep.

    Attributes:
        n: the last downward crossing after which ``a <= b`` up to the largest N; None if there is none.
        relation: ``"at"`` (``n`` is set), ``"below"`` (``a < b`` already at the smallest N: the crossover
            is below the range), ``"above"`` (``a > b`` at the largest N: above the range) or ``"none"``
            (fewer than two comparable points, or ``a == b`` everywhere).
        n_lo, n_hi: the compared range of N.
        crossings: every crossing found (more than one means a noisy or non-monotone ratio).
    """

    n: float | None
    relation: str
    n_lo: float | None
    n_hi: float | None
    crossings: tuple[Crossing, ...] = ()

    def describe(self) -> str:
        """``"1234"``, ``"< 64"``, ``"> 4096"`` or ``"-"``."""
        if self.relation == "at" and self.n is not None:
            return f"{self.n:.0f}"
        if self.relation == "below":
            return f"< {self.n_lo:.0f}"
        if self.relation == "above":
            return f"> {self.n_hi:.0f}"
        return "-"


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def find_crossings(ns: Sequence[float], a: Sequence[float], b: Sequence[float]) -> list[Crossing]:
    """All points where the curves ``a(N)`` and ``b(N)`` cross, by log-log linear interpolation.

    Args:
        ns: strictly increasing positive lengths.
        a, b: positive costs at ``ns`` (times, bytes), same length as ``ns``.

    Returns:
        The crossings in increasing N.

    Raises:
        ValueError: mismatched lengths, non-increasing ``ns`` or non-positive values.
    """
    if not (len(ns) == len(a) == len(b)):
        raise ValueError(f"ns, a and b must have the same length, got {len(ns)}, {len(a)}, {len(b)}")
    if any(n1 >= n2 for n1, n2 in zip(ns, ns[1:], strict=False)):
        raise ValueError("ns must be strictly increasing")
    if any(x <= 0 for x in (*ns, *a, *b)):
        raise ValueError("ns, a and b must be positive (log-log interpolation)")
    r = [math.log(x) - math.log(y) for x, y in zip(a, b, strict=True)]
    logn = [math.log(n) for n in ns]
    signs = [_sign(x) for x in r]
    out: list[Crossing] = []
    i, m = 0, len(r)
    while i < m:
        if signs[i] == 0:  # a run of exact ties: a crossing at its (geometric) middle if the sign flips
            j = i
            while j + 1 < m and signs[j + 1] == 0:
                j += 1
            before = signs[i - 1] if i > 0 else 0
            after = signs[j + 1] if j + 1 < m else 0
            if before and after and before != after:
                out.append(Crossing(math.exp((logn[i] + logn[j]) / 2), after))
            i = j + 1
            continue
        if i + 1 < m and signs[i] * signs[i + 1] < 0:
            t = r[i] / (r[i] - r[i + 1])
            out.append(Crossing(math.exp(logn[i] + t * (logn[i + 1] - logn[i])), signs[i + 1]))
        i += 1
    return out


def find_crossover(ns: Sequence[float], a: Sequence[float], b: Sequence[float]) -> Crossover:
    """The length above which ``a`` stays at or below ``b``: see :class:`Crossover`.

    Args and errors as :func:`find_crossings`; fewer than two points give ``relation="none"``.
    """
    if len(ns) < 2:
        lo = float(ns[0]) if len(ns) else None
        return Crossover(None, "none", lo, lo)
    crossings = tuple(find_crossings(ns, a, b))
    n_lo, n_hi = float(ns[0]), float(ns[-1])
    signs = [s for s in (_sign(math.log(x) - math.log(y)) for x, y in zip(a, b, strict=True)) if s != 0]
    if not signs:
        return Crossover(None, "none", n_lo, n_hi, crossings)
    if signs[-1] > 0:
        return Crossover(None, "above", n_lo, n_hi, crossings)
    down = [c for c in crossings if c.direction < 0]
    if not down:  # a <= b throughout
        return Crossover(None, "below", n_lo, n_hi, crossings)
    return Crossover(down[-1].n, "at", n_lo, n_hi, crossings)

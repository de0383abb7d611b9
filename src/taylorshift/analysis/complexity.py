"""Analytic cost model of TaylorShift attention (pure Python, no torch).

Counting convention (the paper's): one multiply and one add are two FLOPs; shapes are per head and per
sequence. ``L`` is the number of queries, ``S`` the number of keys, ``d`` the query/key head size and
``dv`` the value head size (``dv = d`` when omitted).

Feature forms of the efficient path:

* ``"full"``: the paper's features ``[q⊠q, q, 1]``: ``F = d² + d + 1`` per token.
* ``"symmetric"``: only the ``d(d+1)/2`` distinct monomials of ``q⊠q``: ``F = d(d+1)/2 + d + 1``.
"""

from __future__ import annotations

import math
from typing import Literal

Form = Literal["full", "symmetric"]
Criterion = Literal["speed", "memory"]

FORMS: tuple[str, ...] = ("full", "symmetric")
CRITERIA: tuple[str, ...] = ("speed", "memory")


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return form


def second_order_features(d: int, form: Form = "full") -> int:
    """Number of second-order features of one head: ``d²`` (full) or ``d(d+1)/2`` (symmetric)."""
    d = _check_positive_int("d", d)
    return d * d if _check_form(form) == "full" else d * (d + 1) // 2


def num_features(d: int, form: Form = "full") -> int:
    """Length ``F`` of the feature vector ``[second-order, first-order, constant]`` of one token."""
    return second_order_features(d, form) + d + 1


def flops_direct(L: int, S: int, d: int, dv: int | None = None) -> int:
    """Forward FLOPs of direct TaylorShift for one head.

    ``2LSd`` for ``QKᵀ``, ``4LS`` for the polynomial (square, scale, two adds), ``2LS`` for the row
    sum and normalisation, ``2LS·dv`` for ``PV``. With ``L = S = N`` and ``dv = d`` this is the
    paper's ``N²(4d + 6)``.
    """
    L, S, d = (_check_positive_int(n, v) for n, v in (("L", L), ("S", S), ("d", d)))
    dv = d if dv is None else _check_positive_int("dv", dv)
    return L * S * (2 * d + 2 * dv + 6)


def flops_efficient(L: int, S: int, d: int, dv: int | None = None, form: Form = "full") -> int:
    """Forward FLOPs of efficient TaylorShift for one head.

    Terms (``F2`` = number of second-order features, ``V' = [V | 1]`` with ``dv + 1`` columns):
    ``(S + L)·F2`` to build ``K⊠K`` and ``Q⊠Q``; ``2(S + L)·F2·(dv+1)`` for ``(K⊠K)ᵀV'`` and its
    product with ``Q⊠Q``; ``2(S + L)·d·(dv+1)`` for ``KᵀV'`` and ``Q(KᵀV')``; ``(S + 5L)(dv+1)`` for
    ``1ᵀV'``, combining the three terms and the final division. With ``L = S = N``, ``dv = d`` and the
    full form this is the paper's ``N(4d³ + 10d² + 10d + 6) = N(4d + 6)(d² + d + 1)``.
    """
    L, S, d = (_check_positive_int(n, v) for n, v in (("L", L), ("S", S), ("d", d)))
    dv = d if dv is None else _check_positive_int("dv", dv)
    f2 = second_order_features(d, form)
    return (S + L) * f2 + 2 * (S + L) * f2 * (dv + 1) + 2 * (S + L) * d * (dv + 1) + (S + 5 * L) * (dv + 1)


def crossover_exact(d: int, criterion: Criterion = "speed") -> float:
    """The sequence length ``N0`` above which efficient beats direct TaylorShift (paper's model, full form).

    * ``"speed"``: ``N(4d + 6) = (4d + 6)(d² + d + 1)``, so ``N0 = d² + d + 1``.
    * ``"memory"``: direct holds ``2N²`` extra entries (logits and weights), efficient
      ``(d+1)²N + d²(d+1)`` (one ``N×d²`` feature tensor, ``N×(d+1)`` and ``N×d`` outputs and the
      ``d²×(d+1)`` state); ``N0`` is the positive root of ``2N² = (d+1)²N + d²(d+1)``.
    """
    d = _check_positive_int("d", d)
    if criterion == "speed":
        return float(d * d + d + 1)
    if criterion == "memory":
        b = (d + 1) ** 2
        return (b + math.sqrt(b * b + 8 * d * d * (d + 1))) / 4
    raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def crossover(d: int, criterion: Criterion = "speed") -> int:
    """``crossover_exact`` rounded to the nearest token: 273 / 158 at d = 16, 1057 / 574 at d = 32,
    4161 / 2174 at d = 64 (speed / memory), the values of the paper's analysis code."""
    return int(round(crossover_exact(d, criterion)))

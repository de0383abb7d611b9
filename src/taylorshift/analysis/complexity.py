"""Analytic cost model of attention: FLOPs, memory and crossover points (pure Python, no torch).

Conventions (the paper's):

* One multiply and one add are two FLOPs; a matmul ``(M×K)·(K×N)`` costs ``2·M·K·N``.
* Costs are **per head and per sequence** unless a function says "layer". ``L`` is the number of queries,
  ``S`` the number of keys, ``d`` the query/key head size and ``dv`` the value head size (``dv = d`` when
  omitted). A layer of width ``D`` has ``h`` heads of size ``d = D/h``; the projections (the same for
  every backend) are not counted.
* Memory counts the **extra tensor entries** held at the peak, not the inputs ``Q, K, V``; multiply by
  the entry size for bytes (:func:`memory_bytes`).

Backends:

* ``"softmax"``: naive softmax attention (``QKᵀ``, softmax, ``PV``), the usual baseline.
* ``"direct"``: direct TaylorShift, ``p(QKᵀ)`` row-normalised, times ``V``: ``O(L·S·d)``.
* ``"efficient"``: efficient TaylorShift through the feature maps ``[x⊠x, x, 1]``: ``O((L+S)·d²·dv)``.

Feature forms of the efficient path:

* ``"full"``: the paper's features ``[q⊠q, q, 1]``: ``F = d² + d + 1`` per token.
* ``"symmetric"``: only the ``d(d+1)/2`` distinct monomials of ``q⊠q``: ``F = d(d+1)/2 + d + 1``
  (the off-diagonal weight 2 is folded into the query features, ``O(d)`` per token, not counted).

Modes: ``"forward"`` (inference) or ``"train"`` (forward + backward). Backward model: every term costs
``BACKWARD_FACTOR = 2`` times its forward FLOPs (exact for a matmul whose two operands both need gradients:
one product of the same size per operand; a rule of thumb for the elementwise terms), so training FLOPs
are ``3×`` forward. Training memory counts what the forward pass stores for backward plus the gradients
alive at the busiest backward step (see :func:`memory_terms`).

Two FLOP counts are kept apart: :func:`flops` is the paper's full count (matmuls and elementwise work,
term by term, see :func:`flop_terms`); :func:`matmul_flops` counts only the matrix products of this
library's implementation, which is what ``torch.utils.flop_counter.FlopCounterMode`` measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Backend = Literal["softmax", "direct", "efficient"]
Baseline = Literal["direct", "softmax"]
Form = Literal["full", "symmetric"]
Mode = Literal["forward", "train"]
Criterion = Literal["speed", "memory"]

BACKENDS: tuple[str, ...] = ("softmax", "direct", "efficient")
BASELINES: tuple[str, ...] = ("direct", "softmax")
FORMS: tuple[str, ...] = ("full", "symmetric")
MODES: tuple[str, ...] = ("forward", "train")
CRITERIA: tuple[str, ...] = ("speed", "memory")

#: Backward FLOPs of every term, as a multiple of its forward FLOPs.
BACKWARD_FACTOR = 2


@dataclass(frozen=True)
class Term:
    """One named contribution to a cost.

    Attributes:
        name: what is computed or held, e.g. ``"Q Kᵀ"``.
        kind: FLOP terms: ``"matmul"`` or ``"elementwise"``; memory terms: ``"activation"`` (made by the
            forward pass) or ``"gradient"`` (made by the backward pass).
        value: FLOPs (forward) or tensor entries.
    """

    name: str
    kind: str
    value: int


# --------------------------------------------------------------------------------------------------------
# validation


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_form(form: object) -> str:
    return _check_choice("form", form, FORMS)


def _check_dims(L: object, S: object, d: object, dv: object) -> tuple[int, int, int, int]:
    L, S, d = (_check_positive_int(n, v) for n, v in (("L", L), ("S", S), ("d", d)))
    dv = d if dv is None else _check_positive_int("dv", dv)
    return L, S, d, dv


# --------------------------------------------------------------------------------------------------------
# features


def second_order_features(d: int, form: Form = "full") -> int:
    """Number of second-order features of one head.

    Args:
        d: query/key head size.
        form: ``"full"`` (all ``d²`` products ``x_i x_j``) or ``"symmetric"`` (the ``d(d+1)/2`` distinct
            ones, ``i <= j``).

    Returns:
        ``d²`` or ``d(d+1)/2``.
    """
    d = _check_positive_int("d", d)
    return d * d if _check_form(form) == "full" else d * (d + 1) // 2


def num_features(d: int, form: Form = "full") -> int:
    """Length ``F`` of the feature vector ``[second-order, first-order, constant]`` of one token.

    Args:
        d: query/key head size.
        form: ``"full"`` or ``"symmetric"``.

    Returns:
        ``d² + d + 1`` (full) or ``d(d+1)/2 + d + 1 = (d+1)(d+2)/2`` (symmetric).
    """
    return second_order_features(d, form) + d + 1


# --------------------------------------------------------------------------------------------------------
# FLOPs


def flop_terms(
    backend: Backend, L: int, S: int, d: int, dv: int | None = None, *, form: Form = "full"
) -> tuple[Term, ...]:
    """The paper's forward FLOP count of one head, term by term.

    Args:
        backend: ``"softmax"``, ``"direct"`` or ``"efficient"``.
        L: number of queries.
        S: number of keys.
        d: query/key head size.
        dv: value head size (default ``d``).
        form: feature form of ``"efficient"`` (``"full"`` or ``"symmetric"``); validated but unused by the
            other backends.

    Returns:
        The terms; their values sum to :func:`flops` in ``"forward"`` mode. ``F2`` below is
        :func:`second_order_features` and ``V' = [V | 1]`` has ``dv + 1`` columns.

        * softmax: ``QKᵀ`` ``2LSd``; max, subtract, exp, sum, divide ``5LS`` (exp counted as one FLOP);
          ``PV`` ``2LS·dv``.
        * direct: ``QKᵀ`` ``2LSd``; ``p(s) = (a s + b) s + c`` ``4LS``; row sum and division ``2LS``;
          ``PV`` ``2LS·dv``.
        * efficient: ``K⊠K`` ``S·F2`` and ``Q⊠Q`` ``L·F2``; ``(K⊠K)ᵀV'`` ``2S·F2·(dv+1)`` and its product
          with ``Q⊠Q`` ``2L·F2·(dv+1)``; ``KᵀV'`` ``2S·d·(dv+1)`` and ``Q(KᵀV')`` ``2L·d·(dv+1)``;
          ``1ᵀV'`` ``S·(dv+1)``; scaling by ``a`` and ``b``, two adds and the division ``5L·(dv+1)``.

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1, or an unknown ``backend`` or ``form``.
    """
    backend = _check_choice("backend", backend, BACKENDS)
    L, S, d, dv = _check_dims(L, S, d, dv)
    f2 = second_order_features(d, form)
    if backend == "softmax":
        return (
            Term("Q Kᵀ", "matmul", 2 * L * S * d),
            Term("softmax: max, subtract, exp, sum, divide", "elementwise", 5 * L * S),
            Term("P V", "matmul", 2 * L * S * dv),
        )
    if backend == "direct":
        return (
            Term("Q Kᵀ", "matmul", 2 * L * S * d),
            Term("p(s) = (a·s + b)·s + c", "elementwise", 4 * L * S),
            Term("row sum and division", "elementwise", 2 * L * S),
            Term("P V", "matmul", 2 * L * S * dv),
        )
    w = dv + 1
    return (
        Term("K⊠K", "elementwise", S * f2),
        Term("Q⊠Q", "elementwise", L * f2),
        Term("(K⊠K)ᵀ V'", "matmul", 2 * S * f2 * w),
        Term("(Q⊠Q) · [(K⊠K)ᵀ V']", "matmul", 2 * L * f2 * w),
        Term("Kᵀ V'", "matmul", 2 * S * d * w),
        Term("Q · [Kᵀ V']", "matmul", 2 * L * d * w),
        Term("1ᵀ V'", "elementwise", S * w),
        Term("scale by a and b, add the three terms, divide", "elementwise", 5 * L * w),
    )


def _mode_factor(mode: object) -> int:
    return 1 + BACKWARD_FACTOR if _check_choice("mode", mode, MODES) == "train" else 1


def flops(
    backend: Backend,
    L: int,
    S: int,
    d: int,
    dv: int | None = None,
    *,
    form: Form = "full",
    mode: Mode = "forward",
) -> int:
    """The paper's full FLOP count of one head (matmuls and elementwise work, see :func:`flop_terms`).

    With ``L = S = N`` and ``dv = d``: direct ``N²(4d + 6)``, efficient ``N(4d + 6)·F`` (full form:
    ``N(4d³ + 10d² + 10d + 6)``), softmax ``N²(4d + 5)``.

    Args:
        backend: ``"softmax"``, ``"direct"`` or ``"efficient"``.
        L: number of queries.
        S: number of keys.
        d: query/key head size.
        dv: value head size (default ``d``).
        form: feature form of ``"efficient"``: ``"full"`` or ``"symmetric"``.
        mode: ``"forward"``, or ``"train"`` for forward + backward (``1 + BACKWARD_FACTOR = 3`` times).

    Returns:
        FLOPs.

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1, or an unknown ``backend``, ``form`` or ``mode``.
    """
    factor = _mode_factor(mode)
    return factor * sum(t.value for t in flop_terms(backend, L, S, d, dv, form=form))


def matmul_flops(
    backend: Backend,
    L: int,
    S: int,
    d: int,
    dv: int | None = None,
    *,
    form: Form = "full",
    mode: Mode = "forward",
    features: int | None = None,
) -> int:
    """Matmul FLOPs of this library's implementation of one head (what ``FlopCounterMode`` counts).

    * softmax: ``QKᵀ`` and ``PV``: ``2LS·d + 2LS·dv``. Direct (the completed square,
      :mod:`taylorshift.ops.direct`): ``[Q̃ | m][K | 1]ᵀ`` and ``W [V | 1]``: ``2LS·(d + 1) + 2LS·(dv + 1)``.
    * efficient: one feature map ``φ(x) = [second-order, x, 1]`` of length ``F`` (:func:`num_features`),
      the state ``φ(K)ᵀV'`` and the readout ``φ(Q̃)·state``: ``2S·F·(dv+1) + 2L·F·(dv+1)``. The constant
      feature makes this ``2(L+S)(dv+1)`` more than the paper's matmul terms. The library runs the
      ``"symmetric"`` form by default; ``"full"`` is the paper's.

    In ``"train"`` mode every matmul is also run twice in backward (one product per operand; all of
    ``Q, K, V`` are assumed to need gradients), so the count triples; the direct kernel's backward also
    recomputes ``QKᵀ`` block by block instead of storing it (``+ 2LS·d``).

    Args:
        backend: ``"softmax"``, ``"direct"`` or ``"efficient"``.
        L: number of queries.
        S: number of keys.
        d: query/key head size.
        dv: value head size (default ``d``).
        form: ``"full"`` or ``"symmetric"`` (efficient only).
        mode: ``"forward"`` or ``"train"``.
        features: the ``F`` the kernel actually streams, when its layout differs from :func:`num_features`
            (the non-causal kernel builds the symmetric features in row blocks, about ``1/8`` more:
            ``taylorshift.ops.efficient.kernel_features``); default ``num_features(d, form)``.

    Returns:
        FLOPs of the matrix products.

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1, or an unknown ``backend``, ``form`` or ``mode``.
    """
    backend = _check_choice("backend", backend, BACKENDS)
    L, S, d, dv = _check_dims(L, S, d, dv)
    F = num_features(d, form) if features is None else features
    if isinstance(F, bool) or not isinstance(F, int) or F < num_features(d, form):
        raise ValueError(f"features must be an int >= num_features(d, form) = {num_features(d, form)}, got {F!r}")
    factor = _mode_factor(mode)
    if backend == "efficient":
        return factor * 2 * (S + L) * F * (dv + 1)
    recompute = 2 * L * S * d if (backend == "direct" and mode == "train") else 0
    # direct: the extra column of [Q̃ | m]·[K | 1] and of [V | 1] in the forward; in training also the backward's
    # recomputed [Q̃ | m]·[K | 1] column
    columns = (4 if mode == "forward" else 6) * L * S if backend == "direct" else 0
    return factor * 2 * L * S * (d + dv) + recompute + columns


def flops_direct(L: int, S: int, d: int, dv: int | None = None) -> int:
    """Forward FLOPs of direct TaylorShift for one head: ``L·S·(2d + 2dv + 6)`` (see :func:`flop_terms`).

    With ``L = S = N`` and ``dv = d`` this is the paper's ``N²(4d + 6)``.
    """
    return flops("direct", L, S, d, dv)


def flops_efficient(L: int, S: int, d: int, dv: int | None = None, form: Form = "full") -> int:
    """Forward FLOPs of efficient TaylorShift for one head (see :func:`flop_terms`).

    ``(S + L)·F2 + 2(S + L)·(F2 + d)·(dv+1) + (S + 5L)·(dv+1)``; with ``L = S = N``, ``dv = d`` and the
    full form this is the paper's ``N(4d³ + 10d² + 10d + 6) = N(4d + 6)(d² + d + 1)``.
    """
    return flops("efficient", L, S, d, dv, form=form)


# --------------------------------------------------------------------------------------------------------
# memory


def _memory_phases(backend: str, L: int, S: int, d: int, dv: int, form: str, mode: str) -> list[tuple[Term, ...]]:
    """Candidate peaks: the tensors alive at each step where the live set is largest."""
    act, grad = "activation", "gradient"
    LS = L * S
    if backend in ("softmax", "direct"):
        forward = (Term("logits Q Kᵀ", act, LS), Term("weights", act, LS))
        if mode == "forward":
            return [forward]
        if backend == "softmax":
            # softmax backward needs only its output; the QKᵀ backward needs only Q and K
            return [forward, (Term("weights (saved)", act, LS), Term("∂weights", grad, LS), Term("∂logits", grad, LS))]
        # p'(s) needs the logits and the PV backward the weights; the division acts on the L×dv output
        return [
            forward,
            (Term("logits (saved)", act, LS), Term("weights (saved)", act, LS), Term("∂weights", grad, LS)),
            (Term("logits (saved)", act, LS), Term("∂weights", grad, LS), Term("∂logits", grad, LS)),
        ]
    f2 = second_order_features(d, form)
    w = dv + 1
    key_feat = Term("key features K⊠K", act, S * f2)
    values = Term("V' = [V | 1]", act, S * w)
    state = Term("state (K⊠K)ᵀ V'", act, f2 * w)
    query_feat = Term("query features Q⊠Q", act, L * f2)
    y_aug = Term("Y' (numerator | denominator)", act, L * w)
    out = Term("output Y", act, L * dv)
    if mode == "forward":
        # the first-order (d×(dv+1)) and constant states are O(d·dv) and left out, as in the paper
        return [(key_feat, values, state), (query_feat, state, y_aug, out)]
    return [
        (key_feat, values, query_feat, state, y_aug, out),  # end of forward: everything saved
        (  # backward of the readout (Q⊠Q)·state: Y' is already released
            key_feat, values, query_feat, state, out,
            Term("∂Y'", grad, L * w), Term("∂query features", grad, L * f2), Term("∂state", grad, f2 * w),
        ),
        (  # backward of the state (K⊠K)ᵀV'
            key_feat, values, out,
            Term("∂state", grad, f2 * w), Term("∂key features", grad, S * f2), Term("∂V'", grad, S * w),
        ),
    ]  # fmt: skip


def memory_terms(
    backend: Backend,
    L: int,
    S: int,
    d: int,
    dv: int | None = None,
    *,
    form: Form = "full",
    mode: Mode = "forward",
) -> tuple[Term, ...]:
    """The tensors alive at the memory peak of one head (extra entries, inputs ``Q, K, V`` excluded).

    Forward (the paper's model):

    * softmax, direct: logits and weights, ``2LS``.
    * efficient: the larger of the key phase (``K⊠K``, ``V'``, state) and the query phase (``Q⊠Q``, state,
      ``Y'``, output ``Y``). With ``L = S = N``, ``dv = d``, full form: ``(d+1)²N + d²(d+1)``. (The
      paper counts the output on the efficient side only; it is ``N·d``, a ``1/d`` effect.)

    Train: what the forward pass stores for backward plus the gradients alive at the busiest backward step.

    * softmax: stores the weights (its backward needs only its output); peak weights, ``∂weights``,
      ``∂logits``: ``3LS``.
    * direct: stores logits (for ``p'(s)``) and weights (for ``PV``); peak ``3LS`` (two of them and one
      gradient at every backward step).
    * efficient: stores ``K⊠K``, ``V'``, ``Q⊠Q``, the state, ``Y'`` and ``Y``; peak in the readout's
      backward with ``∂Y'``, ``∂(Q⊠Q)`` and ``∂state``. With ``L = S = N``, ``dv = d``, full form:
      ``N(3d² + 3d + 2) + 2d²(d+1)``.

    Args:
        backend: ``"softmax"``, ``"direct"`` or ``"efficient"``.
        L: number of queries.
        S: number of keys.
        d: query/key head size.
        dv: value head size (default ``d``).
        form: ``"full"`` or ``"symmetric"`` (efficient only).
        mode: ``"forward"`` or ``"train"``.

    Returns:
        The terms of the peak; their values sum to :func:`memory_entries`.

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1, or an unknown ``backend``, ``form`` or ``mode``.
    """
    backend = _check_choice("backend", backend, BACKENDS)
    L, S, d, dv = _check_dims(L, S, d, dv)
    form = _check_form(form)
    mode = _check_choice("mode", mode, MODES)
    phases = _memory_phases(backend, L, S, d, dv, form, mode)
    return max(phases, key=lambda phase: sum(t.value for t in phase))


def memory_entries(
    backend: Backend,
    L: int,
    S: int,
    d: int,
    dv: int | None = None,
    *,
    form: Form = "full",
    mode: Mode = "forward",
) -> int:
    """Extra tensor entries held at the peak by one head (see :func:`memory_terms` for the model).

    Args:
        backend: ``"softmax"``, ``"direct"`` or ``"efficient"``.
        L: number of queries.
        S: number of keys.
        d: query/key head size.
        dv: value head size (default ``d``).
        form: ``"full"`` or ``"symmetric"`` (efficient only).
        mode: ``"forward"`` or ``"train"``.

    Returns:
        Number of entries; with ``L = S = N``, ``dv = d``: direct ``2N²``, efficient (full)
        ``(d+1)²N + d²(d+1)`` in forward mode.
    """
    return sum(t.value for t in memory_terms(backend, L, S, d, dv, form=form, mode=mode))


def memory_bytes(
    backend: Backend,
    L: int,
    S: int,
    d: int,
    dv: int | None = None,
    *,
    form: Form = "full",
    mode: Mode = "forward",
    bytes_per_entry: int = 4,
) -> int:
    """:func:`memory_entries` times the entry size.

    Args:
        backend: ``"softmax"``, ``"direct"`` or ``"efficient"``.
        L: number of queries.
        S: number of keys.
        d: query/key head size.
        dv: value head size (default ``d``).
        form: ``"full"`` or ``"symmetric"`` (efficient only).
        mode: ``"forward"`` or ``"train"``.
        bytes_per_entry: size of one entry (4 for float32, 2 for float16/bfloat16, 8 for float64).

    Returns:
        Bytes.
    """
    size = _check_positive_int("bytes_per_entry", bytes_per_entry)
    return size * memory_entries(backend, L, S, d, dv, form=form, mode=mode)


# --------------------------------------------------------------------------------------------------------
# crossover


def _cost_function(criterion: object, form: object, mode: object) -> Callable[[str, int, int, int], int]:
    criterion = _check_choice("criterion", criterion, CRITERIA)
    form = _check_form(form)
    mode = _check_choice("mode", mode, MODES)
    model = flops if criterion == "speed" else memory_entries

    def cost(backend: str, N: int, d: int, dv: int) -> int:
        return model(backend, N, N, d, dv, form=form, mode=mode)

    return cost


def _positive_root(diff: Callable[[int], int]) -> float:
    """Positive root of ``diff(N) = A N² + B N + C`` (an exact integer quadratic, read off at N = 1, 2, 3)."""
    c1, c2, c3 = diff(1), diff(2), diff(3)
    A2 = c3 - 2 * c2 + c1  # 2A
    B2 = 2 * (c2 - c1) - 3 * A2  # 2B
    C2 = 2 * c1 - A2 - B2  # 2C
    if 2 * diff(4) != 16 * A2 + 4 * B2 + C2 or A2 <= 0 or C2 > 0:
        raise RuntimeError("internal error: baseline minus efficient cost is not A·N² + B·N + C with A > 0, C <= 0")
    g = math.gcd(A2, B2, C2)
    A, B, C = A2 // g, B2 // g, C2 // g
    disc = B * B - 4 * A * C
    root = math.isqrt(disc)
    sqrt_disc: float = root if root * root == disc else math.sqrt(disc)
    return (-B + sqrt_disc) / (2 * A)


def crossover_exact(
    d: int,
    criterion: Criterion = "speed",
    *,
    form: Form = "full",
    mode: Mode = "forward",
    dv: int | None = None,
    baseline: Baseline = "direct",
) -> float:
    """The sequence length ``N0 = L = S`` above which efficient TaylorShift is cheaper than the baseline.

    The baseline's cost minus the efficient cost is ``A N² + B N + C`` with ``A > 0`` and ``C <= 0``; ``N0``
    is its positive root. Defaults are the paper's model (full form, forward, ``dv = d``, direct baseline):

    * ``"speed"``: ``N²(4d + 6) = N(4d + 6)(d² + d + 1)``, so ``N0 = d² + d + 1``; for any form and mode
      (with ``dv = d``) ``N0 = F`` (:func:`num_features`), since every term triples in training.
    * ``"memory"``: ``2N² = (d+1)²N + d²(d+1)``; in training ``3N² = N(3d² + 3d + 2) + 2d²(d+1)``.

    Args:
        d: query/key head size.
        criterion: ``"speed"`` (FLOPs, :func:`flops`) or ``"memory"`` (:func:`memory_entries`).
        form: ``"full"`` or ``"symmetric"``.
        mode: ``"forward"`` or ``"train"``.
        dv: value head size (default ``d``).
        baseline: ``"direct"`` (direct TaylorShift, the paper's comparison) or ``"softmax"``.

    Returns:
        ``N0`` as a float.

    Raises:
        TypeError: ``d`` or ``dv`` not an int.
        ValueError: ``d`` or ``dv`` below 1, or an unknown ``criterion``, ``form``, ``mode`` or ``baseline``.
    """
    d = _check_positive_int("d", d)
    dv = d if dv is None else _check_positive_int("dv", dv)
    baseline = _check_choice("baseline", baseline, BASELINES)
    cost = _cost_function(criterion, form, mode)
    return _positive_root(lambda N: cost(baseline, N, d, dv) - cost("efficient", N, d, dv))


def crossover(
    d: int,
    criterion: Criterion = "speed",
    *,
    form: Form = "full",
    mode: Mode = "forward",
    dv: int | None = None,
    baseline: Baseline = "direct",
) -> int:
    """:func:`crossover_exact` rounded to the nearest token.

    Paper model (defaults): 273 / 158 at d = 16, 1057 / 574 at d = 32, 4161 / 2174 at d = 64
    (speed / memory), the values of the paper's analysis code.
    """
    return int(round(crossover_exact(d, criterion, form=form, mode=mode, dv=dv, baseline=baseline)))


def cost_ratio(
    N: int,
    d: int,
    criterion: Criterion = "speed",
    *,
    form: Form = "full",
    mode: Mode = "forward",
    dv: int | None = None,
    baseline: Baseline = "direct",
) -> float:
    """Cost of efficient TaylorShift divided by the baseline's at ``L = S = N`` (below 1: efficient wins).

    Args:
        N: sequence length (queries and keys).
        d: query/key head size.
        criterion: ``"speed"`` (FLOPs) or ``"memory"`` (entries).
        form: ``"full"`` or ``"symmetric"``.
        mode: ``"forward"`` or ``"train"``.
        dv: value head size (default ``d``).
        baseline: ``"direct"`` or ``"softmax"``.

    Returns:
        The ratio; for speed with ``dv = d`` it is exactly ``N0 / N``.
    """
    N = _check_positive_int("N", N)
    d = _check_positive_int("d", d)
    dv = d if dv is None else _check_positive_int("dv", dv)
    baseline = _check_choice("baseline", baseline, BASELINES)
    cost = _cost_function(criterion, form, mode)
    return cost("efficient", N, d, dv) / cost(baseline, N, d, dv)


# --------------------------------------------------------------------------------------------------------
# multi-head view


@dataclass(frozen=True)
class HeadSplit:
    """Per-layer costs of direct and efficient TaylorShift for ``heads`` heads of size ``d`` at ``L = S = n``.

    Attributes:
        d: head size (queries, keys and values).
        heads: number of heads.
        width: layer width ``heads · d``.
        n: sequence length of the cost columns.
        form: feature form of the efficient path.
        mode: ``"forward"`` or ``"train"``.
        n0_speed: FLOP crossover (per head and per layer alike).
        n0_memory: memory crossover.
        flops_direct: direct FLOPs of the layer at ``n``.
        flops_efficient: efficient FLOPs of the layer at ``n``.
        memory_direct: direct extra entries of the layer at ``n``.
        memory_efficient: efficient extra entries of the layer at ``n``.
    """

    d: int
    heads: int
    width: int
    n: int
    form: str
    mode: str
    n0_speed: float
    n0_memory: float
    flops_direct: int
    flops_efficient: int
    memory_direct: int
    memory_efficient: int

    @property
    def flop_ratio(self) -> float:
        """Efficient over direct FLOPs at ``n``."""
        return self.flops_efficient / self.flops_direct

    @property
    def memory_ratio(self) -> float:
        """Efficient over direct memory at ``n``."""
        return self.memory_efficient / self.memory_direct


def head_split(d: int, heads: int = 1, *, n: int = 4096, form: Form = "full", mode: Mode = "forward") -> HeadSplit:
    """Costs of one attention layer of ``heads`` heads of size ``d`` (every head costs the same).

    Args:
        d: head size.
        heads: number of heads.
        n: sequence length for the cost columns.
        form: ``"full"`` or ``"symmetric"``.
        mode: ``"forward"`` or ``"train"``.

    Returns:
        A :class:`HeadSplit`.

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1, or an unknown ``form`` or ``mode``.
    """
    d = _check_positive_int("d", d)
    heads = _check_positive_int("heads", heads)
    n = _check_positive_int("n", n)

    def layer(model: Callable[..., int], backend: str) -> int:
        return heads * model(backend, n, n, d, form=form, mode=mode)

    return HeadSplit(
        d=d,
        heads=heads,
        width=heads * d,
        n=n,
        form=_check_form(form),
        mode=_check_choice("mode", mode, MODES),
        n0_speed=crossover_exact(d, "speed", form=form, mode=mode),
        n0_memory=crossover_exact(d, "memory", form=form, mode=mode),
        flops_direct=layer(flops, "direct"),
        flops_efficient=layer(flops, "efficient"),
        memory_direct=layer(memory_entries, "direct"),
        memory_efficient=layer(memory_entries, "efficient"),
    )


def multihead_table(
    width: int,
    heads: tuple[int, ...] | list[int] = (1, 2, 4, 8, 16),
    *,
    n: int = 4096,
    form: Form = "full",
    mode: Mode = "forward",
) -> list[HeadSplit]:
    """A layer of fixed width ``D`` split into ``h`` heads of size ``d = D/h``, for each ``h``.

    Direct costs ``h·N²(4d + 6) = N²(4D + 6h)`` per layer, nearly independent of ``h``; efficient costs
    ``h·N(4d + 6)(d² + d + 1) ≈ 4N·D³/h²``; so ``N0 = (D/h)² + D/h + 1`` falls like ``(D/h)²``: more,
    smaller heads make the linear form pay off sooner.

    Args:
        width: layer width ``D``.
        heads: head counts, each dividing ``width``.
        n: sequence length for the cost columns.
        form: ``"full"`` or ``"symmetric"``.
        mode: ``"forward"`` or ``"train"``.

    Returns:
        One :class:`HeadSplit` per head count, in the given order.

    Raises:
        TypeError: ``width`` or a head count not an int, or ``heads`` not a sequence.
        ValueError: a size below 1, a head count that does not divide ``width``, an empty ``heads``.
    """
    width = _check_positive_int("width", width)
    if isinstance(heads, (str, bytes)) or not isinstance(heads, (tuple, list)):
        raise TypeError(f"heads must be a tuple or list of ints, got {type(heads).__name__}")
    if not heads:
        raise ValueError("heads must not be empty")
    rows = []
    for h in heads:
        h = _check_positive_int("heads", h)
        if width % h:
            raise ValueError(f"heads: {h} does not divide width {width}")
        rows.append(head_split(width // h, h, n=n, form=form, mode=mode))
    return rows

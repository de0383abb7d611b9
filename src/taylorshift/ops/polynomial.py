"""The weight polynomial ``p(x) = a x² + b x + c`` of TaylorShift, in one place.

Defaults, validation, the scale-free normalisation, ``p`` and ``p′`` on tensors, and the weights that turn the
inner product of two feature vectors into ``p`` (:func:`feature_weights`). Every path uses these: the direct
form (:func:`evaluate`, and :func:`derivative` in its backward), the efficient and causal forms and the decoding
state (:func:`feature_weights`), the float64 reference and the module.

Scale. ``Σ_j p(s_ij) v_j / Σ_j p(s_ij)`` does not change when ``(a, b, c)`` is multiplied by a positive number,
so the kernels never see the caller's overall size: :func:`normalize_coefficients` divides the coefficients by a
power of two that brings ``max(|a|, |b|, c)`` into ``[1, 2)``. Dividing by a power of two is exact, so the
result is the same (bit for bit, away from underflow) as with the original coefficients, and the defaults
``(0.5, 1, 1)`` are left as they are. A coefficient whose ratio to the largest one is below the smallest normal
number of the compute dtype cannot be carried through the computation (it would silently become 0, or lose its
digits): that is a clear ``ValueError``.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

DEFAULT_COEFFICIENTS: tuple[float, float, float] = (0.5, 1.0, 1.0)
"""``(a, b, c)`` of the second-order Taylor polynomial of ``exp``: ``1 + x + x²/2``."""


def check_coefficients(coefficients: object) -> tuple[float, float, float]:
    """Check ``(a, b, c)`` of ``p(x) = a x² + b x + c`` and return them as floats (unchanged in size).

    ``p`` is non-negative for every ``x`` iff ``a > 0`` and ``c >= b² / (4a)``; other polynomials could
    give negative attention weights and are rejected. The condition is checked on the normalised
    coefficients, so that coefficients near the float range (``b²`` overflowing) are judged correctly.

    Raises:
        TypeError: an entry that is not a real number.
        ValueError: not three entries, a non-finite entry, ``a <= 0`` or ``c < b²/(4a)``.
    """
    if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
        raise ValueError(f"coefficients must be a tuple (a, b, c) of three numbers, got {coefficients!r}")
    for name, value in zip("abc", coefficients, strict=True):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"coefficients: {name} must be a real number, got {type(value).__name__}")
        if not math.isfinite(float(value)):
            raise ValueError(f"coefficients: {name} must be finite, got {value}")
    a, b, c = (float(x) for x in coefficients)
    if a <= 0:
        raise ValueError(f"coefficients: need a > 0 so that p(x) = a x² + b x + c is bounded below, got a={a}")
    an, bn, cn = _scaled(a, b, c)
    # Relative slack so that exactly-tight polynomials such as (1, 2, 1) = (x + 1)² pass.
    if cn < bn * bn / (4 * an) * (1 - 1e-12):
        raise ValueError(
            f"coefficients: need c >= b²/(4a) so that p(x) >= 0 for all x (no negative attention weights); "
            f"got a={a}, b={b}, c={c} with b²/(4a)={b * b / (4 * a)}"
        )
    return a, b, c


def _scaled(a: float, b: float, c: float) -> tuple[float, float, float]:
    """``(a, b, c) / 2^k`` with ``max(|a|, |b|, |c|)`` in ``[1, 2)`` (exact: a power of two)."""
    exponent = math.frexp(max(abs(a), abs(b), abs(c)))[1] - 1  # m = f·2^e, f in [0.5, 1): m / 2^(e-1) in [1, 2)
    return math.ldexp(a, -exponent), math.ldexp(b, -exponent), math.ldexp(c, -exponent)


def normalize_coefficients(
    coefficients: tuple[float, float, float], dtype: torch.dtype | None = None
) -> tuple[float, float, float]:
    """Checked ``(a, b, c)`` scaled by a power of two so that ``max(|a|, |b|, c)`` lies in ``[1, 2)``.

    Args:
        coefficients: ``(a, b, c)`` as returned by :func:`check_coefficients` (not checked again).
        dtype: the compute dtype (float32 or float64); when given, every non-zero normalised coefficient must
            be a normal number of it.

    Returns:
        The normalised coefficients (the same polynomial up to a positive factor, so the same attention).

    Raises:
        ValueError: a non-zero coefficient too small, relative to the largest, for ``dtype``.
    """
    scaled = _scaled(*coefficients)
    if dtype is not None:
        tiny = torch.finfo(dtype).tiny
        name = str(dtype).removeprefix("torch.")
        for label, value in zip("abc", scaled, strict=True):
            if value != 0 and abs(value) < tiny:
                ratio = value / max(abs(x) for x in scaled)
                raise ValueError(
                    f"coefficients: {label}/max(|a|, |b|, c) = {ratio} is below the smallest normal {name} number "
                    f"({tiny:.3g}), so {label} would be lost in the computation. Set {label} to 0, choose "
                    f"coefficients whose ratios {name} can hold, or compute in float64."
                )
    return scaled


def evaluate(s: Tensor, coefficients: tuple[float, float, float]) -> Tensor:
    """``p(s) = (a s + b) s + c`` elementwise, as a new tensor (``s`` is left unchanged).

    Without autograd the three steps run in place on one fresh buffer; with autograd recording through ``s``
    (the functional path used under ``torch.export``) they run out of place.
    """
    a, b, c = coefficients
    if torch.is_grad_enabled() and s.requires_grad:
        return (a * s + b) * s + c
    return torch.mul(s, a).add_(b).mul_(s).add_(c)


def derivative(s: Tensor, coefficients: tuple[float, float, float], *, inplace: bool = False) -> Tensor:
    """``p′(s) = 2 a s + b`` elementwise; with ``inplace=True`` written into ``s`` (a recomputed buffer)."""
    a, b, _ = coefficients
    if inplace:
        return s.mul_(2 * a).add_(b)
    return 2 * a * s + b


def feature_weights(
    d: int,
    form: str,
    coefficients: tuple[float, float, float],
    *,
    dtype: torch.dtype,
    device: torch.device,
    blocks: tuple[tuple[int, int], ...] | None = None,
) -> Tensor:
    """``w (F,)`` such that ``φ(q)ᵀ diag(w) φ(k) = a (q·k)² + b q·k + c`` for the features of
    :func:`taylorshift.ops.features.taylor_features` (``[second-order, first-order, 1]``).

    The second-order part is built in row blocks ``(o, e)`` (:func:`taylorshift.ops.features.row_blocks`): the
    products ``x_i x_j``, ``o <= i < e``, ``o <= j < d``. A product inside the block's diagonal square
    (``j < e``) appears in both orders there (or is a square) and gets ``a``; one with ``j >= e`` appears only
    there and gets ``2a``. ``form="full"`` (one block ``(0, d)``): every ``x_i x_j`` gets ``a``;
    ``form="symmetric"`` (default blocks: one row each): the off-diagonal products get ``2a``, the squares ``a``.
    """
    a, b, c = coefficients
    if blocks is None:
        blocks = ((0, d),) if form == "full" else tuple((i, i + 1) for i in range(d))
    parts = []
    for o, e in blocks:
        block = torch.full((e - o, d - o), 2 * a, dtype=dtype, device=device)
        block[:, : e - o] = a
        parts.append(block.flatten())
    first = torch.full((d,), b, dtype=dtype, device=device)
    return torch.cat([*parts, first, torch.full((1,), c, dtype=dtype, device=device)])

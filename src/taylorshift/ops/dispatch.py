"""The public functional API: ``taylor_shift_attention`` and the backend choice behind ``backend="auto"``."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from taylorshift.analysis.complexity import flops_direct, flops_efficient
from taylorshift.ops.calibration import lookup_ratio
from taylorshift.ops.causal import causal_efficient_attention, default_causal_chunk_size
from taylorshift.ops.direct import direct_attention
from taylorshift.ops.efficient import DEFAULT_FORM, efficient_attention
from taylorshift.ops.inputs import DEFAULT_COEFFICIENTS, AttentionInputs, check_backend, check_inputs

Backend = Literal["auto", "direct", "efficient"]

_IMPLEMENTATIONS = {"direct": direct_attention, "efficient": efficient_attention}
_CAUSAL_IMPLEMENTATIONS = {
    "direct": lambda inp: direct_attention(inp, is_causal=True),
    "efficient": causal_efficient_attention,
}


def _check_is_causal(is_causal: object) -> bool:
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    return is_causal


def _visible_pairs(L: int, S: int) -> int:
    """Number of (query, key) pairs with ``j <= i`` (top-left causal alignment)."""
    m = min(L, S)
    return m * (m + 1) // 2 + (L - m) * S


def _choose(inp: AttentionInputs, backend: str, is_causal: bool = False) -> str:
    if backend != "auto":
        return backend
    if not inp.key_only_mask:
        return "direct"
    L, S, d, dv = inp.q.shape[-2], inp.k.shape[-2], inp.q.shape[-1], inp.v.shape[-1]
    if min(L, S, dv) == 0:
        return "direct"
    # ρ rescales the analytic model to this machine's measured crossover (1 without a calibration)
    ratio = lookup_ratio(inp.q.device.type, str(inp.out_dtype), d) or 1.0
    efficient_cost = ratio * flops_efficient(L, S, d, dv, form=DEFAULT_FORM)
    direct_cost = flops_direct(L, S, d, dv)
    if is_causal:
        # direct skips the blocks above the diagonal; efficient adds the in-chunk direct part (C × C per chunk)
        chunk = min(L, S, default_causal_chunk_size(inp.q.shape[:-2].numel(), d, dv))
        per_pair = direct_cost / (L * S)
        direct_cost = per_pair * _visible_pairs(L, S)
        efficient_cost += per_pair * L * chunk
    return "efficient" if efficient_cost < direct_cost else "direct"


def resolve_backend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    *,
    backend: Backend = "auto",
    is_causal: bool = False,
) -> str:
    """Name of the backend that :func:`taylor_shift_attention` would run for these arguments.

    ``"auto"`` picks ``"efficient"`` when it is cheaper than ``"direct"`` for these ``L, S, d, dv`` and
    ``"direct"`` otherwise or when the mask is not a key-padding mask. "Cheaper" is this machine's measured
    crossover when ``taylorshift calibrate`` has stored one for the device type, dtype and head size (see
    :mod:`taylorshift.ops.calibration`), else the analytic FLOP model of the implemented symmetric form
    (:mod:`taylorshift.analysis`; for ``L = S = N``, ``dv = d``: efficient when ``N > (d+1)(d+2)/2``).
    With ``is_causal=True`` direct is charged only for the visible pairs (about half) and efficient for its
    in-chunk direct part as well, which moves the crossover to roughly twice the length.

    Returns:
        ``"direct"`` or ``"efficient"``.
    """
    backend = check_backend(backend)
    is_causal = _check_is_causal(is_causal)
    return _choose(check_inputs(query, key, value, attn_mask), backend, is_causal)


def taylor_shift_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | Tensor | None = None,
    *,
    backend: Backend = "auto",
    coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
) -> Tensor:
    """TaylorShift attention, shaped like ``torch.nn.functional.scaled_dot_product_attention``.

    Computes ``out_i = Σ_j p(s_ij) v_j / Σ_j p(s_ij)`` over the attendable keys ``j`` of query ``i``,
    with ``s_ij = scale · q_i·k_j`` and ``p(x) = a x² + b x + c`` (default: the 2nd-order Taylor
    polynomial of exp, ``1 + x + x²/2``). A query with no attendable key gets a zero output.

    Args:
        query: ``(*batch, L, d)``; any number of leading batch dims, typically ``(B, H, L, d)``.
        key: ``(*batch, S, d)`` with the same leading dims (S may differ from L: cross-attention).
        value: ``(*batch, S, dv)``.
        attn_mask: optional **bool** tensor broadcastable to ``(*batch, L, S)``, True = attend; masked
            pairs get weight exactly 0. Float (additive) masks are rejected: ``p(-inf) = +inf``.
        is_causal: causal attention, **top-left aligned** like ``scaled_dot_product_attention``: query ``i``
            attends to keys ``j <= i`` (for ``L != S`` too: with ``L > S`` the queries ``i >= S`` see every
            key, with ``L < S`` the keys ``j >= L`` are never attended). Unlike SDPA it may be combined with
            ``attn_mask`` (both must allow a pair). Both backends support it; ``"efficient"`` (the chunked
            running-state form of :mod:`taylorshift.ops.causal`) only with key-padding masks. Rows that
            see no key give 0.
        scale: ``None`` (``1/√d``), a float, or a tensor broadcastable to ``(*batch, 1, 1)`` (for example
            a per-head temperature of shape ``(H, 1, 1)``); gradients flow into a tensor scale.
        backend: ``"direct"`` (O(L·S·d), any mask), ``"efficient"`` (O((L+S)·d²·dv), key-padding masks
            only, else ``ValueError``) or ``"auto"`` (see :func:`resolve_backend`).
        coefficients: ``(a, b, c)`` with ``a > 0`` and ``c >= b²/(4a)`` so that every weight is >= 0.

    Returns:
        ``(*batch, L, dv)`` in the dtype of ``query``. float16/bfloat16 inputs are computed in float32.

    Raises:
        TypeError: non-tensors, non-float dtypes, mixed dtypes, float masks, a non-bool ``is_causal``.
        ValueError: shape mismatches, wrong mask shapes, mixed devices, bad coefficients or backend.
    """
    backend = check_backend(backend)
    inp = check_inputs(query, key, value, attn_mask, scale, coefficients)
    is_causal = _check_is_causal(is_causal)
    name = _choose(inp, backend, is_causal)
    implementations = _CAUSAL_IMPLEMENTATIONS if is_causal else _IMPLEMENTATIONS
    return implementations[name](inp.cast()).to(inp.out_dtype)

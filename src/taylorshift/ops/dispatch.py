"""The public functional API: ``taylor_shift_attention`` and the backend choice behind ``backend="auto"``."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from taylorshift.analysis.auto import prefers_efficient
from taylorshift.ops.calibration import lookup_ratio
from taylorshift.ops.causal import causal_efficient_attention
from taylorshift.ops.common import size_hint
from taylorshift.ops.direct import direct_attention
from taylorshift.ops.efficient import efficient_attention
from taylorshift.ops.inputs import (
    DEFAULT_COEFFICIENTS,
    AttentionInputs,
    autocast_disabled,
    check_backend,
    check_inputs,
)
from taylorshift.ops.precision import Precision, check_precision, low_dtype

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


def _choose(inp: AttentionInputs, backend: str, is_causal: bool = False) -> str:
    """The backend to run: ``backend`` itself, or for ``"auto"`` the cheaper one under the cost model of
    :mod:`taylorshift.analysis.auto`.

    While exporting, the sizes may be symbolic; ``auto`` then decides once, from the example's sizes (their
    hints), with no data-dependent branching on the symbols: the exported program runs that backend at
    every length (both compute the same function, so only the speed depends on the example).
    """
    if backend != "auto":
        return backend
    if not inp.key_only_mask:
        return "direct"
    q, k, v = inp.q, inp.k, inp.v
    L, S, d, dv = (size_hint(n) for n in (q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]))
    if min(L, S, dv) == 0:
        return "direct"
    # ρ rescales the analytic model to this machine's measured crossover (1 without a calibration)
    ratio = lookup_ratio(q.device.type, str(inp.out_dtype), d) or 1.0
    batch = size_hint(q.shape[:-2].numel())
    efficient = prefers_efficient(L, S, d, dv, causal=is_causal, batch=max(batch, 1), ratio=ratio)
    return "efficient" if efficient else "direct"


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
    (:mod:`taylorshift.analysis.auto`, the model ``taylorshift crossover`` prints; for ``L = S = N``,
    ``dv = d``: efficient when ``N > (d+1)(d+2)/2``). With ``is_causal=True`` direct is charged only for the
    visible pairs (about half) and efficient for its in-chunk direct part as well, which moves the crossover to
    ``2(F + C) − 1``, roughly twice the length. Under ``torch.export`` with a symbolic length the choice is
    made once, from the example's length.

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
    precision: Precision = "auto",
) -> Tensor:
    """TaylorShift attention, shaped like ``torch.nn.functional.scaled_dot_product_attention``.

    Computes ``out_i = Σ_j p(s_ij) v_j / Σ_j p(s_ij)`` over the attendable keys ``j`` of query ``i``,
    with ``s_ij = scale · q_i·k_j`` and ``p(x) = a x² + b x + c`` (default: the 2nd-order Taylor
    polynomial of exp, ``1 + x + x²/2``). A query with no attendable key gets a zero output; NaN or Inf in
    a row's query, the scale, or a key or value the row attends to makes that row non-finite, as in SDPA.

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
        coefficients: ``(a, b, c)`` with ``a > 0`` and ``c >= b²/(4a)`` so that every weight is >= 0. Only
            their ratios matter (they are normalised internally).
        precision: format of the non-causal efficient kernel's feature products and contractions:
            ``"auto"`` (float32/float64 inputs: their own dtype; bfloat16/float16 inputs: their format when it
            is faster on this machine, see :mod:`taylorshift.ops.precision`), ``"float32"``, or
            ``"bfloat16"``/``"float16"`` (also for float32 inputs: the opt-in). The state, the accumulation
            across chunks and the normalisation stay float32. Direct and causal attention ignore it.

    Returns:
        ``(*batch, L, dv)`` in the dtype of ``query``. float16/bfloat16 inputs are computed in float32 (but see
        ``precision``). Inside
        ``torch.autocast`` float16/bfloat16/float32 inputs are first cast to the autocast dtype, as for SDPA.

    Raises:
        TypeError: non-tensors, non-float dtypes, mixed dtypes (outside autocast), float masks, a non-bool
            ``is_causal``.
        ValueError: shape mismatches, wrong mask shapes, mixed devices, bad coefficients (or ratios the compute
            dtype cannot carry) or backend.
        torch.OutOfMemoryError: ``"efficient"`` with a feature state larger than the memory available.

    Tracing: ``torch.export.export`` works with a dynamic sequence length (the kernels switch to their
    unblocked functional form while exporting) and ``torch.jit.trace`` records one shape; ``torch.jit.script``
    is not supported.
    """
    backend = check_backend(backend)
    inp = check_inputs(query, key, value, attn_mask, scale, coefficients)
    is_causal = _check_is_causal(is_causal)
    precision = check_precision(precision)
    name = _choose(inp, backend, is_causal)
    low = low_dtype(precision, inp.out_dtype, inp.q.device.type, inp.q.shape[-1])
    with autocast_disabled(inp.q.device):
        if name == "efficient" and not is_causal and low is not None:
            return efficient_attention(inp.cast(), low=low).to(inp.out_dtype)
        implementations = _CAUSAL_IMPLEMENTATIONS if is_causal else _IMPLEMENTATIONS
        return implementations[name](inp.cast()).to(inp.out_dtype)

"""The float64 oracle: TaylorShift attention written out as an explicit L×S computation.

This is the reference every fast path is tested against. It favours obviousness over speed or memory and
always computes in float64 (inputs of any floating dtype are upcast as they are, so the oracle sees the
same rounded values as the path under test).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from taylorshift.ops.polynomial import DEFAULT_COEFFICIENTS, check_coefficients, evaluate, normalize_coefficients


def taylor_shift_attention_reference(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    scale: float | Tensor | None = None,
    coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
    rows: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """Exact TaylorShift attention in float64.

    ``out_i = Σ_j m_ij p(s_ij) v_j / Σ_j m_ij p(s_ij)`` with ``s_ij = scale · q_i·k_j``,
    ``p(x) = a x² + b x + c`` and ``m`` the boolean mask (and ``j <= i`` when ``is_causal``); a row without
    attendable keys (decided from ``m``) is zero, every other row the plain quotient (NaN or Inf in what it
    attends to propagate). The coefficients are normalised as the kernels normalise them (an exact power of
    two), so a ratio float64 cannot carry is the same ``ValueError`` here.

    Args:
        query: ``(*batch, L, d)``.
        key: ``(*batch, S, d)``.
        value: ``(*batch, S, dv)``.
        attn_mask: optional bool tensor broadcastable to ``(*batch, L, S)``, True = attend.
        scale: float or tensor broadcastable to ``(*batch, 1, 1)``; default ``1/√d``.
        coefficients: ``(a, b, c)``.
        rows: optional 1-D index tensor of query rows to evaluate (so that very long sequences can be
            checked on a subset of rows against all keys without L×S memory).
        is_causal: also mask every pair with ``j > i`` (top-left alignment, as in
            ``scaled_dot_product_attention``; also for ``L != S``), and'ed with ``attn_mask``: the explicit
            lower-triangular L×S (or rows×S) mask.

    Returns:
        float64 tensor ``(*batch, L, dv)`` (``(*batch, len(rows), dv)`` when ``rows`` is given).
    """
    q, k, v = query.double(), key.double(), value.double()
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if isinstance(scale, Tensor):
        scale = scale.double()
    mask = attn_mask
    if mask is not None:
        mask = mask.expand(*q.shape[:-1], k.shape[-2])
    row_index = torch.arange(q.shape[-2], device=q.device)
    if rows is not None:
        q = q[..., rows, :]
        row_index = row_index[rows]
        if mask is not None:
            mask = mask[..., rows, :]
    if is_causal:
        causal = row_index.unsqueeze(-1) >= torch.arange(k.shape[-2], device=q.device)  # (rows, S): j <= i
        mask = causal if mask is None else mask & causal
    coefficients = normalize_coefficients(check_coefficients(coefficients), torch.float64)
    s = scale * (q @ k.transpose(-1, -2))  # (*batch, L, S)
    w = evaluate(s, coefficients)
    if mask is not None:
        w = torch.where(mask, w, torch.zeros_like(w))
    den = w.sum(-1, keepdim=True)  # (*batch, L, 1)
    if mask is None and k.shape[-2] > 0:
        return (w @ v) / den
    has_key = mask.any(-1, keepdim=True) if mask is not None else torch.zeros_like(den, dtype=torch.bool)
    return torch.where(has_key, (w @ v) / torch.where(has_key, den, torch.ones_like(den)), 0.0)

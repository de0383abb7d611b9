"""Efficient TaylorShift: the linear-in-length tensor-product form.

With ``p(s) = a s² + b s + c`` and ``(q·k)² = (q⊠q)·(k⊠k)`` (``⊠`` = flattened outer product of a row
with itself) every weight is an inner product of feature vectors:

    p(q̃·k) = φ_q(q̃) · φ_k(k),   φ_q(x) = [a·x⊠x, b·x, c],   φ_k(x) = [x⊠x, x, 1],

where ``q̃ = scale·q``. So ``Σ_j p(q̃_i·k_j) [v_j | 1] = φ_q(q̃_i) · (Φ_kᵀ V')`` with ``V' = [V | 1]``:
the numerator and (in the last column, the "ones-column trick") the denominator come out of one
contraction, and no L×S matrix is formed. The ``F × (dv+1)`` matrix ``Φ_kᵀ V'`` (``F = d² + d + 1``) is
the *state*; a causal or chunked variant accumulates it over key blocks with :func:`key_state`.

Numerics: ``V'`` is divided by the number of key positions ``S`` (it cancels in the ratio), so the state
is an average and stays ``O(max |v|)`` for any length; fp16/bf16 inputs are computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from taylorshift.ops.direct import safe_divide
from taylorshift.ops.inputs import AttentionInputs


def feature_map(x: Tensor, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Tensor:
    """Second-order Taylor features ``[w2·x⊠x, w1·x, w0]``.

    Args:
        x: ``(*batch, N, d)``.
        weights: ``(w2, w1, w0)``; queries use the polynomial coefficients ``(a, b, c)``, keys ones.

    Returns:
        ``(*batch, N, d² + d + 1)``.
    """
    w2, w1, w0 = weights
    second = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # (*batch, N, d²)
    parts = [second * w2 if w2 != 1.0 else second, x * w1 if w1 != 1.0 else x]
    parts.append(x.new_full((*x.shape[:-1], 1), w0))
    return torch.cat(parts, dim=-1)


def augment_values(v: Tensor, key_mask: Tensor | None, norm: float) -> Tensor:
    """``V' = [V | 1] / norm`` with the rows of masked keys zeroed.

    Args:
        v: ``(*batch, S, dv)``.
        key_mask: None, or bool broadcastable to ``(*batch, 1, S)`` (True = attend).
        norm: positive divisor (the number of key positions).

    Returns:
        ``(*batch, S, dv + 1)``.
    """
    vp = torch.cat([v, v.new_ones((*v.shape[:-1], 1))], dim=-1) * (1.0 / norm)
    if key_mask is not None:
        km = key_mask.unsqueeze(-1) if key_mask.dim() == 1 else key_mask.transpose(-1, -2)  # (..., S, 1)
        vp = vp * km
    return vp


def key_state(k: Tensor, vp: Tensor) -> Tensor:
    """State ``Φ_k(K)ᵀ V'``: ``k (*batch, S, d)``, ``vp (*batch, S, dv+1)`` → ``(*batch, F, dv+1)``."""
    return feature_map(k).transpose(-1, -2) @ vp


def apply_state(q: Tensor, state: Tensor, coefficients: tuple[float, float, float]) -> Tensor:
    """Read a state with (already scaled) queries: ``q (*batch, L, d)`` → ``(*batch, L, dv)``."""
    y = feature_map(q, coefficients) @ state  # (*batch, L, dv + 1)
    return safe_divide(y[..., :-1], y[..., -1:])


def efficient_attention(inp: AttentionInputs) -> Tensor:
    """Efficient TaylorShift on validated inputs in their compute dtype.

    Supports only masks that depend on the key alone (broadcastable to ``(*batch, 1, S)``).

    Returns:
        ``(*batch, L, dv)`` in the compute dtype.
    """
    if not inp.key_only_mask:
        raise ValueError(
            "backend='efficient' supports only key-padding masks broadcastable to (*batch, 1, S); "
            f"got attn_mask of shape {tuple(inp.mask.shape)}. Use backend='direct' or 'auto' for general masks."
        )
    S = inp.k.shape[-2]
    vp = augment_values(inp.v, inp.mask, float(max(S, 1)))
    return apply_state(inp.q * inp.scale, key_state(inp.k, vp), inp.coefficients)

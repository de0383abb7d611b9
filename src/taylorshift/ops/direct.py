"""Direct TaylorShift: the O(L·S·d) form that materialises the L×S weight matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from taylorshift.ops.inputs import AttentionInputs


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (rows without attendable keys); gradients stay finite."""
    ok = den > 0
    return (num / den.masked_fill(~ok, 1.0)).masked_fill(~ok, 0.0)


def direct_attention(inp: AttentionInputs) -> Tensor:
    """Direct TaylorShift on validated inputs in their compute dtype.

    ``s = (scale·Q) Kᵀ`` ``(*batch, L, S)``, weights ``p(s)`` zeroed where the mask is False, then
    ``(p V) / rowsum(p)``. Any mask broadcastable to ``(*batch, L, S)`` is supported.

    Returns:
        ``(*batch, L, dv)`` in the compute dtype.
    """
    a, b, c = inp.coefficients
    s = (inp.q * inp.scale) @ inp.k.transpose(-1, -2)  # (*batch, L, S)
    if torch.is_grad_enabled() and s.requires_grad:
        w = (a * s + b) * s + c  # p(s) by Horner's rule
        if inp.mask is not None:
            w = w.masked_fill(~inp.mask, 0.0)
    else:  # inference: the same arithmetic in place, one L×S buffer fewer
        w = torch.mul(s, a).add_(b).mul_(s).add_(c)
        if inp.mask is not None:
            w.masked_fill_(~inp.mask, 0.0)
    den = w.sum(-1, keepdim=True)  # (*batch, L, 1)
    return safe_divide(w @ inp.v, den)

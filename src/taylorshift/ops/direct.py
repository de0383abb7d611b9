"""Direct TaylorShift: the O(L·S·d) form, in query blocks with a recomputing backward.

Per block of queries: ``s = q̃ Kᵀ`` ``(*batch, block, S)``, weights ``w = p(s)`` zeroed where masked,
``out = (w V) / rowsum(w)``. Only one block's ``block × S`` matrices exist at a time, so extra memory is
``O(block·S)`` instead of ``O(L·S)``; the backward recomputes ``s`` and ``w`` block by block
(flash-attention style) and stores only ``q̃, K, V``, the output and the row sums.

Both passes write the polynomial as a completed square, ``p(s) = a ((s + m)² + r)`` with ``m = b / 2a`` and
``r = c / a − m²`` (:func:`completed_square`): ``s + m`` comes out of one product of ``[q̃ | m]`` and
``[k | 1]``, a weight is one squaring, and ``p′(s) = 2a (s + m)`` reuses it, so a block makes one elementwise
pass over its ``block × S`` weights in the forward (five with ``(a s + b) s + c``, a sum and a separate
division) and four in the backward (eight). Each such pass is a parallel region that a busy machine makes wait.

Causal (``is_causal=True``, top-left aligned: query ``i`` sees keys ``j <= i``): the block of queries
``[l0, l1)`` only reads keys ``[0, min(l1, S))``; the key blocks above the diagonal, which are fully
masked, are never computed (about half the work and memory traffic for ``L = S``). Inside the block the
causal mask is combined with the caller's mask (logical and).

Under ``torch.export`` / ``torch.jit.trace`` (:func:`taylorshift.ops.common.exporting`) the same formulas run
as one block of plain differentiable tensor operations (:func:`direct_functional`), so the length can stay
symbolic; that form holds the ``L × S`` weights at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from taylorshift.ops.common import (
    divide_rows,
    exporting,
    no_double_backward,
    reciprocal_rows,
    rows_with_keys,
    spans,
)
from taylorshift.ops.efficient import augment_values
from taylorshift.ops.inputs import AttentionInputs
from taylorshift.ops.polynomial import derivative, evaluate


def default_block_size(batch: int, S: int) -> int:
    """Query rows per block so that one ``(batch, block, S)`` matrix holds about 2²¹ entries (8 MiB fp32):
    small enough to stay in cache, which makes the memory-bound elementwise work faster than one big pass."""
    return int(min(4096, max(16, (1 << 21) // max(1, batch * S))))


def _block_mask(mask: Tensor | None, l0: int, l1: int) -> Tensor | None:
    if mask is None or mask.dim() < 2 or mask.shape[-2] == 1:
        return mask
    return mask[..., l0:l1, :]


def causal_keep(l0: int, l1: int, k0: int, k1: int, device: torch.device) -> Tensor:
    """Bool ``(l1 - l0, k1 - k0)``: True where key ``j`` (in ``[k0, k1)``) is visible to query ``i`` (in
    ``[l0, l1)``) under top-left causal alignment, i.e. ``j <= i``."""
    return torch.arange(l0, l1, device=device).unsqueeze(-1) >= torch.arange(k0, k1, device=device)


def _block_keep(mask: Tensor | None, l0: int, l1: int, kend: int, causal: bool, device) -> Tensor | None:
    """The keep-mask of query block ``[l0, l1)`` against keys ``[0, kend)``: the caller's mask, and'ed with
    the causal mask when ``causal``."""
    mask_b = _block_mask(mask, l0, l1)
    if not causal:
        return mask_b
    tri = causal_keep(l0, l1, 0, kend, device)
    return tri if mask_b is None else mask_b[..., :kend] & tri


def _key_end(S: int, l1: int, causal: bool) -> int:
    """Keys ``[0, end)`` that query block ``[·, l1)`` can see: all, or ``j < l1`` when causal."""
    return min(l1, S) if causal else S


def block_weights(qs_b: Tensor, k: Tensor, coefficients, mask_b: Tensor | None) -> tuple[Tensor, Tensor]:
    """Logits ``s = q̃ Kᵀ`` and masked weights ``p(s)`` of one query block (two fresh buffers)."""
    s = qs_b @ k.transpose(-1, -2)  # (*batch, block, S)
    w = evaluate(s, coefficients)  # p(s) = (a s + b) s + c
    if mask_b is not None:
        w = w.masked_fill_(~mask_b, 0.0)  # a replaced weight: a masked key's logit never matters
    return s, w


def _has_key(mask: Tensor | None, keep: Tensor | None, S: int, device: torch.device) -> Tensor | None:
    """Which rows of a block have an attendable key (:func:`taylorshift.ops.common.rows_with_keys`), read off
    the block's keep-mask: None when all have (no caller mask and ``S > 0``), else bool ``(*, rows or 1, 1)``."""
    if mask is None:
        return rows_with_keys(None, 0, S, False, device)
    return keep.any(-1, keepdim=True) if keep.dim() >= 2 else keep.any(-1).view(1, 1)  # (S,) stands for (1, S)


def completed_square(coefficients) -> tuple[float, float] | None:
    """``(m, r)`` with ``p(s) / a = (s + m)² + r`` (``m = b / 2a``, ``r = c / a − m²``), or None where they are too
    large to square safely in float32 (extreme coefficients keep the plain evaluation)."""
    a, b, c = coefficients
    m = b / (2 * a)
    r = c / a - m * m
    return (m, r) if abs(m) <= 1e3 and abs(r) <= 1e6 else None


def _shifted_pair(qs: Tensor, k: Tensor, m: float) -> tuple[Tensor, Tensor]:
    """``[q̃ | m]`` ``(*, L, d + 1)`` and ``[k | 1]ᵀ`` ``(*, d + 1, S)``: their product is ``s + m``."""
    qa = torch.cat([qs, qs.new_full((*qs.shape[:-1], 1), m)], dim=-1)
    ka = torch.cat([k, k.new_ones((*k.shape[:-1], 1))], dim=-1).transpose(-1, -2)
    return qa, ka


def _forward_blocks(qs, k, v, mask, coefficients, block, causal, out, den) -> list:
    """The blocked forward with the completed square: per block ``w' = (s + m)² (+ r)``, one product with
    ``[V | 1]`` for numerator and denominator together, one division; ``w' = p(s) / a``, so the quotient is
    unchanged and ``den`` is scaled back by ``a``. Without a mask, or with a key-only mask (whose keys are zeroed
    in ``[V | 1]``), the ``r`` term is added once per block to the small product, ``r · Σ_j [v_j | 1]``, instead
    of to every weight; ``m`` rides in the query-key product as an extra column (``[q̃ | m] · [k | 1]``).
    Returns the ``has_key`` of each block."""
    m, r = completed_square(coefficients)
    L, S = qs.shape[-2], k.shape[-2]
    qa, ka = _shifted_pair(qs, k, m)
    fold = not causal and (mask is None or mask.dim() < 2 or mask.shape[-2] == 1)
    # key-only masks fold into [V | 1]: a masked key's row is zero, so its weight never counts
    vp = augment_values(v, mask if fold else None, 1)  # (*, S, dv + 1)
    if fold:
        rc = (vp.sum(-2, keepdim=True) * r) if r != 0 else None  # (*, 1, dv + 1)
        fold_key = _has_key(mask, mask, S, qs.device)  # the same for every block
    keys = []
    for l0, l1 in spans(L, block):
        e = _key_end(S, l1, causal)
        w = torch.matmul(qa[..., l0:l1, :], ka[..., :e]).square_()  # (*, block, e): (s + m)²
        keep = None if fold else _block_keep(mask, l0, l1, e, causal, qs.device)
        if not fold:
            if r != 0:
                w.add_(r)
            if keep is not None:
                w.masked_fill_(~keep, 0.0)
        y = torch.matmul(w, vp[..., :e, :])  # (*, block, dv + 1): [num | den] / a
        if fold and rc is not None:
            y.add_(rc)
        keys.append(fold_key if fold else _has_key(mask, keep, S, qs.device))
        out[..., l0:l1, :] = divide_rows(y[..., :-1], y[..., -1:], keys[-1])
        torch.mul(y[..., -1:], coefficients[0], out=den[..., l0:l1, :])
    return keys


class _BlockedDirect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qs, k, v, mask, coefficients, block, causal):  # noqa: D102
        batch = torch.broadcast_shapes(qs.shape[:-2], k.shape[:-2], v.shape[:-2])
        L, S = qs.shape[-2], k.shape[-2]
        out = qs.new_empty((*batch, L, v.shape[-1]))
        den = qs.new_empty((*batch, L, 1))
        if completed_square(coefficients) is not None:
            keys = _forward_blocks(qs, k, v, mask, coefficients, block, causal, out, den)
        else:  # extreme coefficients: p(s) evaluated as (a s + b) s + c
            keys = []  # has_key of each block
            for l0, l1 in spans(L, block):
                e = _key_end(S, l1, causal)
                keep = _block_keep(mask, l0, l1, e, causal, qs.device)
                _, w = block_weights(qs[..., l0:l1, :], k[..., :e, :], coefficients, keep)
                torch.sum(w, dim=-1, keepdim=True, out=den[..., l0:l1, :])
                keys.append(_has_key(mask, keep, S, qs.device))
                out[..., l0:l1, :] = divide_rows(w @ v[..., :e, :], den[..., l0:l1, :], keys[-1])
        # one answer for all rows (no mask, or a key mask without causality), or one per row
        has_key = keys[0] if keys else None
        if has_key is not None and has_key.shape[-2] != 1:
            has_key = torch.cat(keys, dim=-2)
        ctx.save_for_backward(qs, k, v, out, den)
        ctx.mask, ctx.coefficients, ctx.block, ctx.causal, ctx.has_key = mask, coefficients, block, causal, has_key
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        no_double_backward()
        qs, k, v, out, den = ctx.saved_tensors
        mask, block, causal = ctx.mask, ctx.block, ctx.causal
        S = k.shape[-2]
        inv = reciprocal_rows(den, ctx.has_key)  # (*batch, L, 1)
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        dqs = torch.empty_like(qs) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        dv = torch.zeros_like(v) if need_v else None
        square = completed_square(ctx.coefficients)
        if square is not None:  # p(s) = a ((s + m)² + r), p′(s) = 2a (s + m): s + m from one product
            m, r = square
            a = ctx.coefficients[0]
            qa, ka = _shifted_pair(qs, k, m)
        for l0, l1 in spans(qs.shape[-2], block):
            e = _key_end(S, l1, causal)
            k_b, v_b = k[..., :e, :], v[..., :e, :]
            mask_b = _block_keep(mask, l0, l1, e, causal, qs.device)
            q_b = qs[..., l0:l1, :]
            g = dout[..., l0:l1, :] * inv[..., l0:l1, :]  # (*batch, block, dv)
            if square is not None:
                u = torch.matmul(qa[..., l0:l1, :], ka[..., :e])  # s + m
                w = u.square()  # p(s) / a
                if r != 0:
                    w.add_(r)
                if mask_b is not None:
                    w.masked_fill_(~mask_b, 0.0)
                if need_v:
                    dv[..., :e, :] += w.transpose(-1, -2) @ (g * a)
                g = g * (2 * a)  # so that ds = (s + m) · dw below
                dw = torch.matmul(g, v_b.transpose(-1, -2), out=w)  # reuse w's buffer
                dw -= (g * out[..., l0:l1, :]).sum(-1, keepdim=True)
                ds = dw.mul_(u)
            else:
                s, w = block_weights(q_b, k_b, ctx.coefficients, mask_b)
                if need_v:
                    dv[..., :e, :] += w.transpose(-1, -2) @ g
                # ∂out_i/∂w_ij = (v_j − out_i) / den_i;  ∂w/∂s = 2 a s + b (0 where masked)
                dw = torch.matmul(g, v_b.transpose(-1, -2), out=w)  # reuse w's buffer
                dw -= (g * out[..., l0:l1, :]).sum(-1, keepdim=True)
                ds = derivative(s, ctx.coefficients, inplace=True).mul_(dw)  # p′(s) = 2 a s + b
            if mask_b is not None:
                ds.masked_fill_(~mask_b, 0.0)
            if need_q:
                dqs[..., l0:l1, :] = ds @ k_b
            if need_k:
                dk[..., :e, :] += ds.transpose(-1, -2) @ q_b
        return dqs, dk, dv, None, None, None, None


def direct_functional(qs: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, coefficients, causal: bool) -> Tensor:
    """The direct form as one block of plain (differentiable, traceable) tensor operations.

    Args:
        qs: scaled queries ``(*batch, L, d)``; ``k`` ``(*batch, S, d)``; ``v`` ``(*batch, S, e)``.
        mask: the caller's keep-mask or None; ``causal``: and'ed with ``j <= i``.

    Returns:
        ``(*batch, L, e)``.
    """
    keep = _block_keep(mask, 0, qs.shape[-2], k.shape[-2], causal, qs.device)
    _, w = block_weights(qs, k, coefficients, keep)
    return divide_rows(w @ v, w.sum(-1, keepdim=True), _has_key(mask, keep, k.shape[-2], qs.device))


def direct_attention(inp: AttentionInputs, block_size: int | None = None, is_causal: bool = False) -> Tensor:
    """Direct TaylorShift on validated inputs in their compute dtype; any mask.

    Args:
        inp: validated inputs (see :func:`taylorshift.ops.inputs.check_inputs`), already cast.
        block_size: query rows per block; default :func:`default_block_size`.
        is_causal: also mask key ``j`` for query ``i`` when ``j > i`` (top-left alignment); combined with
            ``inp.mask``. Key blocks above the diagonal are skipped.

    Returns:
        ``(*batch, L, dv)`` in the compute dtype.
    """
    q, k, v = inp.q, inp.k, inp.v
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    causal = bool(is_causal)
    if exporting():
        return direct_functional(q * inp.scale, k, v, inp.mask, inp.coefficients, causal)
    if block_size is None:
        block_size = default_block_size(q.shape[:-2].numel(), k.shape[-2])
    return _BlockedDirect.apply(q * inp.scale, k, v, inp.mask, inp.coefficients, block_size, causal)

"""Efficient TaylorShift: the linear-in-length tensor-product form, streamed in chunks.

Every weight is an inner product of features (see :mod:`taylorshift.ops.features`):
``p(q̃·k) = φ(q̃)ᵀ diag(w) φ(k)`` with ``q̃ = scale·q`` and ``w`` holding the polynomial's coefficients.
Hence, with ``V' = [V | 1]``,

    Σ_j p(q̃_i·k_j) [v_j | 1] = φ(q̃_i)ᵀ diag(w) Z,    Z = Σ_j φ(k_j) v'_jᵀ   (the state, F × (dv+1)),

so the numerator and, in the last column (the "ones-column trick"), the denominator come from one
contraction and no L×S matrix is formed. The default feature form is ``"symmetric"`` (``d(d+1)/2``
second-order monomials); ``"full"`` is the paper's ``d²``.

Streaming. Keys are folded into ``Z`` chunk by chunk and queries read ``Z`` chunk by chunk, so the
``N × F`` feature tensors are never held whole: extra memory is ``O(chunk·F + F·dv)`` per head. The custom
backward recomputes the features chunk by chunk, so training stores only ``q̃, k, V'``, the output, the
denominator and ``Z``: ``O(N·d + F·dv)``. The causal variant (:mod:`taylorshift.ops.causal`) reuses
:func:`augment_values`, :func:`accumulate_state`, :func:`state_product` and :func:`read_state` with a
running state. The two halves are also differentiable functions of their own, :func:`key_state` (keys → ``Z``)
and :func:`state_attention` (queries, ``Z`` → output), with the same backward pieces; the sequence-parallel op
(:mod:`taylorshift.distributed`) sums ``Z`` over ranks between them.

Numerics. ``V'`` is divided by the number of key positions ``S`` (it cancels in the ratio), so ``Z`` is an
average and stays ``O(max |v|)`` at any length; fp16/bf16 inputs are computed in float32.

Under ``torch.export`` / ``torch.jit.trace`` (:func:`taylorshift.ops.common.exporting`) the same formulas run
as one chunk of plain differentiable tensor operations (:func:`efficient_functional`), so the length can stay
symbolic; that form holds the ``N × F`` features at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from taylorshift.analysis.auto import DEFAULT_FORM, default_chunk_size
from taylorshift.ops.common import (
    divide_rows,
    exporting,
    no_double_backward,
    reciprocal_rows,
    rows_with_keys,
    spans,
)
from taylorshift.ops.features import (
    Form,
    check_form,
    feature_dim,
    feature_weights,
    taylor_features,
    taylor_features_backward,
)
from taylorshift.ops.inputs import AttentionInputs
from taylorshift.ops.memory import check_efficient_memory

__all__ = [
    "DEFAULT_FORM",
    "default_chunk_size",
    "efficient_attention",
    "efficient_functional",
    "key_state",
    "state_attention",
]


def check_chunk_size(chunk_size: object) -> int | None:
    """``chunk_size`` if it is None or a positive int, else ``ValueError``."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def check_efficient_call(
    inp: AttentionInputs, form: object, chunk_size: object, is_causal: bool = False
) -> tuple[Form, int | None]:
    """The checks of both efficient kernels: a mask that depends on the key alone, the feature form and the chunk
    size; returns ``(form, chunk_size)``."""
    if not inp.key_only_mask:
        raise ValueError(
            f"backend='efficient'{' with is_causal=True' if is_causal else ''} supports only key-padding masks "
            f"broadcastable to (*batch, 1, S); got attn_mask of shape {tuple(inp.mask.shape)}. Use backend='direct' "
            "or 'auto' for general masks."
        )
    return check_form(form), check_chunk_size(chunk_size)


def augment_values(v: Tensor, key_mask: Tensor | None, norm: float | int) -> Tensor:
    """``V' = [V | 1] / norm`` with the rows of masked keys zeroed.

    Args:
        v: ``(*batch, S, dv)``.
        key_mask: None, or bool broadcastable to ``(*batch, 1, S)`` (True = attend).
        norm: positive divisor (the number of key positions; may be symbolic while exporting).

    Returns:
        ``(*batch, S, dv + 1)``.
    """
    vp = torch.cat([v, v.new_ones((*v.shape[:-1], 1))], dim=-1) * (1.0 / norm)  # norm: an int, SymInt or float
    if key_mask is not None:
        km = key_mask.unsqueeze(-1) if key_mask.dim() == 1 else key_mask.transpose(-1, -2)  # (..., S, 1)
        vp = vp * km
    return vp


def accumulate_state(state: Tensor, k: Tensor, vp: Tensor, form: Form, chunk: int) -> Tensor:
    """``state += Σ_j φ(k_j) v'_jᵀ`` over the rows of ``k (*batch, S, d)``, ``vp (*batch, S, e)``, chunk by
    chunk; ``state (*batch, F, e)`` (unweighted features) is updated in place and returned."""
    for s0, s1 in spans(k.shape[-2], chunk):
        phi = taylor_features(k[..., s0:s1, :], form)  # (*batch, F, c)
        state += phi @ vp[..., s0:s1, :]
    return state


def state_product(qs: Tensor, weighted_state: Tensor, form: Form) -> Tensor:
    """``φ(q̃)ᵀ diag(w) Z`` for the rows of ``qs (*batch, c, d)``: ``(*batch, c, dv+1)``, the numerators and, in
    the last column, the denominators (one chunk; the caller bounds ``c``)."""
    return taylor_features(qs, form).transpose(-1, -2) @ weighted_state


def read_state(
    qs: Tensor, weighted_state: Tensor, form: Form, chunk: int, has_key: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Read ``diag(w)·state`` ``(*batch, F, dv+1)`` with scaled queries ``qs (*batch, L, d)``.

    Returns:
        ``out (*batch, L, dv)`` (numerator / denominator, 0 on rows without a key, see
        :func:`taylorshift.ops.common.divide_rows`) and ``den (*batch, L, 1)``.
    """
    L, e = qs.shape[-2], weighted_state.shape[-1]
    y = qs.new_empty((*qs.shape[:-1], e))
    for l0, l1 in spans(L, chunk):
        y[..., l0:l1, :] = state_product(qs[..., l0:l1, :], weighted_state, form)
    den = y[..., -1:]
    return divide_rows(y[..., :-1], den, has_key), den


def read_state_backward(
    qs: Tensor,
    weighted: Tensor,
    out: Tensor,
    den: Tensor,
    dout: Tensor,
    has_key: Tensor | None,
    form: Form,
    chunk: int,
    need_q: bool,
) -> tuple[Tensor | None, Tensor]:
    """Backward of :func:`read_state`: from ``dout (*batch, L, dv)`` the gradients ``(dqs, dweighted)`` with respect
    to the scaled queries (None unless ``need_q``) and to ``diag(w)·state`` ``(*batch, F, dv+1)``; the features
    are recomputed chunk by chunk."""
    g = dout * reciprocal_rows(den, has_key)  # (*batch, L, dv)
    dy = torch.cat([g, -(g * out).sum(-1, keepdim=True)], dim=-1)  # (*batch, L, dv+1)
    dqs = torch.empty_like(qs) if need_q else None
    dweighted = torch.zeros_like(weighted)  # gradient of diag(w)·state
    for l0, l1 in spans(qs.shape[-2], chunk):
        q_c, dy_c = qs[..., l0:l1, :], dy[..., l0:l1, :]
        phi = taylor_features(q_c, form)  # (*batch, F, c)
        dweighted += phi @ dy_c
        if need_q:
            dphi = torch.matmul(weighted, dy_c.transpose(-1, -2), out=phi)  # reuse the buffer
            dqs[..., l0:l1, :] = taylor_features_backward(q_c, dphi, form)
    return dqs, dweighted


def accumulate_state_backward(
    k: Tensor, vp: Tensor, dstate: Tensor, form: Form, chunk: int, need_k: bool, need_v: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Backward of :func:`accumulate_state`: from ``dstate (*batch, F, e)`` (gradient of the unweighted state) the
    gradients ``(dk, dvp)`` of ``k (*batch, S, d)`` and ``vp (*batch, S, e)`` (None where not needed)."""
    dk = torch.empty_like(k) if need_k else None
    dvp = torch.empty_like(vp) if need_v else None
    if need_k or need_v:
        for s0, s1 in spans(k.shape[-2], chunk):
            k_c = k[..., s0:s1, :]
            phi = taylor_features(k_c, form)  # (*batch, F, c)
            if need_v:
                dvp[..., s0:s1, :] = phi.transpose(-1, -2) @ dstate
            if need_k:
                dphi = torch.matmul(dstate, vp[..., s0:s1, :].transpose(-1, -2), out=phi)
                dk[..., s0:s1, :] = taylor_features_backward(k_c, dphi, form)
    return dk, dvp


class _StreamingEfficient(torch.autograd.Function):
    """Chunked forward and recomputing backward of ``out = num/den``,
    ``[num | den] = φ(q̃)ᵀ diag(w) Σ_j φ(k_j) v'_jᵀ``."""

    @staticmethod
    def forward(ctx, qs, k, vp, coefficients, form, chunk, has_key):  # noqa: D102
        batch = torch.broadcast_shapes(qs.shape[:-2], k.shape[:-2], vp.shape[:-2])
        d = k.shape[-1]
        w = feature_weights(d, form, coefficients, dtype=k.dtype, device=k.device).unsqueeze(-1)  # (F, 1)
        state = accumulate_state(k.new_zeros((*batch, feature_dim(d, form), vp.shape[-1])), k, vp, form, chunk)
        weighted = state.mul_(w)  # the state is only needed weighted from here on
        out, den = read_state(qs, weighted, form, chunk, has_key)
        ctx.save_for_backward(qs, k, vp, weighted, w, out, den)
        ctx.form, ctx.chunk, ctx.has_key = form, chunk, has_key
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        no_double_backward()
        qs, k, vp, weighted, w, out, den = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        dqs, dweighted = read_state_backward(qs, weighted, out, den, dout, ctx.has_key, ctx.form, ctx.chunk, need_q)
        dk, dvp = accumulate_state_backward(k, vp, dweighted.mul_(w), ctx.form, ctx.chunk, need_k, need_v)
        return dqs, dk, dvp, None, None, None, None


class _KeyState(torch.autograd.Function):
    """``state = Σ_j φ(k_j) v'_jᵀ`` (unweighted, ``(*batch, F, e)``), chunked, with a recomputing backward."""

    @staticmethod
    def forward(ctx, k, vp, form, chunk):  # noqa: D102
        batch = torch.broadcast_shapes(k.shape[:-2], vp.shape[:-2])
        state = k.new_zeros((*batch, feature_dim(k.shape[-1], form), vp.shape[-1]))
        accumulate_state(state, k, vp, form, chunk)
        ctx.save_for_backward(k, vp)
        ctx.form, ctx.chunk = form, chunk
        return state

    @staticmethod
    def backward(ctx, dstate):  # noqa: D102
        no_double_backward()
        k, vp = ctx.saved_tensors
        dk, dvp = accumulate_state_backward(k, vp, dstate, ctx.form, ctx.chunk, *ctx.needs_input_grad[:2])
        return dk, dvp, None, None


class _ReadState(torch.autograd.Function):
    """``out = num/den``, ``[num | den] = φ(q̃)ᵀ diag(w) state``, chunked, with a recomputing backward."""

    @staticmethod
    def forward(ctx, qs, state, w, form, chunk, has_key):  # noqa: D102
        weighted = state * w
        out, den = read_state(qs, weighted, form, chunk, has_key)
        ctx.save_for_backward(qs, weighted, w, out, den)
        ctx.form, ctx.chunk, ctx.has_key = form, chunk, has_key
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        no_double_backward()
        qs, weighted, w, out, den = ctx.saved_tensors
        need_q, need_state = ctx.needs_input_grad[:2]
        dqs, dweighted = read_state_backward(qs, weighted, out, den, dout, ctx.has_key, ctx.form, ctx.chunk, need_q)
        return dqs, (dweighted.mul_(w) if need_state else None), None, None, None, None


def key_state(k: Tensor, vp: Tensor, form: Form, chunk: int) -> Tensor:
    """The keys' half of the efficient form, differentiable: ``Σ_j φ(k_j) v'_jᵀ`` (unweighted features).

    Args:
        k: ``(*batch, S, d)``; ``vp``: ``(*batch, S, e)`` (:func:`augment_values`).
        form: feature form; ``chunk``: keys per chunk.

    Returns:
        ``(*batch, F, e)``. States of disjoint key sets add up to the state of their union (the basis of the
        sequence-parallel form, :mod:`taylorshift.distributed`).
    """
    return _KeyState.apply(k, vp, form, chunk)


def state_attention(qs: Tensor, state: Tensor, coefficients, form: Form, chunk: int, has_key: Tensor | None) -> Tensor:
    """The queries' half of the efficient form, differentiable: ``num / den`` with
    ``[num | den] = φ(q̃)ᵀ diag(w) state``.

    Args:
        qs: scaled queries ``(*batch, L, d)``; ``state``: ``(*batch, F, e)`` from :func:`key_state`.
        coefficients: normalised ``(a, b, c)`` (:func:`taylorshift.ops.polynomial.normalize_coefficients`).
        has_key: None or bool broadcastable to ``(*batch, L, 1)``: rows with an attendable key.

    Returns:
        ``(*batch, L, e - 1)``.
    """
    w = feature_weights(qs.shape[-1], form, coefficients, dtype=state.dtype, device=state.device).unsqueeze(-1)
    return _ReadState.apply(qs, state, w, form, chunk, has_key)


def efficient_functional(qs: Tensor, k: Tensor, vp: Tensor, coefficients, form: Form, has_key: Tensor | None) -> Tensor:
    """The efficient form as one chunk of plain (differentiable, traceable) tensor operations:
    ``[num | den] = φ(q̃)ᵀ diag(w) (φ(K) V')``.

    Args:
        qs: scaled queries ``(*batch, L, d)``; ``k`` ``(*batch, S, d)``; ``vp`` ``(*batch, S, e)``
            (:func:`augment_values`).
        has_key: :func:`taylorshift.ops.common.rows_with_keys` of the key mask.

    Returns:
        ``(*batch, L, e - 1)``.
    """
    w = feature_weights(k.shape[-1], form, coefficients, dtype=k.dtype, device=k.device).unsqueeze(-1)  # (F, 1)
    state = taylor_features(k, form) @ vp  # (*batch, F, e)
    y = taylor_features(qs, form).transpose(-1, -2) @ (state * w)  # (*batch, L, e)
    return divide_rows(y[..., :-1], y[..., -1:], has_key)


def efficient_attention(inp: AttentionInputs, form: Form = DEFAULT_FORM, chunk_size: int | None = None) -> Tensor:
    """Efficient TaylorShift on validated inputs in their compute dtype.

    Supports only masks that depend on the key alone (broadcastable to ``(*batch, 1, S)``).

    Args:
        inp: validated inputs (see :func:`taylorshift.ops.inputs.check_inputs`), already cast.
        form: ``"symmetric"`` (default, ``d(d+1)/2`` second-order features) or ``"full"`` (the paper's ``d²``).
        chunk_size: rows per chunk; default :func:`default_chunk_size`.

    Returns:
        ``(*batch, L, dv)`` in the compute dtype.
    """
    form, chunk_size = check_efficient_call(inp, form, chunk_size)
    q, k, v = inp.q, inp.k, inp.v
    L, S, d = q.shape[-2], k.shape[-2], k.shape[-1]
    has_key = rows_with_keys(inp.mask, L, S, False, q.device)
    vp = augment_values(v, inp.mask, torch.sym_max(S, 1))
    qs = q * inp.scale
    if exporting():
        return efficient_functional(qs, k, vp, inp.coefficients, form, has_key)
    batch = k.shape[:-2].numel()
    if chunk_size is None:
        chunk_size = default_chunk_size(batch, feature_dim(d, form))
    check_efficient_memory(batch, L, S, d, v.shape[-1], form, chunk_size, q.dtype, q.device, train=inp.needs_grad)
    return _StreamingEfficient.apply(qs, k, vp, inp.coefficients, form, chunk_size, has_key)

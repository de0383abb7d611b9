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

import math

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
    Blocks,
    Form,
    blocked_feature_dim,
    check_form,
    feature_dim,
    feature_weights,
    row_blocks,
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


KERNEL_ROW_BLOCKS = 8
"""Row blocks of the symmetric features in the non-causal streaming kernel (:func:`kernel_blocks`)."""


def kernel_blocks(d: int, form: Form) -> Blocks:
    """The feature layout of the non-causal streaming kernel: ``form="full"`` as is; ``"symmetric"`` in
    ``min(d, KERNEL_ROW_BLOCKS)`` row blocks (:func:`taylorshift.ops.features.row_blocks`).

    Building the ``d(d+1)/2`` monomials row by row takes ``d`` tensor operations per chunk, each a parallel
    region of its own; when another process competes for the cores, every region waits for its slowest
    thread, so ``d = 64`` paid thousands of such waits per call (docs/benchmarks.md, contention). Eight row
    blocks build the same products in eight operations for about ``1/8`` more second-order features
    (the blocks' diagonal squares hold ``x_i x_j`` and ``x_j x_i``); the state never leaves the call, so its
    layout is private to the kernel.
    """
    return row_blocks(d, form, None if form == "full" else min(d, KERNEL_ROW_BLOCKS))


def kernel_features(d: int, form: Form) -> int:
    """``F`` the non-causal kernel streams per token (its row-blocked layout, :func:`kernel_blocks`)."""
    return blocked_feature_dim(d, kernel_blocks(d, form))


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
    vp = torch.cat([v, v.new_ones((*v.shape[:-1], 1))], dim=-1)
    if isinstance(norm, torch.SymInt):  # a symbolic length: divide by it as a tensor (no sym_float in the graph)
        vp = vp / torch.full((), norm, dtype=torch.int64, device=v.device).to(vp.dtype)
    else:
        vp = vp * (1.0 / norm)  # an int or float
    if key_mask is not None:
        km = key_mask.unsqueeze(-1) if key_mask.dim() == 1 else key_mask.transpose(-1, -2)  # (..., S, 1)
        vp = vp * km
    return vp


def accumulate_state(
    state: Tensor, k: Tensor, vp: Tensor, form: Form, chunk: int, blocks: Blocks | None = None
) -> Tensor:
    """``state += Σ_j φ(k_j) v'_jᵀ`` over the rows of ``k (*batch, S, d)``, ``vp (*batch, S, e)``, chunk by
    chunk; ``state (*batch, F, e)`` (unweighted features in the layout ``blocks``, see
    :func:`taylorshift.ops.features.row_blocks`) is updated in place and returned."""
    phi = None
    for s0, s1 in spans(k.shape[-2], chunk):
        phi = _chunk_features(k[..., s0:s1, :], form, blocks, phi)  # (*batch, F, c)
        state += phi @ vp[..., s0:s1, :]
    return state


def _chunk_features(x: Tensor, form: Form, blocks: Blocks | None, buffer: Tensor | None) -> Tensor:
    """Features ``(*batch, F, c)`` of the chunk ``x (*batch, c, d)``, written into ``buffer`` (the previous chunk's
    features, whose constant row is already written) when it has the same shape, else into a new buffer."""
    if buffer is not None and buffer.shape[-1] == x.shape[-2] and buffer.is_contiguous():
        return taylor_features(x, form, out=buffer, blocks=blocks, ones=False)
    return taylor_features(x, form, blocks=blocks)


def state_product(qs: Tensor, weighted_state: Tensor, form: Form, blocks: Blocks | None = None) -> Tensor:
    """``φ(q̃)ᵀ diag(w) Z`` for the rows of ``qs (*batch, c, d)``: ``(*batch, c, dv+1)``, the numerators and, in
    the last column, the denominators (one chunk; the caller bounds ``c``)."""
    return taylor_features(qs, form, blocks=blocks).transpose(-1, -2) @ weighted_state


def read_state(
    qs: Tensor,
    weighted_state: Tensor,
    form: Form,
    chunk: int,
    has_key: Tensor | None,
    blocks: Blocks | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Read ``diag(w)·state`` ``(*batch, F, dv+1)`` with scaled queries ``qs (*batch, L, d)``.

    ``out_dtype`` (default ``qs.dtype``) is the dtype of the numerators, denominators and output: float32 when
    ``qs`` and the state come in a low-precision format (the products run in that format, the division in
    float32).

    Returns:
        ``out (*batch, L, dv)`` (numerator / denominator, 0 on rows without a key, see
        :func:`taylorshift.ops.common.divide_rows`) and ``den (*batch, L, 1)``.
    """
    L, e = qs.shape[-2], weighted_state.shape[-1]
    y = qs.new_empty((*qs.shape[:-1], e), dtype=out_dtype or qs.dtype)
    phi = None
    for l0, l1 in spans(L, chunk):
        phi = _chunk_features(qs[..., l0:l1, :], form, blocks, phi)  # (*batch, F, c), one buffer for full chunks
        phi_t = phi.transpose(-1, -2)  # (*batch, c, F)
        if y.dtype == phi_t.dtype:
            torch.matmul(phi_t, weighted_state, out=y[..., l0:l1, :])
        else:
            y[..., l0:l1, :] = phi_t @ weighted_state
    den = y[..., -1:]
    return divide_rows(y[..., :-1], den, has_key), den


def _lowered(t: Tensor, low: torch.dtype | None, factor: float = 1.0) -> Tensor:
    """``t·factor`` in ``low``, or ``t`` itself on the float32/float64 path (``low`` None)."""
    return t if low is None else (t * factor).to(low)


def _power_of_two_scale(t: Tensor, low: torch.dtype | None, target: float) -> float:
    """A power of two ``2^k`` with ``max|t|·2^k`` in ``[target/2, target)`` (1 without ``low`` or for an all-zero
    or non-finite ``t``): the exact rescaling that puts a gradient into float16's range."""
    if low is None:
        return 1.0
    m = t.abs().amax().item()
    if m == 0 or not math.isfinite(m):
        return 1.0
    return 2.0 ** math.floor(math.log2(target / m))


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
    blocks: Blocks | None = None,
    low: torch.dtype | None = None,
) -> tuple[Tensor | None, Tensor]:
    """Backward of :func:`read_state`: from ``dout (*batch, L, dv)`` the gradients ``(dqs, dweighted)`` with respect
    to the scaled queries (None unless ``need_q``) and to ``diag(w)·state`` ``(*batch, F, dv+1)``; the features
    are recomputed chunk by chunk. With ``low`` the products run in that format on ``∂y`` rescaled by a power of
    two (largest entry about 1/8), and the results are scaled back in float32."""
    g = dout * reciprocal_rows(den, has_key)  # (*batch, L, dv)
    dy = torch.cat([g, -(g * out).sum(-1, keepdim=True)], dim=-1)  # (*batch, L, dv+1)
    dqs = torch.empty_like(qs) if need_q else None
    dweighted = torch.zeros_like(weighted)  # gradient of diag(w)·state
    sy = _power_of_two_scale(dy, low, 0.125)
    q_low, dy_low, weighted_low = _lowered(qs, low), _lowered(dy, low, sy), _lowered(weighted, low)
    for l0, l1 in spans(qs.shape[-2], chunk):
        dy_c = dy_low[..., l0:l1, :]
        phi = taylor_features(q_low[..., l0:l1, :], form, blocks=blocks)  # (*batch, F, c)
        dweighted += phi @ dy_c
        if need_q:
            dphi = torch.matmul(weighted_low, dy_c.transpose(-1, -2), out=phi)  # reuse the buffer
            dqs[..., l0:l1, :] = taylor_features_backward(qs[..., l0:l1, :], dphi, form, blocks=blocks)
    if low is not None:
        dweighted.mul_(1 / sy)
        if need_q:
            dqs.mul_(1 / sy)
    return dqs, dweighted


def accumulate_state_backward(
    k: Tensor,
    vp: Tensor,
    dstate: Tensor,
    form: Form,
    chunk: int,
    need_k: bool,
    need_v: bool,
    blocks: Blocks | None = None,
    low: torch.dtype | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Backward of :func:`accumulate_state`: from ``dstate (*batch, F, e)`` (gradient of the unweighted state) the
    gradients ``(dk, dvp)`` of ``k (*batch, S, d)`` and ``vp (*batch, S, e)`` (None where not needed). With
    ``low`` the products run in that format on ``∂Z`` rescaled by a power of two (largest entry about 1) and on
    ``V'·S/C`` (chunk averages), and the results are scaled back in float32."""
    dk = torch.empty_like(k) if need_k else None
    dvp = torch.empty_like(vp) if need_v else None
    if need_k or need_v:
        S = k.shape[-2]
        ck = min(chunk, max(S, 1))
        sz = _power_of_two_scale(dstate, low, 1.0)
        k_low, vp_low, dstate_low = _lowered(k, low), _lowered(vp, low, S / ck), _lowered(dstate, low, sz)
        for s0, s1 in spans(S, chunk):
            phi = taylor_features(k_low[..., s0:s1, :], form, blocks=blocks)  # (*batch, F, c)
            if need_v:
                dvp[..., s0:s1, :] = phi.transpose(-1, -2) @ dstate_low
            if need_k:
                dphi = torch.matmul(dstate_low, vp_low[..., s0:s1, :].transpose(-1, -2), out=phi)
                dk[..., s0:s1, :] = taylor_features_backward(k[..., s0:s1, :], dphi, form, blocks=blocks)
        if low is not None:
            if need_v:
                dvp.mul_(1 / sz)
            if need_k:
                dk.mul_(ck / (S * sz))
    return dk, dvp


class _StreamingEfficient(torch.autograd.Function):
    """Chunked forward and recomputing backward of ``out = num/den``,
    ``[num | den] = φ(q̃)ᵀ diag(w) Σ_j φ(k_j) v'_jᵀ``.

    Low precision (``low`` = bfloat16 or float16, inputs in float32): the features and the operands of every
    product are in ``low``, each chunk's product is added to a float32 state (or gradient), the weights, the
    normalisation and the backward of the features stay float32. Operands are rescaled by one scalar per call
    so that they are averages of ``O(1)`` size in ``low`` (float16 has a range of 6·10⁴ and no precision
    below 6·10⁻⁵): ``V'`` (an average over ``S``) is multiplied by ``S / C`` (an average over a chunk of
    ``C``) and the state by ``C / S`` after the sum; in the backward ``∂y`` and ``∂Z`` are scaled by powers of
    two so that their largest entries are about 1/8 and 1, and the gradients are scaled back once.
    """

    @staticmethod
    def forward(ctx, qs, k, vp, coefficients, form, chunk, has_key, blocks, low):  # noqa: D102
        batch = torch.broadcast_shapes(qs.shape[:-2], k.shape[:-2], vp.shape[:-2])
        d, S = k.shape[-1], k.shape[-2]
        c = min(chunk, max(S, 1))
        w = feature_weights(d, form, coefficients, dtype=k.dtype, device=k.device, blocks=blocks).unsqueeze(-1)
        state = k.new_zeros((*batch, blocked_feature_dim(d, blocks), vp.shape[-1]))  # (*batch, F, e)
        vp_low = _lowered(vp, low, S / c)
        accumulate_state(state, _lowered(k, low), vp_low, form, chunk, blocks)
        weighted = state.mul_(w if low is None else w * (c / S))  # only needed weighted from here on
        out, den = read_state(_lowered(qs, low), _lowered(weighted, low), form, chunk, has_key, blocks, qs.dtype)
        ctx.save_for_backward(qs, k, vp, weighted, w, out, den)
        ctx.form, ctx.chunk, ctx.has_key, ctx.blocks, ctx.low = form, chunk, has_key, blocks, low
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        no_double_backward()
        qs, k, vp, weighted, w, out, den = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        form, chunk, blocks, low = ctx.form, ctx.chunk, ctx.blocks, ctx.low
        dqs, dweighted = read_state_backward(
            qs, weighted, out, den, dout, ctx.has_key, form, chunk, need_q, blocks, low
        )
        dk, dvp = accumulate_state_backward(k, vp, dweighted.mul_(w), form, chunk, need_k, need_v, blocks, low)
        return dqs, dk, dvp, None, None, None, None, None, None


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


def efficient_attention(
    inp: AttentionInputs, form: Form = DEFAULT_FORM, chunk_size: int | None = None, low: torch.dtype | None = None
) -> Tensor:
    """Efficient TaylorShift on validated inputs in their compute dtype.

    Supports only masks that depend on the key alone (broadcastable to ``(*batch, 1, S)``).

    Args:
        inp: validated inputs (see :func:`taylorshift.ops.inputs.check_inputs`), already cast.
        form: ``"symmetric"`` (default, ``d(d+1)/2`` second-order features) or ``"full"`` (the paper's ``d²``).
        chunk_size: rows per chunk; default :func:`default_chunk_size`.
        low: None, or ``torch.bfloat16`` / ``torch.float16`` for float32 inputs: the features and products in
            that format, the state and the normalisation in float32 (see :class:`_StreamingEfficient`;
            :mod:`taylorshift.ops.precision` decides). Ignored while exporting.

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
    blocks = kernel_blocks(d, form)
    if chunk_size is None:
        chunk_size = default_chunk_size(batch, blocked_feature_dim(d, blocks))
    check_efficient_memory(batch, L, S, d, v.shape[-1], form, chunk_size, q.dtype, q.device, train=inp.needs_grad)
    if low is not None and q.dtype != torch.float32:
        raise ValueError(f"low-precision products need float32 compute dtype, got {q.dtype}")
    return _StreamingEfficient.apply(qs, k, vp, inp.coefficients, form, chunk_size, has_key, blocks, low)

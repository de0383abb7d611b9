"""Causal TaylorShift: the chunked linear form with a running state, and recurrent decoding.

Causal attention here is **top-left aligned**, as in ``scaled_dot_product_attention(is_causal=True)``:
query ``i`` sees keys ``j <= i`` (also when ``L != S``: for ``L > S`` queries ``i >= S`` see every key,
for ``L < S`` keys ``j >= L`` are never seen). A key mask (``attn_mask`` broadcastable to
``(*batch, 1, S)``) is and'ed with it.

Algorithm (chunks of ``C`` query positions; ``V' = [V | 1]`` with masked keys' rows zeroed, so numerator
and denominator come from one product, see :mod:`taylorshift.ops.efficient`). For the chunk ``[l0, l1)``:

    y_i = φ(q̃_i)ᵀ diag(w) Z_{<l0}  +  Σ_{l0 <= j <= i} p(q̃_i·k_j) v'_j,       out_i = y_i[:dv] / y_i[dv]
    Z_{<l1} = Z_{<l0} + Σ_{l0 <= j < l1} φ(k_j) v'_jᵀ                           (state, F × (dv+1))

The first term reads the state of all earlier chunks (linear form), the second is the masked direct form
inside the chunk (``C × C``). Time ``O(N·F·dv + N·C·(d+dv))``, extra memory ``O(C·F + C² + F·dv)`` per
head besides ``q̃, K, V'``. The custom backward recomputes everything in two passes, so training stores
only ``q̃, K, V'``, the output, the denominators and the initial state (``O(N·d + F·dv)``). Under
``torch.export`` / ``torch.jit.trace`` the whole sequence is one chunk, i.e. the direct causal form as plain
tensor operations (:func:`taylorshift.ops.direct.direct_functional`), so the length can stay symbolic:

* forward order: the running state again, giving ``∂q̃`` of the state reads, and the whole in-chunk part;
* reverse order: the running sum ``G = Σ_{later chunks} φ(q̃) ∂yᵀ``, giving ``∂K`` and ``∂V'`` of the keys'
  contributions to the state (``∂Z = diag(w) G``).

Decoding (:class:`TaylorShiftState`): ``step`` adds ``φ(k_t) v'_tᵀ`` to the state and reads it with
``φ(q̃_t)``, ``O(F·dv)`` per token whatever the context length; ``prefill`` runs the chunked algorithm
from the current state. A step is a few kFLOP per head, so its cost is the number of tensor operations: the
features of one row are the upper triangle of ``[x | 1][x | 1]ᵀ``, two gathers and a product
(:func:`one_row_features`), the update is one ``addcmul_`` and the read-out one matmul
(:func:`update_and_read`); the module's step (``TaylorShiftAttention.step``) uses the same pieces for the
q, k and v rows of all heads at once.

Numerics (decided and measured; details in docs/causal.md). The state is the **plain running sum**
(no ``1/N``, no running mean), accumulated in float32 for float16/bfloat16/float32 inputs and in float64
for float64 inputs (the compute dtype of :mod:`taylorshift.ops.inputs`); no intermediate is ever held in
half precision. A sum rather than a mean because every row has its own number of visible keys (a mean
would need a per-row rescale) and because the decoding state must continue the parallel one exactly. Its
size is bounded by ``N · max p · max |v|``: measured at ``N = 65,536`` (unit q and k, temperatures 1 and 4,
N(0, 1) values, d = 16): ``max |state| = 6.6e4`` and last-row denominators ``6.8e4`` and ``9.8e4``, far
inside float32 but already beyond float16's 65,504, which is why the state is never half precision.
Rounding: one float32 addition per chunk (``N / C``, each chunk summed inside a matmul), or one per token
when decoding. Relative Frobenius error against the float64 oracle at ``N = 65,536`` (515 rows):
float32 6.0e-8, bfloat16 1.0e-3, float16 1.4e-4; the half-precision errors equal the rounding of the exact
result to that dtype (1.0e-3, 1.4e-4), i.e. the float32 computation adds nothing measurable.
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor

from taylorshift.analysis.auto import DEFAULT_FORM, default_causal_chunk_size
from taylorshift.ops.common import (
    divide_rows,
    exporting,
    no_double_backward,
    reciprocal_rows,
    rows_with_keys,
    spans,
)
from taylorshift.ops.direct import block_weights, causal_keep, direct_functional
from taylorshift.ops.efficient import (
    accumulate_state,
    augment_values,
    check_chunk_size,
    check_efficient_call,
    state_product,
)
from taylorshift.ops.features import (
    Form,
    augmented_pairs,
    check_form,
    feature_dim,
    feature_weights,
    taylor_features,
    taylor_features_backward,
)
from taylorshift.ops.inputs import (
    DEFAULT_COEFFICIENTS,
    AttentionInputs,
    autocast_disabled,
    check_coefficients,
    check_inputs,
    compute_dtype,
)
from taylorshift.ops.memory import check_efficient_memory, check_state_memory
from taylorshift.ops.polynomial import derivative, normalize_coefficients

__all__ = ["TaylorShiftState", "causal_efficient_attention", "default_causal_chunk_size"]


def _causal_forward(qs, k, vp, state, w, coefficients, form, chunk, keep_state, has_key):
    """Chunked causal forward from ``state`` (unweighted ``(*batch, F, e)``, updated in place with the keys
    ``[0, min(L, S))``; the last chunk's keys are only added when ``keep_state``).

    Returns ``out (*batch, L, e-1)`` and ``den (*batch, L, 1)``.
    """
    L, S = qs.shape[-2], k.shape[-2]
    y = qs.new_empty((*state.shape[:-2], L, vp.shape[-1]))
    for l0, l1 in spans(L, chunk):
        q_c = qs[..., l0:l1, :]
        y_c = state_product(q_c, state * w, form)  # earlier chunks, through the state
        if l0 < S:  # this chunk's keys, direct form under the causal mask
            k1 = min(l1, S)
            k_c, vp_c = k[..., l0:k1, :], vp[..., l0:k1, :]
            _, p = block_weights(q_c, k_c, coefficients, causal_keep(l0, l1, l0, k1, qs.device))
            y_c += p @ vp_c
            if keep_state or l1 < L:
                accumulate_state(state, k_c, vp_c, form, chunk)
        y[..., l0:l1, :] = y_c
    den = y[..., -1:]
    return divide_rows(y[..., :-1], den, has_key), den


class _CausalEfficient(torch.autograd.Function):
    """Causal chunked forward (returns ``out`` and the final state, not differentiable) and its two-pass
    recomputing backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, qs, k, vp, state0, coefficients, form, chunk, keep_state, has_key):  # noqa: D102
        batch = torch.broadcast_shapes(qs.shape[:-2], k.shape[:-2], vp.shape[:-2])
        d, e = k.shape[-1], vp.shape[-1]
        w = feature_weights(d, form, coefficients, dtype=k.dtype, device=k.device).unsqueeze(-1)  # (F, 1)
        if state0 is None:
            state0 = k.new_zeros((*batch, feature_dim(d, form), e))
        state = state0.clone()
        out, den = _causal_forward(qs, k, vp, state, w, coefficients, form, chunk, keep_state, has_key)
        ctx.save_for_backward(qs, k, vp, state0, w, out, den)
        ctx.coefficients, ctx.form, ctx.chunk, ctx.has_key = coefficients, form, chunk, has_key
        ctx.mark_non_differentiable(state)
        return out, state

    @staticmethod
    def backward(ctx, dout, _dstate):  # noqa: D102
        no_double_backward()
        qs, k, vp, state0, w, out, den = ctx.saved_tensors
        coefficients, form, chunk = ctx.coefficients, ctx.form, ctx.chunk
        L, S = qs.shape[-2], k.shape[-2]
        g = dout * reciprocal_rows(den, ctx.has_key)  # (*batch, L, dv)
        dy = torch.cat([g, -(g * out).sum(-1, keepdim=True)], dim=-1)  # ∂loss/∂y, (*batch, L, dv+1)
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        dqs = torch.zeros_like(qs) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        dvp = torch.zeros_like(vp) if need_v else None
        chunks = spans(L, chunk)
        # pass 1, forward order: ∂q̃ of the state reads (needs the running state) and the in-chunk part
        state = state0.clone() if need_q else None
        for l0, l1 in chunks:
            q_c, dy_c = qs[..., l0:l1, :], dy[..., l0:l1, :]
            if need_q:
                dphi = (state * w) @ dy_c.transpose(-1, -2)  # (*batch, F, c)
                dqs[..., l0:l1, :] = taylor_features_backward(q_c, dphi, form)
            if l0 >= S:
                continue
            k1 = min(l1, S)
            k_c, vp_c = k[..., l0:k1, :], vp[..., l0:k1, :]
            keep = causal_keep(l0, l1, l0, k1, qs.device)
            s, p = block_weights(q_c, k_c, coefficients, keep)
            if need_v:
                dvp[..., l0:k1, :] += p.transpose(-1, -2) @ dy_c
            if need_q or need_k:
                dp = torch.matmul(dy_c, vp_c.transpose(-1, -2), out=p)  # reuse p's buffer
                ds = derivative(s, coefficients, inplace=True).mul_(dp).masked_fill_(~keep, 0.0)  # p′(s) = 2 a s + b
                if need_q:
                    dqs[..., l0:l1, :] += ds @ k_c
                if need_k:
                    dk[..., l0:k1, :] += ds.transpose(-1, -2) @ q_c
            if need_q and l1 < L:
                accumulate_state(state, k_c, vp_c, form, chunk)
        # pass 2, reverse order: G = Σ over later chunks of φ(q̃) ∂yᵀ; a chunk's keys enter only later reads
        if need_k or need_v:
            G = torch.zeros_like(state0)
            for i, (l0, l1) in enumerate(reversed(chunks)):
                if i > 0 and l0 < S:
                    k1 = min(l1, S)
                    k_c, vp_c = k[..., l0:k1, :], vp[..., l0:k1, :]
                    dstate = G * w
                    phi = taylor_features(k_c, form)  # (*batch, F, c)
                    if need_v:
                        dvp[..., l0:k1, :] += phi.transpose(-1, -2) @ dstate
                    if need_k:
                        dphi = torch.matmul(dstate, vp_c.transpose(-1, -2), out=phi)
                        dk[..., l0:k1, :] += taylor_features_backward(k_c, dphi, form)
                if l0 > 0:
                    G += taylor_features(qs[..., l0:l1, :], form) @ dy[..., l0:l1, :]
        return dqs, dk, dvp, None, None, None, None, None, None


def causal_efficient_attention(
    inp: AttentionInputs, form: Form = DEFAULT_FORM, chunk_size: int | None = None
) -> Tensor:
    """Causal efficient TaylorShift (top-left aligned) on validated inputs in their compute dtype.

    Supports only key masks (broadcastable to ``(*batch, 1, S)``), and'ed with the causal mask.

    Args:
        inp: validated inputs (see :func:`taylorshift.ops.inputs.check_inputs`), already cast.
        form: feature form, ``"symmetric"`` (default) or ``"full"``.
        chunk_size: query positions per chunk; default :func:`default_causal_chunk_size`.

    Returns:
        ``(*batch, L, dv)`` in the compute dtype.
    """
    form, chunk = check_efficient_call(inp, form, chunk_size, is_causal=True)
    q, k, v = inp.q, inp.k, inp.v
    L, S, d, dv = q.shape[-2], k.shape[-2], k.shape[-1], v.shape[-1]
    if exporting():  # one chunk covering everything: the in-chunk part, i.e. the direct form, is all there is
        return direct_functional(q * inp.scale, k, v, inp.mask, inp.coefficients, True)
    has_key = rows_with_keys(inp.mask, L, S, True, q.device)
    vp = augment_values(v, inp.mask, 1.0)
    batch = k.shape[:-2].numel()
    if chunk is None:
        chunk = default_causal_chunk_size(batch, d, dv, form)
    check_efficient_memory(batch, L, S, d, dv, form, chunk, q.dtype, q.device, causal=True, train=inp.needs_grad)
    out, _ = _CausalEfficient.apply(q * inp.scale, k, vp, None, inp.coefficients, form, chunk, False, has_key)
    return out


class TaylorShiftState:
    """Running state of causal TaylorShift for recurrent decoding.

    Holds ``Z = Σ_{j seen} φ(k_j) [v_j | 1]ᵀ`` of shape ``(*batch_shape, F, dv + 1)`` (``F`` =
    :func:`taylorshift.ops.feature_dim`) in float32, or float64 when ``dtype`` is float64, and the number of
    positions seen, :attr:`length`. The state does not depend on the logit scale (it only multiplies the
    queries), so ``scale`` is passed per call, with the same meaning as in
    :func:`taylorshift.taylor_shift_attention`.

    ``prefill`` then ``step`` computes the same as one causal call over the concatenated sequence: for
    positions ``t`` (counted from the first prefill) ``out_t = Σ_{j<=t} p(s_tj) v_j / Σ_{j<=t} p(s_tj)``.

    Args:
        batch_shape: leading dims of the inputs, e.g. ``(B, H)``.
        head_dim: query/key size ``d``.
        value_dim: value size ``dv`` (default ``d``).
        coefficients: ``(a, b, c)`` of ``p``.
        form: feature form (``"symmetric"`` or ``"full"``).
        dtype: precision of the inputs; the state is kept in its compute dtype (float32 for half precision).
        device: device of the state.
        chunk_size: chunk of :meth:`prefill` (default :func:`default_causal_chunk_size`).
    """

    def __init__(
        self,
        batch_shape: tuple[int, ...],
        head_dim: int,
        value_dim: int | None = None,
        *,
        coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
        form: Form = DEFAULT_FORM,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if not isinstance(batch_shape, (tuple, list, torch.Size)) or not all(
            isinstance(n, Integral) and not isinstance(n, bool) and n >= 0 for n in batch_shape
        ):
            raise ValueError(f"batch_shape must be a tuple of non-negative ints, got {batch_shape!r}")
        value_dim = head_dim if value_dim is None else value_dim
        for name, n in (("head_dim", head_dim), ("value_dim", value_dim)):
            if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
        state_dtype = compute_dtype(dtype)
        self.batch_shape = tuple(int(n) for n in batch_shape)
        self.head_dim, self.value_dim = int(head_dim), int(value_dim)
        self.coefficients = check_coefficients(coefficients)
        self._coefficients = normalize_coefficients(self.coefficients, state_dtype)  # what the kernels use
        self.form: Form = check_form(form)
        batch = max(1, torch.Size(self.batch_shape).numel())
        self.chunk_size = check_chunk_size(chunk_size) or default_causal_chunk_size(
            batch, self.head_dim, self.value_dim, self.form
        )
        device = torch.get_default_device() if device is None else torch.device(device)
        check_state_memory(batch, self.head_dim, self.value_dim, self.form, state_dtype, device)
        F = feature_dim(self.head_dim, self.form)
        self.state = torch.zeros((*self.batch_shape, F, self.value_dim + 1), dtype=state_dtype, device=device)
        self.length = 0
        # constants of the single-token step, made once (no tensor is created per step but the results)
        device = self.state.device
        self._w = feature_weights(self.head_dim, self.form, self._coefficients, dtype=state_dtype, device=device)
        self._pairs = expand_pairs(augmented_pairs(self.head_dim, self.form, device), (*self.batch_shape, 2))
        self._ones = torch.ones((*self.batch_shape, 2, 1), dtype=state_dtype, device=device)
        self._ones1 = self._ones[..., 1:, :]

    def __repr__(self) -> str:
        return (
            f"TaylorShiftState(batch_shape={self.batch_shape}, head_dim={self.head_dim}, value_dim={self.value_dim}, "
            f"form={self.form!r}, dtype={self.state.dtype}, length={self.length})"
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the state tensor (constant: it does not grow with :attr:`length`)."""
        return self.state.numel() * self.state.element_size()

    def reset(self) -> None:
        """Forget every position (zero state, ``length = 0``)."""
        self.state.zero_()
        self.length = 0

    def _inputs(self, what: str, query, key, value, attn_mask, scale) -> AttentionInputs:
        inp = check_inputs(query, key, value, attn_mask, scale, self.coefficients)
        q, v = inp.q, inp.v
        if tuple(q.shape[:-2]) != self.batch_shape:
            raise ValueError(f"{what}: inputs have batch dims {tuple(q.shape[:-2])}, the state {self.batch_shape}")
        if q.shape[-1] != self.head_dim or v.shape[-1] != self.value_dim:
            raise ValueError(
                f"{what}: inputs have head sizes d={q.shape[-1]}, dv={v.shape[-1]}, the state "
                f"d={self.head_dim}, dv={self.value_dim}"
            )
        if q.shape[-2] != inp.k.shape[-2]:
            raise ValueError(
                f"{what}: query has {q.shape[-2]} positions but key has {inp.k.shape[-2]}; decoding is causal "
                "self-attention, so they must be equal"
            )
        if not inp.key_only_mask:
            raise ValueError(f"{what}: attn_mask must be a key mask broadcastable to (*batch, 1, N)")
        if q.device != self.state.device:
            raise ValueError(f"{what}: inputs are on {q.device} but the state is on {self.state.device}")
        return inp

    def prefill(
        self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, scale=None
    ) -> Tensor:
        """Causal attention of ``N`` new positions over everything seen so far plus themselves.

        Args:
            query, key: ``(*batch_shape, N, d)``; value ``(*batch_shape, N, dv)``.
            attn_mask: optional bool key mask broadcastable to ``(*batch_shape, 1, N)`` (True = attend);
                masked positions are never attended, now or later (left padding of prompts).
            scale: as in :func:`taylorshift.taylor_shift_attention` (default ``1/√d``).

        Returns:
            ``(*batch_shape, N, dv)`` in the dtype of ``query``; differentiable with respect to the new
            ``query, key, value`` (the earlier state is a constant). The state is updated in place.
        """
        inp = self._inputs("prefill", query, key, value, attn_mask, scale)
        c = self.state.dtype
        q, k, v = inp.q.to(c), inp.k.to(c), inp.v.to(c)
        s = inp.scale.to(c) if isinstance(inp.scale, Tensor) else inp.scale
        vp = augment_values(v, inp.mask, 1.0)
        N = q.shape[-2]
        has_key = rows_with_keys(inp.mask, N, N, True, q.device)
        if has_key is not None:  # or a key seen before: the state's (constant feature, ones column) entry counts them
            has_key = has_key | (self.state[..., -1:, -1:] > 0)
        with autocast_disabled(q.device):
            out, state = _CausalEfficient.apply(
                q * s, k, vp, self.state, self._coefficients, self.form, self.chunk_size, True, has_key
            )
        self.state = state
        self.length += q.shape[-2]
        return out.to(inp.out_dtype)

    @torch.no_grad()
    def step(self, query: Tensor, key: Tensor, value: Tensor, scale=None) -> Tensor:
        """One new position: add its key and value to the state, then read the state with its query.

        ``O(F·dv)`` time and no allocation that grows with :attr:`length`. Runs without autograd. At small sizes
        the cost is the number of tensor operations, so the step is written as a fixed 18 of them after the
        argument checks (see :meth:`_step`).

        Args:
            query, key: ``(*batch_shape, 1, d)``; value ``(*batch_shape, 1, dv)``.
            scale: as in :func:`taylorshift.taylor_shift_attention` (default ``1/√d``).

        Returns:
            ``(*batch_shape, 1, dv)`` in the dtype of ``query``.
        """
        inp = self._inputs("step", query, key, value, None, scale)
        if inp.q.shape[-2] != 1:
            raise ValueError(f"step: expected one position (*batch, 1, d), got {inp.q.shape[-2]}; use prefill")
        c = self.state.dtype
        q, k, v, s = inp.q, inp.k, inp.v, inp.scale
        if q.dtype != c:
            q, k, v = q.to(c), k.to(c), v.to(c)
        if isinstance(s, Tensor) and s.dtype != c:
            s = s.to(c)
        with autocast_disabled(q.device):
            out = self._step(q * s, k, v)
        return out if out.dtype == inp.out_dtype else out.to(inp.out_dtype)

    def _step(self, qs: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """:meth:`step` on checked inputs in the state's dtype: scaled query ``qs`` and key ``(*batch, 1, d)``,
        value ``(*batch, 1, dv)``; returns ``(*batch, 1, dv)``.

        The features of both rows come from two gathers of ``[q̃ | 1]``, ``[k | 1]`` (:func:`one_row_features`),
        the update is one fused multiply-add and the read-out one matmul whose last column is the denominator;
        the constants (indices, weights, ones) are made in ``__init__``.
        """
        x1 = torch.cat([torch.cat([qs, k], dim=-2), self._ones], dim=-1)  # [q̃ | 1], [k | 1]: (*batch, 2, d + 1)
        phi = one_row_features(x1, self._pairs)  # (*batch, 2, F)
        vp = torch.cat([v, self._ones1], dim=-1)  # [v | 1]
        y = update_and_read(self.state, phi[..., 1:, :], vp, phi[..., :1, :] * self._w)
        self.length += 1
        return y[..., :-1] / y[..., -1:]  # the new key is attendable: every step row has a key (divide_rows)


def expand_pairs(pairs: tuple[Tensor, Tensor], leading: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The index vectors of :func:`taylorshift.ops.features.augmented_pairs` expanded (views, no copy) to
    ``(*leading, F)``, the index shape of :func:`one_row_features` for rows ``(*leading, d + 1)``."""
    return tuple(p.expand(*leading, p.numel()) for p in pairs)  # type: ignore[return-value]


def one_row_features(x1: Tensor, pairs: tuple[Tensor, Tensor]) -> Tensor:
    """Unweighted features ``φ(x)`` of rows given augmented, ``x1 = [x | 1]`` ``(..., d + 1)`` → ``(..., F)``
    (token-major): ``x1[I] · x1[J]``, two gathers and one product.

    Args:
        x1: ``(..., d + 1)``.
        pairs: ``augmented_pairs(d, form, device)``, or those expanded to ``(..., F)`` (:func:`expand_pairs`;
            a decoding step makes them once).
    """
    i, j = pairs
    if i.dim() == 1:
        i, j = expand_pairs(pairs, x1.shape[:-1])
    return torch.gather(x1, -1, i) * torch.gather(x1, -1, j)  # torch.gather: a few times faster than index_select


def update_and_read(state: Tensor, phi_k: Tensor, vp: Tensor, phi_q_weighted: Tensor) -> Tensor:
    """One decoding step on the unweighted state ``(*batch, F, e)``, in place: ``state += φ(k) v'ᵀ`` (one fused
    multiply-add), then the read-out ``[num | den] = φ(q̃)ᵀ diag(w) state`` (one matmul).

    Args:
        phi_k: ``(*batch, 1, F)`` features of the new key; ``vp``: ``(*batch, 1, e)``, ``[v | 1]``.
        phi_q_weighted: ``(*batch, 1, F)``, ``φ(q̃) ⊙ w``.

    Returns:
        ``(*batch, 1, e)``.
    """
    state.addcmul_(phi_k.mT, vp)
    return phi_q_weighted @ state

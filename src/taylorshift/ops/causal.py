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

The public recurrent form is :func:`taylor_shift_causal`: the chunked algorithm started from an initial
:class:`CausalState` (the sums ``Z`` and the key counts), returning the final one, so that any split of a
sequence into calls computes the same as one causal call. A call of one position without gradients (a decoding
step) adds ``φ(k_t) v'_tᵀ`` to the state and reads it with ``φ(q̃_t)``, ``O(F·dv)`` whatever the context
length; it is a few kFLOP per head, so its cost is the number of tensor operations: the features of one row are
the upper triangle of ``[x | 1][x | 1]ᵀ``, two gathers and a product (:func:`one_row_features`), the update one
``addcmul`` and the read-out one matmul (:func:`_step`). :class:`TaylorShiftState` (``prefill``/``step``) and
the module's decoding cache keep a state and call the op.

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

import functools
import math
from dataclasses import dataclass, replace
from numbers import Integral

import torch
import torch.nn.functional as nnf
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

__all__ = [
    "CausalState",
    "TaylorShiftState",
    "causal_efficient_attention",
    "default_causal_chunk_size",
    "taylor_shift_causal",
]


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
    """Causal chunked forward (returns ``out`` and the final state) and its two-pass recomputing backward (see
    the module docstring). Differentiable with respect to ``qs``, ``k``, ``vp`` and the initial state, through
    ``out`` and through the final state (truncated backpropagation through time)."""

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
        ctx.keep_state = keep_state
        return out, state

    @staticmethod
    def backward(ctx, dout, dfinal):  # noqa: D102
        no_double_backward()
        qs, k, vp, state0, w, out, den = ctx.saved_tensors
        coefficients, form, chunk = ctx.coefficients, ctx.form, ctx.chunk
        L, S = qs.shape[-2], k.shape[-2]
        g = dout * reciprocal_rows(den, ctx.has_key)  # (*batch, L, dv)
        dy = torch.cat([g, -(g * out).sum(-1, keepdim=True)], dim=-1)  # ∂loss/∂y, (*batch, L, dv+1)
        need_q, need_k, need_v, need_state = ctx.needs_input_grad[:4]
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
        # pass 2, reverse order: G = Σ over later chunks of φ(q̃) ∂yᵀ; a chunk's keys enter only later reads and
        # (when kept) the final state, whose gradient is ``dfinal``: ∂Z of the chunk's keys = diag(w) G + dfinal
        dstate0 = None
        if need_k or need_v or need_state:
            G = torch.zeros_like(state0)
            for i, (l0, l1) in enumerate(reversed(chunks)):
                in_final = dfinal is not None and (i > 0 or ctx.keep_state)
                if (need_k or need_v) and (i > 0 or in_final) and l0 < S:
                    k1 = min(l1, S)
                    k_c, vp_c = k[..., l0:k1, :], vp[..., l0:k1, :]
                    dstate = G * w  # zero for the last chunk: no later reads
                    if in_final:
                        dstate += dfinal
                    phi = taylor_features(k_c, form)  # (*batch, F, c)
                    if need_v:
                        dvp[..., l0:k1, :] += phi.transpose(-1, -2) @ dstate
                    if need_k:
                        dphi = torch.matmul(dstate, vp_c.transpose(-1, -2), out=phi)
                        dk[..., l0:k1, :] += taylor_features_backward(k_c, dphi, form)
                if l0 > 0 or need_state:
                    G += taylor_features(qs[..., l0:l1, :], form) @ dy[..., l0:l1, :]
            if need_state:  # out reads diag(w)·state0 in every row; the final state is state0 plus the keys
                dstate0 = G * w if dfinal is None else G * w + dfinal
        return dqs, dk, dvp, dstate0, None, None, None, None, None


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


def _head_dim_of(F: int, form: Form) -> int | None:
    """The head size ``d`` with ``feature_dim(d, form) == F``, or None if there is none."""
    # full: F = d² + d + 1, so 4F - 3 = (2d + 1)²; symmetric: F = (d+1)(d+2)/2, so 8F + 1 = (2d + 3)²
    root = math.isqrt(4 * F - 3) if form == "full" else math.isqrt(8 * F + 1)
    d = (root - 1) // 2 if form == "full" else (root - 3) // 2
    return d if d >= 1 and feature_dim(d, form) == F else None


@dataclass(frozen=True)
class CausalState:
    """Everything causal TaylorShift keeps of a sequence prefix: what :func:`taylor_shift_causal` reads with
    ``initial_state`` and returns with ``output_final_state=True``.

    A value, not a container: calls never modify a state, they return a new one. Its size does not depend on
    how many positions it summarises.

    Attributes:
        sums: ``(*batch, F, dv + 1)``, ``Z = Σ_j φ(k_j) [v_j | 1]ᵀ`` over the keys seen (padding excluded), with
            the **unweighted** Taylor features ``φ`` of :func:`taylorshift.ops.taylor_features` (``F`` =
            :func:`taylorshift.ops.feature_dim` of ``head_dim`` and ``form``); the last column is ``Σ_j φ(k_j)``.
            The polynomial's coefficients and the logit scale are applied when the state is read, so one state
            serves any of them. float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs (never
            half precision: the sums grow with the number of keys). Differentiable when the call that made it
            was.
        n_keys: ``(*batch,)`` int64, keys folded into ``sums`` per batch row (padded positions not counted).
        length: positions consumed so far, padding included (the same for every row).
        form: feature form of ``sums``, ``"symmetric"`` (default) or ``"full"``.

    Make an empty one with :meth:`zeros` (or pass ``initial_state=None``).
    """

    sums: Tensor
    n_keys: Tensor
    length: int = 0
    form: Form = DEFAULT_FORM

    def __post_init__(self) -> None:
        if not isinstance(self.sums, Tensor) or self.sums.dim() < 2 or self.sums.dtype not in _STATE_DTYPES:
            desc = f"{tuple(self.sums.shape)} {self.sums.dtype}" if isinstance(self.sums, Tensor) else type(self.sums)
            raise TypeError(f"CausalState.sums must be a float32 or float64 tensor (*batch, F, dv + 1), got {desc}")
        check_form(self.form)
        if self.sums.shape[-1] < 2 or _head_dim_of(self.sums.shape[-2], self.form) is None:
            raise ValueError(
                f"CausalState.sums of shape {tuple(self.sums.shape)} is not (*batch, F, dv + 1) with F a feature "
                f"count of form {self.form!r} (F = feature_dim(d, form)) and dv >= 1"
            )
        n = self.n_keys
        if not isinstance(n, Tensor) or n.dtype != torch.int64 or tuple(n.shape) != self.batch_shape:
            desc = f"{tuple(n.shape)} {n.dtype}" if isinstance(n, Tensor) else type(n).__name__
            raise TypeError(f"CausalState.n_keys must be an int64 tensor of shape {self.batch_shape}, got {desc}")
        if n.device != self.sums.device:
            raise ValueError(f"CausalState.n_keys is on {n.device} but sums are on {self.sums.device}")
        if isinstance(self.length, bool) or not isinstance(self.length, Integral) or self.length < 0:
            raise ValueError(f"CausalState.length must be an int >= 0, got {self.length!r}")

    @classmethod
    def zeros(
        cls,
        batch_shape: tuple[int, ...],
        head_dim: int,
        value_dim: int | None = None,
        *,
        form: Form = DEFAULT_FORM,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> CausalState:
        """The state of an empty prefix.

        Args:
            batch_shape: leading dims of the inputs it will be used with, e.g. ``(B, H)``.
            head_dim: query/key size ``d``; ``value_dim``: value size ``dv`` (default ``d``).
            form: feature form.
            dtype: dtype of the *inputs* (float16, bfloat16, float32 or float64); the sums are kept in its
                compute dtype (float32, or float64 for float64).
            device: default torch's default device.
        """
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
        form = check_form(form)
        c = compute_dtype(dtype)
        device = torch.get_default_device() if device is None else torch.device(device)
        shape = tuple(int(n) for n in batch_shape)
        check_state_memory(max(1, torch.Size(shape).numel()), int(head_dim), int(value_dim), form, c, device)
        sums = torch.zeros((*shape, feature_dim(int(head_dim), form), int(value_dim) + 1), dtype=c, device=device)
        return cls(sums, torch.zeros(shape, dtype=torch.int64, device=device), 0, form)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.sums.shape[:-2])

    @property
    def head_dim(self) -> int:
        return _head_dim_of(self.sums.shape[-2], self.form)  # type: ignore[return-value]

    @property
    def value_dim(self) -> int:
        return self.sums.shape[-1] - 1

    @property
    def dtype(self) -> torch.dtype:
        return self.sums.dtype

    @property
    def device(self) -> torch.device:
        return self.sums.device

    @property
    def nbytes(self) -> int:
        """Bytes held (``sums`` and ``n_keys``): constant in :attr:`length`."""
        return sum(t.numel() * t.element_size() for t in (self.sums, self.n_keys))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CausalState:
        """The same state on ``device`` and/or with sums in ``dtype`` (float32 or float64; the counts stay int64)."""
        if dtype is not None and dtype not in _STATE_DTYPES:
            raise TypeError(f"a CausalState holds float32 or float64 sums, got dtype={dtype}")
        return replace(self, sums=self.sums.to(device=device, dtype=dtype), n_keys=self.n_keys.to(device=device))

    def detach(self) -> CausalState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return self if not self.sums.requires_grad else replace(self, sums=self.sums.detach())

    def __repr__(self) -> str:
        return (
            f"CausalState(batch_shape={self.batch_shape}, head_dim={self.head_dim}, value_dim={self.value_dim}, "
            f"form={self.form!r}, dtype={self.dtype}, device={self.device}, length={self.length})"
        )


_STATE_DTYPES = (torch.float32, torch.float64)


def _check_state(state: object, batch: tuple[int, ...], d: int, dv: int, c: torch.dtype, q: Tensor) -> CausalState:
    if not isinstance(state, CausalState):
        raise TypeError(f"initial_state must be a CausalState (or None), got {type(state).__name__}")
    if state.batch_shape != batch:
        raise ValueError(f"initial_state has batch dims {state.batch_shape}, but the inputs have batch dims {batch}")
    if (state.head_dim, state.value_dim) != (d, dv):
        raise ValueError(
            f"initial_state was made for head sizes d={state.head_dim}, dv={state.value_dim}, but the inputs have "
            f"head sizes d={d}, dv={dv}"
        )
    if state.dtype != c:
        raise TypeError(
            f"initial_state holds {state.dtype} sums, but {q.dtype} inputs are computed in {c}: convert it with "
            f"initial_state.to(dtype={c}) or pass inputs of a matching dtype"
        )
    if state.device != q.device:
        raise ValueError(f"initial_state is on {state.device} but the inputs are on {q.device}; use .to(device)")
    return state


def _check_padding_mask(mask: object, q: Tensor) -> Tensor | None:
    """The keep-mask ``(..., L)`` (True = attend) of a ``key_padding_mask`` broadcastable to ``(*batch, L)``."""
    if mask is None:
        return None
    target = (*q.shape[:-2], q.shape[-2])
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        desc = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"key_padding_mask must be a bool tensor broadcastable to (*batch, L) = {target} with "
                        f"True = padding, got {desc}")
    try:
        ok = torch.broadcast_shapes(mask.shape, target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"key_padding_mask of shape {tuple(mask.shape)} is not broadcastable to (*batch, L) = {target}"
        )
    if mask.device != q.device:
        raise ValueError(f"key_padding_mask is on {mask.device} but query is on {q.device}")
    return ~mask


def _make_step_constants(d: int, form: Form, coefficients: tuple[float, float, float], dtype: torch.dtype,
                         device: torch.device, leading: tuple[int, ...]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    w = feature_weights(d, form, coefficients, dtype=dtype, device=device)
    return w, expand_pairs(augmented_pairs.__wrapped__(d, form, device), leading)


_cached_step_constants = functools.lru_cache(maxsize=64)(_make_step_constants)


def _step_constants(d, form, coefficients, dtype, device, leading) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Feature weights ``w (F,)`` and the pair indices expanded to ``(*leading, F)`` of a single-token call: made
    once per configuration in eager mode (a step then creates no tensor but its results; callers never modify
    them), afresh under ``torch.compile`` or export (a tensor made while tracing is a fake one and must not be kept)."""
    if torch.compiler.is_compiling() or exporting():
        return _make_step_constants(d, form, coefficients, dtype, device, leading)
    return _cached_step_constants(d, form, coefficients, dtype, device, leading)


def _step(qs: Tensor, k: Tensor, v: Tensor, sums: Tensor, keep: Tensor | None, coefficients, form: Form,
          has_key: Tensor | None) -> tuple[Tensor, Tensor]:
    """One position (``L = 1``), not differentiable: ``Z' = Z + φ(k)[v | 1]ᵀ`` and ``y = φ(q̃)ᵀ diag(w) Z'``.

    ``O(F·dv)``; at these sizes the cost is the number of tensor operations, so it is a fixed, small number of
    them: the features of both rows are two gathers of ``[q̃ | 1], [k | 1]`` (:func:`one_row_features`), the
    update one ``addcmul`` and the read-out one matmul whose last column is the denominator.

    Returns:
        ``out (*batch, 1, dv)`` and the new sums ``(*batch, F, dv + 1)``.
    """
    x1 = nnf.pad(torch.cat([qs, k], dim=-2), (0, 1), value=1.0)  # [q̃ | 1], [k | 1]: (*batch, 2, d + 1)
    w, pairs = _step_constants(k.shape[-1], form, coefficients, sums.dtype, sums.device, tuple(x1.shape[:-1]))
    phi = one_row_features(x1, pairs)  # (*batch, 2, F)
    vp = nnf.pad(v, (0, 1), value=1.0)  # [v | 1]: (*batch, 1, dv + 1)
    if keep is not None:
        vp = vp * keep.unsqueeze(-1)
    sums = torch.addcmul(sums, phi[..., 1:, :].mT, vp)
    y = (phi[..., :1, :] * w) @ sums  # [num | den]: (*batch, 1, dv + 1)
    return divide_rows(y[..., :-1], y[..., -1:], has_key), sums


def taylor_shift_causal(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    initial_state: CausalState | None = None,
    output_final_state: bool = False,
    scale: float | Tensor | None = None,
    coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
    key_padding_mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, CausalState | None]:
    """Causal TaylorShift that continues a sequence: the recurrent form with its state in the signature.

    Query ``i`` of this call attends to every key already folded into ``initial_state`` and to the keys
    ``j <= i`` of this call (padding excluded):
    ``out_i = Σ_j p(s_ij) v_j / Σ_j p(s_ij)``, ``s_ij = scale · q_i·k_j``, ``p(x) = a x² + b x + c``. Splitting a
    sequence into calls and passing each call's final state to the next gives the same result as one
    ``taylor_shift_attention(..., is_causal=True)`` over the whole sequence, whatever the split: ``L = 1`` is
    one decoding step, any ``L`` continues it (chunked prefill). Calls with ``L = 1`` that need no gradient run
    a dedicated ``O(F·dv)`` update; the others the chunked algorithm of this module.

    Args:
        query, key: ``(*batch, L, d)``; typically ``(B, H, L, d)``.
        value: ``(*batch, L, dv)``.
        initial_state: the :class:`CausalState` of the prefix (from an earlier call's ``output_final_state``);
            None for a sequence that starts here. It must match the call: ``batch_shape == (*batch)``, head sizes
            ``d`` and ``dv``, sums in the inputs' compute dtype (float32 for float16/bfloat16/float32, float64
            for float64) and the inputs' device; else ``ValueError``/``TypeError`` saying which.
        output_final_state: also return the state after this call (else ``None`` is returned in its place).
        scale: ``None`` (``1/√d``), a float, or a tensor broadcastable to ``(*batch, 1, 1)`` (e.g. a per-head
            temperature ``(H, 1, 1)``). The state does not depend on it (it multiplies the queries only).
        coefficients: ``(a, b, c)`` of ``p``; the state does not depend on them either.
        key_padding_mask: optional bool tensor broadcastable to ``(*batch, L)``, **True = padding**: those keys
            are never attended, now or later, and not counted in ``n_keys``. Their query rows are computed like
            any other (a row that has seen no key at all is 0).
        chunk_size: query positions per chunk of the chunked algorithm (default
            :func:`default_causal_chunk_size`).

    Returns:
        ``(out, state)``: ``out (*batch, L, dv)`` in the dtype of ``query`` (float16/bfloat16 are computed in
        float32; inside ``torch.autocast`` inputs are cast as for SDPA) and the final :class:`CausalState` or
        None. Gradients flow from ``out`` and from the final state into ``query``, ``key``, ``value``, a
        tensor ``scale`` and ``initial_state.sums`` (first order only), so truncated backpropagation through
        time works; cut it with :meth:`CausalState.detach`.

    Raises:
        TypeError / ValueError: as :func:`taylorshift.taylor_shift_attention` for the tensors and ``scale``;
            ``key`` and ``query`` of different lengths; a bad mask; an ``initial_state`` that does not match.
    """
    inp = check_inputs(query, key, value, None, scale, coefficients)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {type(output_final_state).__name__}")
    q, k, v = inp.q, inp.k, inp.v
    L, d, dv = q.shape[-2], q.shape[-1], v.shape[-1]
    if k.shape[-2] != L:
        raise ValueError(
            f"key has {k.shape[-2]} positions but query has {L}; taylor_shift_causal is causal self-attention "
            "over one sequence, so they must be equal"
        )
    keep = _check_padding_mask(key_padding_mask, q)  # (..., L), True = attend
    chunk = check_chunk_size(chunk_size)
    batch, c = tuple(q.shape[:-2]), inp.compute_dtype
    if initial_state is None:
        form, sums0, n0, length = DEFAULT_FORM, None, None, 0
    else:
        state = _check_state(initial_state, batch, d, dv, c, q)
        form, sums0, n0, length = state.form, state.sums, state.n_keys, state.length
    # which rows have seen a key (from the counts, never from the sums' values), and the new counts
    if keep is None:
        has_key = None
        n_new = (n0 + L) if n0 is not None else None
    else:
        seen = keep.cumsum(-1)  # (..., L)
        if n0 is not None:
            seen = seen + n0.unsqueeze(-1)
        has_key = (seen > 0).unsqueeze(-1)  # (..., L, 1)
        n_new = seen[..., -1] if L else n0
    if n_new is None:
        n_new = torch.full(batch, L, dtype=torch.int64, device=q.device)
    elif tuple(n_new.shape) != batch:
        n_new = n_new.expand(batch).clone()
    scale_ = inp.scale
    if isinstance(scale_, Tensor) and scale_.dtype != c:
        scale_ = scale_.to(c)
    needs_grad = inp.needs_grad or (sums0 is not None and torch.is_grad_enabled() and sums0.requires_grad)
    with autocast_disabled(q.device):
        if q.dtype != c:
            q, k, v = q.to(c), k.to(c), v.to(c)
        if L == 0:
            out = q.new_zeros((*batch, 0, dv))
            sums = sums0 if sums0 is not None else q.new_zeros((*batch, feature_dim(d, form), dv + 1))
        elif L == 1 and not needs_grad and sums0 is not None:
            keep1 = None if keep is None else keep.to(c)
            out, sums = _step(q * scale_, k, v, sums0, keep1, inp.coefficients, form, has_key)
        else:
            if exporting():  # the single-position update above exports (fixed shapes); the chunked loop does not
                raise RuntimeError(
                    "taylor_shift_causal exports or traces only a single-position update without gradients (L = 1, "
                    "an initial_state, no autograd: a decoding step); export taylor_shift_attention(..., "
                    "is_causal=True) for the parallel form"
                )
            mask = None if keep is None else keep.unsqueeze(-2)  # (..., 1, L)
            vp = augment_values(v, mask, 1.0)
            B = max(1, torch.Size(batch).numel())
            if chunk is None:
                chunk = default_causal_chunk_size(B, d, dv, form)
            check_efficient_memory(B, L, L, d, dv, form, chunk, q.dtype, q.device, causal=True, train=needs_grad)
            out, sums = _CausalEfficient.apply(
                q * scale_, k, vp, sums0, inp.coefficients, form, chunk, output_final_state, has_key
            )
    out = out if out.dtype == inp.out_dtype else out.to(inp.out_dtype)
    if not output_final_state:
        return out, None
    return out, CausalState(sums, n_new, length + L, form)


class TaylorShiftState:
    """A decoding state that updates itself: a :class:`CausalState` plus the polynomial and the chunk size, with
    ``prefill`` / ``step`` methods that call :func:`taylor_shift_causal` and keep its final state.

    ``prefill`` then ``step`` computes the same as one causal call over the concatenated sequence: for
    positions ``t`` (counted from the first prefill) ``out_t = Σ_{j<=t} p(s_tj) v_j / Σ_{j<=t} p(s_tj)``. For
    inference: the kept state is detached, so a ``prefill`` is differentiable with respect to its own
    ``query, key, value`` only (for training through the state, call :func:`taylor_shift_causal` directly).

    Args:
        batch_shape: leading dims of the inputs, e.g. ``(B, H)``.
        head_dim: query/key size ``d``.
        value_dim: value size ``dv`` (default ``d``).
        coefficients: ``(a, b, c)`` of ``p``.
        form: feature form (``"symmetric"`` or ``"full"``).
        dtype: precision of the inputs; the state is kept in its compute dtype (float32 for half precision).
        device: device of the state.
        chunk_size: chunk of :meth:`prefill` (default :func:`default_causal_chunk_size`).

    Attributes:
        current: the :class:`CausalState` (replaced by every call).
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
        self.coefficients = check_coefficients(coefficients)
        self.chunk_size = check_chunk_size(chunk_size)
        self.current = CausalState.zeros(batch_shape, head_dim, value_dim, form=form, dtype=dtype, device=device)
        normalize_coefficients(self.coefficients, self.current.dtype)  # ratios the state's dtype cannot carry
        self.batch_shape, self.value_dim = self.current.batch_shape, self.current.value_dim
        self.head_dim = int(head_dim)
        self.form: Form = self.current.form

    def __repr__(self) -> str:
        return (
            f"TaylorShiftState(batch_shape={self.batch_shape}, head_dim={self.head_dim}, value_dim={self.value_dim}, "
            f"form={self.form!r}, dtype={self.state.dtype}, length={self.length})"
        )

    @property
    def state(self) -> Tensor:
        """The running sums ``(*batch_shape, F, dv + 1)`` (:attr:`CausalState.sums`)."""
        return self.current.sums

    @property
    def length(self) -> int:
        """Positions seen (padding included)."""
        return self.current.length

    @length.setter
    def length(self, value: int) -> None:
        self.current = replace(self.current, length=value)

    @property
    def nbytes(self) -> int:
        """Bytes of the running sums (constant: they do not grow with :attr:`length`)."""
        return self.state.numel() * self.state.element_size()

    def reset(self) -> None:
        """Forget every position (zero state, ``length = 0``)."""
        self.current = replace(self.current, sums=torch.zeros_like(self.current.sums),
                               n_keys=torch.zeros_like(self.current.n_keys), length=0)

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
            ``query, key, value`` (the earlier state is a constant). The state is updated.
        """
        padding = None
        if attn_mask is not None:
            inp = check_inputs(query, key, value, attn_mask, scale, self.coefficients)
            if not inp.key_only_mask:
                raise ValueError("prefill: attn_mask must be a key mask broadcastable to (*batch, 1, N)")
            padding = ~(inp.mask if inp.mask.dim() < 2 else inp.mask.squeeze(-2))
        return self.update(query, key, value, scale=scale, key_padding_mask=padding)

    @torch.no_grad()
    def step(self, query: Tensor, key: Tensor, value: Tensor, scale=None) -> Tensor:
        """One new position: add its key and value to the state, then read the state with its query.

        ``O(F·dv)`` time and no allocation that grows with :attr:`length`; runs without autograd.

        Args:
            query, key: ``(*batch_shape, 1, d)``; value ``(*batch_shape, 1, dv)``.
            scale: as in :func:`taylorshift.taylor_shift_attention` (default ``1/√d``).

        Returns:
            ``(*batch_shape, 1, dv)`` in the dtype of ``query``.
        """
        if isinstance(query, Tensor) and query.dim() >= 2 and query.shape[-2] != 1:
            raise ValueError(f"step: expected one position (*batch, 1, d), got {query.shape[-2]}; use prefill")
        return self.update(query, key, value, scale=scale)

    def update(
        self, query: Tensor, key: Tensor, value: Tensor, *, scale=None, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """The general call behind :meth:`prefill` and :meth:`step`: :func:`taylor_shift_causal` from
        :attr:`current` (any number of positions; ``key_padding_mask`` broadcastable to ``(*batch_shape, N)``,
        True = padding), keeping its final state (detached).

        Returns:
            ``(*batch_shape, N, dv)`` in the dtype of ``query``.
        """
        out, state = taylor_shift_causal(
            query, key, value, initial_state=self.current, output_final_state=True, scale=scale,
            coefficients=self.coefficients, key_padding_mask=key_padding_mask, chunk_size=self.chunk_size,
        )
        self.current = state.detach()
        return out


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

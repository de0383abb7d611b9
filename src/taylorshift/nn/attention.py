"""``TaylorShiftAttention``: multi-head self-attention with the paper's normalisation scheme.

Per head (Nauen et al., 2024): queries and keys are L2-normalised, a learnable temperature ``τ_h``
(initialised to 1) is the logit scale, so every logit is ``τ_h · cos(q_i, k_j)``; the attention output is
multiplied by ``√(N/d)`` with ``N`` the number of valid (unpadded) keys of the sequence, which undoes the
``1/√N`` shrinkage of a nearly uniform average of ``N`` values.

Attention dropout. Dropping entries of the L×S weight matrix has no counterpart in the efficient form
(the original code drops a different tensor in each path). Here ``attn_drop`` drops *keys*: in training,
each key of each (batch, head) is removed from the attention with probability ``attn_drop`` before the
normalisation (DropKey style), so the remaining weights still sum to one. It is a key mask, which both
backends compute exactly, so direct and efficient remain the same function for the same random draw.

Causal (``causal=True``). Query ``i`` attends to keys ``j <= i`` (and not padded); its output factor is
``√(n_i/d)`` with ``n_i`` the number of valid keys ``j <= i``, the per-row version of ``√(N/d)``. Such a
module also decodes recurrently: :meth:`TaylorShiftAttention.new_cache`, :meth:`~TaylorShiftAttention.prefill`
and :meth:`~TaylorShiftAttention.step` keep a :class:`taylorshift.ops.causal.TaylorShiftState` per layer, so a
new token costs ``O(H·F·d)`` whatever the context length, and prefill + steps equal the parallel forward.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from taylorshift.ops import DEFAULT_COEFFICIENTS, check_coefficients, taylor_shift_attention
from taylorshift.ops.causal import TaylorShiftState
from taylorshift.ops.common import exporting
from taylorshift.ops.inputs import check_backend, compute_dtype


def check_module_args(dim: int, num_heads: int, head_dim: int | None, attn_drop: float, proj_drop: float,
                      causal: bool = False) -> int:
    """Validate the shared constructor arguments; return the resolved ``head_dim``."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    for name, value in (("dim", dim), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if head_dim is None:
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}), or pass head_dim")
        head_dim = dim // num_heads
    elif isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim must be a positive int or None, got {head_dim!r}")
    for name, p in (("attn_drop", attn_drop), ("proj_drop", proj_drop)):
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}")
    return head_dim


def check_forward_args(x: object, key_padding_mask: object, dim: int) -> None:
    """Validate ``forward(x (B, N, dim), key_padding_mask (B, N) bool | None)`` of the attention modules."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, N, {dim}), got {shape}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError("key_padding_mask must be a bool tensor (B, N) with True = padding")
        if tuple(key_padding_mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"key_padding_mask must have shape (B, N) = {tuple(x.shape[:2])}, got {tuple(key_padding_mask.shape)}"
            )


@dataclass
class TaylorShiftCache:
    """Decoding cache of one causal :class:`TaylorShiftAttention` (from :meth:`TaylorShiftAttention.new_cache`).

    Attributes:
        state: the running state of every (batch, head): a :class:`taylorshift.ops.TaylorShiftState` whose
            ``current`` is the :class:`taylorshift.CausalState` of :func:`taylorshift.taylor_shift_causal`
            (sums of shape ``(B, H, F, d + 1)``).
        n_valid: ``(B,)`` int64, valid (unpadded) positions seen per sequence: the ``n`` of the output factor.
    """

    state: TaylorShiftState
    n_valid: Tensor

    @property
    def length(self) -> int:
        """Positions (tokens) seen so far, padding included."""
        return self.state.length

    @property
    def batch_size(self) -> int:
        return self.state.batch_shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held (constant in :attr:`length`: ``B·H·F·(d+1)`` state entries plus the counts)."""
        return self.state.nbytes + self.n_valid.numel() * self.n_valid.element_size()

    def reset(self) -> None:
        """Forget everything (as a fresh cache)."""
        self.state.reset()
        self.n_valid.zero_()


def _make_value_slot(device: torch.device) -> Tensor:
    return torch.tensor([False, False, True], device=device).view(3, 1, 1)


_cached_value_slot = functools.lru_cache(maxsize=16)(_make_value_slot)


def _value_slot(device: torch.device) -> Tensor:
    """``(3, 1, 1)`` bool, True for the value slot of the ``(B, N, 3, H, d)`` projections: made once per device
    in eager mode, afresh while tracing (a tensor made under ``torch.export`` or ``torch.compile`` is a fake one
    and must not be kept)."""
    if exporting() or torch.compiler.is_compiling():
        return _make_value_slot(device)
    return _cached_value_slot(device)


class _UnitQK(torch.autograd.Function):
    """``t / where(value slot, 1, norms)`` on the ``(B, N, 3, H, d)`` projections, saving only its output and the
    norms for the backward (plain tensor operations would keep the raw projections alive as well: one more copy of
    q, k and v per block during training).

    The gradient of ``y = x / max(|x|, ε)`` is ``(g − y (g·y)) / |x|`` where ``|x| > ε`` and ``g / ε`` where the
    norm is clamped; on value rows it is ``g``.
    """

    @staticmethod
    def forward(ctx, t: Tensor, slot: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(t, dim=-1, keepdim=True)  # (B, N, 3, H, 1)
        divisor = torch.where(slot, 1.0, norms.clamp_min(1e-12))
        y = t / divisor
        ctx.save_for_backward(y, divisor, norms > 1e-12, slot)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        y, divisor, unclamped, slot = ctx.saved_tensors
        radial = torch.where(unclamped & ~slot, (g * y).sum(-1, keepdim=True), 0.0)
        return (g - y * radial) / divisor, None


def _unit_qk(t: Tensor) -> Tensor:
    """q and k rows of ``t (B, N, 3, H, d)`` divided by their L2 norms clamped at 1e-12 (as ``F.normalize``), the
    value rows unchanged; in training through :class:`_UnitQK` (lean backward), else one norm, clamp, select and
    division (a decoding step is a handful of small operations, so their count matters; exporters and compilers
    see plain operations)."""
    slot = _value_slot(t.device)
    if t.requires_grad and torch.is_grad_enabled() and not (exporting() or torch.compiler.is_compiling()):
        return _UnitQK.apply(t, slot)
    norms = torch.linalg.vector_norm(t, dim=-1, keepdim=True).clamp_min(1e-12)  # (B, N, 3, H, 1)
    return t / torch.where(slot, 1.0, norms)


class TaylorShiftAttention(nn.Module):
    """Multi-head TaylorShift self-attention.

    Args:
        dim: model width ``C`` of the input ``x (B, N, C)``.
        num_heads: number of heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``; then ``dim`` must divide).
        qkv_bias: bias in the q/k/v projection.
        attn_drop: probability of dropping each key per (batch, head) in training (see module docstring).
        proj_drop: dropout after the output projection.
        normalize_qk: L2-normalise q and k and use a learnable per-head temperature as the logit scale; if
            False, the logit scale is the fixed ``1/√d``.
        temperature_init: initial value of the temperature (the paper: 1). With unit-norm q and k the logits
            lie in ``[-τ, τ]``, so at ``τ = 1`` the weights ``p(s)`` span only ``[0.5, 2.5]`` and attention starts
            close to uniform; a larger start lets heads focus from the first step.
        output_scale: multiply each head's output by ``√(N/d)``, ``N`` = number of valid keys.
        coefficients: ``(a, b, c)`` of the weight polynomial ``a x² + b x + c``.
        backend: ``"auto"``, ``"direct"`` or ``"efficient"`` (see :func:`taylorshift.taylor_shift_attention`).
        causal: position ``i`` attends only to positions ``j <= i``; the output factor is then ``√(n_i/d)``
            per row, ``n_i`` = number of valid positions ``j <= i``. Enables :meth:`new_cache`,
            :meth:`prefill` and :meth:`step`.
        sequence_group: a ``torch.distributed`` process group (or the attribute of the same name, set by
            :func:`taylorshift.distributed.set_sequence_parallel`): ``forward`` then gets this rank's contiguous part
            of each sequence and attends over the whole sequence (:mod:`taylorshift.distributed.models`).

    Shapes:
        ``forward(x, key_padding_mask=None)``: ``x (B, N, C)`` → ``(B, N, C)``. ``key_padding_mask`` is a
        bool ``(B, N)`` tensor with **True = padding (ignore)**, the convention of
        ``torch.nn.MultiheadAttention``. Padded positions still produce (finite) outputs; callers ignore them.

    Decoding (``causal=True`` only)::

        cache = attn.new_cache(B)            # cache.length == 0
        y = attn.prefill(x, cache)           # x (B, N, C) -> (B, N, C), == attn(x); cache.length == N
        y_t = attn.step(x_t, cache)          # x_t (B, 1, C) -> (B, 1, C); cache.length == N + 1

    Prefill and step use the efficient running-state form whatever ``backend`` says, never drop keys
    (``attn_drop`` is ignored: decoding is for inference), and ``step`` runs without autograd.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        normalize_qk: bool = True,
        output_scale: bool = True,
        coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
        backend: str = "auto",
        causal: bool = False,
        temperature_init: float = 1.0,
        sequence_group: object = None,
    ) -> None:
        super().__init__()
        self.sequence_group = sequence_group  # sequence parallelism: see taylorshift.distributed.models
        if isinstance(temperature_init, bool) or not isinstance(temperature_init, (int, float)) or not (
            math.isfinite(temperature_init) and temperature_init > 0
        ):
            raise ValueError(f"temperature_init must be a positive finite number, got {temperature_init!r}")
        head_dim = check_module_args(dim, num_heads, head_dim, attn_drop, proj_drop, causal)
        self.causal = causal
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.normalize_qk, self.output_scale = bool(normalize_qk), bool(output_scale)
        self.coefficients = check_coefficients(coefficients)
        self.backend = check_backend(backend)
        self.attn_drop = float(attn_drop)
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.temperature = (
            nn.Parameter(torch.full((num_heads, 1, 1), float(temperature_init))) if self.normalize_qk else None
        )
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def __prepare_scriptable__(self) -> TaylorShiftAttention:
        """``torch.jit.script`` calls this first: say clearly that TorchScript is not supported."""
        raise RuntimeError(
            "torch.jit.script is not supported by TaylorShiftAttention (its kernels are Python with custom "
            "autograd functions, and TorchScript is deprecated in PyTorch). Use torch.export.export (dynamic "
            "sequence lengths are supported, e.g. dynamic_shapes={'x': {1: torch.export.Dim('N')}}), "
            "torch.compile, or torch.jit.trace at a fixed shape."
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"normalize_qk={self.normalize_qk}, output_scale={self.output_scale}, "
            f"coefficients={self.coefficients}, attn_drop={self.attn_drop}, backend={self.backend!r}, "
            f"causal={self.causal}"
        )

    def _key_mask(self, key_padding_mask: Tensor | None, B: int, N: int, device: torch.device) -> Tensor | None:
        """Bool keep-mask ``(B, 1 or H, 1, N)`` (True = attend) from padding and key dropout."""
        keep = None
        if key_padding_mask is not None:
            keep = (~key_padding_mask)[:, None, None, :]  # (B, 1, 1, N)
        if self.training and self.attn_drop > 0:
            drop = torch.rand(B, self.num_heads, 1, N, device=device) < self.attn_drop
            keep = ~drop if keep is None else keep & ~drop
        return keep

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``q, k, v (B, H, N, d)`` and the logit scale (the temperature, or None for ``1/√d``).

        With ``normalize_qk`` the q and k rows are divided by their L2 norms clamped at 1e-12 (as
        ``F.normalize``), the v rows kept, for all heads at once (:func:`_unit_qk`).
        """
        B, N, _ = x.shape
        t = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, d)
        scale = None
        if self.normalize_qk:
            t = _unit_qk(t)
            scale = self.temperature  # (H, 1, 1), broadcasts to (B, H, 1, 1)
        q, k, v = t.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) each
        return q, k, v, scale

    def _output(self, out: Tensor, n: Tensor | int | None) -> Tensor:
        """Scale each head's ``out (B, H, N, d)`` by ``√(n/d)`` (``n`` broadcastable to ``(B, 1, N, 1)``), merge
        the heads and project: ``(B, N, C)``."""
        B, H, N, d = out.shape
        if self.output_scale:  # the factor in at least float32 (float16 cannot hold n = 65,536)
            dtype = torch.float64 if out.dtype == torch.float64 else torch.float32  # (no promote_types: one op less)
            if isinstance(n, torch.SymInt):  # an integer tensor first: no sym_float of the length in the graph
                n = torch.full((), n, dtype=torch.int64, device=out.device)
            elif not isinstance(n, Tensor):
                n = torch.full((), n, dtype=dtype, device=out.device)
            factor = torch.sqrt(n.to(dtype) / d)
            out = out * (factor if factor.dtype == out.dtype else factor.to(out.dtype))
        out = self.proj(out.transpose(1, 2).reshape(B, N, H * d))  # (B, N, H·d) -> (B, N, C)
        return self.proj_drop(out) if self.training else out

    @staticmethod
    def _causal_counts(key_padding_mask: Tensor | None, B: int, N: int, device: torch.device,
                       before: Tensor | None = None) -> Tensor:
        """``n_i`` of the causal output factor, ``(B, 1, N, 1)``: valid positions ``j <= i``, plus ``before (B,)``
        seen in earlier calls."""
        if key_padding_mask is None:
            counts = torch.arange(1, N + 1, device=device).expand(B, N)
        else:
            counts = (~key_padding_mask).cumsum(-1)  # (B, N)
        if before is not None:
            counts = counts + before.unsqueeze(-1)
        return counts.view(B, 1, N, 1)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``, ``key_padding_mask (B, N)`` bool with True = padding → ``(B, N, C)``."""
        check_forward_args(x, key_padding_mask, self.dim)
        if self.sequence_group is not None:  # x is this rank's part of the sequence
            from taylorshift.distributed.models import sequence_parallel_forward

            return sequence_parallel_forward(self, x, key_padding_mask)
        B, N, _ = x.shape
        q, k, v, scale = self._project(x)
        out = taylor_shift_attention(
            q, k, v, attn_mask=self._key_mask(key_padding_mask, B, N, x.device), is_causal=self.causal,
            scale=scale, backend=self.backend, coefficients=self.coefficients,
        )  # (B, H, N, d)
        if self.causal:  # n_i = valid keys j <= i, per row
            n = self._causal_counts(key_padding_mask, B, N, x.device)
        else:
            n = N if key_padding_mask is None else (~key_padding_mask).sum(-1).view(B, 1, 1, 1)
        return self._output(out, n)

    # ----------------------------------------------------------------------------------------- decoding

    def _require_causal(self, what: str) -> None:
        if not self.causal:
            raise ValueError(
                f"{what} needs a causal module: construct TaylorShiftAttention(..., causal=True). Recurrent "
                "decoding is only defined for causal attention (a non-causal position sees later tokens)."
            )

    def _check_cache(self, what: str, cache: object, x: object, length: int | None) -> None:
        self._require_causal(what)
        if not isinstance(cache, TaylorShiftCache):
            raise TypeError(f"{what}: cache must come from new_cache(), got {type(cache).__name__}")
        check_forward_args(x, None, self.dim)
        B = cache.batch_size
        if cache.state.batch_shape != (B, self.num_heads) or cache.state.head_dim != self.head_dim:
            raise ValueError(f"{what}: the cache was made for another module ({cache.state})")
        if x.shape[0] != B:
            raise ValueError(f"{what}: x has batch size {x.shape[0]} but the cache was made for {B}")
        if length is not None and x.shape[1] != length:
            raise ValueError(f"{what}: x must have shape (B, {length}, {self.dim}), got {tuple(x.shape)}")

    def new_cache(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TaylorShiftCache:
        """An empty decoding cache (``length == 0``) for ``batch_size`` sequences.

        ``device`` and ``dtype`` default to those of the module's parameters; the state is kept in float32
        for half-precision dtypes (float64 for float64).
        """
        self._require_causal("new_cache")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        weight = self.qkv.weight
        device = weight.device if device is None else torch.device(device)
        state = TaylorShiftState(
            (batch_size, self.num_heads), self.head_dim, self.head_dim, coefficients=self.coefficients,
            dtype=weight.dtype if dtype is None else dtype, device=device,
        )
        return TaylorShiftCache(state, torch.zeros(batch_size, dtype=torch.int64, device=device))

    def prefill(self, x: Tensor, cache: TaylorShiftCache, key_padding_mask: Tensor | None = None) -> Tensor:
        """Causal attention of ``x (B, N, C)`` after everything in ``cache``; updates ``cache`` in place.

        On a fresh cache the result equals ``forward(x, key_padding_mask)`` (up to rounding). Calling it
        again continues the sequence (chunked prefill). ``key_padding_mask (B, N)`` (True = padding), e.g.
        for left-padded prompts: padded positions are never attended and not counted in ``n``.

        Returns:
            ``(B, N, C)``.
        """
        self._check_cache("prefill", cache, x, None)
        check_forward_args(x, key_padding_mask, self.dim)
        return self._decode(x, cache, key_padding_mask)

    def step(self, x_t: Tensor, cache: TaylorShiftCache, key_padding_mask: Tensor | None = None) -> Tensor:
        """One new token ``x_t (B, 1, C)`` attending to everything in ``cache`` and itself → ``(B, 1, C)``.

        ``O(H·F·d)`` per call, independent of ``cache.length``; updates ``cache`` in place. Runs without autograd.
        The same computation as :meth:`prefill` of one token (the op's single-position update); ``key_padding_mask
        (B, 1)`` marks sequences whose new token is padding.
        """
        self._check_cache("step", cache, x_t, 1)
        check_forward_args(x_t, key_padding_mask, self.dim)
        if x_t.device != cache.state.state.device:
            raise ValueError(f"step: x_t is on {x_t.device} but the cache is on {cache.state.state.device}")
        with torch.no_grad():
            return self._decode(x_t, cache, key_padding_mask)

    def _decode(self, x: Tensor, cache: TaylorShiftCache, key_padding_mask: Tensor | None) -> Tensor:
        """:meth:`prefill` / :meth:`step` on checked arguments: the same projections and output factor as
        :meth:`forward`, the attention by :func:`taylorshift.taylor_shift_causal` from the cache's state (which
        decides the precision: the inputs are cast to its dtype), ``n`` from the cache's counts."""
        B, N, _ = x.shape
        q, k, v, scale = self._project(x)
        c = cache.state.state.dtype
        if compute_dtype(q.dtype) != c:  # a cache of another precision than the module (new_cache(dtype=...))
            q, k, v = q.to(c), k.to(c), v.to(c)
            scale = None if scale is None else scale.to(c)
        padding = None if key_padding_mask is None else key_padding_mask.unsqueeze(1)  # (B, 1, N): all heads
        out = cache.state.update(q, k, v, scale=scale, key_padding_mask=padding)  # (B, H, N, d)
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if key_padding_mask is None and N == 1:  # a decoding step: every sequence gains one valid position
            n = cache.n_valid.add_(1).view(B, 1, 1, 1)
        else:
            n = self._causal_counts(key_padding_mask, B, N, x.device, before=cache.n_valid)
            if N:
                cache.n_valid.copy_(n[:, 0, -1, 0])
        return self._output(out, n)

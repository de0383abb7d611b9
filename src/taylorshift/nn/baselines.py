"""Efficient-attention baselines from their PyPI packages, behind the call contract of our attention modules.

Each adapter is built as ``Adapter(dim, num_heads, head_dim=None, **kwargs)`` and called as
``module(x (B, N, C), key_padding_mask=None) -> (B, N, C)`` with **True = padding**, like
:class:`~taylorshift.nn.TaylorShiftAttention`, so :func:`taylorshift.nn.make_attention` and the model presets
take them by name (``create_model("pixels_cpu", attention="performer")``). The packages are optional
(``pip install taylorshift[baselines]``) and imported only when an adapter is built.

Kinds, adapters, packages (import name) and what key padding does:

- ``performer``: :class:`PerformerAttention`, ``performer-pytorch`` (``performer_pytorch``). Exact: the adapter
  zeroes the padded keys' features (the package's own ``mask`` zeroes only padded values, leaving the padded
  keys in the normaliser).
- ``linformer``: :class:`LinformerAttention`, ``linformer``. Exact: the package takes no mask; the adapter
  zeroes the padded rows before the bias-free key/value projections.
- ``nystrom``: :class:`NystromAttention`, ``nystrom-attention`` (``nystrom_attention``). The package's ``mask``.
- ``reformer``: :class:`ReformerAttention`, ``reformer-pytorch`` (``reformer_pytorch``). The package's
  ``input_mask``: padded keys get weight 0, but the hash buckets still see them.
- ``taylor_linear``: :class:`TaylorLinearAttention`, ``taylor-series-linear-attention``
  (``taylor_series_linear_attention``). The package's ``mask`` (exact).

The hyper-parameters chosen here and what each mask does exactly are in ``docs/baselines.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from taylorshift.nn.attention import check_forward_args, check_module_args

# kind -> (PyPI distribution, import name, version tested)
PACKAGES: dict[str, tuple[str, str, str]] = {
    "performer": ("performer-pytorch", "performer_pytorch", "1.1.4"),
    "linformer": ("linformer", "linformer", "0.2.3"),
    "nystrom": ("nystrom-attention", "nystrom_attention", "0.0.14"),
    "reformer": ("reformer-pytorch", "reformer_pytorch", "1.4.4"),
    "taylor_linear": ("taylor-series-linear-attention", "taylor_series_linear_attention", "0.2.0"),
}

# kinds whose module needs the longest sequence up front (``max_len``); the models pass it (make_blocks)
NEEDS_MAX_LEN: frozenset[str] = frozenset({"linformer"})


def baseline_available(kind: str) -> bool:
    """Whether the package behind baseline ``kind`` is installed (found without importing it)."""
    try:
        return importlib.util.find_spec(PACKAGES[kind][1]) is not None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return False


def _import(kind: str, module: str | None = None) -> ModuleType:
    """Import the package of ``kind`` (or one of its submodules), or an ``ImportError`` saying how to install."""
    dist, name, version = PACKAGES[kind]
    try:
        return importlib.import_module(module or name)
    except ImportError as err:
        raise ImportError(
            f"{kind!r} attention needs the {dist!r} package ({name}); install the baselines with "
            f"`pip install taylorshift[baselines]` (or `pip install {dist}=={version}`); the import failed with: {err}"
        ) from err


def _check_divisible(kind: str, dim: int, num_heads: int) -> None:
    if dim % num_heads:
        raise ValueError(
            f"{kind} attention ({PACKAGES[kind][0]}) needs dim ({dim}) divisible by num_heads ({num_heads})"
        )


class _PackageAttention(nn.Module):
    """Common part: the resolved sizes, ``inner`` (the package's module) and the shape checks."""

    kind: str = ""
    ACCEPTED_KWARGS: frozenset[str] = frozenset()

    def __init__(self, dim: int, num_heads: int, head_dim: int | None, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.head_dim = check_module_args(dim, num_heads, head_dim, attn_drop, proj_drop)
        self.dim, self.num_heads = dim, num_heads

    def extra_repr(self) -> str:
        dist, _, _ = PACKAGES[self.kind]
        return f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, package={dist!r}"


_PERFORMER_MODULE = "performer_pytorch.performer_pytorch"  # softmax_kernel, linear_attention, SelfAttention


class PerformerAttention(_PackageAttention):
    """Performer (FAVOR+) from ``performer-pytorch``: ``performer_pytorch.SelfAttention``.

    Args:
        dim, num_heads, head_dim: as for :class:`~taylorshift.nn.TaylorShiftAttention`; ``dim`` must be
            divisible by ``num_heads`` (the package asserts it).
        nb_features: random features per head (package default ``int(d·ln d)``: 44 for d = 16, 266 for d = 64).
        generalized_attention: ReLU kernel features instead of positive softmax features.
        feature_redraw_interval: redraw the random projection every this many training calls, as the package's
            ``Performer`` model does (default 1000, the package's); ``None`` keeps the features drawn at init.
        qkv_bias: bias in the q/k/v projections (package default False).
        proj_drop: dropout after the output projection (the package's ``dropout``).

    Key padding: the package's ``mask`` only zeroes the padded *values*; the padded keys stay in the
    normaliser, so valid outputs depend on the padding. The adapter therefore runs the package's own kernel
    (``softmax_kernel`` / ``generalized_kernel``) and ``linear_attention`` on the package's projections with
    the padded keys' features set to zero (and the padded keys zeroed before the kernel, so they cannot set
    the key stabiliser): padded keys then add nothing to numerator or denominator. Without a mask the
    package's ``SelfAttention.forward`` runs unchanged.
    """

    kind = "performer"
    ACCEPTED_KWARGS = frozenset(
        {"nb_features", "generalized_attention", "feature_redraw_interval", "qkv_bias", "proj_drop"}
    )

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        *,
        nb_features: int | None = None,
        generalized_attention: bool = False,
        feature_redraw_interval: int | None = 1000,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, head_dim, 0.0, proj_drop)
        _check_divisible(self.kind, dim, num_heads)
        if feature_redraw_interval is not None and (
            isinstance(feature_redraw_interval, bool)
            or not isinstance(feature_redraw_interval, int)
            or feature_redraw_interval < 1
        ):
            raise ValueError(f"feature_redraw_interval must be a positive int or None, got {feature_redraw_interval!r}")
        self.inner = _import(self.kind, _PERFORMER_MODULE).SelfAttention(
            dim,
            heads=num_heads,
            dim_head=self.head_dim,
            nb_features=nb_features,
            generalized_attention=generalized_attention,
            dropout=proj_drop,
            qkv_bias=qkv_bias,
        )
        self.feature_redraw_interval = feature_redraw_interval
        self._calls_since_redraw = 0

    def _maybe_redraw(self) -> None:
        """The package's ``ProjectionUpdater`` rule: in training, redraw after ``feature_redraw_interval`` calls."""
        if not self.training or self.feature_redraw_interval is None:
            return
        if self._calls_since_redraw >= self.feature_redraw_interval:
            fast = self.inner.fast_attention
            fast.redraw_projection_matrix(fast.projection_matrix.device)
            self._calls_since_redraw = 0
        else:
            self._calls_since_redraw += 1

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``, ``key_padding_mask (B, N)`` bool with True = padding → ``(B, N, C)``."""
        check_forward_args(x, key_padding_mask, self.dim)
        self._maybe_redraw()
        if key_padding_mask is None:
            return self.inner(x)
        att, fast = self.inner, self.inner.fast_attention
        pp = _import(self.kind, _PERFORMER_MODULE)  # not kept on the module, which stays picklable
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        keep = (~key_padding_mask)[:, None, :, None].to(x.dtype)  # (B, 1, N, 1)
        q, k, v = (proj(x).view(B, N, H, d).transpose(1, 2) for proj in (att.to_q, att.to_k, att.to_v))  # (B, H, N, d)
        k = k * keep
        if fast.generalized_attention:
            qf = pp.generalized_kernel(q, projection_matrix=fast.projection_matrix, kernel_fn=fast.kernel_fn)
            kf = pp.generalized_kernel(k, projection_matrix=fast.projection_matrix, kernel_fn=fast.kernel_fn)
        else:
            qf = pp.softmax_kernel(q, projection_matrix=fast.projection_matrix, is_query=True)
            kf = pp.softmax_kernel(k, projection_matrix=fast.projection_matrix, is_query=False)
        out = pp.linear_attention(qf, kf * keep, v)  # (B, H, N, d); padded keys add nothing
        out = out.transpose(1, 2).reshape(B, N, H * d)
        return att.dropout(att.to_out(out))


class LinformerAttention(_PackageAttention):
    """Linformer from ``linformer``: ``linformer.LinformerSelfAttention`` (keys and values projected along the
    sequence from ``max_len`` to ``k`` rows by learned matrices).

    Args:
        dim, num_heads, head_dim: as for :class:`~taylorshift.nn.TaylorShiftAttention`; ``dim`` must be
            divisible by ``num_heads`` (the package asserts it).
        max_len: the longest sequence (the package's ``seq_len``: the projections have ``max_len`` rows; a
            shorter input uses their first ``N`` rows). Required; the models pass their token count.
        k: projected length (default ``min(256, max_len)``; 256 is the package's default).
        share_kv: one projection for keys and values. one_kv_head: one key/value head shared by all heads.
        attn_drop: dropout on the attention weights (the package's ``dropout``).

    Key padding: the package takes no mask. Its key and value projections have no bias, so the adapter zeroes
    the padded rows of ``x``: their keys and values are zero and add nothing to the projected keys/values.
    Valid outputs then do not depend on padded content, and with padding at the end they equal the output for
    the unpadded sequence.
    """

    kind = "linformer"
    ACCEPTED_KWARGS = frozenset({"max_len", "k", "share_kv", "one_kv_head", "attn_drop"})

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        *,
        max_len: int | None = None,
        k: int | None = None,
        share_kv: bool = False,
        one_kv_head: bool = False,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, head_dim, attn_drop, 0.0)
        _check_divisible(self.kind, dim, num_heads)
        if max_len is None:
            raise ValueError("linformer attention needs max_len (the longest sequence it will see)")
        for name, value in (("max_len", max_len), ("k", k)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.max_len = max_len
        self.k = min(256, max_len) if k is None else k
        lf = _import(self.kind)
        self.inner = lf.LinformerSelfAttention(
            dim,
            seq_len=max_len,
            k=self.k,
            heads=num_heads,
            dim_head=self.head_dim,
            one_kv_head=one_kv_head,
            share_kv=share_kv,
            dropout=attn_drop,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_len={self.max_len}, k={self.k}"

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)`` with ``N <= max_len``, ``key_padding_mask (B, N)`` bool, True = padding → ``(B, N, C)``."""
        check_forward_args(x, key_padding_mask, self.dim)
        if x.shape[1] > self.max_len:
            raise ValueError(f"linformer attention was built for max_len={self.max_len}, got {x.shape[1]} tokens")
        if key_padding_mask is not None:
            x = x.masked_fill(key_padding_mask[..., None], 0.0)
        return self.inner(x)


class NystromAttention(_PackageAttention):
    """Nyströmformer from ``nystrom-attention``: ``nystrom_attention.NystromAttention``.

    Args:
        dim, num_heads, head_dim: as for :class:`~taylorshift.nn.TaylorShiftAttention`.
        num_landmarks: landmarks ``m`` (default 64 here; the package's is 256). The package pads the sequence
            at the front to a multiple of ``m``; each landmark is the masked mean of ``ceil(N/m)`` tokens.
        pinv_iterations: iterations of the Moore-Penrose pseudo-inverse (package default 6).
        residual, residual_conv_kernel: the package's depth-wise convolution of the values along the sequence
            added to the output (package defaults True, 33).
        proj_drop: dropout after the output projection (the package's ``dropout``).

    Key padding: the package's ``mask`` (True = keep): padded queries, keys and values are zeroed, landmarks
    are means over valid tokens only and padded keys get weight 0. Valid outputs do not depend on padded
    content. Caveat: the pseudo-inverse's starting point is scaled by a maximum over the *whole batch*, so a
    sample's output depends slightly on the other samples in the batch.
    """

    kind = "nystrom"
    ACCEPTED_KWARGS = frozenset({"num_landmarks", "pinv_iterations", "residual", "residual_conv_kernel", "proj_drop"})

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        *,
        num_landmarks: int = 64,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_conv_kernel: int = 33,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, head_dim, 0.0, proj_drop)
        for name, value in (
            ("num_landmarks", num_landmarks),
            ("pinv_iterations", pinv_iterations),
            ("residual_conv_kernel", residual_conv_kernel),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_landmarks = num_landmarks
        ny = _import(self.kind)
        self.inner = ny.NystromAttention(
            dim,
            dim_head=self.head_dim,
            heads=num_heads,
            num_landmarks=num_landmarks,
            pinv_iterations=pinv_iterations,
            residual=residual,
            residual_conv_kernel=residual_conv_kernel,
            dropout=proj_drop,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_landmarks={self.num_landmarks}"

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``, ``key_padding_mask (B, N)`` bool with True = padding → ``(B, N, C)``."""
        check_forward_args(x, key_padding_mask, self.dim)
        return self.inner(x, mask=None if key_padding_mask is None else ~key_padding_mask)


class ReformerAttention(_PackageAttention):
    """Reformer LSH attention from ``reformer-pytorch``: ``reformer_pytorch.LSHSelfAttention`` inside the
    package's ``Autopadder`` (which pads the sequence to a multiple of ``2·bucket_size`` and masks the pad).

    Args:
        dim, num_heads, head_dim: as for :class:`~taylorshift.nn.TaylorShiftAttention`.
        bucket_size: tokens per hash bucket (package default 64). Sequences of at most ``bucket_size`` tokens
            use the package's full shared-QK attention instead of LSH (its ``full_attn_thres`` default).
        n_hashes: hashing rounds (package default 8).
        attn_drop: dropout on the attention weights (the package's ``dropout``).
        proj_drop: dropout after the output projection (the package's ``post_attn_dropout``).

    Shared-QK attention as in the paper: keys are the L2-normalised queries, and a token attends to itself
    only when nothing else is in reach. The random rotations are drawn anew on **every call, in eval too**:
    outputs are random unless the RNG is seeded.

    Key padding: the package's ``input_mask`` (True = keep): padded keys get attention weight exactly 0. They
    are still hashed and sorted with the valid tokens, so which valid keys share a chunk with a query can
    depend on the padded content: with LSH the valid outputs are not invariant to padding (with full
    attention, ``N <= bucket_size``, they are).
    """

    kind = "reformer"
    ACCEPTED_KWARGS = frozenset({"bucket_size", "n_hashes", "attn_drop", "proj_drop"})

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        *,
        bucket_size: int = 64,
        n_hashes: int = 8,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, head_dim, attn_drop, proj_drop)
        for name, value in (("bucket_size", bucket_size), ("n_hashes", n_hashes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.bucket_size, self.n_hashes = bucket_size, n_hashes
        rf = _import(self.kind)
        self.inner = rf.Autopadder(
            rf.LSHSelfAttention(
                dim,
                heads=num_heads,
                dim_head=self.head_dim,
                bucket_size=bucket_size,
                n_hashes=n_hashes,
                dropout=attn_drop,
                post_attn_dropout=proj_drop,
            )
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bucket_size={self.bucket_size}, n_hashes={self.n_hashes}"

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``, ``key_padding_mask (B, N)`` bool with True = padding → ``(B, N, C)``."""
        check_forward_args(x, key_padding_mask, self.dim)
        if key_padding_mask is None:
            return self.inner(x)
        return self.inner(x, input_mask=~key_padding_mask)


class TaylorLinearAttention(_PackageAttention):
    """Second-order Taylor linear attention (``exp(q·k) ≈ 1 + q·k + (q·k)²/2`` as a feature map of size
    ``1 + d + d²``) from ``taylor-series-linear-attention``: ``TaylorSeriesLinearAttn``.

    Args:
        dim, num_heads, head_dim: as for :class:`~taylorshift.nn.TaylorShiftAttention` (queries are scaled by
            ``1/√d`` before the expansion, as in the package).
        proj_drop: dropout after the output projection (the package's ``dropout``).

    Key padding: the package's ``mask`` (True = keep) zeroes the padded keys' features and values, so they add
    nothing to numerator or denominator: valid outputs equal those of the unpadded sequence.
    """

    kind = "taylor_linear"
    ACCEPTED_KWARGS = frozenset({"proj_drop"})

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, *, proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads, head_dim, 0.0, proj_drop)
        tl = _import(self.kind)
        self.inner = tl.TaylorSeriesLinearAttn(dim, dim_head=self.head_dim, heads=num_heads, dropout=proj_drop)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``, ``key_padding_mask (B, N)`` bool with True = padding → ``(B, N, C)``."""
        check_forward_args(x, key_padding_mask, self.dim)
        return self.inner(x, mask=None if key_padding_mask is None else ~key_padding_mask)


BASELINES: dict[str, type[_PackageAttention]] = {
    cls.kind: cls
    for cls in (PerformerAttention, LinformerAttention, NystromAttention, ReformerAttention, TaylorLinearAttention)
}


def make_baseline(kind: str, dim: int, num_heads: int, head_dim: int | None = None, **kwargs: Any) -> nn.Module:
    """The adapter of baseline ``kind`` (a key of :data:`BASELINES`); ``kwargs`` as its class takes them."""
    return BASELINES[kind](dim, num_heads, head_dim=head_dim, **kwargs)


__all__ = [
    "BASELINES",
    "NEEDS_MAX_LEN",
    "PACKAGES",
    "LinformerAttention",
    "NystromAttention",
    "PerformerAttention",
    "ReformerAttention",
    "TaylorLinearAttention",
    "baseline_available",
    "make_baseline",
]

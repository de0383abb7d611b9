"""Second-order Taylor feature maps (feature-major layout) and their backward.

Every TaylorShift weight is an inner product of features:

    p(q̃·k) = a (q̃·k)² + b q̃·k + c = φ(q̃)ᵀ diag(w) φ(k),

* ``form="full"`` (the paper's): ``φ(x) = [x⊠x, x, 1]`` with all ``d²`` products ``x_i x_j`` and
  ``w = [a·1_{d²}, b·1_d, c]``; ``F = d² + d + 1``.
* ``form="symmetric"``: ``x⊠x`` is symmetric, so only the ``d(d+1)/2`` products with ``i ≤ j`` are kept
  and the off-diagonal ones get weight ``2a`` (``Σ_{i≤j} m_ij q_i q_j k_i k_j = (q·k)²`` with
  ``m_ii = 1``, ``m_ij = 2``); ``F = d(d+1)/2 + d + 1``, about half the work of the dominant term.

The weights ``w`` are applied to the (small) state, never to the ``N × F`` features, so both sides use the
same unweighted map. Features are built **feature-major**, ``(*batch, F, N)``: each row of the triangle is
then one contiguous, vectorised product (``x_i · x_{i..d-1}`` over all tokens), several times faster
than writing the token-major layout on CPUs. Row order of the second-order block: the upper triangle row
by row, ``(0,0), (0,1) … (0,d-1), (1,1) … (d-1,d-1)`` (symmetric) or all ``(i, j)`` row-major (full).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from taylorshift.analysis.auto import DEFAULT_FORM
from taylorshift.analysis.complexity import FORMS, Form, num_features
from taylorshift.ops.polynomial import feature_weights

__all__ = [
    "DEFAULT_FORM",
    "FORMS",
    "Form",
    "Blocks",
    "augmented_pairs",
    "blocked_feature_dim",
    "check_form",
    "feature_dim",
    "feature_weights",
    "row_blocks",
    "taylor_features",
    "taylor_features_backward",
]


def check_form(form: object) -> str:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return form  # type: ignore[return-value]


def feature_dim(d: int, form: Form = DEFAULT_FORM) -> int:
    """``F``: ``d² + d + 1`` (full) or ``d(d+1)/2 + d + 1`` (symmetric); the count of
    :func:`taylorshift.analysis.num_features`, with the implemented form as the default."""
    return num_features(d, form)


# Up to this many rows (decoding steps, tiny chunks) the symmetric features are gathered from the full outer
# product in a few calls instead of d row-by-row products: the per-call overhead dominates there.
_FEW_ROWS = 4


def _triu(d: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices of the pairs ``i <= j < d``, row by row (as ``torch.triu_indices(d, d)``), built
    from Python integers so that an exported graph holds them as constants (``aten.triu_indices`` is not a core
    ATen operator: ExecuTorch's edge dialect rejects it)."""
    rows = [i for i in range(d) for _ in range(i, d)]
    cols = [j for i in range(d) for j in range(i, d)]
    return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)


@functools.lru_cache(maxsize=64)
def _upper_triangle(d: int, device: torch.device) -> Tensor:
    """Flat indices ``i·d + j`` of the pairs ``i <= j`` in the row order of the symmetric form."""
    i, j = _triu(d, device)
    return i * d + j


@functools.lru_cache(maxsize=64)
def augmented_pairs(d: int, form: Form, device: torch.device) -> tuple[Tensor, Tensor]:
    """Index vectors ``(I, J)`` of length ``F`` with ``x'[..., I] * x'[..., J] == φ(x)`` (token-major, same order as
    :func:`taylor_features`) for the augmented row ``x' = [x, 1]`` of size ``d + 1``.

    ``φ(x)`` is exactly the upper triangle of ``x' x'ᵀ`` (the pairs ``(i, j)``, ``i ≤ j < d`` or all of them, then
    ``(i, d)`` = ``x_i · 1``, then ``(d, d)`` = ``1 · 1``), so the features of one row are two gathers and one
    product: the single-token decoding step uses this instead of :func:`taylor_features`. The products are
    the same roundings as there (``x_i · 1`` and ``1 · 1`` are exact).
    """
    if form == "full":
        i = torch.arange(d, device=device).repeat_interleave(d)
        j = torch.arange(d, device=device).repeat(d)
    else:
        i, j = _triu(d, device)
    first = torch.arange(d + 1, device=device)  # (0..d-1, then d): x_i · 1 and the constant 1 · 1
    last = torch.full((d + 1,), d, dtype=first.dtype, device=device)
    return torch.cat([i, first]), torch.cat([j, last])


def _few_row_features(x: Tensor, xt: Tensor) -> Tensor:
    d = x.shape[-1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # (*batch, N, d²)
    second = outer.index_select(-1, _upper_triangle(d, x.device)).transpose(-1, -2)  # (*batch, F2, N)
    return torch.cat([second, xt, torch.ones_like(xt[..., :1, :])], dim=-2)


Blocks = tuple[tuple[int, int], ...]
"""Row blocks ``((o, e), …)`` of the second-order features (see :func:`row_blocks`)."""


@functools.lru_cache(maxsize=256)
def row_blocks(d: int, form: Form = DEFAULT_FORM, count: int | None = None) -> Blocks:
    """How the second-order features are built: block ``(o, e)`` holds the products ``x_i x_j`` for
    ``o <= i < e`` and ``o <= j < d``, row-major, one vectorised product per block.

    * ``form="full"``: one block ``(0, d)``, all ``d²`` products.
    * ``form="symmetric"`` with ``count=None`` (the canonical layout, also the decoding state's): ``d`` blocks
      of one row, the upper triangle row by row.
    * ``form="symmetric"`` with ``count < d``: ``count`` blocks of nearly equal size. Each block's diagonal
      square holds both ``x_i x_j`` and ``x_j x_i`` (weight ``a`` each, see
      :func:`taylorshift.ops.polynomial.feature_weights`), so there are ``Σ s_b(s_b - 1)/2`` more features
      (about ``1/count`` of the ``d²/2``) but only ``count`` tensor operations per chunk instead of ``d``: the
      streaming kernel uses this to keep the number of operations (and parallel regions) per call small.

    Args:
        d: head size; ``form``: ``"full"`` or ``"symmetric"``; ``count``: blocks (symmetric only), 1 to ``d``.
    """
    if form == "full":
        return ((0, d),)
    count = d if count is None else max(1, min(int(count), d))
    edges = [round(b * d / count) for b in range(count + 1)]
    return tuple((o, e) for o, e in zip(edges, edges[1:], strict=False) if e > o)


def blocked_feature_dim(d: int, blocks: Blocks) -> int:
    """``F`` of the features built with ``blocks``: ``Σ (e - o)(d - o) + d + 1``."""
    return sum((e - o) * (d - o) for o, e in blocks) + d + 1


def taylor_features(
    x: Tensor,
    form: Form = "symmetric",
    *,
    out: Tensor | None = None,
    blocks: Blocks | None = None,
    ones: bool = True,
) -> Tensor:
    """Unweighted features ``φ(x) = [second-order, x, 1]`` of each row of ``x``, feature-major.

    Args:
        x: ``(*batch, N, d)``.
        form: ``"full"`` or ``"symmetric"``.
        out: optional ``(*batch, F, N)`` buffer to write into (not written while ``torch.compile`` traces: always
            use the returned tensor).
        blocks: the layout of the second-order part (:func:`row_blocks`); default the canonical one of ``form``.
        ones: write the constant last row; ``False`` only with an ``out`` whose last row already holds ones (a
            buffer reused across chunks: one operation, a parallel region, fewer per chunk).

    Returns:
        ``(*batch, F, N)``; not differentiable through autograd (the kernels have their own backward).
    """
    d, N = x.shape[-1], x.shape[-2]
    canonical = blocks is None
    blocks = row_blocks(d, form) if canonical else blocks
    if torch.compiler.is_compiling():
        # functional form for the compiler (it fuses the products and the concatenation itself)
        xt = x.transpose(-1, -2)  # (*batch, d, N)
        second = [(xt[..., o:e, None, :] * xt[..., None, o:, :]).flatten(-3, -2) for o, e in blocks]
        return torch.cat([*second, xt, torch.ones_like(xt[..., :1, :])], dim=-2)
    if out is None and canonical and N <= _FEW_ROWS and form == "symmetric" and d > 1:
        return _few_row_features(x, x.transpose(-1, -2).contiguous())
    if out is None:
        out = x.new_empty((*x.shape[:-2], blocked_feature_dim(d, blocks), N))
    n2 = out.shape[-2] - d - 1
    xt = out[..., n2 : n2 + d, :]  # the first-order rows, (*batch, d, N): written first, then read by the products
    xt.copy_(x.transpose(-1, -2))
    off = 0
    for o, e in blocks:  # block (o, e): x_i · x_{o..d-1} for o <= i < e, one broadcast product
        size = (e - o) * (d - o)
        block = out[..., off : off + size, :].unflatten(-2, (e - o, d - o))  # (*batch, e-o, d-o, N)
        torch.mul(xt[..., o:e, None, :], xt[..., None, o:, :], out=block)
        off += size
    if ones:
        out[..., -1, :] = 1.0
    return out


def taylor_features_backward(
    x: Tensor, grad: Tensor, form: Form = "symmetric", *, blocks: Blocks | None = None
) -> Tensor:
    """Gradient with respect to ``x`` of ``Σ grad ⊙ taylor_features(x, form, blocks=blocks)``.

    Args:
        x: ``(*batch, N, d)``.
        grad: ``(*batch, F, N)`` (feature-major, like the features); may be in a lower precision than ``x``
            (the result is computed in the dtype of ``x``).
        blocks: as in :func:`taylor_features`.

    Returns:
        ``(*batch, N, d)``.
    """
    d = x.shape[-1]
    blocks = row_blocks(d, form) if blocks is None else blocks
    xt = x.transpose(-1, -2).contiguous()  # (*batch, d, N)
    n2 = grad.shape[-2] - d - 1
    gx = grad[..., n2 : n2 + d, :].to(x.dtype, copy=True)  # first-order part, (*batch, d, N), x's dtype
    off = 0
    for o, e in blocks:  # block (i in o..e-1, j in o..d-1): ∂/∂x_i = Σ_j g_ij x_j, ∂/∂x_j += Σ_i g_ij x_i
        size = (e - o) * (d - o)
        g = grad[..., off : off + size, :].unflatten(-2, (e - o, d - o))  # (*batch, e-o, d-o, N)
        gx[..., o:e, :] += (g * xt[..., None, o:, :]).sum(-2)
        gx[..., o:, :] += (g * xt[..., o:e, None, :]).sum(-3)
        off += size
    return gx.transpose(-1, -2)

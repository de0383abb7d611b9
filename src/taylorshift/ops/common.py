"""Small pieces shared by the kernels: the row normalisation, which rows have keys, blocking, the tracing switch
and the autograd guard.

Normalisation and non-finite inputs. Every path ends with ``out = num / den`` per query row. Whether a row has
an attendable key is decided from the mask (:func:`rows_with_keys`), never from the value of ``den``: a row
without one gives exactly 0 (with finite gradients); every other row is the plain quotient, so NaN or Inf in
its query, the scale, or a key or value it attends to reaches its output (NaN or ±Inf), as in the float64
reference and in ``scaled_dot_product_attention``. A row whose weights are all exactly 0 although it has keys
(possible only when ``p`` has a real root, ``c = b²/(4a)``, and every logit of the row is that root) is
``0/0 = NaN`` on every path alike.
"""

from __future__ import annotations

import torch
from torch import Tensor


def divide_rows(num: Tensor, den: Tensor, has_key: Tensor | None) -> Tensor:
    """``num / den`` on rows with an attendable key, 0 on the others.

    Args:
        num: ``(*batch, L, dv)``.
        den: ``(*batch, L, 1)``.
        has_key: None (every row has a key) or bool broadcastable to ``den`` (:func:`rows_with_keys`).

    Returns:
        ``(*batch, L, dv)``; the gradient is finite (zero) on rows without a key.
    """
    if has_key is None:
        return num / den
    return torch.where(has_key, num / torch.where(has_key, den, 1.0), 0.0)


def reciprocal_rows(den: Tensor, has_key: Tensor | None) -> Tensor:
    """``1 / den`` on rows with an attendable key, 0 on the others (the backwards' ``∂out/∂num``)."""
    if has_key is None:
        return 1.0 / den
    return torch.where(has_key, 1.0 / torch.where(has_key, den, 1.0), 0.0)


def rows_with_keys(mask: Tensor | None, L: int, S: int, causal: bool, device: torch.device) -> Tensor | None:
    """Which query rows have at least one attendable key, from the mask alone.

    Args:
        mask: None or the caller's bool keep-mask, broadcastable to ``(*batch, L, S)``.
        L: number of queries; ``S``: number of keys.
        causal: top-left causal attention (row ``i`` sees keys ``j <= i``), and'ed with ``mask``.

    Returns:
        None when every row has a key (no mask and ``S > 0``), else a bool tensor broadcastable to
        ``(*batch, L, 1)``: ``(*mask_batch, L or 1, 1)``.
    """
    if S == 0:
        return torch.zeros((1, 1), dtype=torch.bool, device=device)
    if mask is None:
        return None
    if mask.dim() < 2:  # (S,) stands for (1, S)
        mask = mask.unsqueeze(0)
    if not causal:
        return mask.any(-1, keepdim=True)
    # row i has a key iff its first attendable key is at j <= i (argmax finds the first True; L: none at all)
    first = torch.where(mask.any(-1), mask.to(torch.uint8).argmax(-1), L)  # (*mask_batch, L or 1)
    return torch.arange(L, device=device).unsqueeze(-1) >= first.unsqueeze(-1)


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2·size), …]`` covering ``range(n)``; the last span may be shorter."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def exporting() -> bool:
    """True while ``torch.export`` or ``torch.jit.trace`` records the ops.

    The kernels then run their unblocked functional form (no Python loop over a symbolic length, no custom
    autograd.Function), which traces with a dynamic sequence length; eager calls and ``torch.compile`` keep
    the blocked kernels.
    """
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def size_hint(n: object) -> int:
    """A plain int for a size that may be symbolic: the example's value while exporting (a SymInt's hint) or
    tracing (a 0-dim tensor), else ``n`` itself."""
    if isinstance(n, int):
        return n
    if isinstance(n, torch.SymInt):  # the example's value, without adding a guard on the symbol
        from torch.fx.experimental import symbolic_shapes

        hint = getattr(symbolic_shapes, "optimization_hint", None) or getattr(symbolic_shapes, "hint_int", None)
        return int(hint(n)) if hint is not None else int(n.node.hint)
    return int(n)  # type: ignore[call-overload]


def no_double_backward() -> None:
    """The custom backwards are first-order only: refuse ``create_graph=True`` rather than silently
    return gradients that carry no graph."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "taylor_shift_attention supports first derivatives only: double backward (create_graph=True) "
            "through the direct/efficient kernels is not implemented"
        )

"""Small pieces shared by the direct and efficient kernels: safe division, blocking, autograd guard."""

from __future__ import annotations

import torch
from torch import Tensor


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (rows without attendable keys); gradients stay finite."""
    ok = den > 0
    return (num / den.masked_fill(~ok, 1.0)).masked_fill(~ok, 0.0)


def safe_reciprocal(den: Tensor) -> Tensor:
    """``1 / den`` where ``den > 0``, else 0."""
    ok = den > 0
    return torch.where(ok, 1.0 / den.masked_fill(~ok, 1.0), 0.0)


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2·size), …]`` covering ``range(n)``; the last span may be shorter."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def no_double_backward() -> None:
    """The custom backwards are first-order only: refuse ``create_graph=True`` rather than silently
    return gradients that carry no graph."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "taylor_shift_attention supports first derivatives only: double backward (create_graph=True) "
            "through the direct/efficient kernels is not implemented"
        )

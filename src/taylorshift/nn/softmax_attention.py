"""``SoftmaxAttention``: standard multi-head softmax self-attention, the baseline for ``TaylorShiftAttention``.

Same constructor (the subset that applies to softmax) and the same ``forward(x, key_padding_mask)`` as
:class:`taylorshift.nn.TaylorShiftAttention`, so a model swaps one for the other; the attention itself is
``torch.nn.functional.scaled_dot_product_attention`` (logit scale ``1/√d``), which picks PyTorch's fastest
kernel for the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_module_args(dim: int, num_heads: int, head_dim: int | None, attn_drop: float, proj_drop: float) -> int:
    """Validate the shared constructor arguments; return the resolved ``head_dim``."""
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


def _check_forward_args(x: object, key_padding_mask: object, dim: int) -> None:
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


class SoftmaxAttention(nn.Module):
    """Multi-head softmax self-attention (``softmax(q kᵀ / √d) v`` per head).

    Args:
        dim: model width ``C`` of the input ``x (B, N, C)``.
        num_heads: number of heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``; then ``dim`` must divide).
        qkv_bias: bias in the q/k/v projection.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Shapes:
        ``forward(x, key_padding_mask=None)``: ``x (B, N, C)`` → ``(B, N, C)``. ``key_padding_mask`` is a
        bool ``(B, N)`` tensor with **True = padding (ignore)**, as in :class:`TaylorShiftAttention`. Every
        sequence needs at least one valid key (a row with none gives NaN, as in softmax itself).
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
    ) -> None:
        super().__init__()
        head_dim = _check_module_args(dim, num_heads, head_dim, attn_drop, proj_drop)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.attn_drop = float(attn_drop)
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, attn_drop={self.attn_drop}"

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``, ``key_padding_mask (B, N)`` bool with True = padding → ``(B, N, C)``."""
        _check_forward_args(x, key_padding_mask, self.dim)
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        keep = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]  # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, H, N, d)
        out = out.transpose(1, 2).reshape(B, N, H * d)  # (B, N, H·d)
        return self.proj_drop(self.proj(out))

"""``SoftmaxAttention``: standard multi-head softmax self-attention, the baseline for ``TaylorShiftAttention``.

Same constructor (the subset that applies to softmax) and the same ``forward(x, key_padding_mask)`` as
:class:`taylorshift.nn.TaylorShiftAttention`, so a model swaps one for the other; the attention itself is
``torch.nn.functional.scaled_dot_product_attention`` (logit scale ``1/√d``), which picks PyTorch's fastest
kernel for the device.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from taylorshift.nn.attention import check_forward_args, check_module_args


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
        head_dim = check_module_args(dim, num_heads, head_dim, attn_drop, proj_drop)
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
        check_forward_args(x, key_padding_mask, self.dim)
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        keep = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]  # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, H, N, d)
        out = out.transpose(1, 2).reshape(B, N, H * d)  # (B, N, H·d)
        return self.proj_drop(self.proj(out))

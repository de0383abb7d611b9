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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taylorshift.ops import DEFAULT_COEFFICIENTS, check_coefficients, taylor_shift_attention
from taylorshift.ops.inputs import check_backend


def check_module_args(dim: int, num_heads: int, head_dim: int | None, attn_drop: float, proj_drop: float) -> int:
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


class TaylorShiftAttention(nn.Module):
    """Multi-head TaylorShift self-attention.

    Args:
        dim: model width ``C`` of the input ``x (B, N, C)``.
        num_heads: number of heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``; then ``dim`` must divide).
        qkv_bias: bias in the q/k/v projection.
        attn_drop: probability of dropping each key per (batch, head) in training (see module docstring).
        proj_drop: dropout after the output projection.
        normalize_qk: L2-normalise q and k and use a learnable per-head temperature (init 1) as the logit
            scale; if False, the logit scale is the fixed ``1/√d``.
        output_scale: multiply each head's output by ``√(N/d)``, ``N`` = number of valid keys.
        coefficients: ``(a, b, c)`` of the weight polynomial ``a x² + b x + c``.
        backend: ``"auto"``, ``"direct"`` or ``"efficient"`` (see :func:`taylorshift.taylor_shift_attention`).

    Shapes:
        ``forward(x, key_padding_mask=None)``: ``x (B, N, C)`` → ``(B, N, C)``. ``key_padding_mask`` is a
        bool ``(B, N)`` tensor with **True = padding (ignore)**, the convention of
        ``torch.nn.MultiheadAttention``. Padded positions still produce (finite) outputs; callers ignore them.
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
    ) -> None:
        super().__init__()
        head_dim = check_module_args(dim, num_heads, head_dim, attn_drop, proj_drop)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.normalize_qk, self.output_scale = bool(normalize_qk), bool(output_scale)
        self.coefficients = check_coefficients(coefficients)
        self.backend = check_backend(backend)
        self.attn_drop = float(attn_drop)
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1)) if self.normalize_qk else None
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"normalize_qk={self.normalize_qk}, output_scale={self.output_scale}, "
            f"coefficients={self.coefficients}, attn_drop={self.attn_drop}, backend={self.backend!r}"
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

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``, ``key_padding_mask (B, N)`` bool with True = padding → ``(B, N, C)``."""
        check_forward_args(x, key_padding_mask, self.dim)
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        scale = None
        if self.normalize_qk:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            scale = self.temperature  # (H, 1, 1), broadcasts to (B, H, 1, 1)
        out = taylor_shift_attention(
            q, k, v, attn_mask=self._key_mask(key_padding_mask, B, N, x.device), scale=scale,
            backend=self.backend, coefficients=self.coefficients,
        )  # (B, H, N, d)
        if self.output_scale:
            n_valid = N if key_padding_mask is None else (~key_padding_mask).sum(-1).view(B, 1, 1, 1)
            out = out * torch.sqrt(torch.as_tensor(n_valid, dtype=out.dtype, device=out.device) / d)
        out = out.transpose(1, 2).reshape(B, N, H * d)  # (B, N, H·d)
        return self.proj_drop(self.proj(out))


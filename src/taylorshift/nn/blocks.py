"""Pre-norm transformer block and its parts: ``Mlp``, ``LayerScale``, ``DropPath``, ``Block``.

The block is the one of timm's ``VisionTransformer`` that the paper's models use, with the attention module
passed in, so the same block runs TaylorShift or softmax attention::

    x = x + DropPath(LayerScale(Attention(LayerNorm(x))))
    x = x + DropPath(LayerScale(Mlp(LayerNorm(x))))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The paper's (timm's) init, for ``model.apply``: Linear weights ~ truncated normal(0, std), biases 0.

    Truncation is at ±2 std. LayerNorm keeps weight 1 and bias 0; other layers keep PyTorch's default.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _check_prob(name: str, p: float) -> float:
    if isinstance(p, bool) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")
    return float(p)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of each sample with probability ``p``.

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged; identity in eval mode.

    Shapes:
        ``x (B, ...)`` → same shape.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = _check_prob("drop_path", p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep).div_(keep)  # mask (B, 1, ..., 1)


class LayerScale(nn.Module):
    """Learnable per-channel scale ``γ ⊙ x`` (CaiT), ``γ`` initialised to ``init_values``.

    Shapes:
        ``x (..., dim)`` → same shape.
    """

    def __init__(self, dim: int, init_values: float = 1e-4) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer MLP ``Linear → GELU → Dropout → Linear → Dropout``.

    Args:
        dim: input and output width ``C``.
        hidden_dim: width of the hidden layer.
        drop: dropout probability after each layer.

    Shapes:
        ``x (..., C)`` → ``(..., C)``.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(_check_prob("drop", drop))

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block around a given attention module.

    Args:
        dim: model width ``C``.
        attention: a self-attention module called as ``attention(x, key_padding_mask=...)`` on ``(B, N, C)``,
            e.g. :class:`TaylorShiftAttention` or :class:`SoftmaxAttention` (see :func:`make_attention`).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        drop_path: stochastic-depth probability of each residual branch.
        layer_scale_init: initial LayerScale value (paper: 1e-4); ``None`` disables LayerScale.
        drop: dropout inside the MLP.

    Shapes:
        ``forward(x, key_padding_mask=None)``: ``x (B, N, C)`` → ``(B, N, C)``; ``key_padding_mask (B, N)``
        bool, True = padding, is passed to the attention.
        ``prefill(x, cache)`` / ``step(x, cache)``: the same block with the attention's incremental decoding
        (a causal attention module's ``prefill`` / ``step`` and its cache); ``x (B, N, C)`` / ``(B, 1, C)``.
    """

    def __init__(
        self,
        dim: int,
        attention: nn.Module,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layer_scale_init: float | None = 1e-4,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if getattr(attention, "dim", dim) != dim:
            raise ValueError(f"attention works on width {attention.dim}, but the block's dim is {dim}")
        if not float(mlp_ratio) > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attention
        self.ls1 = nn.Identity() if layer_scale_init is None else LayerScale(dim, layer_scale_init)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, max(1, round(dim * mlp_ratio)), drop)
        self.ls2 = nn.Identity() if layer_scale_init is None else LayerScale(dim, layer_scale_init)
        self.drop_path2 = DropPath(drop_path)

    def _residuals(self, x: Tensor, attn_out: Tensor) -> Tensor:
        """Both residual branches, given the attention's output on ``norm1(x)``."""
        x = x + self.drop_path1(self.ls1(attn_out))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        return self._residuals(x, self.attn(self.norm1(x), key_padding_mask=key_padding_mask))

    def prefill(self, x: Tensor, cache: object, key_padding_mask: Tensor | None = None) -> Tensor:
        """The block on a chunk ``x (B, N, C)`` that follows the cached tokens; the attention updates ``cache``.
        ``key_padding_mask (B, N)`` (True = padding) is passed to the attention's ``prefill`` when given."""
        if key_padding_mask is None:
            return self._residuals(x, self.attn.prefill(self.norm1(x), cache))
        return self._residuals(x, self.attn.prefill(self.norm1(x), cache, key_padding_mask=key_padding_mask))

    def step(self, x: Tensor, cache: object) -> Tensor:
        """The block on one new token ``x (B, 1, C)``; the attention updates ``cache``."""
        return self._residuals(x, self.attn.step(self.norm1(x), cache))

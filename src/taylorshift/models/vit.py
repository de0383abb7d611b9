"""``VisionTransformer``: a small, self-owned ViT (the paper's ViT-Ti/S and CPU-sized image models).

Patch embedding (strided conv) or convolutional stem → positions (learned or sinusoidal) added to the patch
tokens → prepend a CLS token (no position, timm's ``no_embed_class``) → ``depth`` pre-norm blocks →
LayerNorm → linear head on the CLS token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taylorshift.models.encoder import check_common, check_positive_ints, make_blocks
from taylorshift.nn import ConvStem, PatchEmbed, SinusoidalPositionalEncoding, init_weights


@dataclass
class ViTConfig:
    """Configuration of :class:`VisionTransformer`.

    Attributes:
        num_classes: number of output classes.
        img_size: side of the (square) image the model works on, divisible by ``patch_size``.
        input_size: side of the images it is given (default ``img_size``); smaller inputs are zero-padded,
            centred, to ``img_size`` (e.g. 28×28 Fashion-MNIST → 32×32).
        patch_size: patch side (``stem="patch"``) or total downsampling (``stem="conv"``, a power of two).
        in_chans: image channels.
        dim: model width ``D``.
        depth: number of blocks.
        num_heads: attention heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``).
        mlp_ratio: MLP hidden width / ``D``.
        stem: ``"patch"`` (:class:`PatchEmbed`) or ``"conv"`` (:class:`ConvStem`).
        pos_embed: ``"learned"`` (truncated normal 0.02 init) or ``"sinusoidal"`` (fixed, over patch order).
        attention: ``"taylorshift"`` or ``"softmax"`` (see :func:`taylorshift.nn.make_attention`).
        backend: TaylorShift backend ``"auto"``, ``"direct"`` or ``"efficient"``.
        drop_path: stochastic depth of the last block (linear from 0).
        layer_scale_init: initial LayerScale value; ``None`` disables LayerScale.
        temperature_init: initial TaylorShift temperature (the paper's 1; ignored by other attentions).
        attn_kwargs: further attention arguments (``attn_drop``, ``coefficients``, ...).
    """

    num_classes: int
    img_size: int = 224
    input_size: int | None = None
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 192
    depth: int = 12
    num_heads: int = 3
    head_dim: int | None = None
    mlp_ratio: float = 4.0
    stem: Literal["patch", "conv"] = "patch"
    pos_embed: Literal["learned", "sinusoidal"] = "learned"
    attention: str = "taylorshift"
    backend: str = "auto"
    drop_path: float = 0.05
    layer_scale_init: float | None = 1e-4
    temperature_init: float = 1.0
    attn_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_common(self)
        check_positive_ints(self, ("img_size", "patch_size", "in_chans"))
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size ({self.img_size}) must be divisible by patch_size ({self.patch_size})")
        if self.input_size is not None and not 1 <= self.input_size <= self.img_size:
            raise ValueError(f"input_size must be in [1, img_size={self.img_size}] or None, got {self.input_size!r}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.pos_embed not in ("learned", "sinusoidal"):
            raise ValueError(f"pos_embed must be 'learned' or 'sinusoidal', got {self.pos_embed!r}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


class VisionTransformer(nn.Module):
    """Vision Transformer with a CLS token.

    Args:
        config: a :class:`ViTConfig`.

    Shapes:
        ``forward(x)``: images ``(B, in_chans, input_size, input_size)`` → logits ``(B, num_classes)``;
        the transformer sees ``num_patches + 1`` tokens.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        stem_cls = ConvStem if cfg.stem == "conv" else PatchEmbed
        self.patch_embed = stem_cls(cfg.patch_size, cfg.in_chans, cfg.dim)
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)
            self.pos = None
        else:
            self.pos_embed = None
            self.pos = SinusoidalPositionalEncoding(cfg.dim, cfg.num_patches)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04)
        self.blocks = make_blocks(cfg)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.apply(init_weights)

    def _pad(self, x: Tensor) -> Tensor:
        cfg = self.config
        size = cfg.img_size if cfg.input_size is None else cfg.input_size
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (cfg.in_chans, size, size):
            desc = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"images must have shape (B, {cfg.in_chans}, {size}, {size}), got {desc}")
        before = (cfg.img_size - size) // 2
        after = cfg.img_size - size - before
        return F.pad(x, (before, after, before, after)) if size < cfg.img_size else x

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised CLS features ``(B, D)``."""
        tokens = self.patch_embed(self._pad(x))  # (B, P, D)
        tokens = tokens + self.pos_embed.to(tokens.dtype) if self.pos is None else self.pos(tokens)
        B = tokens.shape[0]
        h = torch.cat([self.cls_token.expand(B, -1, -1).to(tokens.dtype), tokens], dim=1)  # (B, 1+P, D)
        for block in self.blocks:
            h = block(h)
        return self.norm(h[:, 0])  # (B, D)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self.head(self.forward_features(x))

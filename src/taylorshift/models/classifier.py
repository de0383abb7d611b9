"""``SequenceClassifier``: the paper's encoder for long-sequence classification (ListOps, byte-level text,
pixel sequences).

Embedding (linear or convolutional) → fixed sinusoidal positions → prepend a CLS token (which gets no
position, timm's ``no_embed_class``) → ``depth`` pre-norm blocks → LayerNorm → linear head on the CLS token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taylorshift.models.encoder import check_common, check_positive_ints, make_blocks
from taylorshift.nn import ConvTextEmbed, SinusoidalPositionalEncoding, TokenEmbedding, init_weights


@dataclass
class SequenceClassifierConfig:
    """Configuration of :class:`SequenceClassifier`.

    Attributes:
        input_dim: vocabulary size (token ids) or feature width (one-hot / float input).
        num_classes: number of output classes.
        max_len: longest input sequence, without the CLS token (sizes the positional table).
        dim: model width ``D``.
        depth: number of blocks.
        num_heads: attention heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``).
        mlp_ratio: MLP hidden width / ``D``.
        embed: ``"linear"`` (Linear on one-hot, i.e. an embedding table) or ``"conv"`` (:class:`ConvTextEmbed`).
        attention: ``"taylorshift"`` or ``"softmax"`` (see :func:`taylorshift.nn.make_attention`).
        backend: TaylorShift backend ``"auto"``, ``"direct"`` or ``"efficient"``.
        drop_path: stochastic depth of the last block (linear from 0).
        layer_scale_init: initial LayerScale value; ``None`` disables LayerScale.
        embed_std: std of the token embedding's initial weights (``embed="linear"`` only; the paper's 0.02).
            Sinusoidal positions have unit-size entries, so with 0.02 the tokens start nearly invisible.
        pos_grid_width: if set, the inputs are row-major images this wide and the positions are 2-D
            (:func:`taylorshift.nn.embeddings.grid_sinusoidal_encoding`); ``None``: 1-D positions (the paper).
        temperature_init: initial TaylorShift temperature (the paper's 1; ignored by other attentions).
        attn_kwargs: further attention arguments (``attn_drop``, ``coefficients``, ...).
    """

    input_dim: int
    num_classes: int
    max_len: int
    dim: int = 256
    depth: int = 4
    num_heads: int = 4
    head_dim: int | None = None
    mlp_ratio: float = 4.0
    embed: Literal["linear", "conv"] = "linear"
    attention: str = "taylorshift"
    backend: str = "auto"
    drop_path: float = 0.05
    layer_scale_init: float | None = 1e-4
    embed_std: float = 0.02
    temperature_init: float = 1.0
    pos_grid_width: int | None = None
    attn_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_common(self)
        check_positive_ints(self, ("input_dim", "max_len"))
        if not (isinstance(self.embed_std, (int, float)) and not isinstance(self.embed_std, bool)
                and math.isfinite(self.embed_std) and self.embed_std > 0):
            raise ValueError(f"embed_std must be a positive finite number, got {self.embed_std!r}")
        if self.embed not in ("linear", "conv"):
            raise ValueError(f"embed must be 'linear' or 'conv', got {self.embed!r}")


class SequenceClassifier(nn.Module):
    """Transformer encoder with a CLS token for sequence classification.

    Args:
        config: a :class:`SequenceClassifierConfig`.

    Shapes:
        ``forward(x, key_padding_mask=None)``: ``x`` is token ids ``(B, N)`` (integer dtype) or one-hot /
        float features ``(B, N, input_dim)``, ``N <= max_len``; ``key_padding_mask (B, N)`` bool with
        **True = padding** → logits ``(B, num_classes)``. Padded positions do not affect the logits.
    """

    sequence_group = None  # a process group splitting each sequence (taylorshift.distributed.set_sequence_parallel)

    def __init__(self, config: SequenceClassifierConfig) -> None:
        super().__init__()
        self.config = cfg = config
        embed_cls = ConvTextEmbed if cfg.embed == "conv" else TokenEmbedding
        self.embed = embed_cls(cfg.input_dim, cfg.dim)
        self.pos = SinusoidalPositionalEncoding(cfg.dim, cfg.max_len, grid_width=cfg.pos_grid_width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.blocks = make_blocks(cfg)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04)
        self.apply(init_weights)
        if cfg.embed == "linear":
            std = float(cfg.embed_std)
            nn.init.trunc_normal_(self.embed.proj.weight, std=std, a=-2 * std, b=2 * std)

    def forward_features(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Normalised CLS features ``(B, D)``; arguments as in :meth:`forward`."""
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
                raise TypeError("key_padding_mask must be a bool tensor (B, N) with True = padding")
            if isinstance(x, Tensor) and tuple(key_padding_mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"key_padding_mask must have shape (B, N) = {tuple(x.shape[:2])}, "
                    f"got {tuple(key_padding_mask.shape)}"
                )
        group, offset, first = self.sequence_group, 0, True
        if group is not None:  # sequence parallel: x is this rank's part; CLS on rank 0 (taylorshift.distributed)
            from taylorshift.distributed import shard_layout

            layout = shard_layout(x.shape[1], group, x.device)
            offset, first = layout.query_offset, layout.rank == 0
        h = self.pos(self.embed(x, key_padding_mask), offset)  # (B, N, D)
        B, mask = h.shape[0], key_padding_mask
        if first:
            h = torch.cat([self.cls_token.expand(B, -1, -1).to(h.dtype), h], dim=1)  # (B, 1+N, D)
            mask = None if mask is None else F.pad(mask, (1, 0), value=False)  # (B, 1+N)
        for block in self.blocks:
            h = block(h, key_padding_mask=mask)
        if group is None:
            return self.norm(h[:, 0])  # (B, D)
        from taylorshift.distributed import all_reduce_sum

        # the other ranks add zeros that depend on their tokens, so that their backward runs the same collectives
        cls = self.norm(h[:, 0]) if first else h.sum(1).mul(0.0)
        return all_reduce_sum(cls, group)  # (B, D) on every rank

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self.head(self.forward_features(x, key_padding_mask))

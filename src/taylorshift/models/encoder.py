"""The parts shared by the model families: config checks and the stack of blocks with its drop-path rule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taylorshift.nn import Block, check_attention, make_attention
from taylorshift.nn.baselines import NEEDS_MAX_LEN
from taylorshift.ops.inputs import check_backend


def check_positive_ints(cfg: Any, names: tuple[str, ...]) -> None:
    """``ValueError`` naming the first field of ``cfg`` among ``names`` that is not an int >= 1."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_common(cfg: Any, sizes: tuple[str, ...] = ("num_classes",)) -> None:
    """Checks shared by the model configs: positive sizes (``sizes`` and the width, depth and heads) and
    probabilities in range."""
    check_positive_ints(cfg, (*sizes, "dim", "depth", "num_heads"))
    if not float(cfg.mlp_ratio) > 0:
        raise ValueError(f"mlp_ratio must be positive, got {cfg.mlp_ratio!r}")
    if not 0.0 <= float(cfg.drop_path) < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {cfg.drop_path!r}")
    check_attention(cfg.attention)
    check_backend(cfg.backend)
    if not isinstance(cfg.attn_kwargs, dict):
        raise TypeError(f"attn_kwargs must be a dict, got {type(cfg.attn_kwargs).__name__}")


def max_tokens(cfg: Any, causal: bool = False) -> int:
    """Most tokens the blocks of ``cfg``'s model see: a ViT's patches or a classifier's ``max_len``, plus the
    CLS token; a decoder's (``causal``) ``max_len``."""
    n = cfg.num_patches if hasattr(cfg, "num_patches") else cfg.max_len
    return n if causal else n + 1


def make_blocks(cfg: Any, causal: bool = False) -> nn.ModuleList:
    """``cfg.depth`` blocks; drop-path rises linearly from 0 (first block) to ``cfg.drop_path`` (last block),
    timm's rule (so a single block gets none). ``causal`` builds causal attention (a decoder). Attention that
    is sized by the sequence (Linformer) gets ``max_len = max_tokens(cfg)`` unless ``cfg.attn_kwargs`` has one."""
    rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
    extra: dict[str, Any] = {"causal": True} if causal else {}
    if cfg.attention == "taylorshift" and "temperature_init" not in cfg.attn_kwargs:
        extra["temperature_init"] = cfg.temperature_init
    if cfg.attention in NEEDS_MAX_LEN and "max_len" not in cfg.attn_kwargs:
        extra["max_len"] = max_tokens(cfg, causal)
    return nn.ModuleList(
        Block(
            cfg.dim,
            make_attention(cfg.attention, cfg.dim, cfg.num_heads, cfg.head_dim, cfg.backend, **cfg.attn_kwargs,
                           **extra),
            mlp_ratio=cfg.mlp_ratio,
            drop_path=rate,
            layer_scale_init=cfg.layer_scale_init,
        )
        for rate in rates
    )

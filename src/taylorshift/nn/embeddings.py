"""Input embeddings: sinusoidal positions, token / one-hot embedding, the convolutional text embedding, and
the two image stems (patch embedding, convolutional stem).

Sequence inputs come either as token ids ``(B, N)`` (integer dtype, values in ``[0, input_dim)``) or as
one-hot / float features ``(B, N, input_dim)``; both embeddings accept both and give the same result for
ids and their one-hot encoding.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_encoding(length: int, dim: int, base: float = 10000.0) -> Tensor:
    """Fixed sinusoidal positional encoding (Vaswani et al.) in float64.

    ``pe[p, 2i] = sin(p / base^(2i/dim))`` and ``pe[p, 2i+1] = cos(p / base^(2i/dim))``.

    Returns:
        ``(length, dim)`` tensor.
    """
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (length, 1)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    angles = pos * inv_freq  # (length, ceil(dim/2))
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return pe


def grid_sinusoidal_encoding(length: int, dim: int, grid_width: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal encoding of row-major image positions: position ``p`` is pixel ``(p // grid_width,
    p % grid_width)``; the first ``dim // 2`` channels encode the row and the rest the column, each with
    :func:`sinusoidal_encoding`.

    Returns:
        ``(length, dim)`` float64 tensor.
    """
    if isinstance(grid_width, bool) or not isinstance(grid_width, int) or grid_width < 1:
        raise ValueError(f"grid_width must be a positive int or None, got {grid_width!r}")
    width = grid_width
    half = dim // 2
    rows = -(-length // width)
    pos = torch.arange(length)
    return torch.cat([sinusoidal_encoding(rows, half, base)[pos // width],
                      sinusoidal_encoding(width, dim - half, base)[pos % width]], dim=1)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding of positions ``0 … N-1``; the table is a (non-persistent) buffer.

    Args:
        dim: model width ``D``.
        max_len: longest sequence the table covers.
        base: frequency base (10000 in the paper).
        grid_width: if set, positions are pixels of a row-major image this wide and the table is
            :func:`grid_sinusoidal_encoding` (row in one half of the channels, column in the other), so that
            vertical neighbours, ``grid_width`` apart in the sequence, get similar encodings.

    Shapes:
        ``forward(x, offset=0)``: ``x (B, N, D)`` → ``(B, N, D)``, adding the encodings of positions
        ``offset … offset + N - 1`` (an offset for incremental decoding); ``offset + N <= max_len``.
        ``forward(x, positions=p)``: the encodings of the positions ``p (B, N)`` (integers ``< max_len``) instead.
    """

    def __init__(self, dim: int, max_len: int, base: float = 10000.0, grid_width: int | None = None) -> None:
        super().__init__()
        self.dim, self.max_len, self.grid_width = dim, max_len, grid_width
        table = sinusoidal_encoding(max_len, dim, base) if grid_width is None else \
            grid_sinusoidal_encoding(max_len, dim, grid_width, base)
        self.register_buffer("pe", table.float(), persistent=False)

    def extra_repr(self) -> str:
        grid = "" if self.grid_width is None else f", grid_width={self.grid_width}"
        return f"dim={self.dim}, max_len={self.max_len}{grid}"

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        if positions is not None:  # per-token positions (B, N), e.g. counted over the unpadded tokens
            if positions.numel() and int(positions.max()) >= self.max_len:
                top = int(positions.max())
                raise ValueError(f"position {top} exceeds max_len={self.max_len} of the positional table")
            return x + self.pe[positions].to(x.dtype)
        if offset + x.shape[1] > self.max_len:
            where = f"sequence length {x.shape[1]}" + (f" at offset {offset}" if offset else "")
            raise ValueError(f"{where} exceeds max_len={self.max_len} of the positional table")
        return x + self.pe[offset: offset + x.shape[1]].to(x.dtype)


def _check_tokens(x: object, input_dim: int) -> None:
    """Token ids ``(B, N)`` in ``[0, input_dim)`` or float features ``(B, N, input_dim)``."""
    if isinstance(x, Tensor) and x.dim() == 2 and not x.is_floating_point() and x.dtype != torch.bool:
        # a check of the values, so not while exporting (the program cannot branch on data)
        if x.numel() and not torch.compiler.is_exporting() and (x.min() < 0 or x.max() >= input_dim):
            raise ValueError(f"token ids must lie in [0, {input_dim}), got range [{x.min()}, {x.max()}]")
        return
    if isinstance(x, Tensor) and x.dim() == 3 and x.is_floating_point() and x.shape[-1] == input_dim:
        return
    desc = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
    raise ValueError(f"input must be token ids (B, N) of an integer dtype or floats (B, N, {input_dim}), got {desc}")


class TokenEmbedding(nn.Module):
    """Linear embedding of one-hot / float features; token ids index the same weights (an ``Embedding``).

    Args:
        input_dim: vocabulary size / feature width.
        dim: model width ``D``.

    Shapes:
        ``x (B, N)`` integer ids or ``(B, N, input_dim)`` floats → ``(B, N, D)``.
    """

    def __init__(self, input_dim: int, dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.proj = nn.Linear(input_dim, dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``key_padding_mask`` is accepted for a uniform interface; tokens are embedded independently."""
        _check_tokens(x, self.input_dim)
        if x.dim() == 2:
            return self.proj.weight.t()[x] + self.proj.bias  # (B, N, D) = proj(one_hot(x))
        return self.proj(x)


class ConvTextEmbed(nn.Module):
    """Convolutional text embedding: 3 × [Conv1d(k=3, pad=1, no bias) → GroupNorm(1, ·) → GELU], widening
    ``input_dim → D/4 → D/2 → D`` (the paper's ``TextConvEmbed``).

    With a padding mask the embedding of the valid tokens does not depend on the padding: padded positions are
    zeroed before every convolution (as the convolution's own zero padding would be) and GroupNorm statistics
    are taken over valid positions only.

    Args:
        input_dim: vocabulary size / feature width.
        dim: model width ``D`` (divisible by 4).

    Shapes:
        ``forward(x, key_padding_mask=None)``: ``x (B, N)`` integer ids or ``(B, N, input_dim)`` floats,
        ``key_padding_mask (B, N)`` bool, True = padding → ``(B, N, D)``.
    """

    def __init__(self, input_dim: int, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"ConvTextEmbed needs dim divisible by 4, got {dim}")
        self.input_dim = input_dim
        widths = [input_dim, dim // 4, dim // 2, dim]
        self.convs = nn.ModuleList(
            nn.Conv1d(c_in, c_out, kernel_size=3, padding=1, bias=False) for c_in, c_out in pairwise(widths)
        )
        self.norms = nn.ModuleList(nn.GroupNorm(1, c) for c in widths[1:])

    @staticmethod
    def _norm(h: Tensor, norm: nn.GroupNorm, keep: Tensor | None) -> Tensor:
        """GroupNorm(1, C) on ``h (B, C, N)``, statistics over the valid positions ``keep (B, 1, N)``."""
        if keep is None:
            return norm(h)
        count = (keep.sum(-1, keepdim=True) * h.shape[1]).clamp_min(1)  # (B, 1, 1)
        mean = (h * keep).sum((1, 2), keepdim=True) / count
        var = ((h - mean).square() * keep).sum((1, 2), keepdim=True) / count
        h = (h - mean) * torch.rsqrt(var + norm.eps)
        return h * norm.weight[:, None] + norm.bias[:, None]

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        _check_tokens(x, self.input_dim)
        dtype = self.convs[0].weight.dtype
        if x.dim() == 2:
            x = F.one_hot(x.long(), self.input_dim).to(dtype)  # (B, N, input_dim)
        keep = None if key_padding_mask is None else (~key_padding_mask)[:, None, :].to(x.dtype)  # (B, 1, N)
        h = x.transpose(1, 2)  # (B, input_dim, N)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            if keep is not None:
                h = h * keep
            h = F.gelu(self._norm(conv(h), norm, keep))  # (B, C_out, N)
        return h.transpose(1, 2)  # (B, N, D)


def _check_image(x: object, in_chans: int, patch_size: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != in_chans:
        desc = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"images must have shape (B, {in_chans}, H, W), got {desc}")
    if x.shape[-2] % patch_size or x.shape[-1] % patch_size:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by patch_size={patch_size}")


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens via a strided ``Conv2d(in_chans, D, patch_size, stride=patch_size)``.

    Shapes:
        ``x (B, in_chans, H, W)``, ``H`` and ``W`` divisible by ``patch_size`` → ``(B, H·W / patch_size², D)``,
        patches in row-major order.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, self.in_chans, self.patch_size)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H', W') → (B, H'·W', D)


class ConvStem(nn.Module):
    """Convolutional stem (XCiT's ``ConvPatchEmbed``): ``log2(patch_size)`` layers of conv3x3 stride 2 +
    BatchNorm, GELU between them, channels doubling up to ``D`` (patch 16: ``D/8 → D/4 → D/2 → D``).

    Args:
        patch_size: total downsampling, a power of two ≥ 2 (16 and 4 are the usual choices).
        in_chans: image channels.
        dim: model width ``D``, divisible by ``patch_size / 2``.

    Shapes:
        ``x (B, in_chans, H, W)``, ``H`` and ``W`` divisible by ``patch_size`` → ``(B, H·W / patch_size², D)``.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        n_layers = round(math.log2(patch_size)) if patch_size >= 2 else 0
        if n_layers < 1 or 2**n_layers != patch_size:
            raise ValueError(f"ConvStem needs patch_size to be a power of two >= 2, got {patch_size}")
        if dim % 2 ** (n_layers - 1):
            raise ValueError(f"ConvStem with patch_size={patch_size} needs dim divisible by {2 ** (n_layers - 1)}")
        self.patch_size, self.in_chans = patch_size, in_chans
        widths = [in_chans] + [dim // 2 ** (n_layers - 1 - i) for i in range(n_layers)]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(pairwise(widths)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out)]
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, self.in_chans, self.patch_size)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H', W') → (B, H'·W', D)

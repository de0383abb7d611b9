"""``SoftmaxAttention``: standard multi-head softmax self-attention, the baseline for ``TaylorShiftAttention``.

Same constructor (the subset that applies to softmax) and the same ``forward(x, key_padding_mask)`` as
:class:`taylorshift.nn.TaylorShiftAttention`, so a model swaps one for the other; the attention itself is
``torch.nn.functional.scaled_dot_product_attention`` (logit scale ``1/√d``), which picks PyTorch's fastest
kernel for the device.

With ``causal=True`` token ``i`` attends to tokens ``j <= i``, and the module decodes incrementally with a
key/value cache (:class:`KVCache`): ``prefill`` runs a chunk of tokens and appends their keys and values,
``step`` runs one token against everything cached. A step costs ``O(n·d)`` per head for ``n`` cached tokens
and the cache holds ``2·H·n·d`` numbers per sequence: both grow with the context, unlike TaylorShift's
recurrent state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taylorshift.nn.attention import check_forward_args, check_module_args

_CACHE_CHUNK = 256  # the KV cache grows in multiples of this many tokens


class KVCache:
    """Keys and values of the tokens seen so far, for incremental softmax decoding.

    The buffers grow geometrically (by half, rounded up to 256 tokens), so appending one token is amortised
    ``O(1)`` copies rather than a ``torch.cat`` of the whole cache per step.

    Attributes:
        length: tokens held (the context length seen so far).
        capacity: tokens the buffers can hold before they grow.

    Shapes:
        buffers ``k, v (B, H, capacity, d)``; :meth:`append` returns views ``(B, H, length, d)``.
    """

    def __init__(self, batch_size: int, num_heads: int, head_dim: int, *, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.batch_size, self.num_heads, self.head_dim = batch_size, num_heads, head_dim
        self.length = 0
        self.k = torch.empty(batch_size, num_heads, 0, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the buffers (``2·B·H·capacity·d`` elements)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def _grow(self, needed: int) -> None:
        cap = max(needed + _CACHE_CHUNK, self.capacity + self.capacity // 2)
        cap = -(-cap // _CACHE_CHUNK) * _CACHE_CHUNK
        k = self.k.new_empty(self.batch_size, self.num_heads, cap, self.head_dim)
        v = self.v.new_empty(self.batch_size, self.num_heads, cap, self.head_dim)
        k[:, :, : self.length] = self.k[:, :, : self.length]
        v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = k, v

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k, v (B, H, n, d)``; returns all cached keys and values ``(B, H, length, d)`` (views)."""
        n = k.shape[2]
        if self.length + n > self.capacity:
            self._grow(self.length + n)
        self.k[:, :, self.length: self.length + n] = k
        self.v[:, :, self.length: self.length + n] = v
        self.length += n
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class SoftmaxAttention(nn.Module):
    """Multi-head softmax self-attention (``softmax(q kᵀ / √d) v`` per head).

    Args:
        dim: model width ``C`` of the input ``x (B, N, C)``.
        num_heads: number of heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``; then ``dim`` must divide).
        qkv_bias: bias in the q/k/v projection.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        causal: token ``i`` attends only to tokens ``j <= i`` (a decoder); enables :meth:`prefill` / :meth:`step`.

    Shapes:
        ``forward(x, key_padding_mask=None)``: ``x (B, N, C)`` → ``(B, N, C)``. ``key_padding_mask`` is a
        bool ``(B, N)`` tensor with **True = padding (ignore)**, as in :class:`TaylorShiftAttention`. Every
        query needs at least one valid key (a row with none gives NaN, as in softmax itself; with ``causal``
        that rules out left padding).
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
        causal: bool = False,
    ) -> None:
        super().__init__()
        head_dim = check_module_args(dim, num_heads, head_dim, attn_drop, proj_drop, causal)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.attn_drop, self.causal = float(attn_drop), causal
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, attn_drop={self.attn_drop}, "
                f"causal={self.causal}")

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, H, N, d)

    def _out(self, out: Tensor) -> Tensor:
        B, H, N, d = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, H * d)))  # (B, N, C)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``, ``key_padding_mask (B, N)`` bool with True = padding → ``(B, N, C)``."""
        check_forward_args(x, key_padding_mask, self.dim)
        N = x.shape[1]
        q, k, v = self._qkv(x)  # each (B, H, N, d)
        keep = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]  # (B, 1, 1, N)
        causal = self.causal
        if causal and keep is not None:  # SDPA takes is_causal or a mask, not both
            keep, causal = keep & torch.ones(N, N, dtype=torch.bool, device=x.device).tril(), False
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.attn_drop if self.training else 0.0, is_causal=causal
        )  # (B, H, N, d)
        return self._out(out)

    def new_cache(self, batch_size: int, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` sequences (default: the parameters' device and dtype)."""
        if not self.causal:
            raise ValueError("incremental decoding needs a causal module: build it with causal=True")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        w = self.qkv.weight
        return KVCache(batch_size, self.num_heads, self.head_dim, device=device or w.device, dtype=dtype or w.dtype)

    def _check_cache(self, x: Tensor, cache: KVCache) -> None:
        if not self.causal:
            raise ValueError("incremental decoding needs a causal module: build it with causal=True")
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache from new_cache(), got {type(cache).__name__}")
        check_forward_args(x, None, self.dim)
        if x.shape[0] != cache.batch_size:
            raise ValueError(f"x has batch size {x.shape[0]} but the cache was made for {cache.batch_size}")

    def prefill(self, x: Tensor, cache: KVCache) -> Tensor:
        """Causal attention of a chunk ``x (B, N, C)`` that follows the ``cache.length`` cached tokens; appends
        the chunk's keys and values to ``cache``. From an empty cache it equals :meth:`forward`.

        Returns:
            ``(B, N, C)``.
        """
        self._check_cache(x, cache)
        N, past = x.shape[1], cache.length
        q, k, v = self._qkv(x)  # each (B, H, N, d)
        k_all, v_all = cache.append(k, v)  # (B, H, past + N, d)
        p = self.attn_drop if self.training else 0.0
        if past == 0:
            out = F.scaled_dot_product_attention(q, k_all, v_all, dropout_p=p, is_causal=True)
        elif N == 1:
            out = F.scaled_dot_product_attention(q, k_all, v_all, dropout_p=p)  # the new token sees everything
        else:  # query i of the chunk is token past + i: it sees keys j <= past + i (bottom-right aligned)
            keep = torch.arange(past, past + N, device=x.device)[:, None] >= torch.arange(past + N, device=x.device)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=keep, dropout_p=p)
        return self._out(out)  # (B, N, C)

    def step(self, x: Tensor, cache: KVCache) -> Tensor:
        """One new token ``x (B, 1, C)`` against the cache (``O(length·d)`` per head); appends it. → ``(B, 1, C)``."""
        if isinstance(x, Tensor) and x.dim() == 3 and x.shape[1] != 1:
            raise ValueError(f"step takes one token, x of shape (B, 1, {self.dim}); got {tuple(x.shape)}")
        return self.prefill(x, cache)

"""``CausalLM``: a decoder-only language model (byte-level by default) with TaylorShift or softmax attention.

Token embedding → fixed sinusoidal positions → ``depth`` pre-norm blocks with causal attention → LayerNorm →
linear head → next-token logits. Besides the parallel ``forward`` (training), it decodes incrementally:
:meth:`CausalLM.prefill` runs the prompt and fills a per-layer cache, :meth:`CausalLM.step` runs one token.
The cache is the attention's: a constant-size recurrent state for TaylorShift (``O(F·d)`` per head, ``F`` the
Taylor feature size) and a growing key/value cache for softmax. :meth:`CausalLM.generate` streams sampled
tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from taylorshift.models.encoder import check_common, make_blocks
from taylorshift.nn import SinusoidalPositionalEncoding, init_weights
from taylorshift.nn.factory import CAUSAL_ATTENTION_TYPES


@dataclass
class CausalLMConfig:
    """Configuration of :class:`CausalLM`.

    Attributes:
        vocab_size: number of token ids (256 for bytes).
        max_len: longest context (prompt + generated tokens; sizes the positional table).
        dim: model width ``D``.
        depth: number of blocks.
        num_heads: attention heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``).
        mlp_ratio: MLP hidden width / ``D``.
        attention: ``"taylorshift"`` or ``"softmax"`` (built with ``causal=True``; the encoder-only baselines
            have no causal form).
        backend: TaylorShift backend ``"auto"``, ``"direct"`` or ``"efficient"``.
        drop_path: stochastic depth of the last block (linear from 0).
        layer_scale_init: initial LayerScale value; ``None`` disables LayerScale.
        temperature_init: initial TaylorShift temperature (the paper's 1; ignored by other attentions).
        attn_kwargs: further attention arguments (``attn_drop``, ``coefficients``, ...; not ``causal``).
    """

    vocab_size: int = 256
    max_len: int = 4096
    dim: int = 128
    depth: int = 4
    num_heads: int = 8
    head_dim: int | None = None
    mlp_ratio: float = 4.0
    attention: str = "taylorshift"
    backend: str = "auto"
    drop_path: float = 0.0
    layer_scale_init: float | None = 1e-4
    temperature_init: float = 1.0
    attn_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_common(self, sizes=("vocab_size", "max_len"))
        if self.attention not in CAUSAL_ATTENTION_TYPES:
            raise ValueError(f"attention {self.attention!r} has no causal form; a CausalLM takes one of "
                             f"{CAUSAL_ATTENTION_TYPES}")
        if "causal" in self.attn_kwargs:
            raise ValueError("attn_kwargs must not set 'causal': a CausalLM's attention is always causal")


@dataclass
class LMCache:
    """Decoding state of a :class:`CausalLM`: one attention cache per block (from the attention's
    ``new_cache``), and the number of tokens seen."""

    layers: list[Any]
    batch_size: int
    length: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the layers' caches (tensors only)."""
        return sum(_nbytes(c) for c in self.layers)


def _nbytes(obj: Any, depth: int = 3) -> int:
    """Bytes of the tensors an attention cache holds: a tensor's own, a cache's ``nbytes`` if it reports it,
    else the sum over its attributes (nested objects up to ``depth`` levels)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(getattr(obj, "nbytes", None), int):
        return obj.nbytes
    if depth == 0 or not hasattr(obj, "__dict__"):
        return 0
    return sum(_nbytes(v, depth - 1) for v in vars(obj).values())


class CausalLM(nn.Module):
    """Decoder-only transformer language model.

    Args:
        config: a :class:`CausalLMConfig`.

    Shapes:
        ``forward(ids)``: ``ids (B, N)`` integer token ids in ``[0, vocab_size)``, ``N <= max_len`` → logits
        ``(B, N, vocab_size)``; position ``i`` predicts token ``i + 1`` from tokens ``0 … i``.
    """

    sequence_group = None  # a process group splitting each sequence (taylorshift.distributed.set_sequence_parallel)

    def __init__(self, config: CausalLMConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = SinusoidalPositionalEncoding(cfg.dim, cfg.max_len)
        self.blocks = make_blocks(cfg, causal=True)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        self.apply(init_weights)
        # unit-variance token embeddings (nn.Embedding's default): with the 0.02 init of the other layers the
        # token identity is ~50x weaker than the unit-amplitude sinusoidal positions, and a byte-level LM
        # then sits at the unigram loss (3.3 nats/byte on fortunes) for hundreds of steps; measured: 2.9 vs 3.3
        # after 80 steps of a one-block model.
        nn.init.normal_(self.embed.weight, std=1.0)

    def _check_ids(self, ids: object, offset: int = 0, name: str = "ids") -> None:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
            desc = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"{name} must be token ids (B, N) of an integer dtype, got {desc}")
        V = self.config.vocab_size
        # a check of the values, so not while exporting (the program cannot branch on data)
        if ids.numel() and not torch.compiler.is_exporting() and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"token ids must lie in [0, {V}), got range [{ids.min()}, {ids.max()}]")
        if offset + ids.shape[1] > self.config.max_len:
            raise ValueError(f"{offset + ids.shape[1]} tokens exceed max_len={self.config.max_len}")

    def _logits(self, h: Tensor) -> Tensor:
        return self.head(self.norm(h))  # (B, N, V)

    def forward(self, ids: Tensor) -> Tensor:
        """Next-token logits ``(B, N, vocab_size)`` for ``ids (B, N)``, all positions in parallel."""
        offset = 0
        if self.sequence_group is not None:  # sequence parallel: ids are this rank's part (taylorshift.distributed)
            from taylorshift.distributed import shard_layout

            offset = shard_layout(ids.shape[1], self.sequence_group, ids.device).query_offset
        self._check_ids(ids, offset)
        h = self.pos(self.embed(ids), offset)  # (B, N, D)
        for block in self.blocks:
            h = block(h)
        return self._logits(h)

    def new_cache(self, batch_size: int, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> LMCache:
        """An empty decoding state for ``batch_size`` sequences (default: the parameters' device and dtype)."""
        return LMCache([b.attn.new_cache(batch_size, device=device, dtype=dtype) for b in self.blocks], batch_size)

    def _check_cache(self, ids: Tensor, cache: LMCache) -> None:
        if not isinstance(cache, LMCache):
            raise TypeError(f"cache must be an LMCache from new_cache(), got {type(cache).__name__}")
        self._check_ids(ids, cache.length)
        if ids.shape[0] != cache.batch_size:
            raise ValueError(f"ids has batch size {ids.shape[0]} but the cache was made for {cache.batch_size}")

    def prefill(self, ids: Tensor, cache: LMCache) -> Tensor:
        """Run the chunk ``ids (B, N)`` that follows the ``cache.length`` tokens already seen and update ``cache``.

        From an empty cache this equals :meth:`forward`; later chunks continue the sequence.

        Returns:
            logits ``(B, N, vocab_size)``.
        """
        self._check_cache(ids, cache)
        h = self.pos(self.embed(ids), offset=cache.length)  # (B, N, D)
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            h = block.prefill(h, layer_cache)
        cache.length += ids.shape[1]
        return self._logits(h)

    def step(self, ids: Tensor, cache: LMCache) -> Tensor:
        """Run one new token per sequence, ``ids (B, 1)``, against the cache and append it.

        Returns:
            logits ``(B, 1, vocab_size)``.
        """
        if isinstance(ids, Tensor) and ids.dim() == 2 and ids.shape[1] != 1:
            raise ValueError(f"step takes one token per sequence, ids of shape (B, 1); got {tuple(ids.shape)}")
        self._check_cache(ids, cache)
        h = self.pos(self.embed(ids), offset=cache.length)  # (B, 1, D)
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            h = block.step(h, layer_cache)
        cache.length += 1
        return self._logits(h)

    def generate(self, ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """Sample a continuation of ``ids``, yielding each new token as soon as it is drawn (streaming).

        The prompt is run once with :meth:`prefill`, then each token with :meth:`step`. Runs without autograd;
        switch to ``eval()`` first (dropout and drop-path are not disabled here). The arguments are checked
        when this is called, the model runs as tokens are taken from the iterator; the grad mode is set around
        each computation, not across ``yield``, so the caller's code is not affected.

        Args:
            ids: prompt ``(B, N)`` or ``(N,)`` (one sequence), ``N >= 1``.
            max_new_tokens: tokens to generate; the prompt plus these must fit in ``max_len``.
            temperature: logits are divided by it before sampling; ``0`` takes the most likely token (greedy).
            top_k: sample only among the ``top_k`` most likely tokens; ``None`` for all.
            generator: random generator for the draws (``torch.Generator().manual_seed(s)`` makes them
                reproducible); default torch's global one.

        Yields:
            ``LongTensor (B,)``: the next token of every sequence, ``max_new_tokens`` times.
        """
        if isinstance(ids, Tensor) and ids.dim() == 1:
            ids = ids[None]
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not float(temperature) >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        self._check_ids(ids)
        if ids.shape[1] == 0:
            raise ValueError("the prompt must hold at least one token")
        if ids.shape[1] + max_new_tokens > self.config.max_len:
            raise ValueError(f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceed "
                             f"max_len={self.config.max_len}")
        return self._generate(ids, max_new_tokens, float(temperature), top_k, generator)

    def _generate(self, ids: Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
                  generator: torch.Generator | None) -> Iterator[Tensor]:
        if max_new_tokens == 0:
            return
        with torch.inference_mode():
            cache = self.new_cache(ids.shape[0], device=ids.device)
            logits = self.prefill(ids, cache)[:, -1]  # (B, V)
            token = sample_next(logits, temperature, top_k, generator)  # (B,)
        for i in range(max_new_tokens):
            yield token
            if i + 1 < max_new_tokens:
                with torch.inference_mode():
                    token = sample_next(self.step(token[:, None], cache)[:, -1], temperature, top_k, generator)


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of ``logits (B, V)``: softmax of ``logits / temperature`` restricted to the
    ``top_k`` largest; ``temperature == 0`` is the argmax. Returns ``LongTensor (B,)``."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


__all__ = ["CausalLM", "CausalLMConfig", "LMCache", "sample_next"]

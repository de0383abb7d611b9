"""``make_attention``: build a self-attention module by kind, so models keep the attention orthogonal to the
architecture (``create_model("listops", attention="softmax")``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from taylorshift.nn.attention import TaylorShiftAttention
from taylorshift.nn.baselines import BASELINES
from taylorshift.nn.softmax_attention import SoftmaxAttention
from taylorshift.ops.inputs import check_backend

# the baselines (performer, linformer, nystrom, reformer, taylor_linear) need `pip install taylorshift[baselines]`
ATTENTION_TYPES: tuple[str, ...] = ("taylorshift", "softmax", *BASELINES)
_ACCEPTED_KWARGS = {
    "taylorshift": frozenset(
        {"qkv_bias", "attn_drop", "proj_drop", "normalize_qk", "output_scale", "coefficients", "causal",
         "temperature_init"}
    ),
    "softmax": frozenset({"qkv_bias", "attn_drop", "proj_drop", "causal"}),
    **{kind: cls.ACCEPTED_KWARGS for kind, cls in BASELINES.items()},
}
# the kinds that take ``causal=True`` (decoders such as CausalLM); the baselines are encoder-only here
CAUSAL_ATTENTION_TYPES: tuple[str, ...] = tuple(k for k in ATTENTION_TYPES if "causal" in _ACCEPTED_KWARGS[k])


def check_attention(kind: object) -> str:
    """Return ``kind`` if it names an available attention type, else raise ``ValueError`` listing them."""
    if not isinstance(kind, str) or kind not in ATTENTION_TYPES:
        raise ValueError(f"attention type {kind!r} is not available; choose one of {ATTENTION_TYPES}")
    return kind


def make_attention(
    kind: str,
    dim: int,
    num_heads: int,
    head_dim: int | None = None,
    backend: str = "auto",
    **kwargs: Any,
) -> nn.Module:
    """Self-attention module of the given kind, called as ``module(x (B, N, dim), key_padding_mask=None)``.

    Args:
        kind: ``"taylorshift"`` (:class:`TaylorShiftAttention`), ``"softmax"`` (:class:`SoftmaxAttention`) or a
            baseline from its PyPI package (``"performer"``, ``"linformer"``, ``"nystrom"``, ``"reformer"``,
            ``"taylor_linear"``; :mod:`taylorshift.nn.baselines`, non-causal, backend ``"auto"`` only).
        dim: model width ``C``.
        num_heads: number of heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``).
        backend: TaylorShift's ``"auto"``, ``"direct"`` or ``"efficient"``; softmax attention accepts only
            ``"auto"`` (PyTorch chooses its kernel).
        **kwargs: further constructor arguments: ``qkv_bias``, ``attn_drop``, ``proj_drop``, ``causal`` (a
            decoder with ``new_cache`` / ``prefill`` / ``step``) for both kinds; ``normalize_qk``,
            ``output_scale``, ``coefficients``, ``temperature_init`` for TaylorShift; each baseline's own
            (``ACCEPTED_KWARGS`` of its class, e.g. ``max_len`` for Linformer).

    Raises:
        ValueError: unknown ``kind``, a backend other than ``"auto"`` for softmax or a baseline, or an
            argument the kind does not take.
        ImportError: a baseline whose package is not installed.
    """
    check_attention(kind)
    check_backend(backend)
    extra = sorted(set(kwargs) - _ACCEPTED_KWARGS[kind])
    if extra:
        raise ValueError(f"{kind} attention does not take {extra}; it accepts {sorted(_ACCEPTED_KWARGS[kind])}")
    if kind == "taylorshift":
        return TaylorShiftAttention(dim, num_heads, head_dim=head_dim, backend=backend, **kwargs)
    if backend != "auto":
        raise ValueError(f"backend={backend!r} applies to TaylorShift only; {kind} attention takes 'auto'")
    if kind in BASELINES:
        return BASELINES[kind](dim, num_heads, head_dim=head_dim, **kwargs)
    return SoftmaxAttention(dim, num_heads, head_dim=head_dim, **kwargs)

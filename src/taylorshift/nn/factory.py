"""``make_attention``: build a self-attention module by kind, so models keep the attention orthogonal to the
architecture (``create_model("listops", attention="softmax")``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from taylorshift.nn.attention import TaylorShiftAttention
from taylorshift.nn.softmax_attention import SoftmaxAttention
from taylorshift.ops.inputs import check_backend

ATTENTION_TYPES: tuple[str, ...] = ("taylorshift", "softmax")
_ACCEPTED_KWARGS = {
    "taylorshift": frozenset({"qkv_bias", "attn_drop", "proj_drop", "normalize_qk", "output_scale", "coefficients"}),
    "softmax": frozenset({"qkv_bias", "attn_drop", "proj_drop"}),
}


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
        kind: ``"taylorshift"`` (:class:`TaylorShiftAttention`) or ``"softmax"`` (:class:`SoftmaxAttention`).
        dim: model width ``C``.
        num_heads: number of heads ``H``.
        head_dim: size ``d`` of each head (default ``dim // num_heads``).
        backend: TaylorShift's ``"auto"``, ``"direct"`` or ``"efficient"``; softmax attention accepts only
            ``"auto"`` (PyTorch chooses its kernel).
        **kwargs: further constructor arguments: ``qkv_bias``, ``attn_drop``, ``proj_drop`` for both kinds;
            ``normalize_qk``, ``output_scale``, ``coefficients`` for TaylorShift.

    Raises:
        ValueError: unknown ``kind``, a backend other than ``"auto"`` for softmax, or an argument the kind
            does not take.
    """
    check_attention(kind)
    check_backend(backend)
    extra = sorted(set(kwargs) - _ACCEPTED_KWARGS[kind])
    if extra:
        raise ValueError(f"{kind} attention does not take {extra}; it accepts {sorted(_ACCEPTED_KWARGS[kind])}")
    if kind == "taylorshift":
        return TaylorShiftAttention(dim, num_heads, head_dim=head_dim, backend=backend, **kwargs)
    if backend != "auto":
        raise ValueError(f"backend={backend!r} applies to TaylorShift only; softmax attention takes 'auto'")
    return SoftmaxAttention(dim, num_heads, head_dim=head_dim, **kwargs)

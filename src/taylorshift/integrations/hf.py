"""TaylorShift inside Hugging Face ``transformers`` models: ``attn_implementation="taylorshift"``.

:func:`register` adds an attention function to ``transformers.AttentionInterface`` and the matching mask
function to ``AttentionMaskInterface`` (without one, transformers hands a custom attention no mask at all), so
that every model whose attention goes through the interface (Llama, Qwen2, Mistral, BERT-style encoders, ViT,
...) runs TaylorShift::

    from taylorshift.integrations.hf import register
    register()                                   # name "taylorshift"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="taylorshift")

What it computes, per head: ``out_i = Σ_j p(s_ij) v_j / Σ_j p(s_ij)`` over the keys query ``i`` may see, with
``p(x) = 1 + x + x²/2`` (the Taylor-softmax) and ``s_ij = module.scaling · q_i·k_j`` (the model's own logit
scale, typically ``1/√d``); with ``normalize_qk=True`` instead ``s_ij = temperature · cos(q_i, k_j)`` (the
paper's bounded logits, without its learnable per-head temperature or output factor: a generic function has no
parameters of its own). It is not softmax attention: **swapping it into a pretrained softmax model changes the
model's function**; train or fine-tune with it.

* masks: the mask function is transformers' own boolean SDPA mask (True = attend), so padding on either side,
  causal, bidirectional and sliding-window patterns arrive as they would for SDPA; masks that are a causal or a
  bidirectional key-padding pattern run on ``taylor_shift_attention``'s ``is_causal`` / key-mask path (the
  efficient backend is then available, ``backend="auto"`` picks it for long sequences), any other on the
  direct backend;
* causal models without a mask: ``is_causal`` (the call's, else ``module.is_causal``) with the last query aligned
  to the last key (a decoding step sees every cached key);
* grouped-query attention (fewer key/value heads): the query heads of a group share their key/value head
  without a copy;
* dropout (``module.training`` and ``dropout > 0``): the library's key dropout (each key of each (batch, head)
  removed with probability ``dropout`` before the normalisation), not dropout of the weight matrix, which has
  no counterpart in the efficient form;
* returns ``(out (B, L, H, dv), None)``, the layout transformers expects (no attention weights).

Decoding through this path is **not recurrent**: transformers keeps its key/value cache and hands the whole of
it to the attention at every step, so a step costs ``O(context)``. For ``O(1)`` generation use the native model
(:mod:`taylorshift.integrations.hf_model`), whose cache holds the TaylorShift state.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from taylorshift.ops import DEFAULT_COEFFICIENTS, check_coefficients, taylor_shift_attention
from taylorshift.ops.direct import causal_keep
from taylorshift.ops.inputs import check_backend

__all__ = ["register", "taylorshift_attention_forward", "taylorshift_mask"]


def require_transformers() -> Any:
    """Import ``transformers``, or raise an ImportError that names the extra to install."""
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "taylorshift.integrations.hf needs Hugging Face transformers: pip install 'taylorshift[hf]'"
        ) from err
    return transformers


def taylorshift_mask(*args: Any, **kwargs: Any) -> Tensor | None:
    """The mask function registered with the attention: transformers' boolean SDPA mask ``(B, 1, L, S)`` (True =
    attend), or None where the pattern is plain causal or plain bidirectional without padding (the attention
    then applies ``is_causal`` itself)."""
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def _bool_mask(mask: Tensor | None) -> Tensor | None:
    """A boolean keep-mask from what transformers passes: bool masks as they are; float masks only when every entry
    is 0 (attend) or the dtype's minimum / -inf (masked), since an additive bias has no TaylorShift meaning."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise TypeError(f"attention_mask must be a bool or float tensor, got {mask.dtype}")
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    if not torch.all(blocked | (mask == 0)):
        raise ValueError(
            "attention_mask holds an additive bias (values other than 0 and -inf): TaylorShift weights are "
            "p(s) = a s² + b s + c, not exp(s), so a bias cannot be added to the logits. Pass a boolean mask."
        )
    return ~blocked


def _split_mask(mask: Tensor, causal: bool) -> tuple[Tensor, bool]:
    """``(mask, is_causal)`` for :func:`taylor_shift_attention`: a bool ``(B, 1, L, S)`` mask that is a key-padding
    pattern (bidirectional) or a causal pattern and'ed with one (``L == S``) becomes the ``(B, 1, 1, S)`` key mask
    (plus ``is_causal``), which both backends run; any other mask is kept as it is (direct backend)."""
    L, S = mask.shape[-2], mask.shape[-1]
    keys = mask.any(-2, keepdim=True)  # (B, 1, 1, S): keys some query sees
    if torch.equal(mask, keys.expand_as(mask)):
        return keys, False
    if causal and L == S and torch.equal(mask, keys & causal_keep(0, L, 0, S, mask.device)):
        return keys, True
    return mask, False


def taylorshift_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    *,
    backend: str = "auto",
    coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
    normalize_qk: bool = False,
    temperature: float = 1.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """TaylorShift with the signature of transformers' attention functions.

    Args:
        module: the calling attention module (``num_key_value_groups``, ``is_causal``, ``training`` are read).
        query: ``(B, H, L, d)``; key ``(B, Hkv, S, d)``; value ``(B, Hkv, S, dv)`` with ``H`` a multiple of ``Hkv``.
        attention_mask: None or a bool ``(B, 1 or H, L, S)`` mask, True = attend (float masks of 0 / -inf only).
        dropout: key-dropout probability, applied when ``module.training``.
        scaling: the logit scale (default ``1/√d``); ignored with ``normalize_qk``.
        is_causal: overrides ``module.is_causal`` (default True when the module has none, as for SDPA).
        backend, coefficients: as in :func:`taylorshift.taylor_shift_attention`.
        normalize_qk, temperature: logits ``temperature · cos(q, k)`` instead of ``scaling · q·k``.

    Returns:
        ``(out (B, L, H, dv), None)``, contiguous.

    Raises:
        ValueError: a position bias (T5-style), a soft cap, an additive float mask, or ``H`` not a multiple of
            ``Hkv``.
    """
    if kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
        raise ValueError("attn_implementation='taylorshift' supports neither position biases nor logit soft-capping")
    B, H, L, d = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    if H % Hkv:
        raise ValueError(f"query has {H} heads, not a multiple of the {Hkv} key/value heads")
    g = H // Hkv
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = _bool_mask(attention_mask)
    if normalize_qk:
        query = torch.nn.functional.normalize(query, dim=-1)
        key = torch.nn.functional.normalize(key, dim=-1)
        scale = float(temperature)
    else:
        scale = scaling
    use_causal = False
    if mask is not None:
        mask, use_causal = _split_mask(mask, bool(causal))
    elif causal and L > 1:  # bottom-right aligned: the last query sees every key (a cache before the chunk)
        if L == S:
            use_causal = True
        else:
            mask = causal_keep(S - L, S, 0, S, query.device).view(1, 1, L, S)
    if module.training and dropout > 0:  # key dropout: each key of each (batch, head) with probability `dropout`
        keep = torch.rand(B, H, 1, S, device=query.device) >= dropout
        mask = keep if mask is None else mask & keep
    # grouped-query attention: (B, Hkv, g, ·, ·), the g query heads of a group share their key/value head
    q = query.view(B, Hkv, g, L, d)
    k = key.unsqueeze(2).expand(B, Hkv, g, S, d)
    v = value.unsqueeze(2).expand(B, Hkv, g, S, value.shape[-1])
    if mask is not None:
        if mask.shape[1] == 1:
            mask = mask.unsqueeze(1)  # (B, 1, 1, ·, S)
        else:
            mask = mask.view(mask.shape[0], Hkv, g, *mask.shape[2:])
    out = taylor_shift_attention(
        q, k, v, attn_mask=mask, is_causal=use_causal, scale=scale, backend=backend, coefficients=coefficients
    )  # (B, Hkv, g, L, dv)
    return out.reshape(B, H, L, -1).transpose(1, 2).contiguous(), None


def register(
    name: str = "taylorshift",
    *,
    backend: str = "auto",
    coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
    normalize_qk: bool = False,
    temperature: float = 1.0,
) -> str:
    """Register TaylorShift as ``attn_implementation=name`` for every transformers model that supports custom
    attention (the attention function and its mask function), and the native ``TaylorShiftForCausalLM`` & co.
    with the Auto classes (model type ``"taylorshift"``).

    Args:
        name: the implementation name to register (re-registering replaces it).
        backend: ``"auto"``, ``"direct"`` or ``"efficient"`` (see :func:`taylorshift.taylor_shift_attention`).
        coefficients: ``(a, b, c)`` of the weight polynomial.
        normalize_qk: L2-normalise q and k; the logit is then ``temperature · cos(q, k)``.
        temperature: the fixed logit scale used with ``normalize_qk``.

    Returns:
        ``name``.
    """
    transformers = require_transformers()
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in ("eager", "sdpa") or name.startswith(("flash_attention", "flex_attention", "paged")):
        raise ValueError(f"name {name!r} is one of transformers' own implementations; choose another")
    fn = functools.partial(
        taylorshift_attention_forward,
        backend=check_backend(backend),
        coefficients=check_coefficients(coefficients),
        normalize_qk=bool(normalize_qk),
        temperature=float(temperature),
    )
    transformers.AttentionInterface.register(name, fn)
    transformers.AttentionMaskInterface.register(name, taylorshift_mask)
    import taylorshift.integrations.hf_model  # noqa: F401  (registers the native model with the Auto classes)

    return name

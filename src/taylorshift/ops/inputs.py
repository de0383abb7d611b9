"""Validation of the public attention arguments, done once at the boundary.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong value or shape)
with a message that names the argument and says what was expected.

Autocast. Inside ``torch.autocast`` the inputs are treated as ``scaled_dot_product_attention``'s are: float16,
bfloat16 and float32 tensors are cast to the autocast dtype (so a bfloat16 query from a ``Linear`` meets float32
keys without error), float64 is left alone, and the result comes back in the autocast dtype. The kernels then
run with autocast switched off (:func:`autocast_disabled`), so they compute in the compute dtype (float32 for
half precision) as outside autocast. Outside autocast, mixed dtypes remain a ``TypeError``, as in SDPA.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from numbers import Real

import torch
from torch import Tensor

from taylorshift.ops.polynomial import DEFAULT_COEFFICIENTS, check_coefficients, normalize_coefficients

BACKENDS: tuple[str, ...] = ("auto", "direct", "efficient")
__all__ = ["BACKENDS", "DEFAULT_COEFFICIENTS", "AttentionInputs", "check_coefficients", "check_inputs"]

# Half-precision inputs are computed (and accumulated) in float32; float32 and float64 in themselves.
_COMPUTE_DTYPE = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute and accumulate in for inputs of ``dtype`` (float32 for half precision)."""
    if dtype not in _COMPUTE_DTYPE:
        raise TypeError(f"expected float16, bfloat16, float32 or float64, got {dtype}")
    return _COMPUTE_DTYPE[dtype]


@dataclass(frozen=True)
class AttentionInputs:
    """Validated arguments (tensors in the caller's dtype until :meth:`cast`).

    Shapes: ``q (*batch, L, d)``, ``k (*batch, S, d)``, ``v (*batch, S, dv)``; ``mask`` is None or a bool
    tensor broadcastable to ``(*batch, L, S)``; ``scale`` a float or a tensor broadcastable to
    ``(*batch, 1, 1)``.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None
    scale: float | Tensor
    coefficients: tuple[float, float, float]
    out_dtype: torch.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """float32 for half-precision inputs (accumulation in fp32), else the input dtype."""
        return _COMPUTE_DTYPE[self.out_dtype]

    def cast(self) -> AttentionInputs:
        """The same inputs with q, k, v and a tensor scale cast to :attr:`compute_dtype`."""
        c = self.compute_dtype
        scale = self.scale.to(c) if isinstance(self.scale, Tensor) else self.scale
        return replace(self, q=self.q.to(c), k=self.k.to(c), v=self.v.to(c), scale=scale)

    @property
    def needs_grad(self) -> bool:
        """Whether autograd records through these inputs (a backward will follow)."""
        tensors = (self.q, self.k, self.v, self.scale)
        return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)

    @property
    def key_only_mask(self) -> bool:
        """True when the mask (if any) depends only on the key index (shape ``(..., 1, S)``)."""
        return self.mask is None or self.mask.dim() < 2 or self.mask.shape[-2] == 1


def check_backend(backend: object) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _check_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _COMPUTE_DTYPE:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    if t.dim() < 2:
        raise ValueError(
            f"{name} must have shape (*batch, length, features) with at least 2 dims, got {tuple(t.shape)}"
        )
    return t


def _broadcasts_to(shape: torch.Size, target: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (not to a larger shape)."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _check_mask(attn_mask: object, q: Tensor, target: tuple[int, ...]) -> Tensor | None:
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be a bool torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.is_floating_point():
        raise TypeError(
            "attn_mask must be a bool tensor (True = attend), got a float (additive) mask of dtype "
            f"{attn_mask.dtype}. An additive -inf cannot zero a TaylorShift weight: the weights are the "
            "polynomial p(s) = a s² + b s + c, not exp(s), and p(-inf) = +inf. Pass a bool mask instead, "
            "for example attn_mask=(float_mask == 0)."
        )
    if attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be a bool tensor (True = attend), got dtype {attn_mask.dtype}")
    if attn_mask.device != q.device:
        raise ValueError(f"attn_mask is on {attn_mask.device} but query is on {q.device}")
    if not _broadcasts_to(attn_mask.shape, target):
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} is not broadcastable to (*batch, L, S) = {target}"
        )
    return attn_mask


def _check_scale(scale: object, q: Tensor, batch: tuple[int, ...]) -> float | Tensor:
    d = q.shape[-1]
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"scale must be a float or a floating-point tensor, got a tensor of dtype {scale.dtype}")
        if scale.device != q.device:
            raise ValueError(f"scale is on {scale.device} but query is on {q.device}")
        target = (*batch, 1, 1)
        if not _broadcasts_to(scale.shape, target):
            raise ValueError(
                f"scale tensor of shape {tuple(scale.shape)} is not broadcastable to (*batch, 1, 1) = {target}"
            )
        return scale
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale must be None, a float or a tensor, got {type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_inputs(
    query: object,
    key: object,
    value: object,
    attn_mask: object = None,
    scale: object = None,
    coefficients: object = DEFAULT_COEFFICIENTS,
) -> AttentionInputs:
    """Validate the arguments of :func:`taylorshift.taylor_shift_attention` (no copies are made, except the casts
    of autocast); the coefficients come back normalised (:func:`taylorshift.ops.polynomial.normalize_coefficients`)
    for the compute dtype."""
    q, k, v = _autocast(_check_tensor("query", query), _check_tensor("key", key), _check_tensor("value", value))
    for name, t in (("key", k), ("value", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but query has {q.dtype}; all three must match")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but query is on {q.device}; all three must match")
    batch = tuple(q.shape[:-2])
    for name, t in (("key", k), ("value", v)):
        if tuple(t.shape[:-2]) != batch:
            raise ValueError(
                f"{name} has batch dims {tuple(t.shape[:-2])} but query has {batch}; the leading dims must be equal"
            )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"key has head size {k.shape[-1]} but query has {q.shape[-1]}; they must match")
    if q.shape[-1] < 1:
        raise ValueError("query and key must have a head size of at least 1")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"value has {v.shape[-2]} positions but key has {k.shape[-2]}; they must match (S)")
    L, S = q.shape[-2], k.shape[-2]
    mask = _check_mask(attn_mask, q, (*batch, L, S))
    scale_ = _check_scale(scale, q, batch)
    coeffs = normalize_coefficients(check_coefficients(coefficients), compute_dtype(q.dtype))
    return AttentionInputs(
        q=q, k=k, v=v, mask=mask, scale=scale_, coefficients=coeffs, out_dtype=q.dtype,
    )


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype of an enabled ``torch.autocast`` for ``device_type``, else None."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


_AUTOCAST_CAST = (torch.float16, torch.bfloat16, torch.float32)


def _autocast(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inside autocast, float16/bfloat16/float32 inputs in the autocast dtype (as autocast treats SDPA)."""
    target = _autocast_dtype(q.device.type)
    if target is None:
        return q, k, v
    q, k, v = (t.to(target) if t.dtype in _AUTOCAST_CAST else t for t in (q, k, v))
    return q, k, v


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that switches autocast off for ``device`` while a kernel runs (a no-op when it is off)."""
    if _autocast_dtype(device.type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)

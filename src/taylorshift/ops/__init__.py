"""Tensor-level TaylorShift operators: the float64 oracle, the direct, efficient and causal forms, dispatch, and
the recurrent form with its state (``taylor_shift_causal``, ``CausalState``)."""

from taylorshift.ops.causal import CausalState, TaylorShiftState, taylor_shift_causal
from taylorshift.ops.dispatch import Backend, resolve_backend, taylor_shift_attention
from taylorshift.ops.features import FORMS, feature_dim, taylor_features
from taylorshift.ops.inputs import BACKENDS
from taylorshift.ops.polynomial import DEFAULT_COEFFICIENTS, check_coefficients
from taylorshift.ops.reference import taylor_shift_attention_reference

__all__ = [
    "BACKENDS",
    "DEFAULT_COEFFICIENTS",
    "Backend",
    "check_coefficients",
    "FORMS",
    "feature_dim",
    "taylor_features",
    "resolve_backend",
    "taylor_shift_attention",
    "taylor_shift_attention_reference",
    "TaylorShiftState",
    "CausalState",
    "taylor_shift_causal",
]

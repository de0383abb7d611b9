"""Modules built on the TaylorShift operators."""

from taylorshift.nn.attention import TaylorShiftAttention

__all__ = ["TaylorShiftAttention"]

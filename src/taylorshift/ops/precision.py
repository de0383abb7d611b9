"""Which format the efficient kernel's products run in: the ``precision=`` argument of the attention.

``precision`` is one of :data:`PRECISIONS`:

* ``"auto"`` (default): float32 and float64 inputs compute in their own dtype (unchanged). For bfloat16 and
  float16 inputs the non-causal efficient kernel runs its feature products and contractions in the input's
  format (float32 accumulation across chunks, float32 state and normalisation) **when that is faster on this
  machine**: as measured by ``taylorshift calibrate --precision`` (stored per device type, dtype and head size,
  see :mod:`taylorshift.ops.calibration`), else, without a measurement, bfloat16 on CPUs with AMX tiles and
  on CUDA, and float32 everywhere else (CPUs without bfloat16 matrix units run bfloat16 matmuls slower than
  float32 ones, and CPU float16 matmuls are slower than float32 even with AMX-BF16).
* ``"float32"``: always compute in float32 (what half-precision inputs got before this option).
* ``"bfloat16"`` / ``"float16"``: the low-precision products in that format, whatever the machine; this is
  also how **float32 inputs opt in** to the fast path.

float64 inputs accept only ``"auto"`` (they always compute in float64). Only the non-causal efficient kernel
has a low-precision path; direct and causal attention compute in float32 for every half-precision input.
Accuracy of the low-precision path (tests/test_precision.py): within 2e-2 of the float64 oracle at
``N = 65,536`` with unit-norm queries and keys and temperatures up to 4, forward and backward. float16 needs the
entries of ``scale·q``, ``k`` and ``v`` well inside its range (below about 100: the products ``x_i x_j`` and
their chunk averages must fit in 6·10⁴); gradients are rescaled by powers of two to fit.
"""

from __future__ import annotations

from typing import Literal

import torch

from taylorshift.ops.calibration import lookup_precision

Precision = Literal["auto", "float32", "bfloat16", "float16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
LOW_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = ["LOW_DTYPES", "PRECISIONS", "Precision", "check_precision", "default_low_precision", "low_dtype"]


def check_precision(precision: object) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ``ValueError``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def default_low_precision(device_type: str, dtype: torch.dtype) -> bool:
    """Without a calibration: whether half-precision inputs of ``dtype`` take the low-precision path on this
    kind of device (bfloat16 with AMX tiles or on CUDA, float16 on CUDA)."""
    if device_type == "cuda":
        return dtype in (torch.bfloat16, torch.float16)
    if device_type == "cpu" and dtype == torch.bfloat16:
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx is not None and amx())
    return False


def low_dtype(precision: str, input_dtype: torch.dtype, device_type: str, d: int) -> torch.dtype | None:
    """The format of the efficient kernel's products for these inputs, or None for their compute dtype.

    Args:
        precision: a checked :data:`PRECISIONS` entry.
        input_dtype: dtype of the inputs (after autocast).
        device_type: ``"cpu"``, ``"cuda"``, …
        d: head size (the calibration is stored per head size).

    Raises:
        ValueError: a precision other than ``"auto"`` with float64 inputs.
    """
    if input_dtype == torch.float64:
        if precision != "auto":
            raise ValueError(f"precision={precision!r} needs float16, bfloat16 or float32 inputs, got float64")
        return None
    if precision == "float32":
        return None
    if precision in LOW_DTYPES:
        return LOW_DTYPES[precision]
    if input_dtype not in (torch.bfloat16, torch.float16):  # auto: float32 inputs keep float32
        return None
    name = str(input_dtype).removeprefix("torch.")
    stored = lookup_precision(device_type, name, d)
    if stored is not None:
        return input_dtype if stored == name else None
    return input_dtype if default_low_precision(device_type, input_dtype) else None

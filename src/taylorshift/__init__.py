"""taylorshift: exact TaylorShift attention (Nauen, Palacio, Dengel, ICPR 2024).

``taylor_shift_attention`` is the functional op (direct, efficient or auto backend),
``taylor_shift_causal`` its recurrent causal form with a ``CausalState``, ``TaylorShiftAttention`` the paper's
multi-head module, ``taylorshift.analysis`` the cost model.

The torch-based names are imported lazily, so ``taylorshift.analysis`` (pure Python) works without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {  # name -> module that defines it
    "CausalState": "taylorshift.ops",
    "TaylorShiftAttention": "taylorshift.nn",
    "create_model": "taylorshift.models",
    "list_models": "taylorshift.models",
    "resolve_backend": "taylorshift.ops",
    "taylor_shift_attention": "taylorshift.ops",
    "taylor_shift_attention_reference": "taylorshift.ops",
    "taylor_shift_causal": "taylorshift.ops",
}

__all__ = ["__version__", "analysis", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from taylorshift import analysis  # noqa: F401
    from taylorshift.models import create_model, list_models  # noqa: F401
    from taylorshift.nn import TaylorShiftAttention  # noqa: F401
    from taylorshift.ops import (  # noqa: F401
        CausalState,
        resolve_backend,
        taylor_shift_attention,
        taylor_shift_attention_reference,
        taylor_shift_causal,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "analysis":
        return importlib.import_module("taylorshift.analysis")
    raise AttributeError(f"module 'taylorshift' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""taylorshift: exact TaylorShift attention (Nauen, Palacio, Dengel, ICPR 2024).

``taylor_shift_attention`` is the functional op (direct, efficient or auto backend),
``TaylorShiftAttention`` the paper's multi-head module, ``taylorshift.analysis`` the cost model.
"""

from taylorshift import analysis
from taylorshift.nn import TaylorShiftAttention
from taylorshift.ops import resolve_backend, taylor_shift_attention, taylor_shift_attention_reference

__version__ = "0.1.0"

__all__ = [
    "TaylorShiftAttention",
    "__version__",
    "analysis",
    "resolve_backend",
    "taylor_shift_attention",
    "taylor_shift_attention_reference",
]

"""Whether the efficient kernels' feature state fits, checked before they allocate it.

The state of the efficient form has ``F·(dv+1)`` entries per (batch, head) with ``F ≈ d²/2``: harmless at
``d = 64`` (0.5 MiB), but 17 GB per head at ``d = 2048``. Instead of a raw allocator error deep inside the
kernel, the ops estimate the memory with the cost model (:func:`taylorshift.analysis.efficient_kernel_entries`)
and raise ``torch.OutOfMemoryError`` with a message that names the head size and the way out
(``backend="direct"``, whose memory does not depend on ``d²``).

The check is cheap and does not guess: below :data:`_CHECK_ABOVE` bytes nothing is read; above it the memory
available now is read once (``MemAvailable`` of ``/proc/meminfo`` on Linux CPUs, ``torch.cuda.mem_get_info``
plus the caching allocator's free blocks on CUDA), and the call is refused only if the estimate exceeds it.
Where the available memory is unknown (other systems and devices) nothing is refused.
"""

from __future__ import annotations

import torch

from taylorshift.analysis.auto import efficient_kernel_entries
from taylorshift.analysis.complexity import num_features

_CHECK_ABOVE = 256 << 20  # bytes; smaller estimates are not checked


def available_bytes(device: torch.device) -> int | None:
    """Memory that can be allocated on ``device`` now, or None where it is unknown."""
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    return None


def efficient_bytes(
    batch: int,
    L: int,
    S: int,
    d: int,
    dv: int,
    dtype: torch.dtype,
    *,
    form: str = "symmetric",
    chunk: int | None = None,
    causal: bool = False,
    train: bool = False,
) -> int:
    """Bytes the efficient kernels hold for these sizes (see :func:`taylorshift.analysis.efficient_kernel_entries`);
    half-precision inputs are computed in float32, so the entries are at least 4 bytes."""
    entry = max(4, torch.finfo(dtype).bits // 8)
    entries = efficient_kernel_entries(batch, L, S, d, dv, form=form, chunk=chunk, causal=causal, train=train)
    return entries * entry


def check_efficient_memory(
    batch: int,
    L: int,
    S: int,
    d: int,
    dv: int,
    form: str,
    chunk: int | None,
    dtype: torch.dtype,
    device: torch.device,
    *,
    causal: bool = False,
    train: bool = False,
    advice: str = "Use backend='direct' (memory independent of d²), smaller heads, or fewer heads per call.",
) -> None:
    """Raise ``torch.OutOfMemoryError`` (naming the head size and ``advice``, by default ``backend="direct"``) when
    the efficient kernel would need more memory than ``device`` has available; arguments as
    :func:`efficient_bytes`."""
    if batch == 0:  # nothing is allocated
        return
    need = efficient_bytes(batch, L, S, d, max(dv, 1), dtype, form=form, chunk=chunk, causal=causal, train=train)
    if need < _CHECK_ABOVE:
        return
    free = available_bytes(device)
    if free is None or need <= free:
        return
    F = num_features(d, form)
    raise torch.OutOfMemoryError(
        f"backend='efficient' needs about {need / 2**30:.3g} GiB for head size d={d} (value size {dv}): its feature "
        f"state has F·(dv+1) = {F}·{dv + 1} entries for each of {batch} (batch, head) pairs, and it grows as d²·dv; "
        f"only {free / 2**30:.3g} GiB are available on {device}. {advice}"
    )


def check_state_memory(batch: int, d: int, dv: int, form: str, dtype: torch.dtype, device: torch.device) -> None:
    """:func:`check_efficient_memory` for a decoding state (:class:`taylorshift.ops.TaylorShiftState`)."""
    check_efficient_memory(
        batch, 1, 1, d, dv, form, 1, dtype, device, causal=True,
        advice="A decoding state holds exactly this: use smaller heads or fewer sequences per state.",
    )

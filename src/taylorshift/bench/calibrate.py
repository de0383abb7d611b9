"""Measure this machine's direct-vs-efficient crossover per head size, for ``backend="auto"``.

For each head size ``d`` both backends are timed (forward, median of repeats) at lengths spaced by √2
around the analytic crossover; the threshold ``n0`` is then chosen so that the rule "efficient iff
``N > n0``" is, at every measured length, as close as possible to the faster backend (minimax of the
slowdown). The entry stored by :func:`taylorshift.ops.calibration.save_entries` records ``n0``, the analytic
``n0_model`` and all measurements.
"""

from __future__ import annotations

import datetime
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from taylorshift.analysis import crossover_exact
from taylorshift.ops import taylor_shift_attention
from taylorshift.ops.calibration import entry_key
from taylorshift.ops.efficient import DEFAULT_FORM


@dataclass
class Calibration:
    """Result for one head size: measured ``(n, t_direct, t_efficient)`` in seconds and the chosen ``n0``."""

    d: int
    n0: float
    n0_model: float
    max_slowdown: float  # worst ratio (time of the backend auto picks) / (time of the faster one), >= 1
    points: list[tuple[int, float, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.n0 / self.n0_model

    def entry(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(points: Sequence[tuple[int, float, float]]) -> tuple[float, float]:
    """The threshold ``n0`` (efficient iff ``N > n0``) with the smallest worst-case slowdown at the points.

    Candidates lie between consecutive measured lengths (geometric midpoints) and beyond both ends; ties go
    to the candidate nearest the geometric middle of the sign change of ``t_efficient − t_direct``.

    Args:
        points: ``(n, t_direct, t_efficient)`` with distinct ``n``.

    Returns:
        ``(n0, max_slowdown)``.
    """
    pts = sorted(points)
    if not pts:
        raise ValueError("points must not be empty")
    ns = [p[0] for p in pts]
    candidates = [ns[0] / 2] + [math.sqrt(a * b) for a, b in zip(ns, ns[1:], strict=False)] + [ns[-1] * 2]

    def slowdown(thr: float) -> float:
        return max((te if n > thr else td) / min(td, te) for n, td, te in pts)

    best = min(slowdown(c) for c in candidates)
    tied = [c for c in candidates if slowdown(c) <= best * (1 + 1e-12)]
    flips = [math.sqrt(a[0] * b[0]) for a, b in zip(pts, pts[1:], strict=False) if (a[2] < a[1]) != (b[2] < b[1])]
    anchor = flips[0] if flips else math.sqrt(ns[0] * ns[-1])
    n0 = min(tied, key=lambda c: abs(math.log(c / anchor)))
    return n0, best


def default_lengths(d: int, span: int = 6) -> list[int]:
    """Lengths ``n_model · 2^(k/2)`` for ``k = -span … span`` (rounded, at least 8, distinct)."""
    n_model = crossover_exact(d, form=DEFAULT_FORM)
    return sorted({max(8, int(round(n_model * 2 ** (k / 2)))) for k in range(-span, span + 1)})


def calibrate_head_dim(
    d: int,
    *,
    heads: int = 8,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    lengths: Sequence[int] | None = None,
    repeats: int = 3,
    timer: Callable[[Callable[[], object], int], float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Time direct and efficient forward for head size ``d`` at ``lengths`` and choose ``n0``.

    Args:
        timer: ``timer(fn, repeats) -> seconds``; default the median of :func:`taylorshift.bench.timing.time_call`.
        progress: called with a short status line after each length.
    """
    if timer is None:
        from taylorshift.bench.timing import time_call

        def timer(fn, reps):
            return time_call(fn, repeats=reps, warmup=1, device=device).median

    lengths = default_lengths(d) if lengths is None else sorted(set(int(n) for n in lengths))
    gen = torch.Generator(device="cpu").manual_seed(d)
    points = []
    for n in lengths:
        q, k, v = (torch.randn(batch, heads, n, d, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
        t = []
        for b in ("direct", "efficient"):

            def step(b=b, q=q, k=k, v=v):
                with torch.inference_mode():
                    return taylor_shift_attention(q, k, v, backend=b)

            t.append(timer(step, repeats))
        points.append((n, t[0], t[1]))
        if progress is not None:
            progress(f"d={d} N={n}: direct {t[0] * 1e3:.2f} ms, efficient {t[1] * 1e3:.2f} ms")
    n0, worst = choose_threshold(points)
    meta = {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "heads": heads,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "form": DEFAULT_FORM,
    }
    return Calibration(d, n0, crossover_exact(d, form=DEFAULT_FORM), worst, points, meta)


def calibration_entries(results: Sequence[Calibration]) -> dict[str, dict[str, Any]]:
    """The entries to store, keyed as :func:`taylorshift.ops.calibration.entry_key` expects."""
    return {entry_key(torch.device(r.meta["device"]).type, r.meta["dtype"], r.d): r.entry() for r in results}


# ------------------------------------------------------------------------------------- precision
PRECISION_LENGTHS = (4096, 16384)
"""Default lengths of :func:`calibrate_precision` (the efficient kernel's regime)."""


PROBE_SIZE = 256
"""Side of the square matmul that :func:`matmul_probe` times."""


def matmul_probe(dtype: torch.dtype, device: str = "cpu", size: int = PROBE_SIZE, repeats: int = 3) -> float:
    """GFLOP/s of a ``size³`` matmul in ``dtype`` (best of ``repeats`` after a warm-up): a quick test for
    emulated formats (float16 on CPUs without float16 units runs hundreds of times slower than float32)."""
    import time

    from taylorshift.bench.timing import synchronize

    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        a @ a
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


@dataclass
class PrecisionCalibration:
    """Result for one head size and half-precision dtype: the efficient kernel timed with ``precision="float32"``
    and with the dtype's own format, ``points = [(n, mode, t_float32, t_low)]`` in seconds (``mode`` is
    ``"forward"`` or ``"train"``), and the ``choice``. ``probe`` holds the :func:`matmul_probe` rates
    (GFLOP/s) of float32 and the low format; when the low format's is below 1/8 of float32's the points are not
    timed (they would take minutes) and the choice is float32."""

    d: int
    dtype: str
    choice: str
    points: list[tuple[int, str, float, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        return asdict(self)


def choose_precision(dtype: str, points: Sequence[tuple[int, str, float, float]]) -> str:
    """``dtype`` if the low-precision path was faster at every measured point, else ``"float32"``: the stored
    choice is never slower than float32 in its own measurements."""
    if not points:
        raise ValueError("points must not be empty")
    return dtype if all(t_low < t32 for _, _, t32, t_low in points) else "float32"


def calibrate_precision(
    d: int,
    dtype: torch.dtype,
    *,
    heads: int = 8,
    batch: int = 1,
    device: str = "cpu",
    lengths: Sequence[int] = PRECISION_LENGTHS,
    modes: Sequence[str] = ("forward", "train"),
    repeats: int = 3,
    timer: Callable[[Callable[[], object], int], float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PrecisionCalibration:
    """Time the efficient kernel on ``dtype`` inputs (bfloat16 or float16) with ``precision="float32"`` and with
    ``precision=<dtype>`` (forward, and forward+backward for ``"train"``) and choose with
    :func:`choose_precision`.

    Args:
        timer: ``timer(fn, repeats) -> seconds``; default the median of :func:`taylorshift.bench.timing.time_call`.
        progress: called with a short status line after each point.
    """
    name = str(dtype).removeprefix("torch.")
    if name not in ("bfloat16", "float16"):
        raise ValueError(f"dtype must be bfloat16 or float16, got {name}")
    if timer is None:
        from taylorshift.bench.timing import time_call

        def timer(fn, reps):
            return time_call(fn, repeats=reps, warmup=1, device=device).median

    meta = {
        "device": device,
        "heads": heads,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    probe = {"float32": matmul_probe(torch.float32, device), name: matmul_probe(dtype, device)}
    if probe[name] < probe["float32"] / 8:
        if progress is not None:
            progress(f"d={d} {name}: {probe[name]:.1f} GFLOP/s vs float32 {probe['float32']:.1f} (emulated): float32")
        return PrecisionCalibration(d, name, "float32", [], meta, probe)
    gen = torch.Generator(device="cpu").manual_seed(d)
    points = []
    for n in sorted(set(int(n) for n in lengths)):
        q, k, v = (torch.randn(batch, heads, n, d, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
        for mode in modes:
            t = []
            for precision in ("float32", name):
                if mode == "forward":

                    def step(precision=precision, q=q, k=k, v=v):
                        with torch.inference_mode():
                            return taylor_shift_attention(q, k, v, backend="efficient", precision=precision)
                else:
                    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

                    def step(precision=precision, qg=qg, kg=kg, vg=vg):
                        out = taylor_shift_attention(qg, kg, vg, backend="efficient", precision=precision)
                        out.float().sum().backward()

                t.append(timer(step, repeats))
            points.append((n, mode, t[0], t[1]))
            if progress is not None:
                progress(f"d={d} {name} N={n} {mode}: float32 {t[0] * 1e3:.2f} ms, {name} {t[1] * 1e3:.2f} ms")
    return PrecisionCalibration(d, name, choose_precision(name, points), points, meta, probe)


def precision_entries(results: Sequence[PrecisionCalibration]) -> dict[str, dict[str, Any]]:
    """The entries to store in the precision section (:func:`taylorshift.ops.calibration.save_precision`)."""
    return {entry_key(torch.device(r.meta["device"]).type, r.dtype, r.d): r.entry() for r in results}

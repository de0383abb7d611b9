"""The benchmark sweep: time and peak memory of each backend over sequence lengths, and the crossovers.

For every mode, head size ``d`` and length ``N`` (a geometric grid plus dense points around the analytic
crossovers ``taylorshift.analysis.crossover(d, "speed" | "memory")``), each backend is

1. checked against the budgets: its time per call and its memory are predicted from its last measured
   point scaled by its cost model (or from the model alone for its first point); a point predicted over
   ``budget_seconds`` or ``budget_memory_mib`` is recorded as ``skipped-budget``, and so is every larger
   N of that backend;
2. measured for peak memory (:class:`~taylorshift.bench.memory.MemoryMeter`; on CPU in a worker process,
   which also probes safely whether the point fits in memory);
3. timed in this process (:func:`~taylorshift.bench.timing.time_call`: warm-up, median of repeats).

Failures are values, never exceptions: a point's ``status`` is ``ok``, ``oom``, ``skipped-budget`` or
``error`` (the note says why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch

from taylorshift.analysis import crossover as theory_crossover
from taylorshift.bench.backends import (
    BACKENDS,
    DTYPES,
    MODES,
    TRAIN_FLOP_FACTOR,
    BenchBackend,
    check_dtype,
    check_mode,
    get_backend,
    make_workload,
)
from taylorshift.bench.crossover import find_crossover
from taylorshift.bench.memory import MIB, MemoryMeter, is_out_of_memory
from taylorshift.bench.timing import time_call
from taylorshift.ops.efficient import DEFAULT_FORM

STATUSES: tuple[str, ...] = ("ok", "oom", "skipped-budget", "error")

# Peak memory below this is within the error of the kernel's RSS counters (per-CPU batches of pages):
# crossovers in memory treat smaller values as equal to it.
MEMORY_RESOLUTION_BYTES = 1 * MIB

# (efficient, other backend) pairs whose crossovers are reported.
COMPARISONS: tuple[str, ...] = ("direct", "sdpa", "naive_softmax", "paper_efficient")


@dataclass
class SweepConfig:
    """What to sweep (see ``taylorshift bench --help`` for the meaning of each field)."""

    head_dims: tuple[int, ...] = (16, 32, 64)
    heads: int = 8
    batch: int = 1
    dtype: str = "float32"
    modes: tuple[str, ...] = ("forward",)
    backends: tuple[str, ...] = ("direct", "efficient", "sdpa", "naive_softmax")
    n_min: int = 64
    n_max: int = 16384
    points_per_octave: int = 4
    dense: int = 5
    repeats: int = 5
    warmup: int = 1
    budget_seconds: float | None = 5.0
    budget_memory_mib: float | None = None
    measure_memory: bool = True
    device: str = "cpu"
    seed: int = 0

    def validate(self) -> SweepConfig:
        """Raise ``ValueError`` naming the first bad field; return self."""
        for name in ("heads", "batch", "n_min", "n_max", "points_per_octave", "repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.dense < 0:
            raise ValueError("warmup and dense must be >= 0")
        if not self.head_dims or any(d < 1 for d in self.head_dims):
            raise ValueError(f"head_dims must be positive ints, got {self.head_dims}")
        if self.n_max < self.n_min:
            raise ValueError(f"n_max ({self.n_max}) must be >= n_min ({self.n_min})")
        check_dtype(self.dtype)
        for m in self.modes:
            check_mode(m)
        if not self.backends:
            raise ValueError("backends must not be empty")
        for b in self.backends:
            get_backend(b)
        for name in ("budget_seconds", "budget_memory_mib"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive or None, got {v}")
        return self


@dataclass
class Point:
    """One measured (or skipped) point: a row of the CSV."""

    mode: str
    d: int
    heads: int
    batch: int
    n: int
    backend: str
    dtype: str
    device: str
    status: str
    time_ms: float | None = None
    time_ms_min: float | None = None
    time_ms_max: float | None = None
    repeats: int | None = None
    inner: int | None = None
    gflops: float | None = None
    peak_mib: float | None = None
    predicted_ms: float | None = None
    predicted_mib: float | None = None
    note: str = ""


POINT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Point))


@dataclass
class CrossoverRow:
    """A measured crossover of ``backend`` (efficient) against ``versus`` beside the theory."""

    mode: str
    d: int
    metric: str  # "time" or "memory"
    backend: str
    versus: str
    theory: int | None
    measured: float | None
    relation: str  # "at", "below", "above", "none"
    text: str  # "1234", "< 64", "> 4096", "-"
    ratio: float | None
    n_crossings: int


CROSSOVER_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(CrossoverRow))


@dataclass
class SweepResult:
    config: SweepConfig
    meta: dict[str, object]
    points: list[Point] = field(default_factory=list)
    crossovers: list[CrossoverRow] = field(default_factory=list)
    interrupted: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "meta": self.meta,
            "config": asdict(self.config),
            "interrupted": self.interrupted,
            "points": [asdict(p) for p in self.points],
            "crossovers": [asdict(c) for c in self.crossovers],
        }


# -- sequence lengths ---------------------------------------------------------------------------------


def round_length(n: float) -> int:
    """Round to a multiple of 16 (as the paper's sweep), or to an integer below 32."""
    if n < 32:
        return max(1, int(round(n)))
    return int(16 * round(n / 16))


def sequence_lengths(
    d: int, n_min: int, n_max: int, points_per_octave: int = 4, dense: int = 5
) -> list[int]:
    """The lengths swept for head size ``d``, increasing.

    A geometric grid ``n_min · 2^(i / points_per_octave)`` up to ``n_max`` (both ends included), plus
    ``dense`` points spread geometrically over ``[N0/√2, N0·√2]`` around each analytic crossover
    (``crossover(d, "speed", form=DEFAULT_FORM)``, the implemented form, and the paper's
    ``crossover(d, "memory")``); all rounded by :func:`round_length` and clipped to ``[n_min, n_max]``.
    """
    octaves = math.log2(n_max / n_min)
    steps = int(math.floor(octaves * points_per_octave + 1e-9))
    raw = [n_min * 2 ** (i / points_per_octave) for i in range(steps + 1)] + [n_max]
    for n0 in (theory_crossover(d, "speed", form=DEFAULT_FORM), theory_crossover(d, "memory")):
        if dense == 1:
            raw.append(n0)
        elif dense > 1:
            raw += [n0 * 2 ** (-0.5 + i / (dense - 1)) for i in range(dense)]
    return sorted({min(max(round_length(n), n_min), n_max) for n in raw})


# -- budget predictions -------------------------------------------------------------------------------


def _flop_factor(mode: str) -> float:
    return 1.0 if mode == "forward" else TRAIN_FLOP_FACTOR


def predict_seconds(
    backend: BenchBackend, mode: str, n: int, d: int, bh: int,
    last: tuple[int, float] | None, flops_per_second: float,
) -> float:
    """Predicted seconds per call: the last measured ``(n, seconds)`` of this backend scaled by its FLOP
    model, or (no measurement yet) model FLOPs over ``flops_per_second``."""
    if last is not None:
        n_last, t_last = last
        return t_last * backend.flops(n, d) / backend.flops(n_last, d)
    return backend.flops(n, d) * bh * _flop_factor(mode) / flops_per_second


def predict_bytes(
    backend: BenchBackend, mode: str, n: int, d: int, bh: int, element_size: int,
    last: tuple[int, float] | None,
) -> float:
    """Predicted peak bytes: the last reliably measured ``(n, bytes)`` scaled by the memory model, or the
    model alone."""
    if last is not None and last[1] >= MEMORY_RESOLUTION_BYTES:
        n_last, b_last = last
        return b_last * backend.extra_entries(n, d, mode) / backend.extra_entries(n_last, d, mode)
    return backend.extra_entries(n, d, mode) * bh * element_size


# -- the sweep ----------------------------------------------------------------------------------------


def default_memory_budget_mib(device: str = "cpu", fraction: float = 0.4) -> float:
    """``fraction`` of the memory available now: ``MemAvailable`` on CPU, free device memory on CUDA."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return fraction * free / MIB
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return fraction * int(line.split()[1]) / 1024
    except OSError:
        pass
    return 4096.0


def _backend_name(b: str | BenchBackend) -> str:
    return b.name if isinstance(b, BenchBackend) else b


def _theory(versus: str, d: int, metric: str) -> int | None:
    if versus == "sdpa" and metric == "memory":
        return None  # fused softmax attention holds O(N) memory: the paper's memory model does not apply
    if metric == "time":  # the FLOP model of the feature form the library runs (symmetric by default)
        return theory_crossover(d, "speed", form=DEFAULT_FORM)
    return theory_crossover(d, "memory")  # the paper's model (materialised features, N×N weights)


def compute_crossovers(points: Sequence[Point]) -> list[CrossoverRow]:
    """Crossovers of ``efficient`` against each other backend, per mode and head size, in time and memory.

    Only lengths where both backends have status ``ok`` (and, for memory, a measured peak) are compared;
    peaks below :data:`MEMORY_RESOLUTION_BYTES` are raised to it (equal within the measurement error).
    """
    rows: list[CrossoverRow] = []
    by_key: dict[tuple[str, int, str], dict[int, Point]] = {}
    for p in points:
        if p.status == "ok":
            by_key.setdefault((p.mode, p.d, p.backend), {})[p.n] = p
    floor_mib = MEMORY_RESOLUTION_BYTES / MIB
    for mode, d in sorted({(p.mode, p.d) for p in points}, key=lambda k: (MODES.index(k[0]), k[1])):
        eff = by_key.get((mode, d, "efficient"), {})
        if not eff:
            continue
        for versus in COMPARISONS:
            other = by_key.get((mode, d, versus), {})
            if not other:
                continue
            for metric in ("time", "memory"):
                attr = "time_ms" if metric == "time" else "peak_mib"
                ns = [n for n in sorted(set(eff) & set(other))
                      if getattr(eff[n], attr) is not None and getattr(other[n], attr) is not None]
                if metric == "memory" and not ns:
                    continue
                a = [getattr(eff[n], attr) for n in ns]
                b = [getattr(other[n], attr) for n in ns]
                if metric == "memory":
                    a, b = [max(x, floor_mib) for x in a], [max(x, floor_mib) for x in b]
                else:
                    a, b = [max(x, 1e-9) for x in a], [max(x, 1e-9) for x in b]
                c = find_crossover(ns, a, b)
                theory = _theory(versus, d, metric)
                ratio = c.n / theory if (c.n is not None and theory) else None
                rows.append(CrossoverRow(mode, d, metric, "efficient", versus, theory, c.n, c.relation,
                                         c.describe(), ratio, len(c.crossings)))
    return rows


def _progress(total: int, enabled: bool):  # -> tqdm or None
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="pt", dynamic_ncols=True, leave=False)


def run_sweep(
    config: SweepConfig,
    *,
    backends: Sequence[str | BenchBackend] | None = None,
    meta: dict[str, object] | None = None,
    progress: bool = True,
    flops_per_second: float = 50e9,
    meter: MemoryMeter | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run the sweep described by ``config``.

    Args:
        config: what to sweep (validated here).
        backends: override ``config.backends`` with names or :class:`BenchBackend` objects (custom
            backends cannot be measured for memory in the worker process; their ``peak_mib`` stays empty).
        meta: header metadata to store with the result (see :func:`taylorshift.bench.io.collect_metadata`).
        progress: show a tqdm bar on stderr.
        flops_per_second: speed assumed to predict the first point of each backend (a measured matmul
            rate is a good value).
        meter: a memory meter to use (default: one made here and closed at the end).
        log: receives one line per skipped or failed point (default: silent).

    Returns:
        A :class:`SweepResult`; on ``KeyboardInterrupt`` the points so far, with ``interrupted=True``.
    """
    config.validate()
    chosen = [get_backend(b) for b in (backends if backends is not None else config.backends)]
    result = SweepResult(config, dict(meta or {}))
    lengths = {d: sequence_lengths(d, config.n_min, config.n_max, config.points_per_octave, config.dense)
               for d in config.head_dims}
    total = len(config.modes) * len(chosen) * sum(len(v) for v in lengths.values())
    own_meter = meter is None and config.measure_memory
    if own_meter:
        limit = None if config.budget_memory_mib is None else int(config.budget_memory_mib * MIB)
        meter = MemoryMeter(config.device, limit_bytes=limit)
    bar = _progress(total, progress)
    try:
        for mode in config.modes:
            for d in config.head_dims:
                series = _Series(config, mode, d, flops_per_second, meter if config.measure_memory else None)
                for n in lengths[d]:
                    for b in chosen:
                        if bar is not None:
                            bar.set_postfix_str(f"{mode} d={d} N={n} {b.name}", refresh=False)
                        p = series.run(b, n)
                        result.points.append(p)
                        if p.status != "ok" and log is not None:
                            log(f"{mode} d={d} N={n} {b.name}: {p.status} ({p.note})")
                        if bar is not None:
                            bar.update(1)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if bar is not None:
            bar.close()
        if own_meter and meter is not None:
            meter.close()
    result.crossovers = compute_crossovers(result.points)
    return result


class _Series:
    """The points of one (mode, d), in increasing N: remembers each backend's last measurement (for the
    budget predictions) and which backends are done (over a budget, out of memory or failed)."""

    def __init__(self, cfg: SweepConfig, mode: str, d: int, flops_per_second: float,
                 meter: MemoryMeter | None) -> None:
        self.cfg, self.mode, self.d = cfg, mode, d
        self.flops_per_second, self.meter = flops_per_second, meter
        self.bh = cfg.batch * cfg.heads
        self.element_size = torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()
        self.budget_bytes = None if cfg.budget_memory_mib is None else cfg.budget_memory_mib * MIB
        self.last_time: dict[str, tuple[int, float]] = {}  # backend -> (N, seconds per call)
        self.last_mem: dict[str, tuple[int, float]] = {}  # backend -> (N, peak bytes)
        self.done: dict[str, tuple[str, str]] = {}  # backend -> (status, note) for every larger N

    def run(self, b: BenchBackend, n: int) -> Point:
        """Budget check, memory pass, timing pass of backend ``b`` at length ``n``."""
        cfg, mode, d = self.cfg, self.mode, self.d
        p = Point(mode, d, cfg.heads, cfg.batch, n, b.name, cfg.dtype, cfg.device, "ok")
        t_pred = predict_seconds(b, mode, n, d, self.bh, self.last_time.get(b.name), self.flops_per_second)
        m_pred = predict_bytes(b, mode, n, d, self.bh, self.element_size, self.last_mem.get(b.name))
        p.predicted_ms, p.predicted_mib = t_pred * 1e3, m_pred / MIB
        if b.name in self.done:
            p.status, p.note = self.done[b.name]
            return p
        if cfg.budget_seconds is not None and t_pred > cfg.budget_seconds:
            note = f"predicted {t_pred:.3g} s per call > budget {cfg.budget_seconds:g} s"
            return self._stop(p, "skipped-budget", note, "over the time budget")
        if self.budget_bytes is not None and m_pred > self.budget_bytes:
            note = f"predicted {m_pred / MIB:.0f} MiB > budget {self.budget_bytes / MIB:.0f} MiB"
            return self._stop(p, "skipped-budget", note, "over the memory budget")
        workload = dict(mode=mode, batch=cfg.batch, heads=cfg.heads, n=n, d=d, dtype=cfg.dtype,
                        device=cfg.device, seed=cfg.seed)
        if self.meter is not None and BACKENDS.get(b.name) is b:
            mem = self.meter.measure(dict(workload, backend=b.name))
            if mem.status != "ok":
                return self._stop(p, mem.status, f"memory pass: {mem.note}", mem.status)
            assert mem.peak_bytes is not None
            p.peak_mib = mem.peak_bytes / MIB
            self.last_mem[b.name] = (n, float(mem.peak_bytes))
        try:
            t = time_call(make_workload(b, **workload), repeats=cfg.repeats, warmup=cfg.warmup,
                          device=cfg.device)
        except Exception as err:  # recorded as a value, the sweep goes on
            msg = str(err).splitlines()[0][:200] if str(err) else ""
            status = "oom" if is_out_of_memory(err) else "error"
            return self._stop(p, status, f"{type(err).__name__}: {msg}", status)
        p.time_ms, p.time_ms_min, p.time_ms_max = t.median * 1e3, t.min * 1e3, t.max * 1e3
        p.repeats, p.inner = t.repeats, t.inner
        p.gflops = b.flops(n, d) * self.bh * _flop_factor(mode) / t.median / 1e9
        self.last_time[b.name] = (n, t.median)
        return p

    def _stop(self, p: Point, status: str, note: str, why: str) -> Point:
        """Record ``p`` as not ok and mark every larger N of its backend the same way."""
        p.status, p.note = status, note
        self.done[p.backend] = (status, f"not run: {why} at N={p.n}")
        return p

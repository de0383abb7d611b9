"""Result files of a sweep: a header of run metadata, the points (CSV and JSON) and the crossovers.

* ``bench_points.csv``: ``# key: value`` header lines (the metadata), then one row per point with the
  columns :data:`~taylorshift.bench.sweep.POINT_COLUMNS` (empty cell = no value).
* ``bench_crossovers.csv``: the same header, then :data:`~taylorshift.bench.sweep.CROSSOVER_COLUMNS`.
* ``bench.json``: ``{"meta", "config", "interrupted", "points", "crossovers"}``.

Read the CSVs with ``taylorshift.bench.io.read_csv`` or ``pandas.read_csv(path, comment="#")``.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from taylorshift.bench.sweep import (
    CROSSOVER_COLUMNS,
    POINT_COLUMNS,
    CrossoverRow,
    Point,
    SweepConfig,
    SweepResult,
)
from taylorshift.files import atomic_open

POINTS_CSV = "bench_points.csv"
CROSSOVERS_CSV = "bench_crossovers.csv"
RESULT_JSON = "bench.json"

# Keys every header holds (more may follow).
META_KEYS: tuple[str, ...] = (
    "command", "date", "taylorshift_version", "torch_version", "python_version", "platform",
    "device", "device_name", "cpu_model", "threads", "dtype", "matmul_gflops", "memory_method", "git_commit",
)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages and the core count, e.g. ``"0.12 0.30 0.41 on 2 cores"``."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def busy_warning(threads: int) -> str | None:
    """A warning when other processes keep the cores busy: parallel kernels then wait for descheduled
    threads and small timings come out many times too slow."""
    try:
        one = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if threads > 1 and one > 0.75 * cores:
        return (f"the machine is busy (load {one:.1f} on {cores} cores): timings with {threads} threads "
                f"will be unreliable; close other work or pass --threads 1")
    return None


def git_commit() -> str | None:
    """The commit of the checkout the package was imported from (``-dirty`` if it has local changes)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=here,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def matmul_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024) -> float:
    """Measured GFLOP/s of a ``size³`` matmul (median of 5): the machine's practical peak in this run."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def collect_metadata(
    device: str = "cpu",
    dtype: str = "float32",
    command: Sequence[str] | None = None,
    memory_method: str = "",
    measure_matmul: bool = True,
) -> dict[str, Any]:
    """The header of a result file: what ran where (see :data:`META_KEYS`).

    Args:
        device: torch device of the run.
        dtype: dtype name of the run.
        command: the command line (default ``sys.argv``).
        memory_method: how memory was measured (``MemoryMeter.method()``).
        measure_matmul: time a 1024³ matmul for ``matmul_gflops`` (about 0.1 s on a CPU).
    """
    import taylorshift

    dev = torch.device(device)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    argv = list(sys.argv if command is None else command)
    return {
        "command": shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "taylorshift_version": taylorshift.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": device_name,
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "dtype": dtype,
        "matmul_gflops": round(matmul_gflops(device, getattr(torch, dtype)), 1) if measure_matmul else None,
        "memory_method": memory_method,
        "git_commit": git_commit(),
        "load_average": load_average(),
    }


def _cell(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_csv(path: str | Path, meta: dict[str, Any], columns: Sequence[str], rows: Sequence[dict]) -> Path:
    """Write ``# key: value`` header lines, then a CSV table (atomically); returns the path."""
    path = Path(path)
    with atomic_open(path, "w", newline="") as f:
        for k, v in meta.items():
            f.write(f"# {k}: {'' if v is None else str(v).replace(chr(10), ' ')}\n")
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: _cell(r.get(c)) for c in columns})
    return path


def read_csv(path: str | Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Read a file written by :func:`write_csv`: ``(header metadata, rows)`` (all values as strings)."""
    meta: dict[str, str] = {}
    lines: list[str] = []
    with open(path, newline="") as f:
        for line in f:
            if line.startswith("# ") and not lines:
                k, _, v = line[2:].rstrip("\n").partition(": ")
                meta[k] = v
            else:
                lines.append(line)
    return meta, list(csv.DictReader(lines))


def write_results(result: SweepResult, out_dir: str | Path) -> list[Path]:
    """Write the points CSV, the crossovers CSV and the JSON into ``out_dir`` (created); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        write_csv(out / POINTS_CSV, result.meta, POINT_COLUMNS, [asdict(p) for p in result.points]),
        write_csv(out / CROSSOVERS_CSV, result.meta, CROSSOVER_COLUMNS, [asdict(c) for c in result.crossovers]),
    ]
    doc = _rounded(result.as_dict())
    with atomic_open(out / RESULT_JSON, "w") as f:  # one point per line: readable and diffable, yet compact
        f.write("{\n")
        for i, key in enumerate(doc):
            value = doc[key]
            f.write(f" {json.dumps(key)}: ")
            if isinstance(value, list):
                f.write("[\n" + ",\n".join("  " + json.dumps(v) for v in value) + ("\n ]" if value else "]"))
            else:
                f.write(json.dumps(value))
            f.write(",\n" if i < len(doc) - 1 else "\n")
        f.write("}\n")
    paths.append(out / RESULT_JSON)
    return paths


def _rounded(value: Any) -> Any:
    """Floats to 6 significant digits (as in the CSV), recursively."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def read_results(path: str | Path) -> SweepResult:
    """Load a :class:`SweepResult` from ``bench.json`` (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_JSON
    doc = json.loads(path.read_text())
    cfg = doc["config"]
    config = SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return SweepResult(
        config,
        doc["meta"],
        [Point(**p) for p in doc["points"]],
        [CrossoverRow(**c) for c in doc["crossovers"]],
        bool(doc.get("interrupted", False)),
    )

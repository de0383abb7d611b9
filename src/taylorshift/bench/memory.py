"""Peak memory of one workload step, beyond its inputs.

* **CPU**: ``tracemalloc`` does not see torch's allocations, so the measurement reads the kernel's
  counters, in a separate process started with ``MALLOC_MMAP_THRESHOLD_=131072`` (so that freed blocks are
  returned to the OS instead of being reused, which would hide small peaks). There the workload runs once
  as a warm-up (only the first time a backend, mode, dtype and ``d`` run in the process), then ``5`` is
  written to ``/proc/self/clear_refs`` (resets the high-water mark ``VmHWM`` to the current ``VmRSS``)
  and the step runs: peak = ``VmHWM`` after − ``VmRSS`` before. Resolution: about 0.25 MiB (the kernel
  updates RSS in per-CPU batches of pages). The process (:mod:`taylorshift.bench.memory_worker`) serves
  many measurements in a row and is restarted after a crash. An optional limit (``RLIMIT_DATA``) makes an
  allocation beyond the budget fail, which is recorded as out-of-memory.
* **CUDA**: in process, ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` minus
  ``memory_allocated()`` before, again after one warm-up step.

The result counts everything the step allocates at its peak (intermediates, outputs, gradients, kernel
workspace) and excludes the inputs, which exist before the step.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MALLOC_MMAP_THRESHOLD = 131072
MIB = 1 << 20


@dataclass(frozen=True)
class MemoryResult:
    """``status`` is ``"ok"``, ``"oom"`` or ``"error"``; ``peak_bytes`` is set when ok."""

    status: str
    peak_bytes: int | None = None
    note: str = ""

    @property
    def peak_mib(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / MIB


def is_out_of_memory(err: BaseException) -> bool:
    """True for the errors an allocation failure raises (torch's OOM, MemoryError, CPU allocator)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def read_status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``VmData``), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no field {field}")


def reset_peak_rss() -> None:
    """Reset this process's ``VmHWM`` to its current ``VmRSS`` (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_cpu_bytes(step: Callable[[], object], warmup: bool = True) -> int:
    """Peak resident memory that ``step()`` adds to this process, in bytes (run in a worker process).

    ``warmup`` runs the step once first, so that lazily created buffers and thread pools are not counted;
    it is needed only the first time a kind of step runs in the process.
    """
    if warmup:
        step()
    gc.collect()
    reset_peak_rss()
    before = read_status_kib("VmRSS")
    step()
    return max(0, read_status_kib("VmHWM") - before) * 1024


def peak_cuda_bytes(step: Callable[[], object], device: str | torch.device = "cuda") -> int:
    """Peak CUDA memory that ``step()`` allocates beyond what is allocated before it, in bytes."""
    step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def capture_result(measure: Callable[[], int]) -> MemoryResult:
    try:
        return MemoryResult("ok", int(measure()))
    except Exception as err:  # recorded as a value, the sweep goes on
        status = "oom" if is_out_of_memory(err) else "error"
        return MemoryResult(status, None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")


class MemoryMeter:
    """Measures the peak memory of workloads (see the module docstring); use as a context manager.

    Args:
        device: ``"cpu"`` (measured in a worker process) or a CUDA device (measured in process).
        threads: torch threads in the CPU worker (default: this process's ``torch.get_num_threads()``).
        limit_bytes: CPU only: allocations of one step beyond about this many bytes fail and are recorded
            as ``"oom"`` (``RLIMIT_DATA`` relative to the worker's data size before the step, plus slack).
        fresh_process: CPU only: start a new worker for every measurement (slower, about 2 s each; by
            default one worker serves all measurements).
    """

    LIMIT_SLACK = 256 * MIB

    def __init__(
        self,
        device: str = "cpu",
        *,
        threads: int | None = None,
        limit_bytes: int | None = None,
        fresh_process: bool = False,
    ) -> None:
        self.device = device
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.limit_bytes = limit_bytes
        self.fresh_process = fresh_process
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: Any = None

    @property
    def is_cpu(self) -> bool:
        return torch.device(self.device).type == "cpu"

    def __enter__(self) -> MemoryMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def method(self) -> str:
        """One line that says how memory is measured (for result headers)."""
        if self.is_cpu:
            return (f"CPU: VmHWM - VmRSS around one step (warmed up), worker process with "
                    f"MALLOC_MMAP_THRESHOLD_={MALLOC_MMAP_THRESHOLD}; excludes the inputs")
        return "CUDA: torch.cuda.max_memory_allocated - memory_allocated around one step after a warm-up step"

    def measure(self, workload: dict[str, Any]) -> MemoryResult:
        """Peak memory of one step of ``make_workload(**workload)`` (see :mod:`taylorshift.bench.backends`).

        ``workload`` holds only JSON-serialisable values (a backend *name*).
        """
        if self.is_cpu:
            return self._ask({"kind": "workload", "args": workload})
        from taylorshift.bench.backends import make_workload

        def run() -> int:
            step = make_workload(**{**workload, "device": self.device})
            return peak_cuda_bytes(step, self.device)

        try:
            return capture_result(run)
        finally:
            gc.collect()
            torch.cuda.empty_cache()

    def measure_allocation(self, nbytes: int) -> MemoryResult:
        """Peak memory of a step that allocates and fills ``nbytes`` bytes (calibration and tests)."""
        if self.is_cpu:
            return self._ask({"kind": "alloc", "bytes": int(nbytes)})

        def run() -> int:
            return peak_cuda_bytes(lambda: torch.ones(nbytes, dtype=torch.uint8, device=self.device), self.device)

        return capture_result(run)

    # -- the CPU worker -------------------------------------------------------------------------------

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MALLOC_MMAP_THRESHOLD))
        cmd = [sys.executable, "-m", "taylorshift.bench.memory_worker", "--threads", str(self.threads)]
        if self.limit_bytes is not None:
            cmd += ["--limit-bytes", str(int(self.limit_bytes + self.LIMIT_SLACK))]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        return subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env,
        )

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else ""

    def _ask(self, request: dict[str, Any]) -> MemoryResult:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:  # the worker died: killed by the OOM killer, or crashed
            code = proc.wait()
            tail = self._stderr_tail()
            self.close()
            if code in (-9, 137):
                return MemoryResult("oom", None, f"memory worker killed (signal 9), {tail}".rstrip(", "))
            return MemoryResult("error", None, f"memory worker exited with code {code}: {tail}")
        reply = json.loads(line)
        if self.fresh_process:
            self.close()
        return MemoryResult(reply["status"], reply.get("peak_bytes"), reply.get("note", ""))

    def close(self) -> None:
        """Stop the worker process (if any)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

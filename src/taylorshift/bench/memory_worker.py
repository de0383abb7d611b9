"""The CPU memory-measurement process behind :class:`taylorshift.bench.memory.MemoryMeter`.

Started as ``python -m taylorshift.bench.memory_worker`` with ``MALLOC_MMAP_THRESHOLD_=131072`` in its
environment. Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.

* ``{"kind": "workload", "args": {...make_workload arguments...}}``
* ``{"kind": "alloc", "bytes": n}``: a step that allocates and fills ``n`` bytes (calibration).

Reply: ``{"status": "ok" | "oom" | "error", "peak_bytes": int | null, "note": str}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from typing import Any

import torch

from taylorshift.bench.backends import make_workload
from taylorshift.bench.memory import MemoryResult, capture_result, peak_cpu_bytes, read_status_kib


def _set_limit(limit_bytes: int | None) -> None:
    """Let the data segment grow by at most ``limit_bytes`` from now (``RLIMIT_DATA`` soft limit)."""
    if limit_bytes is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = read_status_kib("VmData") * 1024 + limit_bytes
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _clear_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))


# (backend, mode, dtype, d) of the workloads that already ran here: they need no further warm-up.
_warm: set[tuple[object, ...]] = set()


def handle(request: dict[str, Any], limit_bytes: int | None) -> MemoryResult:
    kind = request.get("kind")
    if kind == "alloc":
        nbytes = int(request["bytes"])

        def measure() -> int:
            return peak_cpu_bytes(lambda: torch.ones(nbytes, dtype=torch.uint8))
    elif kind == "workload":
        args = dict(request["args"], device="cpu")
        key = tuple(args.get(k) for k in ("backend", "mode", "dtype", "d"))

        def measure() -> int:
            step = make_workload(**args)
            peak = peak_cpu_bytes(step, warmup=key not in _warm)
            _warm.add(key)
            return peak
    else:
        return MemoryResult("error", None, f"unknown request kind {kind!r}")
    _set_limit(limit_bytes)
    try:
        return capture_result(measure)
    finally:
        _clear_limit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Replies go to the original stdout; anything else printed to stdout goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    torch.ones(4) @ torch.ones(4)  # load the math libraries before any limit is set
    for line in sys.stdin:
        if not line.strip():
            continue
        result = handle(json.loads(line), args.limit_bytes)
        replies.write(json.dumps({"status": result.status, "peak_bytes": result.peak_bytes,
                                  "note": result.note}) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Deployment on a small-device proxy: latency and peak memory at one thread, eager PyTorch vs ONNX Runtime
(float32 and int8), TaylorShift (efficient and direct) vs the same architecture with softmax attention; the
LM's per-token decoding cost; and the accuracy change of int8 quantization on trained checkpoints.

Three parts, each written to ``--out`` as CSV (with a ``# key: value`` header naming the machine, versions,
threads) and together in ``deploy.json``, plus ``deploy.png``:

* ``deploy_forward.csv``: a sequence classifier (``--preset``, default ``text_bytes_cpu``: D = 64, 2 blocks,
  4 heads of d = 16; random weights; batch 1, one padding mask input) at each ``--lengths`` N, for every
  (attention, backend) in ``taylorshift/efficient``, ``taylorshift/direct``, ``softmax`` and every runtime in
  ``eager``, ``ort_fp32``, ``ort_int8`` and, when ExecuTorch is installed (the ``executorch`` extra),
  ``executorch`` (XNNPACK). The ONNX graphs are exported once (example length 64, dynamic length) into
  ``--work-dir`` (default: ``deploy/`` in the taylorshift cache). ExecuTorch plans its buffers for the longest
  length a program takes, so its programs are exported once per N with ``max_len = N`` (what a device that
  needs N would ship), and its peak memory is counted from before the program is loaded (the planned buffers
  are allocated at load, not during the call).
* ``deploy_decode.csv``: the causal LM (``fortunes_lm``; random weights) prefilled to each ``--contexts``
  length with eager PyTorch, then single-token steps: eager TaylorShift (constant state), ONNX Runtime
  TaylorShift (the step graph of :func:`taylorshift.deploy.export_lm_step`, state taken from the eager
  prefill), eager softmax (growing key/value cache). Softmax decoding has no ONNX step graph here (its cache
  grows every step).
* ``deploy_int8.csv`` (with ``--checkpoints``): each trained classifier exported (efficient backend) and
  quantized, then evaluated on its test split in eager PyTorch, ONNX Runtime float32 and int8 (accuracy,
  prediction agreement with float32, file sizes).

Method. Every measurement runs in a fresh subprocess (one thread; ``MALLOC_MMAP_THRESHOLD_=131072`` so that
freed memory goes back to the OS; ONNX Runtime's arena off), as :mod:`taylorshift.bench.memory` does: one
warm-up call at the measured size, then the peak resident memory of one call beyond what was resident before
it (``VmHWM`` after a reset minus ``VmRSS``), then ``--repeats`` timed calls (median, p10, p90). The model's
weights and inputs are resident before, so the peak counts intermediates and outputs. ``--limit-mib`` caps
what one call may add (``RLIMIT_DATA``): a call beyond it is recorded as ``oom``, the small-device budget.
A call that takes longer than ``--timeout`` is recorded as ``timeout``.

    python benchmarks/deploy.py                                    # full run: see docs/deploy.md for its time
    python benchmarks/deploy.py --lengths 64 128 --contexts 64 --repeats 2 --out /tmp/deploy-smoke
    python benchmarks/deploy.py --parts int8 --checkpoints runs/lra/*/ --samples 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FORWARD_COLUMNS = (
    "attention",
    "backend",
    "runtime",
    "n",
    "status",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "peak_mib",
    "note",
)
DECODE_COLUMNS = (
    "attention",
    "runtime",
    "context",
    "status",
    "step_ms",
    "p10_ms",
    "p90_ms",
    "peak_mib",
    "state_mib",
    "note",
)
INT8_COLUMNS = (
    "checkpoint",
    "task",
    "attention",
    "samples",
    "acc_eager",
    "acc_ort_fp32",
    "acc_ort_int8",
    "int8_minus_fp32",
    "agreement_int8_fp32",
    "fp32_kib",
    "int8_kib",
    "acc_et_fp32",
    "acc_et_int8",
    "et_agreement_int8_fp32",
    "et_fp32_kib",
    "et_int8_kib",
)
ARCHS = (("taylorshift", "efficient"), ("taylorshift", "direct"), ("softmax", "-"))
RUNTIMES = ("eager", "ort_fp32", "ort_int8", "executorch")
MIB = 1 << 20


# ------------------------------------------------------------------------------------------------ worker


def _set_limit(limit_mib: float | None) -> None:
    """Let the data segment grow by at most ``limit_mib`` from now on (the budget of one call)."""
    from taylorshift.bench.memory import read_status_kib

    if not limit_mib:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = read_status_kib("VmData") * 1024 + int(limit_mib * MIB)
    resource.setrlimit(resource.RLIMIT_DATA, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _timed(call, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p10_ms": times[int(0.1 * (len(times) - 1))],
        "p90_ms": times[round(0.9 * (len(times) - 1))],
    }


def _forward_call(job: dict[str, Any]):
    import torch

    n = job["n"]
    ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n))
    pad = torch.zeros(1, n, dtype=torch.bool)
    if job["runtime"] == "eager":
        from taylorshift.models import create_model

        torch.manual_seed(0)
        backend = "auto" if job["attention"] == "softmax" else job["backend"]
        model = create_model(job["preset"], job["attention"], backend=backend, max_len=job["max_len"]).eval()

        def call():
            with torch.inference_mode():
                return model(ids, key_padding_mask=pad)

        return call
    if job["runtime"] == "executorch":
        from taylorshift.bench.memory import read_status_kib
        from taylorshift.deploy.executorch import ExecuTorchModel, require_executorch

        require_executorch("executorch.runtime").Runtime.get()  # the runtime library itself is not the program's
        job["rss_before_load_kib"] = read_status_kib("VmRSS")
        program = ExecuTorchModel(job["path"])
        return lambda: program(ids, pad)
    from taylorshift.deploy import OnnxModel

    runtime = OnnxModel(job["path"], threads=1, arena=False)
    x, m = ids.numpy(), pad.numpy()
    return lambda: runtime(x, m)


def _decode_call(job: dict[str, Any]):
    import numpy as np
    import torch

    from taylorshift.models import create_model

    torch.manual_seed(0)
    model = create_model("fortunes_lm", job["attention"], max_len=job["max_len"]).eval()
    n = job["context"]
    ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n))
    cache = model.new_cache(1)
    with torch.inference_mode():
        model.prefill(ids, cache)
    token = torch.tensor([[65]])
    if job["runtime"] == "eager":
        job["state_bytes"] = cache.nbytes
        start = cache.length

        def call():
            with torch.inference_mode():
                if cache.length >= start + job["steps_budget"]:  # never run past the positional table
                    raise RuntimeError("step budget exceeded")
                return model.step(token, cache)

        return call
    if job["runtime"] == "executorch":
        from taylorshift.deploy.executorch import ExecuTorchModel

        program = ExecuTorchModel(job["path"])
        states = [layer.state.state.clone() for layer in cache.layers]
        position = torch.full((1,), n, dtype=torch.long)
        job["state_bytes"] = sum(s.numel() * s.element_size() for s in states)

        def call():  # every timed step at the same context and state: its cost does not depend on them
            return program(token, position, *states)

        return call
    from taylorshift.deploy import LMState, OnnxLMRunner

    runner = OnnxLMRunner(job["path"], threads=1, arena=False)
    states = [layer.state.state.numpy().copy() for layer in cache.layers]
    position = np.full(1, n, np.int64)
    state = LMState(states, position)
    job["state_bytes"] = state.nbytes
    tok = np.array([65])

    def call():
        state.position = position  # every timed step at the same context: the step's cost does not depend on it
        return runner.step(tok, state)

    return call


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement (runs in its own process): build, warm up, peak memory of one call, timed calls."""
    import torch

    from taylorshift.bench.memory import is_out_of_memory, peak_cpu_bytes

    torch.set_num_threads(1)
    out: dict[str, Any] = {"status": "ok", "note": ""}
    try:
        at_load = job["runtime"] == "executorch"  # ExecuTorch allocates its planned buffers when it loads
        if at_load:
            _set_limit(job.get("limit_mib"))
        call = _decode_call(job) if job["part"] == "decode" else _forward_call(job)
        if not at_load:
            _set_limit(job.get("limit_mib"))
        out["peak_mib"] = peak_cpu_bytes(call, warmup=True) / MIB
        if "rss_before_load_kib" in job:  # ExecuTorch: its planned buffers were allocated at load
            from taylorshift.bench.memory import read_status_kib

            out["peak_mib"] = (read_status_kib("VmHWM") - job["rss_before_load_kib"]) / 1024
            out["note"] = "peak counted from before loading the program (planned buffers included)"
        out.update(_timed(call, job["repeats"]))
        if "state_bytes" in job:
            out["state_mib"] = job["state_bytes"] / MIB
    except Exception as err:  # recorded as a value, not a stack trace
        msg = str(err) or type(err).__name__
        oom = is_out_of_memory(err) or "allocate" in msg.lower() or "bad_alloc" in msg
        out = {"status": "oom" if oom else "error", "note": " ".join(msg.split())[:200]}
    return out


def run_job(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`worker` for ``job`` in a fresh process; a crash or a kill is recorded, not raised."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"over {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        status = "oom" if proc.returncode in (-9, 137) or "MemoryError" in proc.stderr else "error"
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])[:200]
        return {"status": status, "note": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------ parts


def export_graphs(args: argparse.Namespace, work: Path) -> dict[tuple[str, str, str], Path]:
    """The forward graphs of the classifier for each (attention, backend) and runtime, and the LM step graph."""
    import torch

    from taylorshift.deploy import export_lm_step, export_onnx, quantize_int8
    from taylorshift.models import create_model

    graphs = {}
    max_len = max(args.lengths)
    for attention, backend in ARCHS:
        torch.manual_seed(0)
        b = "auto" if attention == "softmax" else backend
        model = create_model(args.preset, attention, backend=b, max_len=max_len).eval()
        fp32 = work / f"{attention}_{backend}.onnx"
        example = (torch.zeros(1, 64, dtype=torch.long), torch.zeros(1, 64, dtype=torch.bool))
        export_onnx(model, fp32, example, backend="efficient" if attention == "softmax" else backend)
        graphs[attention, backend, "ort_fp32"] = fp32
        graphs[attention, backend, "ort_int8"] = quantize_int8(fp32, work / f"{attention}_{backend}.int8.onnx")
        if "executorch" in args.runtimes and "forward" in args.parts:
            from taylorshift.deploy.executorch import export_executorch

            for n in args.lengths:  # planned for max_len: one program per length, sized for it
                ex = (torch.zeros(1, min(64, n), dtype=torch.long), torch.zeros(1, min(64, n), dtype=torch.bool))
                graphs[attention, backend, "executorch", n] = export_executorch(
                    model, work / f"{attention}_{backend}_{n}.pte", ex,
                    backend="efficient" if attention == "softmax" else backend, max_len=n)
    if "decode" in args.parts:
        torch.manual_seed(0)
        lm = create_model("fortunes_lm", "taylorshift", max_len=_decode_max_len(args)).eval()
        graphs["lm", "step", "ort_fp32"] = export_lm_step(lm, work / "lm_step.onnx")
        if "executorch" in args.runtimes:
            from taylorshift.deploy.executorch import export_lm_step_executorch

            graphs["lm", "step", "executorch"] = export_lm_step_executorch(lm, work / "lm_step.pte")
    return graphs


def _decode_max_len(args: argparse.Namespace) -> int:
    return max(args.contexts) + 2 * (args.repeats + 2) + 1


def forward_part(args, graphs, meta) -> list[dict]:
    rows = []
    print(f"{'attention':<12} {'backend':<10} {'runtime':<9} {'N':>6} {'status':<7} {'ms':>10} {'peak MiB':>9}")
    for n in args.lengths:
        for attention, backend in ARCHS:
            for runtime in args.runtimes:
                job = {
                    "part": "forward",
                    "attention": attention,
                    "backend": backend,
                    "runtime": runtime,
                    "n": n,
                    "preset": args.preset,
                    "max_len": max(args.lengths),
                    "repeats": args.repeats,
                    "limit_mib": args.limit_mib,
                    "path": str(graphs.get((attention, backend, runtime, n))
                                or graphs.get((attention, backend, runtime), "")),
                }
                r = run_job(job, args.timeout)
                row = {"attention": attention, "backend": backend, "runtime": runtime, "n": n, **r}
                rows.append(row)
                ms, peak = row.get("median_ms"), row.get("peak_mib")
                print(
                    f"{attention:<12} {backend:<10} {runtime:<9} {n:>6} {row['status']:<7} "
                    f"{'' if ms is None else f'{ms:.2f}':>10} {'' if peak is None else f'{peak:.1f}':>9}",
                    flush=True,
                )
    return rows


def decode_part(args, graphs, meta) -> list[dict]:
    rows = []
    print(
        f"{'attention':<12} {'runtime':<9} {'context':>8} {'status':<7} {'step ms':>9} {'peak MiB':>9} "
        f"{'state MiB':>10}"
    )
    for context in args.contexts:
        kinds = [("taylorshift", "eager"), ("taylorshift", "ort_fp32"), ("softmax", "eager")]
        if "executorch" in args.runtimes:
            kinds.insert(2, ("taylorshift", "executorch"))
        for attention, runtime in kinds:
            job = {
                "part": "decode",
                "attention": attention,
                "runtime": runtime,
                "context": context,
                "max_len": _decode_max_len(args),
                "repeats": args.repeats,
                "limit_mib": args.limit_mib,
                "steps_budget": args.repeats + 2,
                "path": str(graphs.get(("lm", "step", runtime), "")),
            }
            r = run_job(job, args.timeout)
            row = {"attention": attention, "runtime": runtime, "context": context, **r}
            row["step_ms"] = r.get("median_ms")
            rows.append(row)
            ms, peak, st = row.get("step_ms"), row.get("peak_mib"), row.get("state_mib")
            print(
                f"{attention:<12} {runtime:<9} {context:>8} {row['status']:<7} "
                f"{'' if ms is None else f'{ms:.3f}':>9} {'' if peak is None else f'{peak:.2f}':>9} "
                f"{'' if st is None else f'{st:.2f}':>10}",
                flush=True,
            )
    return rows


class _OnnxAsModule:
    """An exported classifier called like the eager one (``model(x, key_padding_mask=...)``), so the trainer's
    :func:`taylorshift.train.batches.evaluate` evaluates it unchanged."""

    def __init__(self, runtime, takes_mask: bool) -> None:
        self.runtime, self.takes_mask, self.training = runtime, takes_mask, False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, x, key_padding_mask=None):
        import torch

        if not self.takes_mask:
            return torch.from_numpy(self.runtime(x))
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool)
        return torch.from_numpy(self.runtime(x, key_padding_mask))


class _ExecuTorchAsModule(_OnnxAsModule):
    """An ExecuTorch program (batch 1) called like the eager classifier, one sequence at a time."""

    def __call__(self, x, key_padding_mask=None):
        import torch

        if not self.takes_mask:
            return torch.cat([self.runtime(x[i : i + 1]) for i in range(x.shape[0])])
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool)
        return torch.cat([self.runtime(x[i : i + 1], key_padding_mask[i : i + 1]) for i in range(x.shape[0])])


def int8_part(args, work: Path) -> list[dict]:
    import torch

    from taylorshift.cli import CLIError
    from taylorshift.data import get_task
    from taylorshift.deploy import OnnxModel, export_onnx, quantize_int8
    from taylorshift.deploy.cli import example_input
    from taylorshift.train.batches import evaluate
    from taylorshift.train.checkpoint import load_model

    torch.set_num_threads(1)
    rows = []
    for i, ckpt in enumerate(args.checkpoints):
        model, meta = load_model(ckpt)
        cfg = meta["config"]
        task = get_task(cfg["task"])
        if task.kind == "lm":
            print(f"skip {ckpt}: a language model (int8 accuracy is measured on classifiers)")
            continue
        dataset = task.dataset("test", cfg.get("cache_dir"), **cfg.get("data_options", {}))
        try:
            example = example_input(model, None)
        except CLIError as err:
            raise SystemExit(f"{ckpt}: {err}") from None
        fp32 = export_onnx(model, work / f"ckpt{i}.onnx", example, backend="efficient")
        int8 = quantize_int8(fp32, work / f"ckpt{i}.int8.onnx")
        takes_mask = len(example) == 2
        results = {}
        for name, m in (
            ("eager", model),
            ("ort_fp32", _OnnxAsModule(OnnxModel(fp32), takes_mask)),
            ("ort_int8", _OnnxAsModule(OnnxModel(int8), takes_mask)),
        ):
            results[name] = evaluate(
                m, task.kind, dataset, task.pad_id, torch.device("cpu"), args.batch_size, args.samples
            )
        et = {}
        if "executorch" in args.runtimes:  # the same checkpoint through ExecuTorch, float32 and int8 (batch 1)
            from taylorshift.deploy.executorch import ExecuTorchModel, export_executorch

            one = tuple(t[:1] for t in example)
            for q in (None, "int8"):
                pte = export_executorch(model, work / f"ckpt{i}{'.int8' if q else ''}.pte", one, backend="efficient",
                                        quantize=q)
                res = evaluate(_ExecuTorchAsModule(ExecuTorchModel(pte), takes_mask), task.kind, dataset,
                               task.pad_id, torch.device("cpu"), args.batch_size, args.samples)
                et[q or "fp32"] = (res, pte.stat().st_size / 1024)
        row = {
            "checkpoint": str(ckpt),
            "task": task.name,
            "attention": cfg["attention"],
            "samples": results["eager"].count,
            "acc_eager": results["eager"].accuracy,
            "acc_ort_fp32": results["ort_fp32"].accuracy,
            "acc_ort_int8": results["ort_int8"].accuracy,
            "int8_minus_fp32": results["ort_int8"].accuracy - results["ort_fp32"].accuracy,
            "agreement_int8_fp32": float(
                (results["ort_int8"].predictions == results["ort_fp32"].predictions).float().mean()
            ),
            "fp32_kib": fp32.stat().st_size / 1024,
            "int8_kib": int8.stat().st_size / 1024,
        }
        if et:
            (ef, ef_kib), (ei, ei_kib) = et["fp32"], et["int8"]
            row.update(acc_et_fp32=ef.accuracy, acc_et_int8=ei.accuracy,
                       et_agreement_int8_fp32=float((ei.predictions == ef.predictions).float().mean()),
                       et_fp32_kib=ef_kib, et_int8_kib=ei_kib)
        rows.append(row)
        print(
            f"{task.name:<14} {cfg['attention']:<12} eager {row['acc_eager']:.4f}  ort fp32 "
            f"{row['acc_ort_fp32']:.4f}  int8 {row['acc_ort_int8']:.4f} ({row['int8_minus_fp32']:+.4f}), "
            f"agreement {row['agreement_int8_fp32']:.4f}, {row['fp32_kib']:.0f} -> {row['int8_kib']:.0f} KiB"
            + (f"; ExecuTorch fp32 {row['acc_et_fp32']:.4f} int8 {row['acc_et_int8']:.4f}" if et else ""),
            flush=True,
        )
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"eager": "-", "ort_fp32": "--", "ort_int8": ":", "executorch": "-."}
    colors = {"taylorshift/efficient": "C0", "taylorshift/direct": "C1", "softmax/-": "C3"}
    for attention, backend in ARCHS:
        for runtime in RUNTIMES:
            pts = [
                r
                for r in rows
                if r["attention"] == attention
                and r["backend"] == backend
                and r["runtime"] == runtime
                and r["status"] == "ok"
            ]
            if not pts:
                continue
            label = f"{attention}{'' if backend == '-' else '/' + backend} {runtime}"
            kw = {"ls": styles[runtime], "color": colors[f"{attention}/{backend}"], "marker": "o", "ms": 3}
            axes[0].plot([r["n"] for r in pts], [r["median_ms"] for r in pts], label=label, **kw)
            axes[1].plot([r["n"] for r in pts], [max(r["peak_mib"], 0.25) for r in pts], label=label, **kw)
    for ax, ylabel in zip(axes, ("latency (ms, median)", "peak memory of a call (MiB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument(
        "--parts",
        nargs="+",
        default=["forward", "decode"],
        choices=["forward", "decode", "int8"],
        help="what to measure (default forward decode; int8 needs --checkpoints)",
    )
    p.add_argument("--preset", default="text_bytes_cpu", help="classifier preset of the forward part")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384], help="forward lengths N")
    p.add_argument("--runtimes", nargs="+", default=None, choices=RUNTIMES,
                   help="default: all, executorch only when it is installed")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 16384], help="LM decoding context lengths")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per point (median reported)")
    p.add_argument(
        "--limit-mib",
        type=float,
        default=8192,
        help="memory one call may add, the device budget (default 8192; 0 = none); beyond it: oom",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per measurement before 'timeout'")
    p.add_argument("--checkpoints", nargs="*", default=[], help="trained classifier checkpoints (int8 part)")
    p.add_argument("--samples", type=int, default=None, help="test examples per checkpoint (default all)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (int8 part)")
    p.add_argument(
        "--work-dir",
        default=None,
        help="where the ONNX files go (default <taylorshift cache>/deploy, outside the repository)",
    )
    p.add_argument("--out", default="docs/bench/deploy", help="output folder")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if min(args.lengths + args.contexts) < 2 or args.repeats < 1:
        p.error("lengths and contexts must be >= 2, --repeats >= 1")
    if "int8" in args.parts and not args.checkpoints:
        p.error("--parts int8 needs --checkpoints")
    if args.runtimes is None:
        import importlib.util

        args.runtimes = [r for r in RUNTIMES if r != "executorch" or importlib.util.find_spec("executorch")]
    import torch

    from taylorshift.bench.io import collect_metadata, write_csv
    from taylorshift.models import model_config

    torch.set_num_threads(1)
    args.lengths, args.contexts = sorted(set(args.lengths)), sorted(set(args.contexts))
    out = Path(args.out)
    if args.work_dir is None:
        from taylorshift.ops.calibration import cache_dir

        args.work_dir = str(cache_dir() / "deploy")
    work = Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    meta = collect_metadata(
        "cpu",
        "float32",
        command=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
        memory_method="fresh process per point: VmHWM - VmRSS of one call after a warm-up "
        "(MALLOC_MMAP_THRESHOLD_=131072, ORT arena off)",
    )
    cfg = model_config(args.preset)
    meta.update(
        onnxruntime_version=onnxruntime.__version__,
        preset=args.preset,
        batch=1,
        repeats=args.repeats,
        limit_mib=args.limit_mib,
        model=f"D={cfg.dim} depth={cfg.depth} heads={cfg.num_heads} d={cfg.head_dim}",
    )
    print(
        f"# {meta['cpu_model']}, torch {meta['torch_version']}, onnxruntime {onnxruntime.__version__}, "
        f"1 thread, load {meta['load_average']}"
    )
    result: dict[str, Any] = {"meta": meta, "config": vars(args)}
    if "forward" in args.parts or "decode" in args.parts:
        t0 = time.perf_counter()
        graphs = export_graphs(args, work)
        print(f"exported {len(graphs)} graphs into {work} in {time.perf_counter() - t0:.0f} s")
    if "forward" in args.parts:
        result["forward"] = forward_part(args, graphs, meta)
        write_csv(out / "deploy_forward.csv", meta, FORWARD_COLUMNS, result["forward"])
        if not args.no_plot:
            plot(
                result["forward"],
                out / "deploy.png",
                f"{args.preset} ({meta['model']}), batch 1, fp32 inputs, "
                f"1 thread, {meta['cpu_model']}; torch {meta['torch_version']}, onnxruntime "
                f"{onnxruntime.__version__}",
            )
    if "decode" in args.parts:
        result["decode"] = decode_part(args, graphs, meta)
        write_csv(out / "deploy_decode.csv", meta, DECODE_COLUMNS, result["decode"])
    if "int8" in args.parts:
        result["int8"] = int8_part(args, work)
        write_csv(out / "deploy_int8.csv", meta, INT8_COLUMNS, result["int8"])
    with open(out / "deploy.json", "w") as f:
        json.dump(result, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
        f.write("\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

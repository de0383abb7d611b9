"""``taylorshift bench``: time and memory of TaylorShift against softmax attention over N, and crossovers."""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
import time

from taylorshift.cli import device_type, non_negative_int, output_dir, positive_int

HELP = ("Benchmark direct/efficient TaylorShift against softmax attention (time, peak memory) over "
        "sequence lengths and locate the measured crossovers next to the paper's N0.")

BACKEND_NAMES = ("direct", "efficient", "sdpa", "naive_softmax")  # the default set
ALL_BACKENDS = (*BACKEND_NAMES, "paper_efficient")
MODE_NAMES = ("forward", "train")
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")

# The two profiles. Options given on the command line override the profile's value.
FULL = dict(head_dims=(16, 32, 64), heads=8, batch=1, dtype="float32", modes=("forward",),
            backends=BACKEND_NAMES, n_min=64, n_max=16384, points_per_octave=4, dense=5,
            repeats=5, warmup=1, budget_seconds=5.0)
QUICK = dict(FULL, head_dims=(16, 32), heads=4, n_max=4096, points_per_octave=2, dense=3,
             repeats=3, warmup=1, budget_seconds=0.3)



def _list(values: tuple) -> str:
    return ", ".join(map(str, values))


DESCRIPTION = f"""{HELP}

Backends: direct and efficient are taylorshift.taylor_shift_attention(q, k, v, backend=...); sdpa is
torch.nn.functional.scaled_dot_product_attention (softmax, fused kernel: the speed anchor); naive_softmax
is explicit softmax(QK^T/sqrt(d))V (the paper's baseline). Inputs q, k, v are (B, H, N, d) ~ N(0, 1).

For each mode, head size d and length N (a geometric grid from --n-min to --n-max plus --dense points
around each analytic crossover N0 = taylorshift.analysis.crossover(d, "speed" | "memory")) every backend
is first measured for peak memory (CPU: in a worker process, VmHWM - VmRSS around one step, excluding the
inputs; CUDA: torch.cuda.max_memory_allocated), then timed (warm-up, then median of repeats). A point the
budgets rule out (predicted from the backend's previous point and its cost model) is recorded as
skipped-budget, a point that runs out of memory as oom; the sweep never stops on them.

The crossovers (N where efficient becomes cheaper than direct, sdpa and naive_softmax, in time and in
memory) are found by log-log interpolation between neighbouring points and printed beside the theory.
Files written to --out: bench_points.csv, bench_crossovers.csv, bench.json (all with a header naming the
machine, threads, torch version, dtype, date and command) and one PNG per (d, mode).

Profiles: by default a full sweep (d = {_list(FULL['head_dims'])}, H = {FULL['heads']},
N = {FULL['n_min']}..{FULL['n_max']}, forward); --quick runs in about two minutes on a 2-core CPU
(d = {_list(QUICK['head_dims'])}, H = {QUICK['heads']}, N = {QUICK['n_min']}..{QUICK['n_max']}, forward).
Options given explicitly override the profile."""

EPILOG = """examples:
  taylorshift bench --quick
  taylorshift bench --head-dims 32 --heads 8 --mode forward train --out results/
  taylorshift bench --backends direct efficient --n-max 65536 --budget-seconds 10 --no-memory"""


def parse_size_mib(text: str) -> float | None:
    """``"auto"`` → -1 (resolved later), ``"none"`` → None, ``"512"``/``"512MiB"``/``"8GiB"``/``"8G"`` → MiB."""
    t = text.strip().lower()
    if t == "none":
        return None
    if t == "auto":
        return -1.0
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?", t)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 4096, 512MiB or 8GiB, 'auto' or 'none', got {text!r}")
    value, unit = float(m.group(1)), (m.group(2) or "m")[0]
    mib = value * {"k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}[unit]
    if mib <= 0:
        raise argparse.ArgumentTypeError("the memory budget must be positive")
    return mib


def parse_seconds(text: str) -> float:
    """Seconds > 0, or ``"none"`` → infinity (no limit)."""
    if text.strip().lower() == "none":
        return float("inf")
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0 or 'none', got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected seconds > 0 or 'none', got {text!r}")
    return v




def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("what to measure")
    g.add_argument("--quick", action="store_true",
                   help="the quick profile (about two minutes on a 2-core CPU): d 16 and 32, H=4, "
                        "N 64..4096 at 2 points per octave, 3 repeats, forward only")
    g.add_argument("--head-dims", type=positive_int, nargs="+", metavar="D",
                   help=f"head sizes d to sweep (default {' '.join(map(str, FULL['head_dims']))})")
    g.add_argument("--heads", type=positive_int, metavar="H", help=f"heads H (default {FULL['heads']})")
    g.add_argument("--batch", type=positive_int, metavar="B", help=f"batch size B (default {FULL['batch']})")
    g.add_argument("--dtype", choices=DTYPE_NAMES, help="dtype of q, k, v (default float32; TaylorShift "
                   "computes float16/bfloat16 inputs in float32)")
    g.add_argument("--mode", dest="modes", nargs="+", choices=MODE_NAMES,
                   help="forward: one call under torch.inference_mode; train: forward + backward "
                        "(gradients of q, k, v). Several may be given (default forward)")
    g.add_argument("--backends", nargs="+", choices=ALL_BACKENDS,
                   help="backends to compare (default: direct efficient sdpa naive_softmax; paper_efficient is the "
                        "paper's materialised full-d² form, the baseline of the fast path)")
    g.add_argument("--device", default="auto", type=device_type(allow_auto=True),
                   help="torch device: cpu, cuda, cuda:1 or auto (cuda when available; default auto)")
    g.add_argument("--threads", type=positive_int, metavar="T",
                   help="torch CPU threads (default: torch's default, the number of cores)")
    s = parser.add_argument_group("sequence lengths")
    s.add_argument("--n-min", type=positive_int, metavar="N", help=f"smallest N (default {FULL['n_min']})")
    s.add_argument("--n-max", type=positive_int, metavar="N",
                   help=f"largest N (default {FULL['n_max']}; {QUICK['n_max']} with --quick)")
    s.add_argument("--points-per-octave", type=positive_int, metavar="P",
                   help=f"geometric grid density (default {FULL['points_per_octave']}; "
                        f"{QUICK['points_per_octave']} with --quick). Lengths are multiples of 16")
    s.add_argument("--dense", type=non_negative_int, metavar="K",
                   help=f"extra points spread over [N0/sqrt2, N0*sqrt2] around each analytic crossover "
                        f"(speed and memory) of each d; 0 for none (default {FULL['dense']}; "
                        f"{QUICK['dense']} with --quick)")
    t = parser.add_argument_group("timing and budgets")
    t.add_argument("--repeats", type=positive_int, metavar="R",
                   help=f"timed repeats per point; the median is reported (default {FULL['repeats']}; "
                        f"{QUICK['repeats']} with --quick)")
    t.add_argument("--warmup", type=non_negative_int, metavar="W",
                   help=f"untimed calls before timing (default {FULL['warmup']})")
    t.add_argument("--budget-seconds", type=parse_seconds, metavar="S",
                   help=f"skip a point (status skipped-budget) whose predicted time per call exceeds S "
                        f"seconds, and the larger N of that backend; the prediction scales the backend's "
                        f"previous time by its FLOP model. 'none' for no limit (default {FULL['budget_seconds']:g}; "
                        f"{QUICK['budget_seconds']:g} with --quick)")
    t.add_argument("--budget-memory", type=parse_size_mib, default=-1.0, metavar="SIZE",
                   help="skip a point whose predicted peak memory exceeds SIZE (MiB, or with a unit: "
                        "512MiB, 8GiB); on CPU allocations beyond it also fail in the memory worker and are "
                        "recorded as oom. 'auto' (default): 40%% of the memory available at the start; 'none'")
    t.add_argument("--no-memory", action="store_true",
                   help="do not measure peak memory (faster; no memory crossovers)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", metavar="DIR",
                   help="directory for the CSV, JSON and PNG files (default ./bench_results; with "
                        "--from-results, that directory)")
    o.add_argument("--from-results", metavar="DIR",
                   help="measure nothing: read DIR/bench.json of an earlier run, print its summary and "
                        "redraw its figures (into --out)")
    o.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    o.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


def build_config(args: argparse.Namespace):
    """The :class:`~taylorshift.bench.sweep.SweepConfig` for parsed arguments (profile + overrides)."""
    import torch

    from taylorshift.bench.sweep import SweepConfig, default_memory_budget_mib

    values = dict(QUICK if args.quick else FULL)
    for key in ("head_dims", "heads", "batch", "dtype", "modes", "backends", "n_min", "n_max",
                "points_per_octave", "dense", "repeats", "warmup"):
        v = getattr(args, key, None)
        if v is not None:
            values[key] = tuple(dict.fromkeys(v)) if isinstance(v, list) else v
    if args.budget_seconds is not None:
        values["budget_seconds"] = None if args.budget_seconds == float("inf") else args.budget_seconds
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    budget = args.budget_memory
    if budget is not None and budget < 0:
        budget = default_memory_budget_mib(device)
    cfg = SweepConfig(**values, budget_memory_mib=budget, measure_memory=not args.no_memory,
                      device=device, seed=args.seed)
    return cfg.validate()


def equivalent_command(cfg, threads: int | None = None) -> list[str]:
    """A command line that reproduces ``cfg`` (and the thread count) without relying on profile defaults."""
    def opt(v: object) -> str:
        return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    cmd = ["taylorshift", "bench", "--head-dims", *map(str, cfg.head_dims), "--heads", str(cfg.heads),
           "--batch", str(cfg.batch), "--dtype", cfg.dtype, "--mode", *cfg.modes, "--backends", *cfg.backends,
           "--device", cfg.device, "--n-min", str(cfg.n_min), "--n-max", str(cfg.n_max),
           "--points-per-octave", str(cfg.points_per_octave), "--dense", str(cfg.dense),
           "--repeats", str(cfg.repeats), "--warmup", str(cfg.warmup),
           "--budget-seconds", opt(cfg.budget_seconds),
           "--budget-memory", "none" if cfg.budget_memory_mib is None else f"{cfg.budget_memory_mib:.0f}MiB",
           "--seed", str(cfg.seed)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if not cfg.measure_memory:
        cmd.append("--no-memory")
    return cmd


def run(args: argparse.Namespace) -> int:
    if args.from_results:
        from taylorshift.bench.io import read_results

        out = args.out or args.from_results
        if not args.no_plots:
            output_dir(out, "--out" if args.out else "--from-results")
        try:
            result = read_results(args.from_results)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--from-results {args.from_results}: cannot read the results ({err})") from None
        return report(result, out, plots=not args.no_plots)
    return measure(args)


def measure(args: argparse.Namespace) -> int:
    """Run the sweep the arguments describe, then :func:`report` it."""
    import torch

    from taylorshift.bench.io import busy_warning, collect_metadata, load_average
    from taylorshift.bench.memory import MIB, MemoryMeter
    from taylorshift.bench.sweep import run_sweep, sequence_lengths

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(args)
    out = output_dir(args.out or "bench_results", "--out")
    n_points = sum(len(sequence_lengths(d, cfg.n_min, cfg.n_max, cfg.points_per_octave, cfg.dense))
                   for d in cfg.head_dims) * len(cfg.modes) * len(cfg.backends)
    budget = "none" if cfg.budget_memory_mib is None else f"{cfg.budget_memory_mib:.0f} MiB"
    print(f"taylorshift bench: {n_points} points (d {', '.join(map(str, cfg.head_dims))}; "
          f"N {cfg.n_min}..{cfg.n_max}; {', '.join(cfg.modes)}; B={cfg.batch} H={cfg.heads} {cfg.dtype} on "
          f"{cfg.device}, {_threads(torch.get_num_threads())}); budgets {cfg.budget_seconds or 'none'} s/call, "
          f"{budget}", file=sys.stderr)
    warning = busy_warning(torch.get_num_threads()) if cfg.device == "cpu" else None
    if warning:
        print(f"taylorshift bench: warning: {warning}", file=sys.stderr)

    start = time.perf_counter()
    meter = None
    if cfg.measure_memory:
        limit = None if cfg.budget_memory_mib is None else int(cfg.budget_memory_mib * MIB)
        meter = MemoryMeter(cfg.device, limit_bytes=limit)
    try:
        meta = collect_metadata(cfg.device, cfg.dtype, command=equivalent_command(cfg, torch.get_num_threads()),
                                memory_method=meter.method() if meter else "not measured")
        meta["argv"] = shlex.join(sys.argv)
        if meter is not None:
            cal = meter.measure_allocation(64 * MIB)
            meta["memory_calibration"] = (f"a 64 MiB allocation measured as {cal.peak_mib:.1f} MiB"
                                          if cal.status == "ok" else f"calibration failed: {cal.note}")
        result = run_sweep(cfg, meta=meta, progress=not args.no_progress, meter=meter,
                           flops_per_second=(meta.get("matmul_gflops") or 50.0) * 1e9)
    finally:
        if meter is not None:
            meter.close()
    result.meta["wall_seconds"] = round(time.perf_counter() - start, 1)
    result.meta["load_average_end"] = load_average()
    if warning:
        result.meta["warning"] = warning
    code = report(result, out, plots=not args.no_plots, write=True)
    return 130 if result.interrupted else code


def _threads(n: object) -> str:
    return "1 thread" if n in (1, "1") else f"{n} threads"


def report(result, out_dir: str, *, plots: bool = True, write: bool = False) -> int:
    """Write the result files (if ``write``) and figures into ``out_dir`` and print the summary."""
    from pathlib import Path

    from taylorshift.bench.io import write_results
    from taylorshift.bench.summary import crossover_table, largest_common_table, status_counts

    cfg, meta = result.config, result.meta
    paths = write_results(result, out_dir) if write else []
    if plots:
        try:
            from taylorshift.bench.plots import plot_results

            paths += plot_results(result, out_dir)
        except ImportError as err:
            print(f"taylorshift bench: no plots: {err}", file=sys.stderr)
    print(f"TaylorShift bench — {meta.get('device_name')}, {_threads(meta.get('threads'))}, "
          f"torch {meta.get('torch_version')}, {cfg.dtype}, B={cfg.batch} H={cfg.heads}; "
          f"matmul peak {meta.get('matmul_gflops')} GFLOP/s; {meta.get('date')}")
    print(f"{len(result.points)} points ({status_counts(result.points)}) in {meta.get('wall_seconds')} s"
          + (" — INTERRUPTED, partial results" if result.interrupted else ""))
    print()
    print("Crossover N0: the length above which efficient TaylorShift is cheaper than the other backend")
    print("(measured: log-log interpolation; theory: time = taylorshift.analysis.crossover(d, form='symmetric'), "
          "memory = the paper's crossover(d, 'memory'); * = several crossings)")
    print(crossover_table(result))
    print()
    print("At the largest N where every backend ran (time per call, peak memory beyond the inputs):")
    print(largest_common_table(result))
    if meta.get("warning"):
        print(f"\nWarning: {meta['warning']}.")
    print()
    print("Files:" if paths else f"Files: none written (results in {Path(out_dir)})")
    for p in paths:
        print(f"  {p}")
    return 0

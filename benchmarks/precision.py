"""Precision and contention tables in one run (B = 1, H = 8), written to ``docs/bench/precision/``.

1. Matmul rates per format (the physical limit): a square 2048³ product and one with the shape of the efficient
   kernel's dominant product at ``d = 32``, ``(H, N, F) @ (H, F, d + 1)``, in float32, bfloat16 and float16.
2. Precision table at ``N`` (default 16,384): for inputs in float32, bfloat16 and float16 and each ``d``, the
   forward time of efficient with float32 products (``precision="float32"``), of efficient with products in the
   input's format (``precision=<dtype>``; for float32 inputs the bfloat16 opt-in), of what ``precision="auto"``
   runs on this machine, and of PyTorch SDPA; forward+backward at ``d = 32``. Ratios are taken within the run.
3. Contention table (``benchmarks/contention.py``): each backend alone and with a second identical process.

    python benchmarks/precision.py [--n 16384] [--dims 16 32 64] [--repeats 5] [--skip-contention]
        [--out docs/bench/precision]

Writes ``precision.json`` (all numbers and the machine) and ``precision.md`` (the tables; the section of
docs/benchmarks.md links it). The machine line names the CPU model and its matrix-unit flags (AVX-512 BF16,
AMX): bfloat16 pays only where the CPU has bfloat16 matrix units.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from taylorshift import taylor_shift_attention
from taylorshift.bench.calibrate import matmul_probe
from taylorshift.bench.io import cpu_model, load_average
from taylorshift.bench.timing import time_call
from taylorshift.ops.features import feature_dim
from taylorshift.ops.precision import low_dtype

H, B = 8, 1
FORMATS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def cpu_flags() -> list[str]:
    """The matrix-relevant flags of this CPU (from /proc/cpuinfo), in :data:`FLAGS` order."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in FLAGS if flag in have]
    except OSError:
        pass
    return []


def _ms(fn, repeats: int) -> float:
    return time_call(fn, repeats=repeats, warmup=1).median * 1e3


def emulated_formats() -> dict[str, float]:
    """Formats whose 256³ matmul runs below 1/8 of float32's rate (software emulation, e.g. float16 on CPUs
    without float16 units: minutes per large product), with that rate in GFLOP/s; they are not timed at size."""
    f32 = matmul_probe(torch.float32)
    rates = {name: matmul_probe(dtype) for name, dtype in FORMATS.items() if name != "float32"}
    return {name: rate for name, rate in rates.items() if rate < f32 / 8}


def matmul_rates(n: int, repeats: int, emulated: dict[str, float]) -> list[dict]:
    """GFLOP/s of a square 2048³ product and of the efficient kernel's skinny product at d = 32 (None for an
    emulated format)."""
    rows = []
    F32 = feature_dim(32)
    shapes = {
        "square 2048³": ((2048, 2048), (2048, 2048)),
        f"skinny ({H},{n},{F32})@({H},{F32},33)": ((H, n, F32), (H, F32, 33)),
    }
    for label, (sa, sb) in shapes.items():
        flops = 2 * (sa[0] if len(sa) == 3 else 1) * sa[-2] * sa[-1] * sb[-1]
        row = {"shape": label}
        for name, dtype in FORMATS.items():
            if name in emulated:
                row[name] = None
                continue
            a, b = torch.randn(sa).to(dtype), torch.randn(sb).to(dtype)
            row[name] = flops / (_ms(lambda a=a, b=b: a @ b, repeats) * 1e-3) / 1e9
        rows.append(row)
    return rows


def _step(fn, q, k, v, train: bool):
    if not train:

        def step():
            with torch.inference_mode():
                fn(q, k, v)

        return step
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def step():
        for t in leaves:
            t.grad = None
        fn(*leaves).float().sum().backward()

    return step


def precision_table(n: int, dims: list[int], repeats: int, emulated: dict[str, float]) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    cases = [(d, False) for d in dims] + ([(32, True)] if 32 in dims else [])
    for dtype_name, dtype in FORMATS.items():
        low = "bfloat16" if dtype_name == "float32" else dtype_name
        for d, train in cases:
            q, k, v = (torch.randn(B, H, n, d, generator=g).to(dtype) for _ in range(3))
            auto = low_dtype("auto", dtype, "cpu", d)
            fns = {
                "efficient_fp32": lambda q, k, v: taylor_shift_attention(
                    q, k, v, backend="efficient", precision="float32"
                ),
                "efficient_low": lambda q, k, v, low=low: taylor_shift_attention(
                    q, k, v, backend="efficient", precision=low
                ),
                "sdpa": F.scaled_dot_product_attention,
            }
            if low in emulated:
                del fns["efficient_low"]
            t = {name: _ms(_step(fn, q, k, v, train), repeats) for name, fn in fns.items()}
            t.setdefault("efficient_low", None)
            row = {
                "dtype": dtype_name,
                "d": d,
                "mode": "train" if train else "forward",
                "n": n,
                "low": low,
                "auto_runs": str(auto).removeprefix("torch.") if auto is not None else "float32",
                **{f"{k_}_ms": v_ for k_, v_ in t.items()},
            }
            row["auto_ms"] = row["efficient_low_ms"] if auto is not None else row["efficient_fp32_ms"]
            row["sdpa_over_auto"] = row["sdpa_ms"] / row["auto_ms"] if row["auto_ms"] else None
            low_ms = row["efficient_low_ms"]
            row["fp32_over_low"] = row["efficient_fp32_ms"] / low_ms if low_ms else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _fmt(x, spec: str, suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def markdown(meta: dict, rates: list[dict], table: list[dict], contention: list[dict]) -> str:
    emulated = meta.get("emulated", {})
    note = "".join(
        f" {name} is emulated here ({rate:.2f} GFLOP/s at 256³): its low-precision path is not timed (—)."
        for name, rate in emulated.items()
    )
    out = [
        f"Generated by `python benchmarks/precision.py` on {meta['date']}. Machine: {meta['cpu']} "
        f"({meta['cores']} cores; flags: {', '.join(meta['flags']) or 'none of ' + ', '.join(FLAGS)}); "
        f"torch {meta['torch']}, {meta['threads']} threads; load before the run {meta['load']}.",
        "",
        "Matmul rates (GFLOP/s), the physical limit of each format." + note,
        "",
        "| product | float32 | bfloat16 | float16 |",
        "|---|---:|---:|---:|",
    ]
    for r in rates:
        out.append(f"| {r['shape']} | " + " | ".join(_fmt(r[name], ".0f") for name in FORMATS) + " |")
    out += [
        "",
        f"Efficient vs SDPA at N = {meta['n']}, B = {B}, H = {H} (ms; `low` = products in the input's format, "
        'bfloat16 for float32 inputs; `auto` = what `precision="auto"` runs here):',
        "",
        "| inputs | d | mode | efficient fp32 products | efficient low | fp32/low | auto runs | SDPA | SDPA/auto |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in table:
        out.append(
            f"| {r['dtype']} | {r['d']} | {r['mode']} | {r['efficient_fp32_ms']:.1f} | "
            f"{_fmt(r['efficient_low_ms'], '.1f')} ({r['low']}) | {_fmt(r['fp32_over_low'], '.2f', '×')} | "
            f"{r['auto_runs']} | {r['sdpa_ms']:.1f} | {_fmt(r['sdpa_over_auto'], '.1f', '×')} |"
        )
    if contention:
        out += [
            "",
            "Contention: forward alone and with a second identical process at the same time (fair share 2×):",
            "",
            "| backend | d | alone (ms) | two processes (ms) | slowdown |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in contention:
            out.append(
                f"| {r['backend']} | {r['d']} | {r['alone_ms']:.1f} | "
                f"{' / '.join(f'{t:.1f}' for t in r['concurrent_ms'])} | {r['slowdown']:.2f}× |"
            )
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16384, help="sequence length N")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64], help="head sizes d")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-contention", action="store_true", help="no contention table")
    p.add_argument("--contention-repeats", type=int, default=5, help="timed calls per process in the contention runs")
    p.add_argument("--out", default="docs/bench/precision", help="output folder")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "n": args.n,
        "load": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    meta["emulated"] = emulated_formats()
    rates = matmul_rates(args.n, args.repeats, meta["emulated"])
    print(json.dumps(rates), flush=True)
    table = precision_table(args.n, args.dims, args.repeats, meta["emulated"])
    contention = []
    if not args.skip_contention:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import contention as cont

        cargs = argparse.Namespace(
            n=args.n,
            dims=args.dims,
            backends=list(cont.BACKENDS),
            dtype="float32",
            repeats=args.contention_repeats,
            threads=args.threads,
            omp_wait_policy=None,
            rounds=1,
            env=[],
            chunk_size=None,
        )
        contention = cont.slowdown_table(cargs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.json").write_text(
        json.dumps({"meta": meta, "matmul": rates, "precision": table, "contention": contention}, indent=2)
    )
    text = markdown(meta, rates, table, contention)
    (out / "precision.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

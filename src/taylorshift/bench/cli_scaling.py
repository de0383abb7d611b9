"""``taylorshift scaling``: norms of the efficient form's intermediates against N and d, and fp16 overflow.

Writes ``<stem>.csv``, ``<stem>.json`` and (unless ``--no-plot``) ``<stem>.png`` into ``--out`` (stem
``scaling`` by default) and prints a summary table per head size. See :mod:`taylorshift.bench.scaling`
for the definitions.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import shlex
import time

from taylorshift.cli import CLIError, output_dir, positive_float, positive_int
from taylorshift.files import atomic_open

HELP = "Measure how the efficient form's intermediates grow with N and d, with and without normalisation."

_QUICK_NS = (16, 256, 4096, 65536)
_QUICK_DS = (8, 32)




def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taylorshift.bench.scaling import DEFAULT_DS, DEFAULT_NS, RAW_SCALES, VARIANTS

    parser.add_argument("--n", type=positive_int, nargs="+", default=None, metavar="N",
                        help=f"sequence lengths (default {' '.join(map(str, DEFAULT_NS))})")
    parser.add_argument("--d", type=positive_int, nargs="+", default=None, metavar="D",
                        help=f"head sizes (default {' '.join(map(str, DEFAULT_DS))})")
    parser.add_argument("--samples", type=positive_int, default=None,
                        help="random sequences per point; fewer are drawn where N·d² is large "
                        "(default 4, 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["normalised", "raw"], metavar="VARIANT",
                        help=f"any of {', '.join(VARIANTS)}. normalised: our ops (L2-normalised q, k, τ on q, "
                        "V'=[V|1]/N); paper: also q, k·d^¼ as the released code; raw: unnormalised q, k and "
                        "V'=[V|1] (default: normalised raw)")
    parser.add_argument("--raw-scale", choices=RAW_SCALES, default="sdpa",
                        help="logit scale of the raw variant: sdpa = 1/√d (default), none = 1")
    parser.add_argument("--temperature", type=positive_float, default=1.0,
                        help="temperature τ of the normalised variants (default 1)")
    parser.add_argument("--out", default="scaling-results", metavar="DIR",
                        help="output folder (default ./scaling-results)")
    parser.add_argument("--stem", default="scaling",
                        help="file name stem: writes STEM.csv, STEM.json, STEM.png (default scaling)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sweep: N in {_QUICK_NS}, d in {_QUICK_DS}, 2 samples "
                        "(--n/--d/--samples still override)")


def _command(args: argparse.Namespace, ns, ds, samples: int) -> str:
    """The resolved command line that reproduces this run."""
    parts = ["taylorshift", "scaling", "--n", *map(str, ns), "--d", *map(str, ds), "--samples", str(samples),
             "--seed", str(args.seed), "--variants", *args.variants, "--raw-scale", args.raw_scale,
             "--temperature", str(args.temperature), "--out", args.out, "--stem", args.stem]
    return shlex.join(parts + (["--no-plot"] if args.no_plot else []))


def _header(args: argparse.Namespace, ns, ds, samples: int) -> dict:
    import torch

    return {
        "command": _command(args, ns, ds, samples),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "threads": torch.get_num_threads(),
        "norm_dtype": "float64",
        "overflow_dtype": "float16 storage, float32 matmul accumulation",
        "variants": " ".join(args.variants),
        "raw_scale": args.raw_scale,
        "temperature": args.temperature,
        "seed": args.seed,
    }


def _write_csv(path: str, header: dict, rows: list[dict]) -> None:
    with atomic_open(path, "w", newline="") as f:
        for key, value in header.items():
            f.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(x: object) -> object:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # "inf" / "nan": strict JSON has no such numbers
    return x


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _summary_table(rows: list[dict]) -> str:
    from taylorshift.bench.scaling import summary

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    table = summary(rows)
    cols = ["d"]
    for v in variants:
        cols += [f"{v}: fp16 overflow at N", f"{v}: max ‖(K⊠K)ᵀV'‖", f"{v}: max denom", f"{v}: fp16 rel err"]
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for e in table:
        cells = [str(e["d"])]
        for v in variants:
            first = e[f"{v}_first_overflow"]
            cells += [
                str(first) if first is not None else f"none ≤ {e['N_max']}",
                _fmt(e[f"{v}_max_kkv"]),
                _fmt(e[f"{v}_max_denominator"]),
                _fmt(e[f"{v}_max_rel_err"]),
            ]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from taylorshift.bench.scaling import DEFAULT_DS, DEFAULT_NS, measure_scaling, plot_scaling

    ns = args.n or (_QUICK_NS if args.quick else DEFAULT_NS)
    ds = args.d or (_QUICK_DS if args.quick else DEFAULT_DS)
    samples = args.samples or (2 if args.quick else 4)
    if not args.stem or os.sep in args.stem or args.stem in (".", ".."):
        raise CLIError(f"--stem {args.stem!r}: expected a file name stem without '{os.sep}'")
    output_dir(args.out, "--out")
    header = _header(args, ns, ds, samples)

    t0 = time.perf_counter()
    rows = measure_scaling(
        ns, ds, samples, variants=args.variants, raw_scale=args.raw_scale, temperature=args.temperature,
        seed=args.seed, progress=True,
    )
    header["seconds"] = round(time.perf_counter() - t0, 2)

    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, f"{args.stem}.csv")
    json_path = os.path.join(args.out, f"{args.stem}.json")
    _write_csv(csv_path, header, rows)
    with atomic_open(json_path, "w") as f:
        json.dump({"header": header, "rows": [{k: _json_safe(v) for k, v in r.items()} for r in rows]}, f,
                  indent=1)
    written = [csv_path, json_path]
    if not args.no_plot:
        png_path = os.path.join(args.out, f"{args.stem}.png")
        title = (f"Mean norms of the efficient form's intermediates (float64); fp16-storage overflow marked; "
                 f"raw logit scale: {'1/√d' if args.raw_scale == 'sdpa' else '1'}")
        plot_scaling(rows, png_path, title=title)
        written.append(png_path)

    print(_summary_table(rows))
    print(f"\n{len(rows)} points in {header['seconds']} s; wrote {', '.join(written)}")
    return 0

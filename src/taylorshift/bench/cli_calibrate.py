"""``taylorshift calibrate``: measure this machine's direct/efficient crossover and store it for ``auto``."""

from __future__ import annotations

import argparse
import sys

from taylorshift.cli import CLIError, device_type, output_file, positive_int

DTYPES = ("float32", "float64", "bfloat16", "float16")

EPILOG = """The calibration is stored in $TAYLORSHIFT_CACHE_DIR/calibration.json (else
$XDG_CACHE_HOME/taylorshift or ~/.cache/taylorshift); new entries are merged with the stored ones.
TAYLORSHIFT_CALIBRATION=off (also 0/false/no) makes backend='auto' ignore the file; on/1/true/yes or unset
use it; any other value is an error here and a warning in attention."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--head-dims", type=positive_int, nargs="+", default=[16, 32, 64], metavar="d",
                        help="head sizes to calibrate (default: 16 32 64)")
    parser.add_argument("--heads", type=positive_int, default=8, help="heads H of the timed problem (default 8)")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size B of the timed problem (default 1)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="input dtype (default float32)")
    parser.add_argument("--device", default="cpu", type=device_type(), help="device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=None, metavar="N",
                        help="lengths to time (default: 13 lengths spaced by √2 around the analytic crossover)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per point; median (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer lengths (7, spaced by 2 around the analytic crossover) and 2 repeats")
    parser.add_argument("--dry-run", action="store_true", help="measure and print, but do not store")
    parser.add_argument("--show", action="store_true", help="only print the stored calibration and exit")
    parser.add_argument("--precision", action="store_true",
                        help="instead of the crossover: for bfloat16 and float16 inputs (or only --dtype, if it is "
                             "one of them), time the efficient kernel with float32 and with low-precision products "
                             "(forward and forward+backward at --lengths, default 4096 16384) and store which is "
                             "faster; precision='auto' then uses it")


def _show(enabled: bool) -> int:
    from taylorshift.ops.calibration import calibration_path, read_entries

    entries = read_entries()
    state = "used by backend='auto'" if enabled else "ignored: TAYLORSHIFT_CALIBRATION is off"
    print(f"calibration file: {calibration_path()} ({len(entries)} valid entries; {state})")
    for key, e in sorted(entries.items()):
        print(f"  {key}: n0 = {e['n0']:.0f} (model {e['n0_model']:.0f}, ratio {e['n0'] / e['n0_model']:.2f}), "
              f"worst slowdown at measured N {e.get('max_slowdown', float('nan')):.3f}, "
              f"{e.get('meta', {}).get('date', '?') if isinstance(e.get('meta'), dict) else '?'}")
    from taylorshift.ops.calibration import read_precision

    for key, e in sorted(read_precision().items()):
        print(f"  precision {key}: {e['choice']}")
    return 0


def _run_precision(args: argparse.Namespace) -> int:
    import torch

    from taylorshift.bench.calibrate import PRECISION_LENGTHS, calibrate_precision, precision_entries
    from taylorshift.ops.calibration import save_precision

    dtypes = [args.dtype] if args.dtype in ("bfloat16", "float16") else ["bfloat16", "float16"]
    lengths = args.lengths or ([PRECISION_LENGTHS[0]] if args.quick else list(PRECISION_LENGTHS))
    repeats = 2 if args.quick else args.repeats
    results = []
    for name in dtypes:
        for d in args.head_dims:
            results.append(calibrate_precision(d, getattr(torch, name), heads=args.heads, batch=args.batch,
                                               device=args.device, lengths=lengths, repeats=repeats,
                                               progress=lambda msg: print(msg, file=sys.stderr)))
    print(f"{'dtype':>9} {'d':>4} {'choice':>9}  float32 / low-precision time at each point")
    for r in results:
        ratios = ", ".join(f"N={n} {m} {t32 / tl:.2f}x" for n, m, t32, tl in r.points) or (
            f"not timed: {r.dtype} matmul {r.probe[r.dtype]:.1f} GFLOP/s vs float32 {r.probe['float32']:.1f}"
        )
        print(f"{r.dtype:>9} {r.d:>4} {r.choice:>9}  {ratios}")
    if args.dry_run:
        print("dry run: nothing stored")
    else:
        path = save_precision(precision_entries(results))
        print(f"stored in {path}; precision='auto' uses it for half-precision inputs on {args.device}")
    return 0


def run(args: argparse.Namespace) -> int:
    from taylorshift.ops.calibration import ENV_VAR, calibration_enabled, calibration_path

    try:
        enabled = calibration_enabled(strict=True)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.show:
        return _show(enabled)
    if not args.dry_run:  # before measuring, not after
        output_file(str(calibration_path()), "calibration file (TAYLORSHIFT_CACHE_DIR)", create_parents=True)
    if args.precision:
        return _run_precision(args)
    import torch

    from taylorshift.bench.calibrate import calibrate_head_dim, calibration_entries, default_lengths
    from taylorshift.ops.calibration import save_entries

    dtype = getattr(torch, args.dtype)
    repeats = 2 if args.quick else args.repeats
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the bench extra
        tqdm = None
    results = []
    for d in args.head_dims:
        lengths = args.lengths or (default_lengths(d, span=6)[::2] if args.quick else default_lengths(d))
        bar = tqdm(total=len(lengths), desc=f"calibrate d={d}", file=sys.stderr) if tqdm else None

        def progress(msg: str, bar=bar) -> None:
            if bar is not None:
                bar.set_postfix_str(msg.split(": ", 1)[1])
                bar.update(1)

        results.append(calibrate_head_dim(d, heads=args.heads, batch=args.batch, dtype=dtype, device=args.device,
                                          lengths=lengths, repeats=repeats, progress=progress))
        if bar is not None:
            bar.close()
    print(f"{'d':>4} {'N0 model':>9} {'N0 measured':>12} {'ratio':>6} {'worst slowdown':>15}")
    for r in results:
        print(f"{r.d:>4} {r.n0_model:>9.0f} {r.n0:>12.0f} {r.ratio:>6.2f} {r.max_slowdown:>15.3f}")
    if args.dry_run:
        print("dry run: nothing stored")
    else:
        path = save_entries(calibration_entries(results))
        if enabled:
            print(f"stored in {path}; backend='auto' now uses it for {args.device}/{args.dtype}")
        else:
            print(f"stored in {path} (merged with the stored entries); backend='auto' ignores it while "
                  f"{ENV_VAR} is off")
    return 0

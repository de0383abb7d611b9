"""``taylorshift demo``: a one-minute tour that checks direct == efficient, prints the theoretical
crossover table and times both backends on this machine."""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from taylorshift.cli import positive_int

HELP = "quick self-check: direct vs efficient agreement, theoretical crossovers, timings on this machine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head-dims", type=positive_int, nargs="+", default=[16, 32], metavar="D",
                        help="head sizes d to check and time (default: 16 32)")
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=[256, 1024, 4096], metavar="N",
                        help="sequence lengths to time (default: 256 1024 4096)")
    parser.add_argument("--heads", type=positive_int, default=4, help="number of heads H (default: 4)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per point; the median is shown")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    import torch

    from taylorshift import taylor_shift_attention, taylor_shift_attention_reference
    from taylorshift.analysis import crossover

    torch.manual_seed(args.seed)
    print(f"taylorshift demo | torch {torch.__version__} | {platform.machine()} | "
          f"{torch.get_num_threads()} threads\n")

    print("1) direct and efficient compute the same function (float64, unit-norm q/k, key padding):")
    for d in args.head_dims:
        q, k, v = torch.randn(3, 2, args.heads, 300, d, dtype=torch.float64).unbind(0)
        q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
        mask = torch.rand(2, 1, 1, 300) > 0.2
        ref = taylor_shift_attention_reference(q, k, v, mask, scale=2.0)
        errs = {b: ((taylor_shift_attention(q, k, v, mask, scale=2.0, backend=b) - ref).norm() / ref.norm()).item()
                for b in ("direct", "efficient")}
        ok = max(errs.values()) < 1e-10
        print(f"   d={d:3d}: rel. error vs float64 oracle: direct {errs['direct']:.1e}, "
              f"efficient {errs['efficient']:.1e}  {'OK' if ok else 'MISMATCH'}")
        if not ok:
            return 1

    print("\n2) theoretical crossover (paper's model, efficient beats direct above N0):")
    print("   " + f"{'d':>5} {'N0 speed':>10} {'N0 memory':>10}")
    for d in sorted(set(args.head_dims) | {16, 32, 64, 128}):
        print("   " + f"{d:>5} {crossover(d, 'speed'):>10} {crossover(d, 'memory'):>10}")

    print(f"\n3) forward time on this machine (float32, B=1, H={args.heads}, median of {args.repeats}):")
    print("   " + f"{'d':>4} {'N':>6} {'direct ms':>10} {'efficient ms':>13} {'direct/eff':>11}")
    for d in args.head_dims:
        for n in args.lengths:
            q, k, v = torch.randn(3, 1, args.heads, n, d).unbind(0)
            with torch.inference_mode():
                t = {b: _median_ms(lambda b=b, q=q, k=k, v=v: taylor_shift_attention(q, k, v, backend=b),
                                   args.repeats)
                     for b in ("direct", "efficient")}
            print("   " + f"{d:>4} {n:>6} {t['direct']:>10.2f} {t['efficient']:>13.2f} "
                  f"{t['direct'] / t['efficient']:>10.2f}x")
    print("\nFull sweeps with memory and plots: 'taylorshift bench --help'.")
    return 0

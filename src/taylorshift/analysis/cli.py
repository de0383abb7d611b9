"""``taylorshift crossover``: the analytic crossover lengths and cost ratios as a table (no torch needed)."""

from __future__ import annotations

import argparse
import json

from taylorshift.analysis.auto import DEFAULT_FORM, auto_crossover
from taylorshift.analysis.complexity import FORMS, MODES, HeadSplit, crossover_exact, head_split
from taylorshift.cli import positive_int

HELP = (
    "Analytic crossover lengths N0 above which efficient TaylorShift beats direct: where backend='auto' switches "
    "(causal too), the paper's figure beside it, the memory crossover and cost ratios."
)




def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``taylorshift crossover`` to ``parser``."""
    parser.add_argument(
        "--head-dims",
        type=positive_int,
        nargs="+",
        default=[16, 32, 64, 128],
        metavar="d",
        help="head sizes d (default: 16 32 64 128)",
    )
    parser.add_argument(
        "--heads",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="H",
        help="heads per layer (default 1); with --width, the head counts to split the width into "
        "(default: width/d for each --head-dims d that divides it)",
    )
    parser.add_argument(
        "--width",
        type=positive_int,
        default=None,
        metavar="D",
        help="fixed layer width D = heads·d: one row per split into heads of size D/heads",
    )
    parser.add_argument(
        "--n",
        type=positive_int,
        default=4096,
        metavar="N",
        help="sequence length of the cost-ratio columns (default 4096)",
    )
    parser.add_argument(
        "--form",
        choices=[*FORMS, "both"],
        default=DEFAULT_FORM,
        help=f"feature form of the memory and ratio columns: symmetric d(d+1)/2 (the one the library runs and "
        f"backend='auto' prices) or the paper's full d² (default {DEFAULT_FORM})",
    )
    parser.add_argument("--mode", choices=MODES, default="forward", help="forward or train (forward+backward)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def _splits(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The ``(d, heads)`` pairs to tabulate; ``ValueError`` for an impossible split of ``--width``."""
    if args.width is None:
        return [(d, h) for d in args.head_dims for h in (args.heads or [1])]
    if args.heads is not None:
        bad = [h for h in args.heads if args.width % h]
        if bad:
            raise ValueError(f"--heads {bad} do not divide --width {args.width}")
        return [(args.width // h, h) for h in args.heads]
    pairs = [(d, args.width // d) for d in args.head_dims if args.width % d == 0]
    if not pairs:
        raise ValueError(f"no --head-dims {args.head_dims} divides --width {args.width}; pass --heads")
    return pairs


def _auto_columns(row: HeadSplit) -> tuple[float, float, float]:
    """``(N0 auto, N0 auto causal, N0 paper)`` of a row: where ``backend="auto"`` switches (without a stored
    calibration; causal for one sequence of ``heads`` heads) and the paper's full-form forward crossover."""
    return auto_crossover(row.d), auto_crossover(row.d, causal=True, batch=row.heads), crossover_exact(row.d)


def _row_dict(row: HeadSplit) -> dict[str, object]:
    auto, auto_causal, paper = _auto_columns(row)
    return {
        "form": row.form,
        "d": row.d,
        "heads": row.heads,
        "width": row.width,
        "n0_auto": int(round(auto)),
        "n0_auto_causal": int(round(auto_causal)),
        "n0_paper": int(round(paper)),
        "n0_speed": int(round(row.n0_speed)),
        "n0_memory": int(round(row.n0_memory)),
        "n0_speed_exact": row.n0_speed,
        "n0_memory_exact": row.n0_memory,
        "flops_direct": row.flops_direct,
        "flops_efficient": row.flops_efficient,
        "flop_ratio": row.flop_ratio,
        "memory_direct": row.memory_direct,
        "memory_efficient": row.memory_efficient,
        "memory_ratio": row.memory_ratio,
    }


def format_table(rows: list[HeadSplit], n: int, mode: str) -> str:
    """The text table printed by ``taylorshift crossover``."""
    header = (
        "form", "d", "heads", "width", "N0 auto", "N0 auto causal", "N0 paper", "N0 memory", "FLOPs eff/dir",
        "memory eff/dir",
    )
    body = [
        (
            r.form,
            str(r.d),
            str(r.heads),
            str(r.width),
            *(str(int(round(n0))) for n0 in _auto_columns(r)),
            str(int(round(r.n0_memory))),
            f"{r.flop_ratio:.4g}",
            f"{r.memory_ratio:.4g}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )

    lines = [
        f"Efficient vs direct TaylorShift, analytic model ({mode}); ratios per layer at N = {n}",
        fmt(header),
        *(fmt(line) for line in body),
        "N0: efficient is cheaper for N > N0 (L = S = N, dv = d); a ratio below 1 favours efficient.",
        "N0 auto: where backend='auto' switches (the symmetric form it runs; causal: one sequence of `heads` heads);",
        "  `taylorshift calibrate` can rescale it to this machine. N0 paper: the paper's full form, d² + d + 1.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the crossover table (or JSON); an impossible ``--width`` split raises ``ValueError``."""
    pairs = _splits(args)  # a ValueError is reported by taylorshift.cli.main as one line, exit status 2
    forms = list(FORMS) if args.form == "both" else [args.form]
    rows = [head_split(d, h, n=args.n, form=form, mode=args.mode) for form in forms for d, h in pairs]
    if args.json:
        print(json.dumps({"mode": args.mode, "n": args.n, "rows": [_row_dict(r) for r in rows]}, indent=2))
    else:
        print(format_table(rows, args.n, args.mode))
    return 0

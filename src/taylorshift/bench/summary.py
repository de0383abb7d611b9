"""Plain-text tables that summarise a sweep (what ``taylorshift bench`` prints at the end)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from taylorshift.bench.sweep import Point, SweepResult


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """Columns padded to their widest cell; numbers right-aligned by default."""
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if right is None:
        right = [i > 0 for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        padded = (c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines.append("  ".join(padded).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def _value(x: float | None) -> str:
    """Three significant digits without an exponent: 2570, 183, 18.3, 0.183."""
    if x is None:
        return "-"
    if x == 0 or abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def crossover_table(result: SweepResult) -> str:
    """One row per (mode, d, other backend): measured and analytic N0 in time and in memory."""
    rows = []
    index = {(c.mode, c.d, c.versus, c.metric): c for c in result.crossovers}
    for mode, d, versus in dict.fromkeys((c.mode, c.d, c.versus) for c in result.crossovers):
        row: list[object] = [mode, d, f"efficient vs {versus}"]
        for metric in ("time", "memory"):
            c = index.get((mode, d, versus, metric))
            if c is None:
                row += ["-", "-", "-"]
                continue
            noisy = "*" if c.n_crossings > 1 else ""
            row += [c.text + noisy, _num(c.theory) if c.theory else "n/a", _num(c.ratio, "{:.2f}")]
        rows.append(row)
    header = ["mode", "d", "comparison", "time N0", "theory", "ratio", "memory N0", "theory", "ratio"]
    return format_table(header, rows, right=[False, True, False, True, True, True, True, True, True])


def largest_common_table(result: SweepResult) -> str:
    """Per (mode, d): time and memory of each backend at the largest N where all of them ran."""
    by: dict[tuple[str, int], dict[int, dict[str, Point]]] = {}
    backends = list(dict.fromkeys(p.backend for p in result.points))
    for p in result.points:
        if p.status == "ok":
            by.setdefault((p.mode, p.d), {}).setdefault(p.n, {})[p.backend] = p
    rows = []
    for (mode, d), per_n in by.items():
        common = [n for n, ps in per_n.items() if len(ps) == len(backends)]
        if not common:
            continue
        n = max(common)
        ps = per_n[n]
        rows.append([mode, d, n]
                    + [_value(ps[b].time_ms) for b in backends]
                    + [_value(ps[b].peak_mib) for b in backends])
    header = (["mode", "d", "N"] + [f"{b} ms" for b in backends] + [f"{b} MiB" for b in backends])
    return format_table(header, rows, right=[False] + [True] * (len(header) - 1))


def status_counts(points: Sequence[Point]) -> str:
    counts: dict[str, int] = {}
    for p in points:
        counts[p.status] = counts.get(p.status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())

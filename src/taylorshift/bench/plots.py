"""Figures of a sweep (matplotlib, imported lazily): time and peak memory against N, log-log.

One PNG per (head size, mode): left time per call (ms), right peak memory beyond the inputs (MiB); one line
per backend; the analytic crossover ``N0`` as a dashed vertical line, the measured crossovers of efficient
against direct and against sdpa as dotted lines in the colour of the other backend; memory below the
resolution used for the memory crossovers is shaded.
"""

from __future__ import annotations

from pathlib import Path

from taylorshift.bench.memory import MIB
from taylorshift.bench.sweep import MEMORY_RESOLUTION_BYTES, CrossoverRow, Point, SweepResult

COLORS = {"direct": "tab:blue", "efficient": "tab:red", "sdpa": "tab:green", "naive_softmax": "tab:gray"}
STYLES = {"naive_softmax": "--"}  # dashed: it lies on top of direct in memory
MARKED = ("direct", "sdpa")  # measured crossovers of efficient against these are drawn


def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'taylorshift[bench]'") from err
    fig = Figure(figsize=(10, 4.2), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_point_set(
    points: list[Point], crossovers: list[CrossoverRow], path: str | Path, title: str
) -> Path:
    """Draw one (d, mode) figure from its points and crossover rows; returns the PNG path."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda x, _: f"{x:g}")
    fig = _figure()
    ax_t, ax_m = fig.subplots(1, 2)
    backends = list(dict.fromkeys(p.backend for p in points))
    for i, b in enumerate(backends):
        ok = sorted((p for p in points if p.backend == b and p.status == "ok"), key=lambda p: p.n)
        color, ls = COLORS.get(b, f"C{i}"), STYLES.get(b, "-")
        t = [(p.n, p.time_ms) for p in ok if p.time_ms]
        m = [(p.n, p.peak_mib) for p in ok if p.peak_mib]  # 0 MiB cannot be drawn on a log axis
        if t:
            ax_t.plot(*zip(*t, strict=True), marker=".", ms=4, lw=1.3, ls=ls, color=color, label=b)
        if m:
            ax_m.plot(*zip(*m, strict=True), marker=".", ms=4, lw=1.3, ls=ls, color=color, label=b)
    for ax, metric in ((ax_t, "time"), (ax_m, "memory")):
        rows = [c for c in crossovers if c.metric == metric]
        theory = next((c.theory for c in rows if c.versus == "direct" and c.theory), None)
        if theory is None:
            theory = next((c.theory for c in rows if c.theory), None)
        if theory:
            ax.axvline(theory, color="black", ls="--", lw=1, label=f"theory N0 = {theory}")
        for c in rows:
            if c.versus in MARKED and c.measured is not None:
                ax.axvline(c.measured, color=COLORS.get(c.versus, "k"), ls=":", lw=1.6,
                           label=f"measured N0 vs {c.versus} = {c.measured:.0f}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sequence length N (tokens)")
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        if ax.has_data():
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
    ax_t.set_ylabel("time per call (ms)")
    ax_t.set_title("time", fontsize=10)
    if ax_m.has_data():
        floor = MEMORY_RESOLUTION_BYTES / MIB
        ax_m.axhspan(ax_m.get_ylim()[0], floor, color="0.85", alpha=0.5, lw=0,
                     label=f"< {floor:g} MiB: within measurement error")
        ax_m.legend(fontsize=7, loc="best", framealpha=0.8)
    ax_m.set_ylabel("peak memory beyond inputs (MiB)")
    ax_m.set_title("peak memory", fontsize=10)
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path)
    return path


def _threads(n: object) -> str:
    return "1 thread" if n in (1, "1") else f"{n if n is not None else '?'} threads"


def plot_results(result: SweepResult, out_dir: str | Path) -> list[Path]:
    """One PNG per (d, mode) of ``result`` in ``out_dir``: ``bench_d{d}_{mode}.png``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg, meta = result.config, result.meta
    paths = []
    for mode in cfg.modes:
        for d in cfg.head_dims:
            pts = [p for p in result.points if p.mode == mode and p.d == d]
            if not pts:
                continue
            cross = [c for c in result.crossovers if c.mode == mode and c.d == d]
            what = "forward (inference)" if mode == "forward" else "forward + backward"
            device = meta.get("device_name") or cfg.device
            title = (f"d = {d}, H = {cfg.heads}, B = {cfg.batch}, {cfg.dtype}, {what} "
                     f"- {device}, {_threads(meta.get('threads'))}")
            paths.append(plot_point_set(pts, cross, out / f"bench_d{d}_{mode}.png", title))
    return paths

"""Run metrics: an append-only CSV (``metrics.csv``) and learning-curve plots (``curves.png``).

Rows carry ``step`` and ``split`` (``train``, ``val`` or ``test``). A resumed run first drops the rows
written after its checkpoint, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from taylorshift.files import atomic_open

COLUMNS = ("step", "split", "epoch", "loss", "accuracy", "lr", "samples", "train_seconds", "cpu_seconds",
           "samples_per_second")


class MetricsLog:
    """Append rows to ``path`` (CSV with :data:`COLUMNS`); ``enabled=False`` (non-main ranks) writes nothing."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled

    def truncate_after(self, step: int) -> None:
        """Keep only rows with ``step <= step`` (called when resuming from a checkpoint at ``step``)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [r for r in read_metrics(self.path) if int(r["step"]) <= step]
        with atomic_open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, **row: Any) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def read_metrics(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv``."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], split: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r["split"] == split and r.get(key) not in (None, ""):
            xs.append(int(r["step"]))
            ys.append(float(r[key]))
    return xs, ys


def plot_curves(runs: dict[str, str | os.PathLike], out: str | os.PathLike, title: str = "") -> Path | None:
    """Plot training loss and validation accuracy against steps for one or more runs.

    Args:
        runs: label → ``metrics.csv`` path.
        out: PNG path.
        title: figure title.

    Returns:
        The PNG path, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, path in runs.items():
        rows = read_metrics(path)
        xs, ys = _series(rows, "train", "loss")
        if xs:
            ax_loss.plot(xs, ys, label=label, alpha=0.85)
        xs, ys = _series(rows, "val", "accuracy")
        color = None
        if xs:
            (line,) = ax_acc.plot(xs, [100 * y for y in ys], marker="o", ms=3, label=label)
            color = line.get_color()
        xs, ys = _series(rows, "test", "accuracy")
        if xs:
            ax_acc.scatter(xs, [100 * y for y in ys], marker="*", s=80, zorder=3, color=color)
    ax_loss.set(xlabel="step", ylabel="training loss", title="training loss")
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="validation accuracy (star: test)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None

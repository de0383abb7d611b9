"""How far does the marker distance alone get on a Pathfinder variant? A reference for docs/pathfinder.md.

Regenerates the examples of the prepared splits (same seed and index ranges as ``taylorshift data prepare``, so
the very images the models see), reads the two markers' positions, picks the distance threshold that classifies
the validation split best ("connected" if the markers are at most that far apart, or at least, whichever is
better) and reports its accuracy on the test split. A model can reach this accuracy without tracing any path.

    python benchmarks/pathfinder_shortcut.py                      # pathfinder16_easy / pathfinder16_images
    python benchmarks/pathfinder_shortcut.py --contour-length 4 --distractors 2 --size 16   # pathfinder16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from taylorshift.data.pathfinder import (  # noqa: E402
    DEFAULT_SIZE,
    PathfinderConfig,
    balanced_labels,
    make_sample,
    split_sizes,
)


def marker_distances(cfg: PathfinderConfig, seed: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Marker distances ``(n,)`` and labels ``(n,)`` of examples ``start … start + n - 1`` (as prepared)."""
    labels = balanced_labels(n, seed + start)
    dist = np.empty(n)
    for i in range(n):
        m = make_sample(cfg, int(labels[i]), np.random.default_rng([seed, start + i])).markers
        dist[i] = float(np.hypot(*(m[0] - m[1])))
    return dist, labels


def best_rule(dist: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """``(threshold, sign)``: predict 1 where ``sign * (threshold - dist) >= 0``, chosen for the best accuracy."""
    best = (-1.0, 0.0, 1)
    for t in np.unique(dist):
        for sign in (1, -1):
            acc = float(((sign * (t - dist) >= 0) == labels).mean())
            best = max(best, (acc, float(t), sign))
    return best[1], best[2]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contour-length", type=int, default=4)
    p.add_argument("--distractors", type=int, default=0)
    p.add_argument("--size", type=int, default=16, help="image side")
    p.add_argument("--train-size", type=int, default=DEFAULT_SIZE, help="training examples of the prepared data")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        cfg = PathfinderConfig(contour_length=args.contour_length, size=args.size, n_distractors=args.distractors)
    except ValueError as e:
        p.error(str(e))
    sizes = split_sizes(args.train_size)
    val = marker_distances(cfg, args.seed, sizes["train"], sizes["val"])
    test = marker_distances(cfg, args.seed, sizes["train"] + sizes["val"], sizes["test"])
    t, sign = best_rule(*val)
    acc = 100 * float(((sign * (t - test[0]) >= 0) == test[1]).mean())
    rule = "at most" if sign == 1 else "at least"
    print(f"{args.size}x{args.size}, {args.contour_length}-paddle paths, {args.distractors} distractor path(s): "
          f"'connected' if the markers are {rule} {t:.2f} px apart (fitted on {sizes['val']:,} validation images) "
          f"classifies {acc:.1f} % of the {sizes['test']:,} test images")


if __name__ == "__main__":
    main()

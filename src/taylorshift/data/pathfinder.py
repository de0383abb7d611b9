"""Procedural Pathfinder (Linsley et al. 2018; LRA's 32×32 "Pathfinder", a 1,024-token sequence).

An image holds two *main* paths and ``n_distractors`` distractor paths, each a chain of ``contour_length`` short
dashes ("paddles") whose direction turns by at most ``max_turn`` degrees from one paddle to the next. Two round
markers sit on path ends: label 1 if they are the two ends of the same main path, label 0 if they sit on one end
of each main path. Both classes have the same number of paths, markers and paddles, so only connectivity tells
them apart; labels are exactly balanced (50/50) within each split.

Geometry is in low-resolution pixel units. Every path keeps ``clearance`` (centre line to centre line) from every
other path and from its own non-neighbouring paddles, and markers keep a matching distance from other paths, so
"connected" is well defined: in the high-resolution render (``scale`` × the final size, 4–8 recommended) the
markers of a positive example are joined through bright pixels when gaps between paddles of one path (shorter
than ``gap - thickness``) are bridged, and those of a negative example are not. The render is box-downsampled to
``size × size`` grey values 0–255 (white paths on black). Difficulty: ``contour_length`` 6 / 9 / 14 paddles
(LRA's Pathfinder is the hardest, 14). Sample ``i`` of a seed is drawn from ``numpy.random.default_rng([seed, i])``,
so datasets are reproducible and can be generated in parallel.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from taylorshift.data.cache import DataNotPreparedError, atomic_save_npz, record_files, resolve_cache_dir
from taylorshift.data.sequences import ImageDataset, PixelSequenceDataset

SPLITS = ("train", "val", "test")
CONTOUR_LENGTHS = (6, 9, 14)
DEFAULT_SIZE = 20_000  # training examples written by prepare (LRA: 160,000)


@dataclass(frozen=True)
class PathfinderConfig:
    """Shape of the Pathfinder images (lengths in low-resolution pixels).

    Args:
        contour_length: paddles per path (6 / 9 / 14 = easy / medium / hard).
        n_distractors: paths besides the two main ones.
        size: side of the final image (32 → 1,024 tokens).
        scale: supersampling factor of the render (the render is ``size * scale`` wide).
        paddle_length: length of one dash.
        gap: distance between the end of one dash and the start of the next.
        thickness: stroke width.
        clearance: minimal centre-line distance between different paths, and between non-neighbouring paddles of
            one path; must exceed ``thickness``.
        max_turn: largest change of direction between consecutive paddles, in degrees.
        marker_radius: radius of the two round markers.
        margin: minimal distance of paddle end points from the image border.
        max_attempts: attempts per paddle and per path before an image is started over.
    """

    contour_length: int = 14
    n_distractors: int = 2
    size: int = 32
    scale: int = 4
    paddle_length: float = 1.1
    gap: float = 0.9
    thickness: float = 0.6
    clearance: float = 1.9
    max_turn: float = 30.0
    marker_radius: float = 1.0
    margin: float = 1.0
    max_attempts: int = 30

    def __post_init__(self) -> None:
        if self.contour_length < 1 or self.n_distractors < 0 or self.size < 8 or self.scale < 1:
            raise ValueError(f"need contour_length >= 1, n_distractors >= 0, size >= 8, scale >= 1; got {self}")
        if not 0 < self.thickness < self.clearance:
            raise ValueError(f"need 0 < thickness < clearance, got {self.thickness} and {self.clearance}")
        if self.paddle_length <= 0 or self.gap < 0 or not 0 <= self.max_turn <= 180:
            raise ValueError(f"need paddle_length > 0, gap >= 0, 0 <= max_turn <= 180; got {self}")


@dataclass
class PathfinderSample:
    """One rendered example.

    Attributes:
        image: ``uint8 (size, size)`` grey values (the model input, flattened to ``size**2`` tokens).
        label: 1 if the markers are the two ends of one path, else 0.
        hires: ``bool (size*scale, size*scale)`` render before downsampling.
        markers: ``(2, 2)`` marker centres ``(x, y)`` in low-resolution units.
        paths: one ``(contour_length, 2, 2)`` array of paddle end points per path; paths 0 and 1 are the main ones.
    """

    image: np.ndarray
    label: int
    hires: np.ndarray
    markers: np.ndarray
    paths: list[np.ndarray] = field(default_factory=list)


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points ``p (..., 2)`` to segments ``a, b (K, 2)``, broadcast to ``(..., K)``."""
    ab = b - a  # (K, 2)
    ap = p[..., None, :] - a  # (..., K, 2)
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)  # (..., K)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1)


def _pt_seg(px: float, py: float, seg: tuple[float, float, float, float]) -> float:
    """Distance of the point ``(px, py)`` to the segment ``(ax, ay, bx, by)`` (scalar: faster than numpy here)."""
    ax, ay, bx, by = seg
    dx, dy = bx - ax, by - ay
    den = dx * dx + dy * dy
    t = 0.0 if den == 0 else min(1.0, max(0.0, ((px - ax) * dx + (py - ay) * dy) / den))
    return math.hypot(px - ax - t * dx, py - ay - t * dy)


def _seg_seg(s: tuple[float, float, float, float], q: tuple[float, float, float, float]) -> float:
    """Distance between two segments (0 if they cross)."""
    ax, ay, bx, by = s
    cx, cy, dx, dy = q

    def orient(ox, oy, px, py, rx, ry):
        return (px - ox) * (ry - oy) - (py - oy) * (rx - ox)

    if (orient(ax, ay, bx, by, cx, cy) * orient(ax, ay, bx, by, dx, dy) < 0
            and orient(cx, cy, dx, dy, ax, ay) * orient(cx, cy, dx, dy, bx, by) < 0):
        return 0.0
    return min(_pt_seg(ax, ay, q), _pt_seg(bx, by, q), _pt_seg(cx, cy, s), _pt_seg(dx, dy, s))


class _SegmentGrid:
    """Segments of the paths drawn so far, bucketed in square cells for fast neighbourhood queries."""

    def __init__(self, cell: float):
        self.cell = cell
        self.cells: dict[tuple[int, int], list[int]] = {}
        self.segs: list[tuple[float, float, float, float]] = []

    def _keys(self, x0: float, y0: float, x1: float, y1: float):
        c = self.cell
        for i in range(math.floor(x0 / c), math.floor(x1 / c) + 1):
            for j in range(math.floor(y0 / c), math.floor(y1 / c) + 1):
                yield i, j

    def add(self, seg: tuple[float, float, float, float]) -> None:
        ax, ay, bx, by = seg
        self.segs.append(seg)
        for key in self._keys(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)):
            self.cells.setdefault(key, []).append(len(self.segs) - 1)

    def near(self, x0: float, y0: float, x1: float, y1: float, r: float) -> list[tuple[float, float, float, float]]:
        """Segments stored in cells that meet the box ``[x0, x1] × [y0, y1]`` grown by ``r``."""
        found: set[int] = set()
        for key in self._keys(x0 - r, y0 - r, x1 + r, y1 + r):
            found.update(self.cells.get(key, ()))
        return [self.segs[k] for k in found]

    def point_distance(self, x: float, y: float, r: float) -> float:
        """Distance from ``(x, y)`` to the nearest stored segment, or ``inf`` if none is within about ``r``."""
        return min((_pt_seg(x, y, q) for q in self.near(x, y, x, y, r)), default=math.inf)


def _marker_reach(cfg: PathfinderConfig) -> float:
    """Least distance from a path end that may hold a marker to another path's centre line."""
    return cfg.marker_radius + cfg.clearance - cfg.thickness / 2  # marker edge to stroke edge >= clearance - width


def _grow_path(rng: random.Random, cfg: PathfinderConfig, grid: _SegmentGrid, ends: list[tuple[float, float]],
               main: bool) -> list[tuple[float, float, float, float]] | None:
    """A path of ``cfg.contour_length`` paddles ``(ax, ay, bx, by)``, or None if it could not be placed.

    It keeps ``clearance`` from the segments in ``grid`` (the paths already drawn) and marker room
    (:func:`_marker_reach`) from ``ends``, the end points of the main paths already drawn; a main path's own end
    points keep marker room from the other paths and markers. A paddle that cannot be placed in ``max_attempts``
    tries makes the path back up two paddles (a bounded depth-first search).
    """
    lo, hi, n, clear = cfg.margin, cfg.size - cfg.margin, cfg.contour_length, cfg.clearance
    max_turn, reach = math.radians(cfg.max_turn), _marker_reach(cfg)
    pair = 2 * cfg.marker_radius + cfg.clearance - cfg.thickness  # two markers on different paths

    def marker_room(x: float, y: float) -> bool:
        if grid.point_distance(x, y, reach) < reach:
            return False
        return all(math.hypot(x - ex, y - ey) >= pair for ex, ey in ends)

    sx, sy = rng.uniform(lo, hi), rng.uniform(lo, hi)
    if (main and not marker_room(sx, sy)) or grid.point_distance(sx, sy, clear) < clear:
        return None
    towards_centre = math.atan2(cfg.size / 2 - sy, cfg.size / 2 - sx)
    segs: list[tuple[float, float, float, float]] = []
    thetas: list[float] = []
    budget = cfg.max_attempts * n
    while len(segs) < n:
        if budget <= 0:
            return None
        i = len(segs)
        if i == 0:
            px, py = sx, sy
        else:
            px, py = segs[-1][2] + cfg.gap * math.cos(thetas[-1]), segs[-1][3] + cfg.gap * math.sin(thetas[-1])
        for _ in range(cfg.max_attempts):
            budget -= 1
            if i == 0:
                th = towards_centre + rng.uniform(-math.pi / 2, math.pi / 2)
            else:
                th = thetas[-1] + rng.uniform(-max_turn, max_turn)
            bx, by = px + cfg.paddle_length * math.cos(th), py + cfg.paddle_length * math.sin(th)
            if not (lo <= bx <= hi and lo <= by <= hi):
                continue
            seg = (px, py, bx, by)
            box = (min(px, bx), min(py, by), max(px, bx), max(py, by))
            if any(_seg_seg(seg, q) < clear for q in grid.near(*box, clear)):
                continue
            if any(_seg_seg(seg, q) < clear for q in segs[:-1]):  # the previous paddle is a neighbour, skip it
                continue
            if any(_pt_seg(ex, ey, seg) < reach for ex, ey in ends):
                continue
            if main and i == n - 1 and not marker_room(bx, by):
                continue
            segs.append(seg)
            thetas.append(th)
            break
        else:  # back up and try other turns
            del segs[max(i - 2, 0):], thetas[max(i - 2, 0):]
    return segs


def render(cfg: PathfinderConfig, paths: list[np.ndarray], markers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw paths (capsules of width ``thickness``) and marker disks at ``scale``× resolution and box-downsample.

    Returns:
        ``hires`` bool ``(size*scale, size*scale)`` and ``image`` uint8 ``(size, size)``.
    """
    s, n = cfg.scale, cfg.size * cfg.scale
    hires = np.zeros((n, n), dtype=bool)
    half = cfg.thickness / 2
    for a, b in np.concatenate(paths):
        x0, x1 = (min(a[0], b[0]) - half) * s, (max(a[0], b[0]) + half) * s
        y0, y1 = (min(a[1], b[1]) - half) * s, (max(a[1], b[1]) + half) * s
        xs = np.arange(max(int(x0), 0), min(int(math.ceil(x1)) + 1, n))
        ys = np.arange(max(int(y0), 0), min(int(math.ceil(y1)) + 1, n))
        centres = np.stack(np.meshgrid((xs + 0.5) / s, (ys + 0.5) / s, indexing="xy"), -1)  # (Y, X, 2) as (x, y)
        on = _point_segment_distance(centres, a[None], b[None])[..., 0] <= half
        hires[ys[:, None], xs[None, :]] |= on
    coords = (np.arange(n) + 0.5) / s
    for cx, cy in markers:
        hires |= ((coords[None, :] - cx) ** 2 + (coords[:, None] - cy) ** 2) <= cfg.marker_radius ** 2
    grey = hires.reshape(cfg.size, s, cfg.size, s).mean(axis=(1, 3))  # box filter, (size, size) in [0, 1]
    return hires, np.rint(grey * 255).astype(np.uint8)


def make_sample(cfg: PathfinderConfig, label: int, rng: np.random.Generator, max_images: int = 200) -> PathfinderSample:
    """Draw one example with the given ``label`` (1 = markers on the same path)."""
    prng = random.Random(int(rng.integers(2**63)))
    for _ in range(max_images):
        grid = _SegmentGrid(cell=max(cfg.clearance, cfg.paddle_length))
        paths: list[list[tuple[float, float, float, float]]] = []
        ends: list[tuple[float, float]] = []
        for k in range(2 + cfg.n_distractors):
            for _ in range(cfg.max_attempts):
                path = _grow_path(prng, cfg, grid, ends, main=k < 2)
                if path is not None:
                    break
            else:
                break
            paths.append(path)
            for seg in path:
                grid.add(seg)
            if k < 2:
                ends += [path[0][:2], path[-1][2:]]
        if len(paths) < 2 + cfg.n_distractors:
            continue
        arrays = [np.asarray(p, dtype=np.float64).reshape(-1, 2, 2) for p in paths]
        if label:
            markers = np.array([ends[0], ends[1]])
        else:
            markers = np.array([ends[prng.randrange(2)], ends[2 + prng.randrange(2)]])
        hires, image = render(cfg, arrays, markers)
        return PathfinderSample(image=image, label=int(label), hires=hires, markers=markers, paths=arrays)
    raise RuntimeError(f"could not place {2 + cfg.n_distractors} paths of {cfg.contour_length} paddles in "
                       f"{max_images} tries: lower n_distractors or contour_length, or raise size")


def balanced_labels(n: int, seed: int) -> np.ndarray:
    """``n`` labels, ``n // 2`` of them 1 (one more 0 if ``n`` is odd), in a seeded random order."""
    labels = (np.arange(n) < n // 2).astype(np.uint8)
    np.random.default_rng([seed, 2**31 - 1]).shuffle(labels)
    return labels


def _render_one(job: tuple[PathfinderConfig, int, int, int]) -> np.ndarray:
    cfg, seed, index, label = job
    return make_sample(cfg, label, np.random.default_rng([seed, index])).image


def generate_pathfinder(n: int, seed: int = 0, config: PathfinderConfig | None = None, start: int = 0,
                        labels: np.ndarray | None = None, workers: int = 1,
                        progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples: images ``uint8 (n, size, size)`` and labels ``uint8 (n,)``.

    Args:
        n: number of examples.
        seed: sample ``start + i`` is drawn from ``default_rng([seed, start + i])``; results do not depend on
            ``workers``.
        config: image shape (default :class:`PathfinderConfig`).
        start: index of the first example (splits use disjoint index ranges).
        labels: the labels to draw (default :func:`balanced_labels`).
        workers: processes to render with.
        progress: called with the number of new examples as they are finished.
    """
    cfg = config or PathfinderConfig()
    labels = balanced_labels(n, seed + start) if labels is None else np.asarray(labels, dtype=np.uint8)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    jobs = [(cfg, seed, start + i, int(labels[i])) for i in range(n)]
    images = np.zeros((n, cfg.size, cfg.size), dtype=np.uint8)
    if workers > 1 and n > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for i, img in enumerate(pool.imap(_render_one, jobs, chunksize=64)):
                images[i] = img
                if progress is not None:
                    progress(1)
    else:
        for i, job in enumerate(jobs):
            images[i] = _render_one(job)
            if progress is not None:
                progress(1)
    return images, labels


def split_sizes(size: int, val_size: int | None = None, test_size: int | None = None) -> dict[str, int]:
    """``size`` training examples; val and test default to ``max(1, size // 8)`` each (LRA's 80/10/10)."""
    default = max(1, size // 8)
    return {"train": size, "val": default if val_size is None else val_size,
            "test": default if test_size is None else test_size}


def _folder(cache_dir: str | os.PathLike | None, contour_length: int, image_size: int = 32,
            n_distractors: int = 2) -> Path:
    name = f"L{contour_length}" if image_size == 32 else f"L{contour_length}-S{image_size}"
    name += "" if n_distractors == 2 else f"-D{n_distractors}"
    return resolve_cache_dir(cache_dir) / "pathfinder" / name


def prepare_pathfinder(cache_dir: str | os.PathLike | None = None, size: int = DEFAULT_SIZE,
                       val_size: int | None = None, test_size: int | None = None, seed: int = 0,
                       config: PathfinderConfig | None = None, workers: int = 1,
                       progress: Callable[[int], None] | None = None) -> list[Path]:
    """Render train/val/test into ``<cache>/pathfinder/L<contour_length>/{split}.npz`` (``L<c>-S<size>`` for
    images other than 32×32, ``-D<n>`` appended for other than 2 distractor paths); record their sha256."""
    cfg = config or PathfinderConfig()
    sizes = split_sizes(size, val_size, test_size)
    folder, paths, start = _folder(cache_dir, cfg.contour_length, cfg.size, cfg.n_distractors), [], 0
    for split in SPLITS:
        images, labels = generate_pathfinder(sizes[split], seed, cfg, start=start, workers=workers, progress=progress)
        path = folder / f"{split}.npz"
        atomic_save_npz(path, images=images, labels=labels)
        paths.append(path)
        start += sizes[split]
    record_files(cache_dir, "pathfinder", paths, {"seed": seed, "sizes": sizes, "config": asdict(cfg)})
    return paths


def pathfinder_dataset(split: str = "train", cache_dir: str | os.PathLike | None = None,
                       contour_length: int = 14, image_size: int = 32, n_distractors: int = 2) -> PixelSequenceDataset:
    """The prepared Pathfinder ``split`` as ``(tokens (size**2,) grey values 0–255, label)`` pairs
    (``image_size``: side of the images, 32 for LRA's Pathfinder-32, 16 for the ``pathfinder16`` task;
    ``n_distractors``: 0 for ``pathfinder16_easy``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = _folder(cache_dir, contour_length, image_size, n_distractors) / f"{split}.npz"
    if not path.exists():
        task = f"pathfinder --contour-length {contour_length}" if image_size == 32 else \
            "pathfinder16" + ("_easy" if n_distractors == 0 else "")
        raise DataNotPreparedError(f"{path} not found: run 'taylorshift data prepare {task}' "
                                   "(with --cache-dir if not the default)")
    with np.load(path) as z:
        return PixelSequenceDataset(z["images"], z["labels"])


def pathfinder_images(split: str = "train", cache_dir: str | os.PathLike | None = None,
                      contour_length: int = 14, image_size: int = 32, n_distractors: int = 2) -> ImageDataset:
    """The same prepared split as :func:`pathfinder_dataset`, as ``(image (1, size, size) floats in [0, 1], label)``
    pairs for a ViT."""
    seq = pathfinder_dataset(split, cache_dir, contour_length, image_size, n_distractors)
    return ImageDataset(seq.images, seq.labels)

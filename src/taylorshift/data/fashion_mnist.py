"""Fashion-MNIST (60,000 / 10,000 grey 28×28 images, 10 classes) from the Debian package ``dataset-fashion-mnist``.

It stands in for LRA's "Image" task (CIFAR-10 as 1,024 grey pixels): :func:`fashion_mnist_pixels` zero-pads the
images to 32×32 and returns 1,024 pixel tokens (0–255); :func:`fashion_mnist_images` returns ``(1, 28, 28)`` float
images for a ViT.

``prepare`` copies the four ``*-ubyte.gz`` files into ``<cache>/fashion-mnist/`` from, in order: a folder given as
``source``, an installed package (``/usr/share/datasets/fashion-mnist``), or ``apt-get download
dataset-fashion-mnist`` + ``dpkg-deb -x`` into a temporary folder (no root needed once ``apt-get update`` has run).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from taylorshift.data.cache import (
    ChecksumError,
    DataNotPreparedError,
    DataSourceError,
    record_files,
    resolve_cache_dir,
)
from taylorshift.data.debian import DebianSource, locate_files
from taylorshift.data.sequences import ImageDataset, PixelSequenceDataset

DEBIAN_PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
PACKAGE_SUBDIR = "usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ALL_FILES: tuple[str, ...] = tuple(name for names in FILES.values() for name in names)
SPLITS = ("train", "test")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# sha256 of the *decompressed* files (Debian re-gzips them, so the .gz bytes differ from Zalando's originals)
CONTENT_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MEAN, STD = 0.2860, 0.3530  # of the training images scaled to [0, 1]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain), e.g. MNIST's ``train-images-idx3-ubyte.gz`` → ``uint8 (60000, 28, 28)``.

    Raises:
        ValueError: the header is not IDX (two zero bytes, a type code, the number of dimensions) or the data is
            shorter or longer than the header says.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: header says shape {shape} of {dtype}, but {len(body)} data bytes follow")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ALL_FILES)


DEBIAN_SOURCE = DebianSource(
    what="Fashion-MNIST", packages=(DEBIAN_PACKAGE,), subdir=PACKAGE_SUBDIR, task="pixels", complete=_find_files,
    contents="the expected files", folder="the folder holding the *-ubyte.gz files",
    manual="download the four *-ubyte.gz files of Fashion-MNIST yourself",
    archive="the package is in Debian's main archive, bookworm and later",
    source_problem=f"does not hold the Fashion-MNIST files {', '.join(ALL_FILES)}")


def prepare_fashion_mnist(cache_dir: str | os.PathLike | None = None,
                          source: str | os.PathLike | None = None) -> list[Path]:
    """Copy the four Fashion-MNIST files into ``<cache>/fashion-mnist/``, check they parse, record their sha256.

    Args:
        cache_dir: the data cache.
        source: a folder with the ``*-ubyte.gz`` files; default: an installed package, else ``apt-get download``.

    Raises:
        DataSourceError: no source could be found or fetched; the message says what to install.
        ChecksumError: a file's decompressed content is not Fashion-MNIST's (see ``CONTENT_SHA256``).
    """
    folder = resolve_cache_dir(cache_dir) / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        src, origin = locate_files(DEBIAN_SOURCE, source, SYSTEM_DIRS, Path(tmp))
        for name in ALL_FILES:  # check everything before copying anything
            with gzip.open(src / name, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            if name in CONTENT_SHA256 and digest != CONTENT_SHA256[name]:
                raise ChecksumError(f"{src / name}: the decompressed sha256 {digest} is not Fashion-MNIST's "
                                    f"{CONTENT_SHA256[name]}; the source holds other data")
        paths = []
        for split, (images_name, labels_name) in FILES.items():
            for name in (images_name, labels_name):
                shutil.copyfile(src / name, folder / name)
                paths.append(folder / name)
            images, labels = read_idx(folder / images_name), read_idx(folder / labels_name)
            if images.ndim != 3 or labels.shape != images.shape[:1]:
                raise DataSourceError(f"{split}: images {images.shape} and labels {labels.shape} do not match")
    record_files(cache_dir, "fashion-mnist", paths, {"source": origin})
    return paths


def load_fashion_mnist(split: str = "train",
                       cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``images uint8 (M, 28, 28)`` and ``labels uint8 (M,)`` of the prepared ``split`` (``train`` or ``test``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = resolve_cache_dir(cache_dir) / "fashion-mnist"
    images_name, labels_name = FILES[split]
    if not (folder / images_name).exists() or not (folder / labels_name).exists():
        raise DataNotPreparedError(f"Fashion-MNIST is not in {folder}: run 'taylorshift data prepare pixels' "
                                   "(with --cache-dir if that is not the default)")
    return read_idx(folder / images_name), read_idx(folder / labels_name)


def fashion_mnist_pixels(split: str = "train", cache_dir: str | os.PathLike | None = None) -> PixelSequenceDataset:
    """Fashion-MNIST as 1,024-token pixel sequences: images zero-padded to 32×32, tokens = grey values 0–255."""
    images, labels = load_fashion_mnist(split, cache_dir)
    return PixelSequenceDataset(images, labels, pad_to=32)


def fashion_mnist_images(split: str = "train", cache_dir: str | os.PathLike | None = None,
                         normalize: bool = True) -> ImageDataset:
    """Fashion-MNIST as ``(1, 28, 28)`` float images in [0, 1], standardised with the training mean/std if
    ``normalize``."""
    images, labels = load_fashion_mnist(split, cache_dir)
    return ImageDataset(images, labels, *((MEAN, STD) if normalize else (None, None)))

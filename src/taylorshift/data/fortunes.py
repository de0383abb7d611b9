"""English fortune cookies (Debian ``fortunes`` + ``fortunes-min``) as a byte-level language-modelling corpus.

The two packages hold 41 topic files under ``/usr/share/games/fortunes`` (about 2.5 MB, 15k entries); in each
file the entries are separated by lines holding a single ``%``. ``prepare`` takes the topic files from, in
order: a folder given as ``source``, an installed copy (``/usr/share/games/fortunes`` when the full ``fortunes``
package is installed), or ``apt-get download fortunes fortunes-min`` + ``dpkg-deb -x`` into a temporary folder
(no root needed once ``apt-get update`` has run). It parses them and writes one file,
``<cache>/fortunes/fortunes-en.npz`` (all entries' bytes, their offsets and topics).

The split is by entry (a seeded permutation; default 90 / 5 / 5 % train / val / test), so no fortune is in two
splits. A split is one byte stream: every entry (with its final newline) followed by the separator byte
``SEPARATOR = 0``, which never occurs in the text, in the order of the files. :class:`ByteWindowDataset` cuts the
stream into windows of ``seq_len + 1`` bytes (vocabulary 256): inputs are ``window[:-1]``, next-byte targets
``window[1:]``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from taylorshift.data.cache import (
    DataNotPreparedError,
    DataSourceError,
    atomic_save_npz,
    record_files,
    resolve_cache_dir,
)
from taylorshift.data.debian import DebianSource, locate_files

DEBIAN_PACKAGES: tuple[str, ...] = ("fortunes", "fortunes-min")
SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/games/fortunes",)
PACKAGE_SUBDIR = "usr/share/games/fortunes"
# one topic of each package: a folder without both is not the full English collection
REQUIRED_TOPICS: tuple[str, ...] = ("computers", "fortunes")
FILENAME = "fortunes-en.npz"
SPLITS = ("train", "val", "test")
SEPARATOR = 0  # byte that ends every entry in the LM stream (the text has no NUL bytes)
DEFAULT_SEQ_LEN = 512


def parse_fortune_file(data: bytes) -> list[bytes]:
    """The entries of one fortune file: the text between lines that hold a single ``%``.

    Every entry keeps its lines' newlines (so it ends with ``\\n``); entries that are empty or only whitespace
    are dropped, and Windows line ends are turned into ``\\n``.
    """
    entries, current = [], []
    for line in data.replace(b"\r\n", b"\n").split(b"\n"):
        if line == b"%":
            entries.append(b"\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append(b"\n".join(current))
    return [e.strip(b"\n") + b"\n" for e in entries if e.strip()]


def topic_files(folder: Path) -> list[Path]:
    """The topic files in ``folder``, sorted by name: regular files, not symlinks (``*.u8`` are links to the
    same files), not the ``*.dat`` indexes that ``strfile`` writes."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.suffix != ".dat")


def _has_topics(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in REQUIRED_TOPICS)


def _is_topic_folder(folder: Path) -> bool:
    return folder.is_dir() and bool(topic_files(folder))


DEBIAN_SOURCE = DebianSource(
    what="the fortunes corpus", packages=DEBIAN_PACKAGES, subdir=PACKAGE_SUBDIR, task="fortunes-lm",
    complete=_has_topics, contents=f"the topics {REQUIRED_TOPICS}", folder="a folder of fortune files",
    manual="copy a folder of fortune files (entries separated by '%' lines)",
    archive="the packages are in Debian's and Ubuntu's main archives",
    source_problem="is not a folder of fortune files", source_ok=_is_topic_folder)


def prepare_fortunes(cache_dir: str | os.PathLike | None = None,
                     source: str | os.PathLike | None = None) -> list[Path]:
    """Parse the fortune files into ``<cache>/fortunes/fortunes-en.npz`` and record its sha256.

    Args:
        cache_dir: the data cache.
        source: a folder of fortune files (every regular file but ``*.dat`` is read as one topic); default: an
            installed ``/usr/share/games/fortunes``, else ``apt-get download fortunes fortunes-min``.

    Raises:
        DataSourceError: no source could be found or fetched, or it holds no entries; the message says what
            to install.
    """
    folder = resolve_cache_dir(cache_dir) / "fortunes"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        src, origin = locate_files(DEBIAN_SOURCE, source, SYSTEM_DIRS, Path(tmp))
        names, chunks, topics = [], [], []
        for path in topic_files(src):
            entries = parse_fortune_file(path.read_bytes())
            if not entries:
                continue
            names.append(path.name)
            chunks.extend(entries)
            topics.extend([len(names) - 1] * len(entries))
    if not chunks:
        raise DataSourceError(f"{origin}: no fortune entries found (entries are separated by lines holding '%')")
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    if (data == SEPARATOR).any():
        raise DataSourceError(f"{origin}: the text holds NUL bytes, which the LM stream uses as separator")
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
    dest = folder / FILENAME
    atomic_save_npz(dest, data=data, offsets=offsets, topics=np.asarray(topics, dtype=np.int16),
                    topic_names=np.asarray(names))
    record_files(cache_dir, "fortunes-lm", [dest], {"source": origin, "entries": len(chunks), "topics": len(names),
                                                     "bytes": int(data.size)})
    return [dest]


def load_fortunes(cache_dir: str | os.PathLike | None = None) -> tuple[list[bytes], np.ndarray, list[str]]:
    """``entries`` (bytes, each ending with a newline), ``topics int (M,)`` and the topic names of the prepared
    corpus."""
    path = resolve_cache_dir(cache_dir) / "fortunes" / FILENAME
    if not path.exists():
        raise DataNotPreparedError(f"{path} not found: run 'taylorshift data prepare fortunes-lm' "
                                   "(with --cache-dir if that is not the default)")
    with np.load(path) as z:
        data, offsets, topics, names = z["data"], z["offsets"], z["topics"], z["topic_names"]
    raw = data.tobytes()
    entries = [raw[offsets[i]: offsets[i + 1]] for i in range(len(offsets) - 1)]
    return entries, topics.astype(np.int64), [str(n) for n in names]


def split_entries(num_entries: int, seed: int = 0, val_fraction: float = 0.05,
                  test_fraction: float = 0.05) -> dict[str, np.ndarray]:
    """Seeded split of entry indices: ``{"train", "val", "test"}`` → sorted index arrays that partition
    ``range(num_entries)``; the same arguments give the same split."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    perm = np.random.default_rng(seed).permutation(num_entries)
    n_val, n_test = int(round(num_entries * val_fraction)), int(round(num_entries * test_fraction))
    return {"train": np.sort(perm[n_val + n_test:]), "val": np.sort(perm[:n_val]),
            "test": np.sort(perm[n_val: n_val + n_test])}


def byte_stream(entries: list[bytes], separator: int = SEPARATOR) -> np.ndarray:
    """``uint8 (total,)``: every entry followed by the ``separator`` byte."""
    sep = bytes([separator])
    return np.frombuffer(b"".join(e + sep for e in entries), dtype=np.uint8)


class ByteWindowDataset(Dataset):
    """Windows of ``seq_len + 1`` consecutive bytes of one stream, for next-byte prediction.

    Window ``i`` starts at byte ``i · seq_len`` (consecutive windows share one byte: the last target of one is
    the first input of the next), so the ``(len(stream) - 1) // seq_len`` windows cover the stream once.

    Args:
        stream: ``uint8 (T,)`` bytes.
        seq_len: tokens per training sequence; each item has ``seq_len + 1``.
        random_offset: shift window ``i`` by a random ``0 … seq_len - 1`` bytes (clipped at the end) so that the
            windows of each epoch start at new places (training); drawn from torch's global RNG, so
            ``torch.manual_seed`` and DataLoader worker seeding control it.

    Items:
        ``LongTensor (seq_len + 1,)`` with values in ``0 … 255``.
    """

    vocab_size = 256

    def __init__(self, stream: np.ndarray, seq_len: int = DEFAULT_SEQ_LEN, random_offset: bool = False):
        stream = np.asarray(stream)
        if stream.ndim != 1 or stream.dtype != np.uint8:
            raise ValueError(f"stream must be uint8 of shape (T,), got {stream.dtype} {stream.shape}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        if stream.shape[0] < seq_len + 1:
            raise ValueError(f"the stream has {stream.shape[0]} bytes, fewer than one window of seq_len + 1 = "
                             f"{seq_len + 1}")
        self.stream, self.seq_len, self.random_offset = stream, seq_len, bool(random_offset)

    def __len__(self) -> int:
        return (self.stream.shape[0] - 1) // self.seq_len

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} windows")
        start = (i % len(self)) * self.seq_len
        if self.random_offset:
            start += int(torch.randint(0, self.seq_len, ()).item())
            start = min(start, self.stream.shape[0] - self.seq_len - 1)
        return torch.from_numpy(self.stream[start: start + self.seq_len + 1].astype(np.int64))


def fortunes_lm_dataset(split: str = "train", cache_dir: str | os.PathLike | None = None,
                        seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0, val_fraction: float = 0.05,
                        test_fraction: float = 0.05, random_offset: bool | None = None) -> ByteWindowDataset:
    """The prepared corpus's ``split`` as byte windows of ``seq_len + 1`` (see :class:`ByteWindowDataset`).

    Args:
        split: ``train``, ``val`` or ``test``.
        cache_dir: the data cache.
        seq_len: tokens per sequence.
        seed, val_fraction, test_fraction: the split by entry (the same values give the same split).
        random_offset: random window starts; default True for ``train``, False otherwise.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    entries, _, _ = load_fortunes(cache_dir)
    idx = split_entries(len(entries), seed, val_fraction, test_fraction)[split]
    stream = byte_stream([entries[i] for i in idx])
    offset = (split == "train") if random_offset is None else random_offset
    return ByteWindowDataset(stream, seq_len, random_offset=offset)

"""Dataset containers shared by the tasks: ragged token sequences, byte-level text, pixel sequences, images.

Every sequence dataset returns ``(tokens, label)`` with ``tokens`` a ``LongTensor`` of shape ``(N,)`` and ``label``
an ``int``; the image dataset returns a float tensor ``(C, H, W)``. Batch ragged sequences with
:func:`pad_collate`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

BYTE_VOCAB = 256  # byte and grey-value tokens are the values 0..255 themselves
BYTE_PAD = 0  # the paper's ByteEncoder pads text with byte 0


def pad_collate(batch: list[tuple[torch.Tensor, int]], pad_id: int = 0,
                length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ``(tokens, label)`` pairs of different lengths.

    Args:
        batch: pairs from a sequence dataset; ``tokens`` of shape ``(N_i,)``.
        pad_id: token appended to shorter sequences.
        length: pad (or fail if any sequence is longer) to this length; default the longest in the batch.

    Returns:
        ``tokens (B, L)`` long, ``labels (B,)`` long and ``mask (B, L)`` bool (True = real token, False = pad).
    """
    lengths = [int(t.shape[0]) for t, _ in batch]
    L = max(lengths) if length is None else length
    if max(lengths) > L:
        raise ValueError(f"length={L} is shorter than the longest sequence in the batch ({max(lengths)})")
    tokens = torch.full((len(batch), L), pad_id, dtype=torch.long)  # (B, L)
    for i, (t, _) in enumerate(batch):
        tokens[i, : t.shape[0]] = t
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.long)
    return tokens, labels, mask


class RaggedTokenDataset(Dataset):
    """Variable-length token sequences stored as one flat array plus offsets (memory-light for 100k samples).

    Args:
        tokens: all sequences concatenated, shape ``(total,)``, integer dtype.
        offsets: shape ``(M + 1,)``; sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.
        labels: shape ``(M,)``.
        prefix: token ids put in front of every sequence (e.g. ``[cls_id]``); default none.
        pad_to: if given, right-pad every sequence with ``pad_id`` to this length (error if one is longer).
        pad_id: the padding token.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, labels: np.ndarray, prefix: tuple[int, ...] = (),
                 pad_to: int | None = None, pad_id: int = 0):
        tokens, offsets, labels = np.asarray(tokens), np.asarray(offsets, dtype=np.int64), np.asarray(labels)
        if offsets.ndim != 1 or offsets.shape[0] != labels.shape[0] + 1 or offsets[-1] != tokens.shape[0]:
            raise ValueError(f"offsets must have shape (M + 1,) = ({labels.shape[0] + 1},) and end at "
                             f"len(tokens) = {tokens.shape[0]}; got shape {offsets.shape}")
        self.tokens, self.offsets, self.labels = tokens, offsets, labels
        self.prefix = tuple(int(p) for p in prefix)
        self.pad_to, self.pad_id = pad_to, pad_id
        longest = int(np.diff(offsets).max(initial=0)) + len(self.prefix)
        if pad_to is not None and longest > pad_to:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest} tokens)")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def lengths(self) -> np.ndarray:
        """Token count of every sequence without prefix or padding, shape ``(M,)``."""
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i %= len(self)
        seq = self.tokens[self.offsets[i]: self.offsets[i + 1]].astype(np.int64)
        if self.prefix:
            seq = np.concatenate([np.asarray(self.prefix, dtype=np.int64), seq])
        if self.pad_to is not None:
            seq = np.pad(seq, (0, self.pad_to - seq.shape[0]), constant_values=self.pad_id)
        return torch.from_numpy(seq), int(self.labels[i])


def encode_bytes(data: bytes, length: int, offset: int = 0) -> torch.Tensor:
    """``length`` byte tokens of ``data[offset:]``, right-padded with byte 0; shape ``(length,)`` long."""
    window = np.frombuffer(data[offset: offset + length], dtype=np.uint8).astype(np.int64)
    return torch.from_numpy(np.pad(window, (0, length - window.shape[0]), constant_values=BYTE_PAD))


class ByteTextDataset(Dataset):
    """Texts as UTF-8 byte tokens in a fixed window (the paper's ``ByteEncoder``: LRA "Text", 4,000 bytes).

    Args:
        texts: documents, as ``str`` (encoded as UTF-8) or ``bytes``.
        labels: one ``int`` per document.
        length: window length in bytes; shorter documents are padded with byte 0.
        random_crop: take a uniformly random window of longer documents (training) instead of the first
            ``length`` bytes (evaluation). The offset is drawn from torch's global RNG, so ``torch.manual_seed``
            and DataLoader worker seeding control it.
    """

    vocab_size = BYTE_VOCAB
    pad_id = BYTE_PAD

    def __init__(self, texts: list[str | bytes], labels: list[int], length: int = 4000, random_crop: bool = False):
        if len(texts) != len(labels):
            raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        self.texts = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
        self.labels = [int(y) for y in labels]
        self.length, self.random_crop = length, random_crop

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        data = self.texts[i]
        offset = 0
        if self.random_crop and len(data) > self.length:
            offset = int(torch.randint(0, len(data) - self.length + 1, ()).item())
        return encode_bytes(data, self.length, offset), self.labels[i]


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad ``(M, H, W)`` images symmetrically to ``(M, size, size)`` (28×28 → 32×32 adds 2 on each side)."""
    M, H, W = images.shape
    if H > size or W > size:
        raise ValueError(f"images of {H}×{W} do not fit in {size}×{size}")
    top, left = (size - H) // 2, (size - W) // 2
    return np.pad(images, ((0, 0), (top, size - H - top), (left, size - W - left)))


class PixelSequenceDataset(Dataset):
    """Grey images as sequences of pixel tokens 0..255 in raster order (LRA "Image": 32×32 → 1,024 tokens).

    Args:
        images: ``uint8`` array ``(M, H, W)``.
        labels: shape ``(M,)``.
        pad_to: zero-pad every image to ``pad_to × pad_to`` first (28×28 Fashion-MNIST → 32×32); default none.
    """

    vocab_size = BYTE_VOCAB
    pad_id = 0

    def __init__(self, images: np.ndarray, labels: np.ndarray, pad_to: int | None = None):
        images = np.asarray(images)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 of shape (M, H, W), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} labels")
        self.images = pad_images(images, pad_to) if pad_to is not None else images
        self.labels = np.asarray(labels)

    @property
    def seq_len(self) -> int:
        return int(self.images.shape[1] * self.images.shape[2])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i].reshape(-1).astype(np.int64)), int(self.labels[i])


class ImageDataset(Dataset):
    """Grey images as float tensors ``(1, H, W)`` scaled to [0, 1], optionally standardised (for a ViT).

    Args:
        images: ``uint8`` array ``(M, H, W)``.
        labels: shape ``(M,)``.
        mean, std: if given, return ``(x - mean) / std`` after scaling to [0, 1].
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float | None = None, std: float | None = None):
        images = np.asarray(images)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 of shape (M, H, W), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} labels")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.images, self.labels, self.mean, self.std = images, np.asarray(labels), mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)[None]  # (1, H, W)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, int(self.labels[i])

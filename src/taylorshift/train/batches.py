"""Batches, losses and evaluation for the three task kinds.

=========  ===========================================  ==========================================
kind       dataset item                                 model call and loss
=========  ===========================================  ==========================================
``tokens`` ``(LongTensor (N_i,), label)``, ragged ok    ``model(ids (B, N), key_padding_mask)``, CE
``image``  ``(FloatTensor (C, H, W), label)``           ``model(images (B, C, H, W))``, CE
``lm``     ``LongTensor (N + 1,)`` (or its first item)  ``model(ids[:, :-1]) (B, N, V)`` vs ``ids[:, 1:]``
=========  ===========================================  ==========================================
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taylorshift.data.sequences import pad_collate


@dataclass
class Batch:
    """Model inputs and targets of one batch (already on the device)."""

    inputs: Tensor
    targets: Tensor
    padding: Tensor | None = None  # (B, N) bool, True = padding

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])


def make_batch(kind: str, items: Sequence, pad_id: int | None, device: torch.device) -> Batch:
    """Collate dataset items of a task of ``kind`` into a :class:`Batch` on ``device``."""
    if kind == "lm":
        seqs = torch.stack([it[0] if isinstance(it, tuple | list) else it for it in items])  # (B, N + 1)
        seqs = seqs.to(device)
        return Batch(seqs[:, :-1], seqs[:, 1:])
    if kind == "image":
        images = torch.stack([x for x, _ in items]).to(device)
        labels = torch.tensor([int(y) for _, y in items], dtype=torch.long, device=device)
        return Batch(images, labels)
    tokens, labels, mask = pad_collate(list(items), pad_id=0 if pad_id is None else pad_id)
    padding = None if bool(mask.all()) else (~mask).to(device)
    return Batch(tokens.to(device), labels.to(device), padding)


def logits_of(model: nn.Module, kind: str, batch: Batch) -> Tensor:
    """``(B, classes)`` or, for ``lm``, ``(B, N, vocab)``."""
    if kind == "tokens":
        return model(batch.inputs, key_padding_mask=batch.padding)
    return model(batch.inputs)


def loss_and_correct(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, int]:
    """Mean cross-entropy (fp32), number of correct argmax predictions, number of predictions."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1)
    loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    correct = (logits.argmax(-1) == targets).sum()
    return loss, correct, int(targets.numel())


def autocast(enabled: bool, device: torch.device):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def index_batches(n: int, batch_size: int) -> Iterator[list[int]]:
    for start in range(0, n, batch_size):
        yield list(range(start, min(n, start + batch_size)))


@dataclass
class EvalResult:
    """Loss (mean CE, nats), accuracy, number of predictions, and the argmax predictions in order."""

    loss: float
    accuracy: float
    count: int
    predictions: Tensor
    logits: Tensor | None = None

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)


@torch.no_grad()
def evaluate(model: nn.Module, kind: str, dataset, pad_id: int | None, device: torch.device, batch_size: int = 64,
             samples: int | None = None, bf16: bool = False, keep_logits: bool = False, progress=None) -> EvalResult:
    """Evaluate ``model`` on the first ``samples`` items of ``dataset`` (all if None), in eval mode.

    The global RNG is left untouched (datasets that crop at random draw from a forked generator), so an
    evaluation in the middle of training does not change what training does next.
    """
    was_training = model.training
    model.eval()
    n = len(dataset) if samples is None else min(samples, len(dataset))
    total_loss, correct, count = 0.0, 0, 0
    preds, all_logits = [], []
    try:
        with torch.random.fork_rng(devices=[]):
            for idx in index_batches(n, batch_size):
                batch = make_batch(kind, [dataset[i] for i in idx], pad_id, device)
                with autocast(bf16, device):
                    logits = logits_of(model, kind, batch)
                loss, c, m = loss_and_correct(logits, batch.targets)
                total_loss += float(loss) * m
                correct += int(c)
                count += m
                preds.append(logits.argmax(-1).cpu())
                if keep_logits:
                    all_logits.append(logits.float().cpu())
                if progress is not None:
                    progress.update(len(idx))
    finally:
        model.train(was_training)
    return EvalResult(total_loss / max(count, 1), correct / max(count, 1), count, torch.cat(preds),
                      torch.cat(all_logits) if keep_logits else None)

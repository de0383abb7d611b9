"""Sequence parallelism for the modules and models: every rank holds a contiguous part of each sequence.

:func:`set_sequence_parallel` hands a process group to a model: its :class:`~taylorshift.nn.TaylorShiftAttention`
layers then attend over the whole sequence with :func:`~taylorshift.distributed.sequence_parallel_attention`
(whatever their ``backend``: the efficient form is what splits), and the model takes positions from the global
offset of its shard. :class:`~taylorshift.models.SequenceClassifier` keeps its CLS token on rank 0 and all-reduces
the pooled features, so every rank gets the logits of the whole sequence; :class:`~taylorshift.models.CausalLM`
gives the logits of the rank's positions. Everything else in these models works token by token.

The output factor ``√(n/d)`` of :class:`~taylorshift.nn.TaylorShiftAttention` counts the valid keys of the whole
sequence (an all-reduce of the per-rank counts; causal: the counts of the earlier ranks are added to the local
running count).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from taylorshift.distributed.attention import sequence_parallel_attention
from taylorshift.distributed.collectives import all_gather_tensors, check_group

__all__ = ["sequence_parallel_disabled", "sequence_parallel_forward", "set_sequence_parallel", "split_sequence"]


def sequence_parallel_forward(attn: nn.Module, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """:meth:`TaylorShiftAttention.forward` when ``attn.sequence_group`` is set: ``x (B, N_r, C)`` is this rank's
    part of the sequence, ``key_padding_mask (B, N_r)`` (True = padding) its padding → ``(B, N_r, C)``."""
    group = attn.sequence_group
    B, N, _ = x.shape
    q, k, v, scale = attn._project(x)  # (B, H, N_r, d)
    out = sequence_parallel_attention(
        q,
        k,
        v,
        group=group,
        is_causal=attn.causal,
        scale=scale,
        coefficients=attn.coefficients,
        attn_mask=attn._key_mask(key_padding_mask, B, N, x.device),
    )  # (B, H, N_r, d)
    valid = (
        torch.ones(B, N, dtype=torch.int64, device=x.device) if key_padding_mask is None else (~key_padding_mask).long()
    )
    counts = torch.stack(all_gather_tensors(valid.sum(-1), group))  # (ranks, B): valid keys of every rank
    rank = torch.distributed.get_rank(group)
    if attn.causal:  # n_i = valid keys j <= i: those of the earlier ranks, then the local running count
        n = (counts[:rank].sum(0).unsqueeze(-1) + valid.cumsum(-1)).view(B, 1, N, 1)
    else:
        n = counts.sum(0).view(B, 1, 1, 1)
    return attn._output(out, n)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    from taylorshift.nn import Block

    return [m.attn for m in model.modules() if isinstance(m, Block)]


def set_sequence_parallel(model: nn.Module, group: object = None, *, enabled: bool = True) -> nn.Module:
    """Split every sequence of ``model`` across the ranks of ``group`` (None: the default group); returns ``model``.

    Supported: :class:`~taylorshift.models.SequenceClassifier` with the linear token embedding,
    :class:`~taylorshift.models.CausalLM`, and a bare :class:`~taylorshift.nn.TaylorShiftAttention`, all with
    TaylorShift attention. Each rank then calls the model on its contiguous part of every sequence (rank order =
    sequence order; :func:`split_sequence`). ``enabled=False`` undoes it.

    Raises:
        ValueError: torch.distributed not initialised, another attention type, a model whose layers mix tokens
            otherwise (the convolutional embedding, a ViT's image stem).
    """
    from taylorshift.models import CausalLM, SequenceClassifier
    from taylorshift.nn import TaylorShiftAttention

    if enabled:  # the attribute holds a group; None there means "not sequence parallel"
        group = torch.distributed.group.WORLD if check_group(group) is None else group
    else:
        group = None
    if isinstance(model, TaylorShiftAttention):
        model.sequence_group = group
        return model
    if not isinstance(model, (SequenceClassifier, CausalLM)):
        raise ValueError(f"sequence parallelism supports SequenceClassifier and CausalLM, got {type(model).__name__}")
    if isinstance(model, SequenceClassifier) and model.config.embed != "linear":
        raise ValueError(
            "sequence parallelism needs embed='linear': the convolutional embedding mixes neighbouring "
            "tokens and normalises over the whole sequence"
        )
    attns = _attention_modules(model)
    other = sorted({type(a).__name__ for a in attns if not isinstance(a, TaylorShiftAttention)})
    if other:
        raise ValueError(f"sequence parallelism needs TaylorShift attention in every block, got {other}")
    for a in attns:
        a.sequence_group = group
    model.sequence_group = group
    return model


@contextlib.contextmanager
def sequence_parallel_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` on whole sequences in this process for the duration (e.g. evaluation on one rank)."""
    saved = [(m, m.sequence_group) for m in model.modules() if getattr(m, "sequence_group", None) is not None]
    for m, _ in saved:
        m.sequence_group = None
    try:
        yield model
    finally:
        for m, group in saved:
            m.sequence_group = group


def split_sequence(x: Tensor | None, rank: int, world: int, dim: int = 1) -> Tensor | None:
    """Part ``rank`` of ``world`` contiguous parts of ``x`` along ``dim`` (the first ``N % world`` parts one
    longer, as :func:`torch.tensor_split`); None stays None."""
    return None if x is None else torch.tensor_split(x, world, dim=dim)[rank]

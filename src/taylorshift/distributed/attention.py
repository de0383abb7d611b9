"""``sequence_parallel_attention``: exact TaylorShift over a sequence split across the ranks of a process group.

Each rank ``r`` of ``group`` holds a contiguous shard of the sequence (rank order = sequence order): queries,
keys and values ``(*batch, L_r, d)``. The efficient form (:mod:`taylorshift.ops.efficient`) splits into a keys'
half, the state ``Z = Σ_j φ(k_j) v'_jᵀ`` of size ``F × (dv+1)`` (``F`` = :func:`taylorshift.ops.feature_dim`),
and a queries' half, ``[num | den] = φ(q̃)ᵀ diag(w) Z``. States of disjoint key sets add, so:

* **non-causal**: every rank computes the state of its keys (:func:`taylorshift.ops.efficient.key_state`), one
  all-reduce sums them, and every rank reads the global state with its queries
  (:func:`taylorshift.ops.efficient.state_attention`). Backward: the gradient of the state from the local
  queries is all-reduced, then each rank differentiates its own keys. Traffic: ``B·H·F·(dv+1)`` numbers per
  all-reduce, independent of the sequence length.
* **causal**: rank ``r`` needs the state of all keys of ranks ``< r``: the per-rank states are all-gathered and
  summed in rank order (:func:`taylorshift.distributed.collectives.exclusive_prefix_sum`), and that sum is the
  initial state of the local chunked causal computation (:mod:`taylorshift.ops.causal`). Backward: the gradient
  of the initial state is all-gathered and summed over the later ranks (a suffix sum). This is the LASP-2 pattern
  of linear attention; each rank pays one extra pass over its keys for its shard's state.

``V' = [V | 1]`` is divided by the *global* number of key positions (non-causal), the same on every rank, so
the states are averages on one common scale and add exactly; the causal state is a plain sum, as in the
single-process op. Which rows have an attendable key is read from the summed state (its constant-feature,
ones-column entry counts the valid keys), so rows of a batch element whose keys are all masked on every rank
give 0 as in the single-process op.

Unequal shard lengths are supported (the lengths are all-gathered with the shapes); empty shards too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from taylorshift.analysis.auto import DEFAULT_FORM, default_causal_chunk_size, default_chunk_size
from taylorshift.distributed.collectives import (
    ShardLayout,
    all_gather_tensors,
    all_reduce_sum,
    check_group,
    exchange_layout,
    exclusive_prefix_sum,
)
from taylorshift.ops.causal import _CausalEfficient
from taylorshift.ops.common import rows_with_keys
from taylorshift.ops.efficient import augment_values, check_efficient_call, key_state, state_attention
from taylorshift.ops.features import Form, feature_dim
from taylorshift.ops.inputs import DEFAULT_COEFFICIENTS, autocast_disabled, check_inputs
from taylorshift.ops.memory import check_efficient_memory

__all__ = ["sequence_parallel_attention", "shard_layout"]


def _counted(state: Tensor) -> Tensor:
    """Rows with an attendable key among those the state holds: its (constant feature, ones column) entry is the
    (scaled) number of valid keys, exact and non-negative."""
    return state.detach()[..., -1:, -1:] > 0  # (*batch, 1, 1)


def sequence_parallel_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    group: object = None,
    is_causal: bool = False,
    scale: float | Tensor | None = None,
    coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
    attn_mask: Tensor | None = None,
    form: Form = DEFAULT_FORM,
    chunk_size: int | None = None,
) -> Tensor:
    """TaylorShift attention of a sequence split across the ranks of ``group``; this rank's shard of the output.

    The result equals :func:`taylorshift.taylor_shift_attention` on the concatenated sequence (forward and
    gradients; see the module docstring for the algorithm). Every rank of ``group`` must call it, with shards in
    rank order.

    Args:
        query: ``(*batch, L_r, d)``, this rank's queries.
        key: ``(*batch, S_r, d)``, this rank's keys (``S_r = L_r`` when ``is_causal``).
        value: ``(*batch, S_r, dv)``.
        group: a ``torch.distributed`` process group, or None for the default group.
        is_causal: causal attention over the global positions (query ``i`` sees keys ``j <= i``).
        scale: ``None`` (``1/√d``), a float, or a tensor broadcastable to ``(*batch, 1, 1)``; the same on every
            rank (for example a replicated temperature parameter).
        coefficients: ``(a, b, c)`` of ``p``, the same on every rank.
        attn_mask: None or a bool key mask for this rank's keys, broadcastable to ``(*batch, 1, S_r)``
            (True = attend), the op's convention.
        form: feature form, ``"symmetric"`` (default) or ``"full"``.
        chunk_size: rows per chunk of the local computation (default: the single-process op's).

    Returns:
        ``(*batch, L_r, dv)`` in the dtype of ``query`` (half precision is computed in float32).

    Raises:
        ValueError: torch.distributed not initialised, this process not in ``group``, a mask that is not a key
            mask, or shards that disagree across ranks (batch dims, head sizes, dtype, options), raised on every
            rank; an argument rejected by one rank's checks makes every rank raise.
        TypeError: the arguments of :func:`taylorshift.taylor_shift_attention`'s checks, or a bad ``group``.
    """
    group = check_group(group)
    device = query.device if isinstance(query, Tensor) else torch.device("cpu")
    error, inp = None, None
    try:  # checked locally, reported collectively (a rank that raised alone would leave the others waiting)
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
        if not isinstance(coefficients, (tuple, list)):
            raise ValueError(f"coefficients must be a tuple (a, b, c) of three numbers, got {coefficients!r}")
        inp = check_inputs(query, key, value, attn_mask, scale, tuple(coefficients))
        form, chunk_size = check_efficient_call(inp, form, chunk_size, is_causal)
    except (TypeError, ValueError) as err:
        error = f"{type(err).__name__}: {err}"
    layout = exchange_layout(
        *((inp.q, inp.k, inp.v) if inp else (None, None, None)),
        is_causal is True,
        form,
        inp.coefficients if inp else None,
        group,
        device,
        error,
    )
    with autocast_disabled(inp.q.device):
        out = (_causal if is_causal else _non_causal)(inp.cast(), layout, form, chunk_size, group)
    return out.to(inp.out_dtype)


def shard_layout(length: int, group: object = None, device: torch.device | str = "cpu") -> ShardLayout:
    """All-gather the local sequence ``length`` of every rank of ``group`` (one small collective): the offsets of
    each rank's shard. Used by the models for positions. ``device``: where the collective runs (CPU for gloo,
    the rank's GPU for nccl)."""
    group = check_group(group)
    t = torch.tensor([int(length)], dtype=torch.int64, device=device)
    lengths = tuple(int(x) for x in torch.cat(all_gather_tensors(t, group)).tolist())
    return ShardLayout(dist.get_rank(group), len(lengths), lengths, lengths)


def _non_causal(inp, layout: ShardLayout, form: Form, chunk: int | None, group: object) -> Tensor:
    q, k, v = inp.q, inp.k, inp.v
    L, S, d, dv = q.shape[-2], k.shape[-2], k.shape[-1], v.shape[-1]
    batch = k.shape[:-2].numel()
    if chunk is None:
        chunk = default_chunk_size(batch, feature_dim(d, form))
    check_efficient_memory(batch, L, S, d, dv, form, chunk, q.dtype, q.device, train=inp.needs_grad)
    vp = augment_values(v, inp.mask, max(layout.total_keys, 1))  # one global scale: the states add exactly
    state = all_reduce_sum(key_state(k, vp, form, chunk), group)  # (*batch, F, dv+1), the whole sequence's
    return state_attention(q * inp.scale, state, inp.coefficients, form, chunk, _counted(state))


def _causal(inp, layout: ShardLayout, form: Form, chunk: int | None, group: object) -> Tensor:
    q, k, v = inp.q, inp.k, inp.v
    L, d, dv = q.shape[-2], k.shape[-1], v.shape[-1]
    batch = k.shape[:-2].numel()
    if chunk is None:
        chunk = default_causal_chunk_size(batch, d, dv, form)
    check_efficient_memory(batch, L, L, d, dv, form, chunk, q.dtype, q.device, causal=True, train=inp.needs_grad)
    vp = augment_values(v, inp.mask, 1.0)  # the causal state is a plain sum, as in the single-process op
    earlier = exclusive_prefix_sum(key_state(k, vp, form, chunk), group)  # keys of ranks < r: (*batch, F, dv+1)
    has_key = rows_with_keys(inp.mask, L, L, True, q.device)
    if has_key is not None:  # or a valid key on an earlier rank
        has_key = has_key | _counted(earlier)
    out, _ = _CausalEfficient.apply(q * inp.scale, k, vp, earlier, inp.coefficients, form, chunk, False, has_key)
    return out

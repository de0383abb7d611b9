"""Differentiable collectives and the checks behind the sequence-parallel op.

Gradient convention. A rank's backward computes its share of the gradient of the **sum over ranks** of what each
rank backpropagates: if rank ``r`` calls ``backward`` on ``ℓ_r``, the gradients of rank ``r``'s tensors are those
of ``Σ_r' ℓ_r'``. Under this convention the adjoint of an all-reduce (sum) is an all-reduce (sum) of the
gradients, and the adjoint of an exclusive prefix sum over ranks is the exclusive suffix sum of the gradients.
Parameters replicated on every rank then receive, on each rank, a partial gradient; the sum over ranks is the
gradient of ``Σ_r ℓ_r`` (see :func:`taylorshift.distributed.models.sync_gradients`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_BATCH_DIMS = 8
_FORMS = ("symmetric", "full")


def check_group(group: object) -> object:
    """``group`` (None = the default group) if torch.distributed is initialised and this process belongs to it.

    Raises:
        ValueError: torch.distributed not built or not initialised, or this process not in ``group``.
        TypeError: ``group`` is not a process group.
    """
    if not dist.is_available():
        raise ValueError("group: this PyTorch build has no torch.distributed, so sequence parallelism is unavailable")
    if not dist.is_initialized():
        raise ValueError(
            "group: torch.distributed has no initialised process group; call "
            "torch.distributed.init_process_group('gloo' or 'nccl') first (torchrun provides its environment), "
            "or call taylorshift.taylor_shift_attention on the whole sequence instead"
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}")
    if dist.get_rank(group) < 0:
        raise ValueError("group: this process is not a member of the given process group")
    return group


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):  # noqa: D102
        ctx.group = group
        y = x.contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def all_reduce_sum(x: Tensor, group: object = None) -> Tensor:
    """``Σ_r x_r`` on every rank of ``group``, differentiable (the backward all-reduces the gradient)."""
    return _AllReduceSum.apply(x, group)


def all_gather_tensors(x: Tensor, group: object = None) -> list[Tensor]:
    """Every rank's ``x`` (same shape on all ranks), in rank order (not differentiable)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return parts


class _ExclusivePrefixSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):  # noqa: D102
        ctx.group = group
        rank = dist.get_rank(group)
        parts = all_gather_tensors(x, group)
        out = torch.zeros_like(x)
        for p in parts[:rank]:  # fixed order: every rank adds the same terms in the same order
            out += p
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        rank = dist.get_rank(ctx.group)
        parts = all_gather_tensors(grad, ctx.group)
        out = torch.zeros_like(grad)
        for p in parts[rank + 1 :]:  # the later ranks read this rank's summand
            out += p
        return out, None


def exclusive_prefix_sum(x: Tensor, group: object = None) -> Tensor:
    """``Σ_{r' < r} x_r'`` on rank ``r`` of ``group`` (zeros on rank 0), from one all-gather; differentiable (the
    backward all-gathers the gradients and sums those of the later ranks: the exclusive suffix sum)."""
    return _ExclusivePrefixSum.apply(x, group)


@dataclass(frozen=True)
class ShardLayout:
    """Where this rank's shard lies: ``rank`` of ``world``, query and key lengths of every rank."""

    rank: int
    world: int
    query_lengths: tuple[int, ...]
    key_lengths: tuple[int, ...]

    @property
    def query_offset(self) -> int:
        """Global position of this rank's first query."""
        return sum(self.query_lengths[: self.rank])

    @property
    def key_offset(self) -> int:
        return sum(self.key_lengths[: self.rank])

    @property
    def total_keys(self) -> int:
        return sum(self.key_lengths)


def _describe(row: list[float]) -> str:
    nb = int(row[1])
    batch = tuple(int(b) for b in row[2 : 2 + nb])
    L, S, d, dv, dt, causal, form = (int(x) for x in row[2 + _MAX_BATCH_DIMS : 9 + _MAX_BATCH_DIMS])
    a, b, c = row[9 + _MAX_BATCH_DIMS : 12 + _MAX_BATCH_DIMS]
    return (
        f"batch {batch}, L={L}, S={S}, d={d}, dv={dv}, {str(_DTYPES[dt]).removeprefix('torch.')}, "
        f"is_causal={bool(causal)}, form={_FORMS[form]!r}, coefficients=({a:g}, {b:g}, {c:g})"
    )


def exchange_layout(
    q: Tensor | None,
    k: Tensor | None,
    v: Tensor | None,
    is_causal: bool,
    form: str,
    coefficients: tuple[float, float, float] | None,
    group: object,
    device: torch.device,
    error: str | None = None,
) -> ShardLayout:
    """All-gather every rank's shapes, dtype and options (one small collective) and check that they agree.

    Every rank takes part even when its own inputs failed their checks (``error`` set, tensors None), so that
    all ranks raise together instead of leaving the others waiting in a collective.

    Raises:
        ValueError: a rank rejected its inputs, or the ranks disagree on batch dims, head sizes, dtype,
            ``is_causal``, ``form`` or coefficients, or (causal) a rank's query and key shards differ in length.
    """
    n = 12 + _MAX_BATCH_DIMS
    row = torch.zeros(n, dtype=torch.float64)
    if error is None:
        batch = tuple(q.shape[:-2])
        if len(batch) > _MAX_BATCH_DIMS:
            error = f"query has {len(batch)} batch dims; at most {_MAX_BATCH_DIMS} are supported"
        else:
            row[1] = len(batch)
            row[2 : 2 + len(batch)] = torch.tensor(batch, dtype=torch.float64)
            row[2 + _MAX_BATCH_DIMS : 9 + _MAX_BATCH_DIMS] = torch.tensor(
                [
                    q.shape[-2],
                    k.shape[-2],
                    q.shape[-1],
                    v.shape[-1],
                    _DTYPES.index(q.dtype),
                    int(is_causal),
                    _FORMS.index(form),
                ],
                dtype=torch.float64,
            )
            row[9 + _MAX_BATCH_DIMS :] = torch.tensor(coefficients, dtype=torch.float64)
    row[0] = 0.0 if error is None else 1.0
    rows = [r.cpu().tolist() for r in all_gather_tensors(row.to(device), group)]
    rank = dist.get_rank(group)
    failed = [r for r, x in enumerate(rows) if x[0]]
    if error is not None:
        raise ValueError(f"sequence_parallel_attention on rank {rank}: {error}")
    if failed:
        raise ValueError(
            f"sequence_parallel_attention: rank(s) {failed} rejected their inputs (see the error "
            "raised there); every rank of the group stops"
        )
    keys = [x[1 : 2 + _MAX_BATCH_DIMS] + x[4 + _MAX_BATCH_DIMS :] for x in rows]  # all but the lengths
    if any(key != keys[0] for key in keys) or (
        is_causal and any(x[2 + _MAX_BATCH_DIMS] != x[3 + _MAX_BATCH_DIMS] for x in rows)
    ):
        table = "; ".join(f"rank {r}: {_describe(x)}" for r, x in enumerate(rows))
        causal_rule = ", and with is_causal=True each rank needs L == S" if is_causal else ""
        raise ValueError(
            "sequence_parallel_attention: the shards of the ranks must have the same batch dims, head sizes d and dv, "
            f"dtype, is_causal, form and coefficients (only the sequence lengths L and S may differ{causal_rule}); "
            f"got {table}"
        )
    return ShardLayout(
        rank,
        len(rows),
        tuple(int(x[2 + _MAX_BATCH_DIMS]) for x in rows),
        tuple(int(x[3 + _MAX_BATCH_DIMS]) for x in rows),
    )

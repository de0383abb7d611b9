"""Sequence parallelism over ``torch.distributed``: exact TaylorShift attention of a sequence split across ranks.

:func:`sequence_parallel_attention` is the functional op (one all-reduce of an ``F × (dv+1)`` state per call,
whatever the sequence length; causal: an all-gather of per-rank states and a prefix sum). The collectives it is
built from are in :mod:`taylorshift.distributed.collectives`; :func:`set_sequence_parallel` makes the modules and
models (:mod:`taylorshift.distributed.models`) split their sequences. Data parallelism with ``DistributedDataParallel``
is in :mod:`taylorshift.train.distributed`. See docs/distributed.md for the communication model.
"""

from taylorshift.distributed.attention import sequence_parallel_attention, shard_layout
from taylorshift.distributed.collectives import ShardLayout, all_reduce_sum, exclusive_prefix_sum
from taylorshift.distributed.models import sequence_parallel_disabled, set_sequence_parallel, split_sequence

__all__ = [
    "ShardLayout",
    "all_reduce_sum",
    "exclusive_prefix_sum",
    "sequence_parallel_attention",
    "sequence_parallel_disabled",
    "set_sequence_parallel",
    "shard_layout",
    "split_sequence",
]

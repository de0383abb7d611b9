"""Communication model of sequence parallelism: bytes each rank sends per attention layer per training step
(forward and backward), and a latency-bandwidth estimate of the time (pure Python, no torch).

Notation: ``W`` ranks share one sequence of ``N`` tokens (``N/W`` each), ``B`` sequences, ``H`` heads of size
``d`` (values ``dv``), ``s`` bytes per number, ``F`` = :func:`~taylorshift.analysis.num_features` and
``M = B·H·F·(dv+1)·s`` the bytes of one TaylorShift state (all heads). Collectives are the bandwidth-optimal
ring algorithms: an all-reduce of ``X`` bytes sends ``2(W-1)/W·X`` per rank in ``2(W-1)`` steps, an all-gather
(or reduce-scatter) of ``W`` parts of ``X/W`` sends ``(W-1)/W·X`` in ``W-1`` steps.

=========================  =====================================  ======================================
scheme                     forward + backward, bytes sent/rank   messages (latency terms)
=========================  =====================================  ======================================
TaylorShift, non-causal    2 all-reduces of M: ``4(W-1)/W·M``     ``4(W-1)``
TaylorShift, causal        2 all-gathers of W states:             ``2(W-1)``
                           ``2(W-1)·M``
ring attention (softmax)   K, V around the ring forward; K, V     ``3(W-1)``
                           and dK, dV backward: ``6(W-1)/W·BHNds``
all-gather K/V (softmax)   all-gather K, V; reduce-scatter dK,    ``2(W-1)``
                           dV: ``4(W-1)/W·BHNds``
=========================  =====================================  ======================================

The TaylorShift terms do not depend on ``N``; the softmax terms grow with it. The small collectives of the
TaylorShift op (shapes, lengths and key counts: a few dozen numbers) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from taylorshift.analysis.complexity import num_features

SCHEMES: tuple[str, ...] = ("taylorshift", "taylorshift_causal", "ring", "allgather_kv")
"""Names of the schemes of :func:`comm_bytes`."""


def state_bytes(
    batch: int, heads: int, d: int, dv: int | None = None, *, form: str = "symmetric", bytes_per_number: int = 4
) -> int:
    """``M``: bytes of the TaylorShift key state ``(B, H, F, dv+1)`` of one layer."""
    dv = d if dv is None else dv
    return batch * heads * num_features(d, form) * (dv + 1) * bytes_per_number


def comm_bytes(
    scheme: str,
    n: int,
    world: int,
    batch: int,
    heads: int,
    d: int,
    dv: int | None = None,
    *,
    form: str = "symmetric",
    bytes_per_number: int = 4,
) -> float:
    """Bytes one rank sends for one attention layer in one training step (forward + backward).

    Args:
        scheme: one of :data:`SCHEMES`.
        n: tokens of the whole sequence.
        world: ranks ``W`` sharing the sequence (``>= 1``; 1 sends nothing).
        batch, heads, d, dv: sizes (``dv`` defaults to ``d``).
        form: TaylorShift feature form (``"symmetric"``, implemented; ``"full"``, the paper's).
        bytes_per_number: 4 for float32.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    dv = d if dv is None else dv
    frac = (world - 1) / world
    m = state_bytes(batch, heads, d, dv, form=form, bytes_per_number=bytes_per_number)
    kv = batch * heads * n * (d + dv) * bytes_per_number  # K and V of the whole sequence
    if scheme == "taylorshift":
        return 4 * frac * m
    if scheme == "taylorshift_causal":
        return 2 * (world - 1) * m
    if scheme == "ring":
        return 3 * frac * kv
    if scheme == "allgather_kv":
        return 2 * frac * kv
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def comm_messages(scheme: str, world: int) -> int:
    """Sequential messages per rank and layer step (the latency terms of :func:`comm_time`)."""
    steps = {"taylorshift": 4, "taylorshift_causal": 2, "ring": 3, "allgather_kv": 2}
    if scheme not in steps:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return steps[scheme] * (world - 1)


def comm_time(
    scheme: str,
    n: int,
    world: int,
    batch: int,
    heads: int,
    d: int,
    dv: int | None = None,
    *,
    latency: float = 5e-6,
    bandwidth: float = 10e9,
    form: str = "symmetric",
) -> float:
    """Latency-bandwidth estimate ``α·messages + bytes/β`` in seconds (``latency`` α in s, ``bandwidth`` β in
    bytes/s per rank), no overlap with computation."""
    b = comm_bytes(scheme, n, world, batch, heads, d, dv, form=form)
    return latency * comm_messages(scheme, world) + b / bandwidth


def break_even_tokens(
    scheme: str, world: int, batch: int, heads: int, d: int, dv: int | None = None, *, form: str = "symmetric"
) -> float:
    """Sequence length above which TaylorShift (``"taylorshift"`` or ``"taylorshift_causal"``) sends fewer bytes
    than ring attention: ``N* = 4·M/(3·kv)`` non-causal, ``N* = 2W·M/(3·kv)`` causal, with ``kv`` the bytes of K
    and V per token."""
    dv = d if dv is None else dv
    m = state_bytes(batch, heads, d, dv, form=form)
    per_token = batch * heads * (d + dv) * 4
    if scheme == "taylorshift":
        return 4 * m / (3 * per_token)
    if scheme == "taylorshift_causal":
        return 2 * world * m / (3 * per_token)
    raise ValueError(f"scheme must be 'taylorshift' or 'taylorshift_causal', got {scheme!r}")


@dataclass(frozen=True)
class StepEstimate:
    """Projected time of one attention layer step on ``world`` ranks: ``compute + comm`` seconds."""

    scheme: str
    world: int
    compute: float
    comm: float

    @property
    def total(self) -> float:
        return self.compute + self.comm


def project_step(
    scheme: str,
    n: int,
    world: int,
    batch: int,
    heads: int,
    d: int,
    *,
    seconds_per_unit: float,
    latency: float = 5e-6,
    bandwidth: float = 10e9,
) -> StepEstimate:
    """Projected step time of one layer with a measured compute rate.

    ``seconds_per_unit`` is the measured cost of one process: per token for TaylorShift (its work is linear in
    ``N``: a rank does ``N/W`` tokens), per token pair for softmax (a rank does ``N²/W`` pairs, ring or
    all-gather alike; causal halves both sides and is not modelled separately).
    """
    units = n / world if scheme.startswith("taylorshift") else n * n / world
    comm = comm_time(scheme, n, world, batch, heads, d, latency=latency, bandwidth=bandwidth) if world > 1 else 0.0
    return StepEstimate(scheme, world, units * seconds_per_unit, comm)

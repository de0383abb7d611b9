"""The rule behind ``backend="auto"``: what each backend costs as implemented, and where ``auto`` switches.

Pure Python (no torch). The dispatcher (:mod:`taylorshift.ops.dispatch`) and ``taylorshift crossover`` both
use these functions, so the command always shows what ``auto`` does. Costs are the paper's forward FLOP
counts of :mod:`taylorshift.analysis.complexity` for the feature form the library runs
(:data:`DEFAULT_FORM`, the symmetric ``d(d+1)/2`` monomials), so for ``L = S = N`` and ``dv = d`` ``auto``
switches at ``N0 = (d+1)(d+2)/2`` (2145 at ``d = 64``); the paper's full form would switch at ``d² + d + 1``
(4161).

Causal attention (``is_causal=True``): the direct kernel skips the blocks above the diagonal, so it is
charged only for the visible pairs (:func:`causal_pairs`, about half); the efficient kernel adds its in-chunk
direct part, ``C × C`` per chunk of ``C`` queries (:func:`default_causal_chunk_size`). For ``L = S = N`` that
moves the crossover to ``2(F + C) − 1`` with ``F`` the number of features, about twice the length.

The chunk sizes of the efficient kernels live here too because the causal cost depends on them, and so does the
memory the streaming kernels hold (:func:`efficient_kernel_entries`), which the ops check before allocating.
"""

from __future__ import annotations

from taylorshift.analysis.complexity import (
    Form,
    _check_form,
    _check_positive_int,
    _positive_root,
    crossover_exact,
    flops_direct,
    flops_efficient,
    num_features,
)

DEFAULT_FORM: Form = "symmetric"
"""The feature form the efficient kernels run (and ``auto`` prices) unless told otherwise."""


def default_chunk_size(batch: int, F: int) -> int:
    """Rows per chunk of the efficient kernel, so that one ``(batch, F, chunk)`` feature buffer holds about 2²²
    entries (16 MiB fp32), between 128 and 1024 rows: the fastest setting measured on a 2-core AVX-512 CPU at
    d = 16, 32, 64 (docs/benchmarks.md); smaller chunks pay per-call overhead, larger ones fall out of cache.

    Args:
        batch: number of (batch, head) pairs in one call.
        F: features per token (:func:`taylorshift.analysis.num_features`).
    """
    return int(min(1024, max(128, (1 << 22) // max(1, batch * F))))


def default_causal_chunk_size(batch: int, d: int, dv: int | None = None, form: Form = DEFAULT_FORM) -> int:
    """Query positions per chunk of the causal efficient kernel: ``min(256, default_chunk_size)``.

    Per token the state costs about ``4·F·(dv+1)`` FLOPs (read and update) and the in-chunk direct part
    about ``2·C·(d + dv + 1)``, so small chunks do less work, but each chunk pays a fixed per-call
    overhead. On a 2-core CPU (one thread, N = 2048-4096, d = 16, 32, 64) 128-256 was fastest and 64 up to
    2x slower; 256 keeps the direct part below a third of the total for d >= 32. ``dv`` is accepted for
    future tuning.
    """
    return int(min(256, default_chunk_size(batch, num_features(d, form))))


def causal_pairs(L: int, S: int) -> int:
    """Number of (query, key) pairs with ``j <= i`` (top-left causal alignment) among ``L`` queries and ``S``
    keys."""
    m = min(L, S)
    return m * (m + 1) // 2 + (L - m) * S


def auto_costs(
    L: int,
    S: int,
    d: int,
    dv: int | None = None,
    *,
    causal: bool = False,
    batch: int = 1,
    ratio: float = 1.0,
    form: Form = DEFAULT_FORM,
) -> tuple[float, float]:
    """Forward FLOPs ``(direct, efficient)`` of one head as ``backend="auto"`` weighs them.

    Args:
        L: number of queries.
        S: number of keys.
        d: query/key head size.
        dv: value head size (default ``d``).
        causal: price the causal kernels (see the module docstring).
        batch: (batch, head) pairs of the call; sets the causal chunk.
        ratio: ``ρ``, the measured/analytic crossover ratio of a stored calibration; the efficient cost is
            multiplied by it (1 without calibration).
        form: feature form of the efficient kernel.

    Returns:
        ``(direct, efficient)``; ``auto`` picks efficient iff the second is smaller.
    """
    direct = flops_direct(L, S, d, dv)
    efficient = ratio * flops_efficient(L, S, d, dv, form=form)
    if causal:
        per_pair = flops_direct(1, 1, d, dv)  # the direct cost is linear in the number of pairs
        chunk = min(L, S, default_causal_chunk_size(batch, d, dv, form))
        direct = per_pair * causal_pairs(L, S)
        efficient += per_pair * L * chunk
    return direct, efficient


def prefers_efficient(
    L: int,
    S: int,
    d: int,
    dv: int | None = None,
    *,
    causal: bool = False,
    batch: int = 1,
    ratio: float = 1.0,
    form: Form = DEFAULT_FORM,
) -> bool:
    """Whether ``backend="auto"`` runs the efficient kernel for these sizes (arguments as :func:`auto_costs`)."""
    direct, efficient = auto_costs(L, S, d, dv, causal=causal, batch=batch, ratio=ratio, form=form)
    return efficient < direct


def auto_crossover(
    d: int, *, causal: bool = False, batch: int = 1, dv: int | None = None, form: Form = DEFAULT_FORM
) -> float:
    """The length ``N0`` (``L = S = N``) above which ``backend="auto"`` runs the efficient kernel (without a
    calibration).

    Args:
        d: query/key head size.
        causal: the crossover of causal attention.
        batch: (batch, head) pairs of the call (sets the causal chunk ``C``).
        dv: value head size (default ``d``).
        form: feature form.

    Returns:
        ``N0``: non-causal ``crossover_exact(d, form=form, dv=dv)`` (``F`` for ``dv = d``); causal the positive
        root of ``per_pair·N(N+1)/2 = efficient(N) + per_pair·N·C``, ``2(F + C) − 1`` for ``dv = d``.
    """
    d = _check_positive_int("d", d)
    dv = d if dv is None else _check_positive_int("dv", dv)
    form = _check_form(form)
    if not causal:
        return crossover_exact(d, form=form, dv=dv)
    chunk = default_causal_chunk_size(_check_positive_int("batch", batch), d, dv, form)
    per_pair = flops_direct(1, 1, d, dv)
    # N0 > C always (for N <= C the efficient side pays N² pairs, the direct side N(N+1)/2), so min(N, C) = C
    return _positive_root(
        lambda N: per_pair * causal_pairs(N, N) - flops_efficient(N, N, d, dv, form=form) - per_pair * N * chunk
    )


def efficient_kernel_entries(
    batch: int,
    L: int,
    S: int,
    d: int,
    dv: int | None = None,
    *,
    form: Form = DEFAULT_FORM,
    chunk: int | None = None,
    causal: bool = False,
    train: bool = False,
) -> int:
    """Tensor entries the streaming efficient kernels hold at their peak besides ``q, k, v`` (all heads).

    Unlike :func:`taylorshift.analysis.memory_entries` (the paper's model, which holds the whole ``N × F``
    feature tensors), the library's kernels stream the features chunk by chunk, so per (batch, head) they hold
    the state ``F·(dv+1)``, one chunk of features ``F·C``, ``V' = [V | 1]`` (``S·(dv+1)``) and the numerators
    and denominators ``L·(dv+1)``; the causal kernel adds its ``C × C`` in-chunk weights, training the
    state's gradient (another ``F·(dv+1)``). The state is what grows as ``d²·dv``: at ``d = 2048`` it is
    ``4.3·10⁹`` entries (17 GB in float32) per head.

    Args:
        batch: (batch, head) pairs of the call.
        L: number of queries; ``S`` number of keys.
        d: query/key head size; ``dv`` value head size (default ``d``).
        form: feature form.
        chunk: rows per chunk (default :func:`default_chunk_size`, or :func:`default_causal_chunk_size`).
        causal: the causal kernel.
        train: count the backward's extra state gradient.

    Returns:
        Number of entries (multiply by the entry size for bytes).
    """
    batch = _check_positive_int("batch", batch)
    L, S = _check_positive_int("L", max(L, 1)), _check_positive_int("S", max(S, 1))
    d = _check_positive_int("d", d)
    dv = d if dv is None else _check_positive_int("dv", dv)
    F, e = num_features(d, form), dv + 1
    if chunk is None:
        chunk = default_causal_chunk_size(batch, d, dv, form) if causal else default_chunk_size(batch, F)
    chunk = min(_check_positive_int("chunk", chunk), max(L, S))
    per_head = (2 if train else 1) * F * e + F * chunk + (S + L) * e + (chunk * chunk if causal else 0)
    return batch * per_head

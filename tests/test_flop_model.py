"""The FLOP model against the real ops, counted by ``torch.utils.flop_counter.FlopCounterMode``.

``FlopCounterMode`` counts only matrix products (``mm``/``bmm`` as ``2·M·N·K``); the elementwise work
(polynomial, ``x⊠x``, sums, division) is invisible to it. So:

* the **implementation** model :func:`matmul_flops` must match the count; it does so exactly (the issue
  allows 5 %, we require equality because every matmul of the ops is modelled);
* the **paper's** full count :func:`flops` adds the elementwise terms. We check the exact difference, and
  that the paper count is within 5 % of the measured matmuls where the elementwise share is small.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from taylorshift import taylor_shift_attention
from taylorshift.analysis import flop_terms, flops, matmul_flops
from taylorshift.ops.efficient import DEFAULT_FORM, efficient_attention, kernel_features
from taylorshift.ops.inputs import check_inputs

B, H = 1, 2
SHAPES = [  # (L, S, d, dv): self- and cross-attention, dv ≠ d, tiny and moderate
    (1, 1, 1, 1),
    (7, 5, 4, 4),
    (16, 16, 8, 8),
    (33, 17, 16, 16),
    (9, 40, 16, 8),
    (20, 12, 8, 24),
    (64, 64, 32, 32),
]
PAPER_SHAPES = [(64, 64, 16, 16), (40, 24, 16, 16), (48, 48, 32, 32), (32, 24, 64, 64)]  # d = dv >= 16


def _qkv(L, S, d, dv, dtype, grad=False):
    g = torch.Generator().manual_seed(L * 1000 + S * 10 + d)
    q = torch.randn(B, H, L, d, generator=g, dtype=dtype)
    k = torch.randn(B, H, S, d, generator=g, dtype=dtype)
    v = torch.randn(B, H, S, dv, generator=g, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _attention(backend, q, k, v):
    if backend == "paper_form":  # the efficient kernel with the paper's full d² features
        return efficient_attention(check_inputs(q, k, v).cast(), form="full")
    return taylor_shift_attention(q, k, v, backend=backend)


def count_forward(backend, L, S, d, dv, dtype=torch.float64):
    q, k, v = _qkv(L, S, d, dv, dtype)
    with FlopCounterMode(display=False) as counter:
        _attention(backend, q, k, v)
    return counter.get_total_flops()


def count_train(backend, L, S, d, dv, dtype=torch.float64):
    """Forward + backward with gradients for q, k and v and a random upstream gradient."""
    q, k, v = _qkv(L, S, d, dv, dtype, grad=True)
    with FlopCounterMode(display=False) as counter:
        out = _attention(backend, q, k, v)
        out.backward(torch.randn_like(out))
    assert all(t.grad is not None for t in (q, k, v))
    return counter.get_total_flops()


def _kernel_f(backend: str, d: int) -> int | None:
    """The efficient kernel streams its row-blocked features (about 1/8 more than the canonical count)."""
    return kernel_features(d, DEFAULT_FORM) if backend == "efficient" else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["direct", "efficient"])
@pytest.mark.parametrize(("L", "S", "d", "dv"), SHAPES)
def test_forward_matmuls_match_implementation_model(backend, L, S, d, dv, dtype):
    counted = count_forward(backend, L, S, d, dv, dtype)
    model = B * H * matmul_flops(backend, L, S, d, dv, form=DEFAULT_FORM, features=_kernel_f(backend, d))
    assert counted > 0
    assert counted == model, f"counted {counted}, model {model}"


@pytest.mark.parametrize("backend", ["direct", "efficient"])
@pytest.mark.parametrize(("L", "S", "d", "dv"), SHAPES)
def test_train_matmuls_match_implementation_model(backend, L, S, d, dv):
    """Backward runs two products of each forward matmul's size (3 × forward in all); direct also
    recomputes ``QKᵀ`` instead of storing it, and its completed square's extra columns (``[Q̃ | m][K | 1]ᵀ``
    and ``W [V | 1]`` in the forward, the recomputed ``[Q̃ | m][K | 1]ᵀ`` in the backward) are not tripled:
    3 × forward + recompute − 6LS."""
    counted = count_train(backend, L, S, d, dv)
    model = B * H * matmul_flops(backend, L, S, d, dv, form=DEFAULT_FORM, mode="train", features=_kernel_f(backend, d))
    assert counted == model, f"counted {counted}, model {model}"
    recompute = (2 * L * S * d - 6 * L * S) * B * H if backend == "direct" else 0
    assert counted == 3 * count_forward(backend, L, S, d, dv) + recompute


@pytest.mark.parametrize(("L", "S", "d", "dv"), PAPER_SHAPES)
def test_paper_count_vs_counted_efficient(L, S, d, dv):
    """Efficient: paper − counted = elementwise terms − the constant feature's matmuls ``2(L+S)(dv+1)``.

    The relative gap is about ``1/(2(dv+1))``, so within 5 % for ``dv >= 16``.
    """
    counted = count_forward("paper_form", L, S, d, dv) // (B * H)
    paper = flops("efficient", L, S, d, dv)
    elementwise = sum(t.value for t in flop_terms("efficient", L, S, d, dv) if t.kind == "elementwise")
    assert paper - counted == elementwise - 2 * (L + S) * (dv + 1)
    assert abs(paper - counted) <= 0.05 * counted
    # the same in training (every term triples in the model, every matmul triples in the ops)
    assert abs(flops("efficient", L, S, d, dv, mode="train") - count_train("paper_form", L, S, d, dv) // (B * H)) <= (
        0.05 * 3 * counted
    )


@pytest.mark.parametrize(("L", "S", "d", "dv"), PAPER_SHAPES)
def test_paper_count_vs_counted_direct(L, S, d, dv):
    """Direct: paper − counted = ``2LS`` exactly: the paper's ``6LS`` (polynomial, row sum, division) minus the
    completed square's two extra product columns (``+ m`` and the row sum ride in the matmuls).

    The relative gap is ``1/(d + dv + 2)``: 2.9 % at d = dv = 16.
    """
    counted = count_forward("direct", L, S, d, dv) // (B * H)
    paper = flops("direct", L, S, d, dv)
    assert paper - counted == 2 * L * S
    assert (paper - counted) / counted == pytest.approx(1 / (d + dv + 2))
    if d + dv >= 60:
        assert paper - counted <= 0.05 * counted


def test_masked_efficient_has_the_same_matmuls():
    """A key-padding mask zeroes rows of V' but runs the same products."""
    L, S, d, dv = 12, 20, 8, 8
    q, k, v = _qkv(L, S, d, dv, torch.float64)
    mask = torch.ones(B, H, 1, S, dtype=torch.bool)
    mask[..., -5:] = False
    with FlopCounterMode(display=False) as counter:
        taylor_shift_attention(q, k, v, mask, backend="efficient")
    assert counter.get_total_flops() == B * H * matmul_flops("efficient", L, S, d, dv, form=DEFAULT_FORM)

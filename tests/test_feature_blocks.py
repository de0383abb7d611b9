"""Row-blocked feature layouts (ops.features.row_blocks): the kernel they represent and their backward."""

from __future__ import annotations

import pytest
import torch

from taylorshift.ops.efficient import kernel_blocks
from taylorshift.ops.features import (
    blocked_feature_dim,
    feature_dim,
    feature_weights,
    row_blocks,
    taylor_features,
    taylor_features_backward,
)
from taylorshift.ops.polynomial import evaluate

COEFFS = (0.7, -0.3, 0.9)


@pytest.mark.parametrize("d", [1, 3, 16, 33])
@pytest.mark.parametrize("count", [None, 1, 2, 5, 8, 64])
def test_blocked_features_reproduce_the_polynomial(d, count):
    g = torch.Generator().manual_seed(d)
    q, k = (
        torch.randn(2, 7, d, generator=g, dtype=torch.float64),
        torch.randn(2, 5, d, generator=g, dtype=torch.float64),
    )
    blocks = row_blocks(d, "symmetric", count)
    w = feature_weights(d, "symmetric", COEFFS, dtype=torch.float64, device=q.device, blocks=blocks)
    fq, fk = taylor_features(q, blocks=blocks), taylor_features(k, blocks=blocks)
    assert fq.shape[-2] == blocked_feature_dim(d, blocks) == w.numel()
    got = fq.transpose(-1, -2) @ (w.unsqueeze(-1) * fk)
    torch.testing.assert_close(got, evaluate(q @ k.transpose(-1, -2), COEFFS), rtol=1e-12, atol=1e-12)


def test_default_blocks_are_the_canonical_layouts():
    d = 6
    x = torch.randn(3, 4, d, dtype=torch.float64)
    assert blocked_feature_dim(d, row_blocks(d, "symmetric")) == feature_dim(d, "symmetric")
    assert blocked_feature_dim(d, row_blocks(d, "full")) == feature_dim(d, "full")
    for form in ("symmetric", "full"):
        blocks = row_blocks(d, form)
        torch.testing.assert_close(
            taylor_features(x, form, out=torch.empty(3, feature_dim(d, form), 4)),
            taylor_features(x, form, out=torch.empty(3, feature_dim(d, form), 4), blocks=blocks),
        )
        torch.testing.assert_close(
            feature_weights(d, form, COEFFS, dtype=torch.float64, device=x.device),
            feature_weights(d, form, COEFFS, dtype=torch.float64, device=x.device, blocks=blocks),
        )


@pytest.mark.parametrize("count", [None, 3, 8])
def test_blocked_backward_matches_autograd(count):
    d = 11
    blocks = row_blocks(d, "symmetric", count)
    x = torch.randn(2, 9, d, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, blocked_feature_dim(d, blocks), 9, dtype=torch.float64)
    xt = x.transpose(-1, -2)
    second = [(xt[..., o:e, None, :] * xt[..., None, o:, :]).flatten(-3, -2) for o, e in blocks]
    phi = torch.cat([*second, xt, torch.ones_like(xt[..., :1, :])], dim=-2)
    torch.testing.assert_close(phi.detach(), taylor_features(x.detach(), blocks=blocks))
    (expected,) = torch.autograd.grad((phi * grad).sum(), x)
    torch.testing.assert_close(taylor_features_backward(x.detach(), grad, blocks=blocks), expected)


def test_kernel_blocks_bound_the_operations_per_chunk():
    assert len(kernel_blocks(64, "symmetric")) == 8
    assert len(kernel_blocks(4, "symmetric")) == 4
    assert kernel_blocks(64, "full") == ((0, 64),)
    # at most 1/8 more second-order features than the triangle (plus rounding of the block edges)
    assert blocked_feature_dim(64, kernel_blocks(64, "symmetric")) <= 1.15 * feature_dim(64, "symmetric")

"""Bad input gets a clear TypeError/ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

from taylorshift import resolve_backend, taylor_shift_attention


def qkv(L=5, S=6, d=4, dv=3, dtype=torch.float32):
    q = torch.randn(2, 2, L, d, dtype=dtype)
    return q, torch.randn(2, 2, S, d, dtype=dtype), torch.randn(2, 2, S, dv, dtype=dtype)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda q, k, v: (q[0, 0, 0], k, v), ValueError, "query"),  # rank 1
        (lambda q, k, v: (q, k[0, 0, 0], v), ValueError, "key"),
        (lambda q, k, v: (q, k, v[..., 0]), ValueError, "value"),  # rank 3 with wrong batch dims
        (lambda q, k, v: (q, k[..., :3], v), ValueError, "head size"),  # mismatched d
        (lambda q, k, v: (q, k, v[..., :4, :]), ValueError, "positions"),  # mismatched S
        (lambda q, k, v: (q, k[:1], v[:1]), ValueError, "batch dims"),
        (lambda q, k, v: (q.long(), k, v), TypeError, "query"),  # integer tensor
        (lambda q, k, v: (q, k.to(torch.int32), v), TypeError, "key"),
        (lambda q, k, v: (q, k, v.double()), TypeError, "value"),  # mixed dtypes
        (lambda q, k, v: (q.numpy(), k, v), TypeError, "query"),  # not a tensor
        (lambda q, k, v: (q, k.to(torch.complex64), v), TypeError, "key"),
    ],
)
def test_bad_tensors(make, exc, match):
    with pytest.raises(exc, match=match):
        taylor_shift_attention(*make(*qkv()))


def test_mixed_devices():
    q, k, v = qkv()
    meta = k.to("meta")
    with pytest.raises((ValueError, TypeError), match="key"):
        taylor_shift_attention(q, meta, v)


def test_float_mask_rejected_with_explanation():
    q, k, v = qkv()
    mask = torch.zeros(5, 6)
    mask[:, 0] = float("-inf")
    with pytest.raises(TypeError, match=r"(?s)attn_mask.*bool.*p\(-inf\)"):
        taylor_shift_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize(
    "mask,exc,match",
    [
        (torch.ones(5, 7, dtype=torch.bool), ValueError, "attn_mask"),
        (torch.ones(3, 2, 5, 6, dtype=torch.bool), ValueError, "attn_mask"),
        (torch.ones(1, 1, 1, 1, 5, 6, dtype=torch.bool), ValueError, "attn_mask"),
        (torch.ones(5, 6, dtype=torch.int64), TypeError, "attn_mask"),
        ([[True]], TypeError, "attn_mask"),
    ],
)
def test_bad_masks(mask, exc, match):
    with pytest.raises(exc, match=match):
        taylor_shift_attention(*qkv(), attn_mask=mask)


def test_efficient_rejects_general_mask_and_auto_falls_back():
    q, k, v = qkv()
    mask = torch.ones(5, 6, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="backend='efficient'"):
        taylor_shift_attention(q, k, v, attn_mask=mask, backend="efficient")
    assert resolve_backend(q, k, v, mask, backend="auto") == "direct"
    assert torch.isfinite(taylor_shift_attention(q, k, v, attn_mask=mask)).all()


@pytest.mark.parametrize(
    "coefficients,exc",
    [
        ((0.0, 1.0, 1.0), ValueError),  # a = 0
        ((-0.5, 1.0, 1.0), ValueError),  # a < 0
        ((0.5, 1.0, 0.4), ValueError),  # c < b²/4a: p has negative values
        ((0.5, 1.0), ValueError),  # wrong length
        ("abc", ValueError),
        ((0.5, "1", 1.0), TypeError),
        ((0.5, float("nan"), 1.0), ValueError),
    ],
)
def test_bad_coefficients(coefficients, exc):
    with pytest.raises(exc, match="coefficients"):
        taylor_shift_attention(*qkv(), coefficients=coefficients)


@pytest.mark.parametrize(
    "scale,exc",
    [
        ("1", TypeError),
        (float("inf"), ValueError),
        (torch.ones(3, 1, 1), ValueError),  # 3 heads, but H = 2
        (torch.ones(2, 2, 5, 1), ValueError),  # per-query scale is not allowed
        (torch.ones(2, 1, 1, dtype=torch.int64), TypeError),
        (True, TypeError),
    ],
)
def test_bad_scale(scale, exc):
    with pytest.raises(exc, match="scale"):
        taylor_shift_attention(*qkv(), scale=scale)


@pytest.mark.parametrize("backend", ["fast", "Direct", None, 3])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="backend"):
        taylor_shift_attention(*qkv(), backend=backend)
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(*qkv(), backend=backend)


def test_is_causal_must_be_bool():
    with pytest.raises(TypeError, match="is_causal"):
        taylor_shift_attention(*qkv(), is_causal="yes")


def test_resolve_backend_follows_the_analytic_crossover():
    from taylorshift.analysis import crossover

    d = 8
    n0 = crossover(d, form="symmetric")  # (d+1)(d+2)/2 = 45: the implemented feature form
    assert n0 == 45
    for n, expected in [(n0 - 1, "direct"), (n0 + 1, "efficient"), (4 * n0, "efficient"), (8, "direct")]:
        q = torch.randn(1, 1, n, d)
        assert resolve_backend(q, q, q) == expected, n
    q = torch.randn(1, 1, 500, d)
    assert resolve_backend(q, q, q, backend="direct") == "direct"
    assert resolve_backend(q, q, q, torch.ones(500, dtype=torch.bool)) == "efficient"

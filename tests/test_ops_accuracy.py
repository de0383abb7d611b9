"""Direct and efficient TaylorShift against the float64 oracle, per dtype, over a grid of shapes."""

from __future__ import annotations

import pytest
import torch

from conftest import make_qkv, rel_err, tolerance
from taylorshift import taylor_shift_attention, taylor_shift_attention_reference

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["direct", "efficient"]
COEFFICIENTS = [(0.5, 1.0, 1.0), (1.0, 0.0, 0.1), (0.25, 1.0, 1.0), (1.0, 2.0, 1.0), (2.0, -1.0, 0.5)]
MASK_KINDS = ["key_padding_4d", "key_padding_per_head", "key_1d", "general_2d", "general_4d", "causal_like"]


def test_every_tested_dtype_has_a_tolerance():
    for dtype in DTYPES:
        assert tolerance(dtype) > 0
    with pytest.raises(KeyError):
        tolerance(torch.int32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [1, 8, 16, 32, 64])
@pytest.mark.parametrize("N", [1, 7, 63, 257, 1000])
def test_grid_against_oracle(dtype, backend, d, N):
    B, H = (2, 2) if N * d <= 16_000 else (1, 2)
    q, k, v = make_qkv(B, H, N, N, d, dtype=dtype, seed=N * 100 + d)
    out = taylor_shift_attention(q, k, v, backend=backend)
    assert out.dtype == dtype and out.shape == (B, H, N, d)
    ref = taylor_shift_attention_reference(q, k, v)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= tolerance(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L,S", [(1, 300), (300, 1), (5, 257), (257, 63)])
def test_cross_attention(dtype, backend, L, S):
    q, k, v = make_qkv(2, 3, L, S, 16, dv=24, dtype=dtype, seed=L + S)
    out = taylor_shift_attention(q, k, v, backend=backend)
    assert out.shape == (2, 3, L, 24)
    assert rel_err(out, taylor_shift_attention_reference(q, k, v)) <= tolerance(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale_kind", ["float", "per_head", "per_batch_head", "scalar_tensor"])
def test_scale_variants(dtype, backend, scale_kind):
    B, H = 2, 3
    q, k, v = make_qkv(B, H, 40, 50, 8, dtype=dtype, seed=7)
    scale = {
        "float": 0.37,
        "per_head": torch.tensor([0.5, 1.0, 3.0], dtype=dtype).view(H, 1, 1),
        "per_batch_head": torch.rand(B, H, 1, 1, dtype=torch.float64).mul(3).to(dtype),
        "scalar_tensor": torch.tensor(2.0, dtype=dtype),
    }[scale_kind]
    out = taylor_shift_attention(q, k, v, scale=scale, backend=backend)
    ref = taylor_shift_attention_reference(q, k, v, scale=scale)
    assert rel_err(out, ref) <= tolerance(dtype)
    # the scale really is used: a different scale gives a different answer
    other = taylor_shift_attention(q, k, v, scale=0.01, backend=backend)
    assert rel_err(other, ref) > 10 * tolerance(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("coefficients", COEFFICIENTS)
def test_coefficients(backend, coefficients):
    q, k, v = make_qkv(1, 2, 33, 65, 8, dtype=torch.float64, seed=3)
    out = taylor_shift_attention(q, k, v, backend=backend, coefficients=coefficients)
    ref = taylor_shift_attention_reference(q, k, v, coefficients=coefficients)
    assert rel_err(out, ref) <= tolerance(torch.float64)


def test_default_coefficients_are_taylor_of_exp():
    q, k, v = make_qkv(1, 1, 9, 11, 4, dtype=torch.float64)
    s = (q @ k.transpose(-1, -2)) / 2.0  # default scale 1/sqrt(4)
    w = 1 + s + s * s / 2
    expected = (w @ v) / w.sum(-1, keepdim=True)
    for backend in BACKENDS:
        assert rel_err(taylor_shift_attention(q, k, v, backend=backend), expected) < 1e-13


def _masks(B, H, L, S, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "key_padding_4d": torch.rand(B, 1, 1, S, generator=g) > 0.3,
        "key_padding_per_head": torch.rand(B, H, 1, S, generator=g) > 0.3,
        "key_1d": torch.rand(S, generator=g) > 0.5,
        "general_2d": torch.rand(L, S, generator=g) > 0.5,
        "general_4d": torch.rand(B, H, L, S, generator=g) > 0.4,
        "causal_like": torch.ones(L, S, dtype=torch.bool).tril(),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
def test_masks_against_oracle(dtype, mask_kind, backend):
    B, H, L, S, d = 2, 3, 37, 90, 8
    q, k, v = make_qkv(B, H, L, S, d, dtype=dtype, seed=11)
    mask = _masks(B, H, L, S, 5)[mask_kind]
    key_only = mask_kind.startswith("key")
    if backend == "efficient" and not key_only:
        with pytest.raises(ValueError, match="key-padding"):
            taylor_shift_attention(q, k, v, attn_mask=mask, backend=backend)
        return
    out = taylor_shift_attention(q, k, v, attn_mask=mask, backend=backend)
    ref = taylor_shift_attention_reference(q, k, v, attn_mask=mask)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= tolerance(dtype)


def test_masked_weight_is_exactly_zero():
    # a masked key with a huge value must have no influence at all
    q, k, v = make_qkv(1, 1, 4, 6, 3, dtype=torch.float64)
    v[..., 2, :] = 1e30
    mask = torch.ones(6, dtype=torch.bool)
    mask[2] = False
    keep = torch.tensor([0, 1, 3, 4, 5])
    for backend in BACKENDS:
        out = taylor_shift_attention(q, k, v, attn_mask=mask, backend=backend)
        ref = taylor_shift_attention_reference(q, k[..., keep, :], v[..., keep, :])
        assert rel_err(out, ref) < 1e-13


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_long_sequence_stability(dtype):
    """Unit-norm q and k, temperature up to 4, N = 65,536: finite and within 2e-2 of the oracle.

    The oracle evaluates a random subset of query rows exactly against all keys.
    """
    N, d, H = 65_536, 16, 2
    q, k, v = make_qkv(1, H, N, N, d, dtype=dtype, seed=2024, unit=True)
    scale = torch.tensor([1.0, 4.0], dtype=dtype).view(1, H, 1, 1)
    out = taylor_shift_attention(q, k, v, scale=scale, backend="efficient")
    assert torch.isfinite(out).all()
    rows = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:256]
    ref = taylor_shift_attention_reference(q, k, v, scale=scale, rows=rows)
    err = rel_err(out[..., rows, :], ref)
    assert err <= (1e-4 if dtype == torch.float32 else 2e-2), err


def test_fp32_efficient_at_16k():
    N, d = 16_384, 32
    q, k, v = make_qkv(1, 1, N, N, d, dtype=torch.float32, seed=1, unit=True)
    out = taylor_shift_attention(q, k, v, scale=4.0, backend="efficient")
    rows = torch.randperm(N, generator=torch.Generator().manual_seed(1))[:512]
    ref = taylor_shift_attention_reference(q, k, v, scale=4.0, rows=rows)
    assert rel_err(out[..., rows, :], ref) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims(backend):
    # no batch dims, one batch dim, three batch dims
    for shape in [(), (3,), (2, 2, 3)]:
        g = torch.Generator().manual_seed(len(shape))
        q = torch.randn(*shape, 10, 4, generator=g, dtype=torch.float64)
        k = torch.randn(*shape, 12, 4, generator=g, dtype=torch.float64)
        v = torch.randn(*shape, 12, 5, generator=g, dtype=torch.float64)
        out = taylor_shift_attention(q, k, v, backend=backend)
        assert out.shape == (*shape, 10, 5)
        assert rel_err(out, taylor_shift_attention_reference(q, k, v)) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_key_set_gives_zeros(backend):
    q = torch.randn(1, 1, 3, 4)
    k = torch.randn(1, 1, 0, 4)
    v = torch.randn(1, 1, 0, 2)
    out = taylor_shift_attention(q, k, v, backend=backend)
    assert out.shape == (1, 1, 3, 2) and (out == 0).all()

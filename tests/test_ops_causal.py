"""Causal TaylorShift (is_causal=True, top-left aligned): both backends against the float64 oracle, chunking,
masks, empty rows, gradients, long-context stability and errors."""

from __future__ import annotations

import pytest
import torch

from conftest import make_qkv, rel_err, tolerance
from taylorshift import resolve_backend, taylor_shift_attention, taylor_shift_attention_reference
from taylorshift.ops.causal import causal_efficient_attention, default_causal_chunk_size
from taylorshift.ops.direct import direct_attention
from taylorshift.ops.inputs import check_inputs

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["direct", "efficient"]


def _run(backend, q, k, v, mask=None, scale=None, size=None, coefficients=(0.5, 1.0, 1.0)):
    """The causal kernels with an explicit chunk (efficient) or block (direct) size."""
    inp = check_inputs(q, k, v, mask, scale, coefficients).cast()
    if backend == "efficient":
        out = causal_efficient_attention(inp, chunk_size=size)
    else:
        out = direct_attention(inp, block_size=size, is_causal=True)
    return out.to(inp.out_dtype)


def _grads(fn, q, k, v, scale, upstream):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    s = scale.detach().clone().requires_grad_(True) if isinstance(scale, torch.Tensor) else scale
    out = fn(*leaves, s)
    out.backward(upstream)
    grads = [t.grad for t in leaves] + ([s.grad] if isinstance(s, torch.Tensor) else [])
    return out.detach(), grads


# ------------------------------------------------------------------------------------------- the oracle


def test_oracle_is_the_explicit_lower_triangular_mask():
    q, k, v = make_qkv(2, 2, 9, 13, 4, dtype=torch.float64, seed=1)
    tril = torch.ones(9, 13, dtype=torch.bool).tril()  # top-left: j <= i
    expected = taylor_shift_attention_reference(q, k, v, attn_mask=tril)
    assert torch.equal(taylor_shift_attention_reference(q, k, v, is_causal=True), expected)
    # rows= evaluates the same rows (with their causal masks)
    rows = torch.tensor([0, 4, 8])
    sub = taylor_shift_attention_reference(q, k, v, is_causal=True, rows=rows)
    assert rel_err(sub, expected[..., rows, :]) < 1e-14
    # combined with a key mask: both must allow a pair
    keep = torch.rand(2, 1, 1, 13, generator=torch.Generator().manual_seed(0)) > 0.4
    both = taylor_shift_attention_reference(q, k, v, attn_mask=keep, is_causal=True)
    assert torch.equal(both, taylor_shift_attention_reference(q, k, v, attn_mask=keep & tril))


# ------------------------------------------------------------------------------------- forward accuracy


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
@pytest.mark.parametrize("d", [1, 8, 32])
@pytest.mark.parametrize("N", [1, 7, 63, 300])
def test_grid_against_oracle(dtype, backend, d, N):
    q, k, v = make_qkv(2, 2, N, N, d, dtype=dtype, seed=N * 100 + d)
    out = taylor_shift_attention(q, k, v, is_causal=True, backend=backend)
    assert out.dtype == dtype and out.shape == (2, 2, N, d)
    assert torch.isfinite(out).all()
    ref = taylor_shift_attention_reference(q, k, v, is_causal=True)
    assert rel_err(out, ref) <= tolerance(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [1, 3, 16, 50, 97, 1000])
@pytest.mark.parametrize("L,S", [(97, 97), (40, 97), (97, 40), (1, 97), (97, 1)])
def test_chunk_sizes_and_unequal_lengths(dtype, backend, size, L, S):
    """Chunk/block sizes that do not divide N, larger than N, 1; L != S (top-left alignment)."""
    q, k, v = make_qkv(2, 3, L, S, 8, dv=5, dtype=dtype, seed=L + 7 * S)
    scale = torch.tensor([0.5, 1.0, 2.5], dtype=dtype).view(3, 1, 1)
    out = _run(backend, q, k, v, scale=scale, size=size)
    ref = taylor_shift_attention_reference(q, k, v, scale=scale, is_causal=True)
    assert rel_err(out, ref) <= tolerance(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_left_alignment(backend):
    # L > S: queries i >= S see every key, i.e. their rows equal non-causal attention
    q, k, v = make_qkv(1, 2, 20, 8, 4, dtype=torch.float64, seed=3)
    out = taylor_shift_attention(q, k, v, is_causal=True, backend=backend)
    full = taylor_shift_attention(q, k, v, backend=backend)
    assert rel_err(out[..., 7:, :], full[..., 7:, :]) < 1e-13
    assert rel_err(out[..., :7, :], full[..., :7, :]) > 1e-3
    # L < S: keys j >= L are never seen, i.e. the result equals causal attention over the first L keys
    q, k, v = make_qkv(1, 2, 8, 20, 4, dtype=torch.float64, seed=4)
    out = taylor_shift_attention(q, k, v, is_causal=True, backend=backend)
    short = taylor_shift_attention(q, k[..., :8, :], v[..., :8, :], is_causal=True, backend=backend)
    assert rel_err(out, short) < 1e-13
    # row 0 sees only key 0
    assert rel_err(out[..., 0, :], v[..., 0, :]) < 1e-13


def test_backends_agree_with_explicit_tril_mask():
    q, k, v = make_qkv(2, 2, 150, 150, 8, dtype=torch.float64, seed=5)
    tril = torch.ones(150, 150, dtype=torch.bool).tril()
    masked = taylor_shift_attention(q, k, v, attn_mask=tril, backend="direct")
    for backend in BACKENDS:
        assert rel_err(taylor_shift_attention(q, k, v, is_causal=True, backend=backend), masked) < 1e-13


def _key_masks(B, H, S, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "key_padding_4d": torch.rand(B, 1, 1, S, generator=g) > 0.3,
        "key_padding_per_head": torch.rand(B, H, 1, S, generator=g) > 0.3,
        "key_1d": torch.rand(S, generator=g) > 0.5,
        "left_padding": torch.arange(S).expand(B, 1, 1, S) >= torch.tensor([0, 11]).view(B, 1, 1, 1),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
@pytest.mark.parametrize("mask_kind", ["key_padding_4d", "key_padding_per_head", "key_1d", "left_padding"])
def test_key_masks_with_causal(dtype, backend, mask_kind):
    B, H, N = 2, 3, 70
    q, k, v = make_qkv(B, H, N, N, 8, dtype=dtype, seed=11)
    mask = _key_masks(B, H, N, 5)[mask_kind]
    ref = taylor_shift_attention_reference(q, k, v, attn_mask=mask, is_causal=True)
    if backend == "auto":
        out = taylor_shift_attention(q, k, v, attn_mask=mask, is_causal=True)
    else:
        out = _run(backend, q, k, v, mask=mask, size=16)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= tolerance(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_general_mask_with_causal(dtype):
    """Query-dependent masks: direct (and auto) combine them with the causal mask; efficient refuses."""
    q, k, v = make_qkv(2, 3, 37, 50, 8, dtype=dtype, seed=12)
    mask = torch.rand(2, 1, 37, 50, generator=torch.Generator().manual_seed(2)) > 0.4
    ref = taylor_shift_attention_reference(q, k, v, attn_mask=mask, is_causal=True)
    for backend in ("direct", "auto"):
        out = taylor_shift_attention(q, k, v, attn_mask=mask, is_causal=True, backend=backend)
        assert rel_err(out, ref) <= tolerance(dtype)
    assert resolve_backend(q, k, v, mask, is_causal=True) == "direct"
    with pytest.raises(ValueError, match="key-padding"):
        taylor_shift_attention(q, k, v, attn_mask=mask, is_causal=True, backend="efficient")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("coefficients", [(1.0, 0.0, 0.1), (1.0, 2.0, 1.0), (2.0, -1.0, 0.5)])
def test_coefficients(backend, coefficients):
    q, k, v = make_qkv(1, 2, 45, 45, 6, dtype=torch.float64, seed=3)
    out = _run(backend, q, k, v, size=8, coefficients=coefficients)
    ref = taylor_shift_attention_reference(q, k, v, coefficients=coefficients, is_causal=True)
    assert rel_err(out, ref) <= tolerance(torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_and_empty(backend):
    for shape in [(), (3,), (2, 2, 3)]:
        g = torch.Generator().manual_seed(len(shape))
        q, k = (torch.randn(*shape, 10, 4, generator=g, dtype=torch.float64) for _ in range(2))
        v = torch.randn(*shape, 10, 5, generator=g, dtype=torch.float64)
        out = taylor_shift_attention(q, k, v, is_causal=True, backend=backend)
        assert out.shape == (*shape, 10, 5)
        assert rel_err(out, taylor_shift_attention_reference(q, k, v, is_causal=True)) < 1e-12
    q = torch.randn(1, 1, 3, 4)
    out = taylor_shift_attention(q, torch.randn(1, 1, 0, 4), torch.randn(1, 1, 0, 2), is_causal=True, backend=backend)
    assert out.shape == (1, 1, 3, 2) and (out == 0).all()
    out = taylor_shift_attention(q[..., :0, :], q, q, is_causal=True, backend=backend)
    assert out.shape == (1, 1, 0, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_without_visible_keys_are_zero_with_finite_gradients(backend):
    """The first keys padded (left padding): the first rows see nothing; a whole sequence padded."""
    B, H, N, d = 3, 2, 23, 4
    q, k, v = make_qkv(B, H, N, N, d, dtype=torch.float64, seed=12)
    keep = torch.ones(B, 1, 1, N, dtype=torch.bool)
    keep[0, ..., :9] = False  # rows 0..8 of sequence 0 see no key
    keep[1] = False  # sequence 1 sees nothing at all
    empty = ~(keep & torch.ones(N, N, dtype=torch.bool).tril()).expand(B, H, N, N).any(-1)
    up = torch.randn(B, H, N, d, dtype=torch.float64)

    def fn(q, k, v, s):
        return _run(backend, q, k, v, mask=keep, scale=s, size=5)

    out, grads = _grads(fn, q, k, v, torch.tensor(1.0, dtype=torch.float64), up)
    assert empty.sum() == 9 * H + N * H
    assert (out[empty] == 0).all() and torch.isfinite(out).all()
    for g in grads:
        assert torch.isfinite(g).all()
    # masked keys receive no gradient
    dk, dv = grads[1], grads[2]
    assert (dk[0, :, :9] == 0).all() and (dv[1] == 0).all()
    ref = taylor_shift_attention_reference(q, k, v, attn_mask=keep, scale=1.0, is_causal=True)
    assert rel_err(out, ref) < 1e-12
    # the two backends give the same zeros
    other = "direct" if backend == "efficient" else "efficient"
    assert torch.equal(_run(other, q, k, v, mask=keep, scale=1.0, size=7)[empty], out[empty])


# ------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("L,S", [(29, 29), (29, 41), (41, 29)])
def test_gradients_match_oracle(dtype, tol, backend, masked, L, S):
    B, H, d = 2, 3, 8
    q, k, v = make_qkv(B, H, L, S, d, dv=6, dtype=dtype, seed=4)
    scale = torch.tensor([0.5, 1.0, 2.5], dtype=dtype).view(H, 1, 1)
    mask = (torch.rand(B, 1, 1, S, generator=torch.Generator().manual_seed(9)) > 0.3) if masked else None
    up = torch.randn(B, H, L, 6, generator=torch.Generator().manual_seed(5), dtype=dtype)

    def fn(q, k, v, s):
        return _run(backend, q, k, v, mask=mask, scale=s, size=7)

    def ref(q, k, v, s):
        return taylor_shift_attention_reference(q, k, v, attn_mask=mask, scale=s, is_causal=True)

    _, g = _grads(fn, q, k, v, scale, up)
    _, g_ref = _grads(ref, q, k, v, scale, up.double())
    for name, a, b in zip(["dq", "dk", "dv", "dscale"], g, g_ref, strict=True):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= tol, (name, rel_err(a, b))


def test_gradients_of_the_public_op_with_default_chunking():
    # long enough for several default chunks
    N = 2 * default_causal_chunk_size(2, 4, 4) + 37
    q, k, v = make_qkv(1, 2, N, N, 4, dtype=torch.float64, seed=6)
    up = torch.randn(1, 2, N, 4, dtype=torch.float64)
    scale = torch.tensor(1.3, dtype=torch.float64)
    grads = {}
    for backend in BACKENDS:
        _, grads[backend] = _grads(
            lambda q, k, v, s, b=backend: taylor_shift_attention(q, k, v, is_causal=True, scale=s, backend=b),
            q, k, v, scale, up,
        )
    for a, b in zip(grads["direct"], grads["efficient"], strict=True):
        assert rel_err(a, b) < 1e-11


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("L,S", [(6, 6), (4, 7), (7, 4)])
def test_gradcheck(backend, masked, L, S):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, L, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 2, S, 3, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 2, S, 2, dtype=torch.float64, generator=g, requires_grad=True)
    scale = torch.tensor([0.8, 1.7], dtype=torch.float64).view(2, 1, 1).requires_grad_(True)
    mask = (torch.arange(S) % 3 != 1) if masked else None

    def fn(q, k, v, scale):
        return _run(backend, q, k, v, mask=mask, scale=scale, size=2)

    assert torch.autograd.gradcheck(fn, (q, k, v, scale))


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_is_a_clear_error(backend):
    q, k, v = (t.requires_grad_(True) for t in make_qkv(1, 1, 5, 5, 3, dtype=torch.float64))
    out = taylor_shift_attention(q, k, v, is_causal=True, backend=backend)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


def test_padding_invariance():
    """Appending padded keys at the end changes nothing for the valid rows (values and gradients)."""
    B, H, N, d, pad = 2, 2, 31, 8, 20
    q, k, v = make_qkv(B, H, N + pad, N + pad, d, dtype=torch.float64, seed=8)
    k[..., N:, :] *= 50
    v[..., N:, :] *= 1e3
    keep = torch.arange(N + pad) < N
    up = torch.randn(B, H, N + pad, d, dtype=torch.float64)
    up[..., N:, :] = 0
    for backend in BACKENDS:
        out_p, (dq_p, dk_p, dv_p) = _grads(
            lambda q, k, v, s, b=backend: _run(b, q, k, v, mask=keep, size=9), q, k, v, None, up
        )
        out, (dq, dk, dv) = _grads(
            lambda q, k, v, s, b=backend: _run(b, q, k, v, size=9),
            q[..., :N, :], k[..., :N, :], v[..., :N, :], None, up[..., :N, :],
        )
        for a, b in ((out_p[..., :N, :], out), (dq_p[..., :N, :], dq), (dk_p[..., :N, :], dk), (dv_p[..., :N, :], dv)):
            assert rel_err(a, b) < 1e-12
        assert (dk_p[..., N:, :] == 0).all() and (dv_p[..., N:, :] == 0).all()


# --------------------------------------------------------------------------------- long-context numerics


def _long_context(N, dtype):
    """Unit-norm q and k, temperatures 1 and 4: finite, and within the dtype's tolerance of the oracle on
    512 random rows plus the first and last."""
    d, H = 16, 2
    q, k, v = make_qkv(1, H, N, N, d, dtype=dtype, seed=2024, unit=True)
    scale = torch.tensor([1.0, 4.0], dtype=dtype).view(1, H, 1, 1)
    out = taylor_shift_attention(q, k, v, scale=scale, is_causal=True, backend="efficient")
    assert torch.isfinite(out).all()
    rows = torch.cat([torch.tensor([0, 1, N - 1]), torch.randperm(N, generator=torch.Generator().manual_seed(0))[:512]])
    ref = taylor_shift_attention_reference(q, k, v, scale=scale, rows=rows, is_causal=True)
    err = rel_err(out[..., rows, :], ref)
    assert err <= (1e-6 if dtype == torch.float32 else tolerance(dtype)), err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_long_context_8k(dtype):
    _long_context(8192, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_long_context_64k(dtype):
    _long_context(65_536, dtype)


# ------------------------------------------------------------------------------------ dispatch, errors


def test_auto_picks_by_the_causal_cost_model():
    q, k, v = make_qkv(1, 1, 20, 20, 16)
    assert resolve_backend(q, k, v, is_causal=True) == "direct"
    q, k, v = make_qkv(1, 1, 8192, 8192, 4)
    assert resolve_backend(q, k, v, is_causal=True) == "efficient"
    # causal moves the crossover up: direct does half the work, efficient adds its in-chunk part
    q, k, v = make_qkv(1, 1, 200, 200, 16)
    assert resolve_backend(q, k, v) == "efficient"
    assert resolve_backend(q, k, v, is_causal=True) == "direct"


def test_errors():
    q, k, v = make_qkv(1, 2, 5, 5, 4)
    with pytest.raises(TypeError, match="is_causal"):
        taylor_shift_attention(q, k, v, is_causal="yes")
    with pytest.raises(TypeError, match="is_causal"):
        taylor_shift_attention(q, k, v, is_causal=1)
    with pytest.raises(TypeError, match="is_causal"):
        resolve_backend(q, k, v, is_causal=None)
    inp = check_inputs(q, k, v)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            causal_efficient_attention(inp, chunk_size=bad)
    with pytest.raises(ValueError, match="form"):
        causal_efficient_attention(inp, form="half")
    # the usual input validation still applies
    with pytest.raises(ValueError, match="attn_mask"):
        taylor_shift_attention(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool), is_causal=True)
    with pytest.raises(TypeError, match="attn_mask"):
        taylor_shift_attention(q, k, v, attn_mask=torch.zeros(5, 5), is_causal=True)

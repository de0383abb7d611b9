"""Gradients of both backends against the oracle, gradcheck, padding invariance and empty rows."""

from __future__ import annotations

import pytest
import torch

from conftest import make_qkv, rel_err
from taylorshift import taylor_shift_attention, taylor_shift_attention_reference

BACKENDS = ["direct", "efficient"]


def _grads(fn, q, k, v, scale, upstream, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    s = scale.detach().clone().requires_grad_(True) if isinstance(scale, torch.Tensor) else scale
    out = fn(*leaves, scale=s, **kw)
    out.backward(upstream)
    grads = [t.grad for t in leaves]
    if isinstance(s, torch.Tensor):
        grads.append(s.grad)
    return out.detach(), grads


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("tensor_scale", [False, True])
def test_gradients_match_oracle(dtype, tol, backend, masked, tensor_scale):
    B, H, L, S, d = 2, 3, 29, 41, 8
    q, k, v = make_qkv(B, H, L, S, d, dv=6, dtype=dtype, seed=4)
    scale = torch.tensor([0.5, 1.0, 2.5], dtype=dtype).view(H, 1, 1) if tensor_scale else 0.7
    mask = (torch.rand(B, 1, 1, S, generator=torch.Generator().manual_seed(9)) > 0.3) if masked else None
    upstream = torch.randn(B, H, L, 6, generator=torch.Generator().manual_seed(5), dtype=dtype)
    _, g = _grads(taylor_shift_attention, q, k, v, scale, upstream, attn_mask=mask, backend=backend)
    _, g_ref = _grads(taylor_shift_attention_reference, q, k, v, scale, upstream.double(), attn_mask=mask)
    assert len(g) == len(g_ref) == (4 if tensor_scale else 3)
    for name, a, b in zip(["dq", "dk", "dv", "dscale"], g, g_ref, strict=False):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= tol, (name, rel_err(a, b))


def test_gradients_equal_across_backends_general_shapes():
    q, k, v = make_qkv(1, 2, 70, 33, 4, dv=3, dtype=torch.float64, seed=6)
    up = torch.randn(1, 2, 70, 3, dtype=torch.float64)
    scale = torch.tensor(1.3, dtype=torch.float64)
    _, gd = _grads(taylor_shift_attention, q, k, v, scale, up, backend="direct", coefficients=(1.0, 0.5, 0.3))
    _, ge = _grads(taylor_shift_attention, q, k, v, scale, up, backend="efficient", coefficients=(1.0, 0.5, 0.3))
    for a, b in zip(gd, ge, strict=True):
        assert rel_err(a, b) < 1e-11


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(backend, masked):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 5, 2, dtype=torch.float64, generator=g, requires_grad=True)
    scale = torch.tensor([0.8, 1.7], dtype=torch.float64).view(2, 1, 1).requires_grad_(True)
    mask = torch.tensor([True, False, True, True, False]) if masked else None

    def fn(q, k, v, scale):
        return taylor_shift_attention(q, k, v, attn_mask=mask, scale=scale, backend=backend)

    assert torch.autograd.gradcheck(fn, (q, k, v, scale))


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_is_a_clear_error(backend):
    q, k, v = (t.requires_grad_(True) for t in make_qkv(1, 1, 5, 6, 3, dtype=torch.float64))
    out = taylor_shift_attention(q, k, v, backend=backend)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_padding_invariance(backend, dtype, tol):
    """Appending masked keys/values changes neither the output nor the gradients of the valid part."""
    B, H, L, S, d, pad = 2, 2, 17, 23, 8, 40
    q, k, v = make_qkv(B, H, L, S, d, dtype=dtype, seed=8)
    g = torch.Generator().manual_seed(1)
    k_pad = torch.cat([k, 50 * torch.randn(B, H, pad, d, generator=g, dtype=dtype)], dim=-2)
    v_pad = torch.cat([v, 1e3 * torch.randn(B, H, pad, d, generator=g, dtype=dtype)], dim=-2)
    mask = torch.zeros(B, 1, 1, S + pad, dtype=torch.bool)
    mask[..., :S] = True
    up = torch.randn(B, H, L, d, generator=g, dtype=dtype)

    out, (dq, dk, dv) = _grads(taylor_shift_attention, q, k, v, 1.0, up, backend=backend)
    out_p, (dq_p, dk_p, dv_p) = _grads(
        taylor_shift_attention, q, k_pad, v_pad, 1.0, up, attn_mask=mask, backend=backend
    )
    assert rel_err(out_p, out) <= tol
    assert rel_err(dq_p, dq) <= tol
    assert rel_err(dk_p[..., :S, :], dk) <= tol
    assert rel_err(dv_p[..., :S, :], dv) <= tol
    # padded positions receive no gradient
    assert (dk_p[..., S:, :] == 0).all() and (dv_p[..., S:, :] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_are_zero_with_finite_gradients(backend):
    B, H, L, S, d = 2, 2, 5, 7, 4
    q, k, v = make_qkv(B, H, L, S, d, dtype=torch.float64, seed=12)
    if backend == "direct":
        mask = torch.ones(B, H, L, S, dtype=torch.bool)
        mask[0, 1, 2] = False  # one query row sees nothing
        mask[1] = False  # a whole sequence sees nothing
        empty = ~mask.any(-1)
    else:
        mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
        mask[1] = False  # all keys of sequence 1 padded
        empty = ~mask.expand(B, H, L, S).any(-1)
    up = torch.randn(B, H, L, d, dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)
    out, grads = _grads(taylor_shift_attention, q, k, v, one, up, attn_mask=mask, backend=backend)
    assert (out[empty] == 0).all()
    assert torch.isfinite(out).all()
    for gr in grads:
        assert torch.isfinite(gr).all()
    ref = taylor_shift_attention_reference(q, k, v, attn_mask=mask, scale=1.0)
    assert rel_err(out, ref) < 1e-12

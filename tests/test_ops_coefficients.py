"""The weight polynomial: one home (taylorshift.ops.polynomial), and coefficients of any overall size.

The attention ``Σ p(s) v / Σ p(s)`` does not change when ``(a, b, c)`` is multiplied by a positive number, so
tiny or huge coefficients must give the same result as moderate ones; a coefficient whose ratio to the largest
one the compute dtype cannot carry is rejected with a clear message instead of silently becoming 0.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_qkv, rel_err, tolerance
from taylorshift import TaylorShiftAttention, taylor_shift_attention, taylor_shift_attention_reference
from taylorshift.ops import TaylorShiftState

PATHS = [("direct", False), ("efficient", False), ("direct", True), ("efficient", True)]
IDS = ["direct", "efficient", "direct-causal", "efficient-causal"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("factor", [1e-300, 1e-30, 1e30, 1e300])
@pytest.mark.parametrize("backend,causal", PATHS, ids=IDS)
def test_overall_size_of_the_coefficients_does_not_matter(backend, causal, factor, dtype):
    q, k, v = make_qkv(2, 2, 19, 19, 4, dtype=dtype, seed=2)
    base = (0.5, 1.0, 0.75)
    scaled = tuple(factor * x for x in base)
    ref = taylor_shift_attention_reference(q, k, v, coefficients=base, is_causal=causal)
    ref_scaled = taylor_shift_attention_reference(q, k, v, coefficients=scaled, is_causal=causal)
    assert rel_err(ref_scaled, ref) < 1e-13
    out = taylor_shift_attention(q, k, v, coefficients=scaled, is_causal=causal, backend=backend)
    assert rel_err(out, ref) < tolerance(dtype), (backend, causal, factor)


@pytest.mark.parametrize("backend", ["direct", "efficient"])
def test_tiny_pure_quadratic_in_float32(backend):
    q, k, v = make_qkv(1, 1, 4, 4, 3)
    out = taylor_shift_attention(q, k, v, coefficients=(1e-300, 0.0, 0.0), backend=backend)
    ref = taylor_shift_attention_reference(q, k, v, coefficients=(1.0, 0.0, 0.0))
    assert rel_err(out, ref) < 1e-5 and (out != 0).any()


def test_huge_tight_polynomial_is_accepted():
    """(1e300, 2e300, 1e300) = 1e300·(x + 1)²: valid, although b² overflows a float."""
    q, k, v = make_qkv(1, 2, 9, 9, 4, dtype=torch.float64)
    ref = taylor_shift_attention_reference(q, k, v, coefficients=(1.0, 2.0, 1.0))
    for backend in ("direct", "efficient"):
        out = taylor_shift_attention(q, k, v, coefficients=(1e300, 2e300, 1e300), backend=backend)
        assert rel_err(out, ref) < 1e-12


def test_module_and_decoding_state_accept_any_size():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16)
    ref = TaylorShiftAttention(16, 2, causal=True, coefficients=(0.5, 1.0, 1.0)).eval()
    big = TaylorShiftAttention(16, 2, causal=True, coefficients=(0.5e300, 1e300, 1e300)).eval()
    big.load_state_dict(ref.state_dict())
    assert big.coefficients == (0.5e300, 1e300, 1e300), "the module keeps what the user passed"
    with torch.no_grad():
        assert rel_err(big(x), ref(x)) < 1e-6
        cache = big.new_cache(2)
        y = torch.cat([big.prefill(x[:, :4], cache)] + [big.step(x[:, t : t + 1], cache) for t in range(4, 9)], 1)
    assert rel_err(y, ref(x)) < 1e-5
    q, k, v = make_qkv(1, 1, 5, 5, 3, dtype=torch.float64)
    state = TaylorShiftState((1, 1), 3, coefficients=(1e-300, 0.0, 1e-300), dtype=torch.float64)
    expect = taylor_shift_attention_reference(q, k, v, coefficients=(1.0, 0.0, 1.0), is_causal=True)
    assert rel_err(state.prefill(q, k, v), expect) < 1e-12


@pytest.mark.parametrize("backend", ["direct", "efficient", "reference"])
def test_a_ratio_the_dtype_cannot_carry_is_a_clear_error(backend):
    """(1, 0, 5e-324): c/a is below the smallest normal float64; with scale 0 every weight would be c."""
    q, k, v = make_qkv(1, 1, 4, 4, 3, dtype=torch.float64)

    def run(coefficients, dtype):
        args = [t.to(dtype) for t in (q, k, v)]
        if backend == "reference":
            return taylor_shift_attention_reference(*args, scale=0.0, coefficients=coefficients)
        return taylor_shift_attention(*args, scale=0.0, coefficients=coefficients, backend=backend)

    with pytest.raises(ValueError, match=r"coefficients: c/max\(\|a\|, \|b\|, c\) = 5e-324.*float64"):
        run((1.0, 0.0, 5e-324), torch.float64)
    if backend != "reference":  # the reference always computes in float64
        with pytest.raises(ValueError, match=r"coefficients: c/max.*float32"):
            run((1.0, 0.0, 1e-40), torch.float32)
    out = run((1.0, 0.0, 1e-40), torch.float64)  # representable in float64: all weights equal, the mean of v
    assert rel_err(out, v.mean(-2, keepdim=True).expand_as(out)) < 1e-12
    with pytest.raises(ValueError, match="coefficients"):
        TaylorShiftState((1,), 3, coefficients=(1.0, 0.0, 1e-40), dtype=torch.float32)


def test_the_polynomial_has_one_home():
    import taylorshift.ops as ops
    from taylorshift.analysis import num_features
    from taylorshift.ops import features, inputs, polynomial

    assert ops.DEFAULT_COEFFICIENTS is polynomial.DEFAULT_COEFFICIENTS is inputs.DEFAULT_COEFFICIENTS
    assert ops.check_coefficients is polynomial.check_coefficients is inputs.check_coefficients
    assert features.feature_weights is polynomial.feature_weights
    for d in (1, 2, 7, 64):
        for form in ("full", "symmetric"):
            assert ops.feature_dim(d, form) == num_features(d, form)
    s = torch.linspace(-3, 3, 13, dtype=torch.float64)
    a, b, c = 0.7, -0.4, 0.2
    assert torch.equal(polynomial.evaluate(s, (a, b, c)), (a * s + b) * s + c)
    assert torch.equal(polynomial.derivative(s, (a, b, c)), 2 * a * s + b)


@pytest.mark.parametrize("coefficients", [(0.5, 1.0, 1.0), (1.0, 2.0, 1.0), (0.25, -0.3, 2.0), (1e-9, 1.0, 3e8)])
@pytest.mark.parametrize("mask_kind", ["none", "keys", "rows", "causal"])
def test_direct_forward_completed_square_matches_the_oracle(coefficients, mask_kind):
    """The direct forward's completed square ``p(s)/a = (s + m)² + r`` (r folded into the small product for
    no mask or key-only masks; added to the weights otherwise) gives the oracle's function; coefficients whose
    m or r are too large for it take the plain evaluation (the last case)."""
    from taylorshift.ops.direct import completed_square

    assert (completed_square(coefficients) is None) == (coefficients[0] == 1e-9)
    q, k, v = make_qkv(2, 3, 40, 40, 8, dtype=torch.float64, seed=7, unit=True)
    mask, causal = None, mask_kind == "causal"
    if mask_kind == "keys":
        mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
        mask[0, ..., 25:] = False
        mask[1, ..., :3] = False
    elif mask_kind == "rows":
        mask = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(1)) > 0.3
        mask[1, 0, 5] = False  # a row without keys: 0 output
    grads = []
    for fn, kw in ((taylor_shift_attention, {"backend": "direct"}), (taylor_shift_attention_reference, {})):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = fn(qq, kk, vv, attn_mask=mask, is_causal=causal, coefficients=coefficients, scale=2.0, **kw)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out))
        grads.append((out.detach(), qq.grad, kk.grad, vv.grad))
    for mine, ref in zip(*grads, strict=True):  # the output, then dq, dk, dv (the backward's own square)
        assert rel_err(mine, ref) < 1e-11

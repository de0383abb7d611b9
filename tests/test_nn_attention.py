"""TaylorShiftAttention: the paper's recipe, backend equivalence, every argument has an effect."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import rel_err
from taylorshift import TaylorShiftAttention, taylor_shift_attention_reference


def _module(seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("dim", 32)
    kw.setdefault("num_heads", 4)
    return TaylorShiftAttention(**kw).double()


def _x(B=2, N=19, C=32, seed=1):
    return torch.randn(B, N, C, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _padding(B=2, N=19):
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[0, 15:] = True
    pad[1, 7:] = True
    return pad


def test_matches_the_paper_formula():
    """Explicit recomputation: cosine logits times temperature, Taylor-softmax, √(N/d) output, projection."""
    m = _module(normalize_qk=True, output_scale=True)
    with torch.no_grad():
        m.temperature.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0]).view(4, 1, 1))
    x, pad = _x(), _padding()
    out = m.eval()(x, key_padding_mask=pad)
    B, N, H, d = 2, 19, 4, 8
    q, k, v = m.qkv(x).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    keep = (~pad)[:, None, None, :]
    att = taylor_shift_attention_reference(q, k, v, attn_mask=keep, scale=m.temperature)
    n_valid = (~pad).sum(-1).double().view(B, 1, 1, 1)
    att = att * torch.sqrt(n_valid / d)
    expected = m.proj(att.transpose(1, 2).reshape(B, N, H * d))
    assert rel_err(out, expected) < 1e-12


@pytest.mark.parametrize("normalize_qk", [True, False])
@pytest.mark.parametrize("output_scale", [True, False])
def test_backends_same_outputs_and_gradients(normalize_qk, output_scale):
    results = {}
    for backend in ("direct", "efficient", "auto"):
        m = _module(backend=backend, normalize_qk=normalize_qk, output_scale=output_scale)
        x = _x().requires_grad_(True)
        out = m(x, key_padding_mask=_padding())
        out.square().sum().backward()
        results[backend] = (out.detach(), x.grad, {n: p.grad for n, p in m.named_parameters()})
    ref_out, ref_dx, ref_dp = results["direct"]
    for backend in ("efficient", "auto"):
        out, dx, dp = results[backend]
        assert rel_err(out, ref_out) < 1e-12
        assert rel_err(dx, ref_dx) < 1e-11
        for name in ref_dp:
            assert rel_err(dp[name], ref_dp[name]) < 1e-10, name


def test_every_parameter_receives_a_gradient():
    m = _module(qkv_bias=True)
    m(_x(), key_padding_mask=_padding()).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_padding_invariance_of_the_module():
    m = _module(backend="efficient").eval()
    x = _x(B=1, N=12)
    x_pad = torch.cat([x, 100 * _x(B=1, N=9, seed=3)], dim=1)
    pad = torch.zeros(1, 21, dtype=torch.bool)
    pad[:, 12:] = True
    out = m(x)
    out_pad = m(x_pad, key_padding_mask=pad)
    assert rel_err(out_pad[:, :12], out) < 1e-12


@pytest.mark.parametrize(
    "kwargs",
    [
        {"coefficients": (1.0, 0.0, 0.2)},
        {"normalize_qk": False},
        {"output_scale": False},
        {"qkv_bias": False},
        {"head_dim": 16},
        {"num_heads": 2},
    ],
)
def test_every_constructor_argument_has_an_effect(kwargs):
    x = _x()
    base = _module()(x)
    if "qkv_bias" in kwargs:
        m = _module(**kwargs)
        assert m.qkv.bias is None
        return
    changed = _module(**kwargs)(x)
    assert changed.shape == base.shape
    assert rel_err(changed, base) > 1e-3


def test_coefficients_reach_the_op():
    x = _x()
    m1 = _module(coefficients=(0.5, 1.0, 1.0))
    m2 = _module(coefficients=(0.5, 1.0, 1.0))
    m2.coefficients = (2.0, 1.0, 1.0)
    assert rel_err(m2(x), m1(x)) > 1e-3


def test_attention_dropout_is_key_dropout_identical_across_backends():
    outs = {}
    for backend in ("direct", "efficient"):
        m = _module(backend=backend, attn_drop=0.5).train()
        torch.manual_seed(123)
        outs[backend] = m(_x())
    assert rel_err(outs["efficient"], outs["direct"]) < 1e-12
    m = _module(attn_drop=0.5)
    assert rel_err(m.train()(_x()), m.eval()(_x())) > 1e-3  # dropout active in training only
    torch.manual_seed(5)
    a = m.train()(_x())
    torch.manual_seed(6)
    b = m.train()(_x())
    assert rel_err(a, b) > 1e-3


def test_proj_drop_only_in_training():
    m = _module(proj_drop=0.5)
    x = _x()
    assert torch.equal(m.eval()(x), m.eval()(x))
    assert rel_err(m.train()(x), m.eval()(x)) > 1e-2


def test_output_scale_uses_valid_length():
    # one sequence padded, the other not: the padded one must be scaled by √(n_valid/d), not √(N/d)
    m = _module(output_scale=True).eval()
    x = _x(B=1, N=10)
    pad = torch.zeros(1, 16, dtype=torch.bool)
    pad[:, 10:] = True
    out_pad = m(torch.cat([x, _x(B=1, N=6, seed=9)], 1), key_padding_mask=pad)
    assert rel_err(out_pad[:, :10], m(x)) < 1e-12
    assert math.isclose(math.sqrt(10 / 8), math.sqrt(10 / m.head_dim))


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        ({"dim": 30, "num_heads": 4}, ValueError),
        ({"dim": 0}, ValueError),
        ({"head_dim": 0}, ValueError),
        ({"attn_drop": 1.0}, ValueError),
        ({"backend": "fastest"}, ValueError),
        ({"coefficients": (0.5, 2.0, 1.0)}, ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs, exc):
    kw = {"dim": 32, "num_heads": 4, **kwargs}
    with pytest.raises(exc):
        TaylorShiftAttention(**kw)


def test_bad_forward_arguments():
    m = _module()
    with pytest.raises(ValueError, match="x must"):
        m(torch.randn(2, 5, 31, dtype=torch.float64))
    with pytest.raises(TypeError, match="key_padding_mask"):
        m(_x(), key_padding_mask=torch.zeros(2, 19))
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(_x(), key_padding_mask=torch.zeros(2, 18, dtype=torch.bool))


def test_float32_and_half_inputs_run():
    torch.manual_seed(0)
    m = TaylorShiftAttention(32, 4, backend="efficient")
    x = torch.randn(2, 300, 32)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert torch.isfinite(out).all()
    assert rel_err(out.float(), ref) < 5e-2


def test_temperature_init_sets_every_head_and_is_checked():
    attn = TaylorShiftAttention(32, 4, temperature_init=4.0)
    assert torch.equal(attn.temperature.detach(), torch.full((4, 1, 1), 4.0))
    assert torch.equal(TaylorShiftAttention(32, 4).temperature.detach(), torch.ones(4, 1, 1))
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, "4"):
        with pytest.raises(ValueError, match="temperature_init"):
            TaylorShiftAttention(32, 4, temperature_init=bad)


def test_unit_qk_backward_matches_plain_ops_and_saves_no_raw_copy():
    """The training-time q/k normalisation (:class:`_UnitQK`) has the gradient of the plain operations (float64,
    including an all-zero row where the norm is clamped) and keeps only its output and the norms for the
    backward, not the raw projections."""
    from taylorshift.nn.attention import _unit_qk, _value_slot

    torch.manual_seed(0)
    t = torch.randn(2, 5, 3, 2, 4, dtype=torch.float64)
    t[0, 1, 0, 1] = 0.0  # a zero q row: clamped norm
    t[1, 2, 1, 0] *= 1e-3
    g = torch.randn_like(t)
    a = t.clone().requires_grad_(True)
    ya = _unit_qk(a)
    ya.backward(g)
    b = t.clone().requires_grad_(True)
    norms = torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp_min(1e-12)
    yb = b / torch.where(_value_slot(b.device), 1.0, norms)
    yb.backward(g)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(_unit_qk, (t[1:, :2].clone().requires_grad_(True),))  # away from the kink

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        _unit_qk(t.clone().requires_grad_(True))
    big = [x for x in saved if x.numel() == t.numel()]
    assert len(big) == 1, "only the normalized output is kept at full size"
    assert not torch.equal(big[0], t)


def test_module_training_memory_taylorshift_keeps_qkv_once_normalized():
    """What autograd keeps for one TaylorShift block's attention: no raw copy of the projections."""
    from taylorshift.nn.attention import TaylorShiftAttention

    torch.manual_seed(0)
    attn = TaylorShiftAttention(32, 4, backend="efficient")
    x = torch.randn(2, 64, 32, requires_grad=True)
    seen = {}
    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x)
    qkv_bytes = 2 * 64 * 3 * 32 * 4
    assert sum(seen.values()) < 4.5 * qkv_bytes, sum(seen.values()) / qkv_bytes

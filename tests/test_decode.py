"""Recurrent decoding: TaylorShiftState (ops) and TaylorShiftAttention(causal=True).new_cache/prefill/step.

Step-by-step decoding must equal the parallel causal computation, with the module's temperature,
normalize_qk scaling and the per-row output factor √(n_i/d)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_qkv, rel_err, tolerance
from taylorshift import TaylorShiftAttention, taylor_shift_attention, taylor_shift_attention_reference
from taylorshift.nn.attention import TaylorShiftCache
from taylorshift.ops.causal import TaylorShiftState, one_row_features
from taylorshift.ops.features import augmented_pairs, feature_dim, taylor_features

# ---------------------------------------------------------------------------------------- ops: the state


def _decode(state, q, k, v, splits, scale=None, mask=None):
    """Prefill the first ``splits[0]`` positions, then alternate: further prefills of the given lengths and
    single steps for the rest."""
    outs, t = [], 0
    for n in splits:
        m = None if mask is None else mask[..., t : t + n]
        outs.append(state.prefill(q[..., t : t + n, :], k[..., t : t + n, :], v[..., t : t + n, :], m, scale=scale))
        t += n
    for i in range(t, q.shape[-2]):
        outs.append(state.step(q[..., i : i + 1, :], k[..., i : i + 1, :], v[..., i : i + 1, :], scale=scale))
    return torch.cat(outs, dim=-2)


@pytest.mark.parametrize("splits", [[], [1], [10], [10, 7], [40], [13, 0, 27]])
@pytest.mark.parametrize("form", ["symmetric", "full"])
def test_state_equals_parallel_causal_float64(splits, form):
    B, H, N, d, dv = 2, 3, 40, 6, 5
    q, k, v = make_qkv(B, H, N, N, d, dv=dv, dtype=torch.float64, seed=len(splits))
    scale = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64).view(H, 1, 1)
    state = TaylorShiftState((B, H), d, dv, form=form, dtype=torch.float64, chunk_size=8)
    out = _decode(state, q, k, v, splits, scale=scale)
    ref = taylor_shift_attention_reference(q, k, v, scale=scale, is_causal=True)
    assert rel_err(out, ref) <= tolerance(torch.float64)
    assert state.length == N
    assert state.state.shape == (B, H, feature_dim(d, form), dv + 1)


@pytest.mark.parametrize("coefficients", [(0.5, 1.0, 1.0), (1.0, 0.0, 0.1), (2.0, -1.0, 0.5)])
def test_state_coefficients_and_default_scale(coefficients):
    q, k, v = make_qkv(1, 2, 25, 25, 4, dtype=torch.float64, seed=3)
    state = TaylorShiftState((1, 2), 4, coefficients=coefficients, dtype=torch.float64)
    out = _decode(state, q, k, v, [9])
    ref = taylor_shift_attention_reference(q, k, v, coefficients=coefficients, is_causal=True)  # scale 1/√d
    assert rel_err(out, ref) <= tolerance(torch.float64)


def test_state_prefill_with_left_padding():
    B, H, N, d = 2, 2, 30, 4
    q, k, v = make_qkv(B, H, N, N, d, dtype=torch.float64, seed=5)
    keep = torch.ones(B, 1, 1, N, dtype=torch.bool)
    keep[1, ..., :6] = False  # sequence 1 is left-padded by 6
    state = TaylorShiftState((B, H), d, dtype=torch.float64, chunk_size=4)
    out = _decode(state, q, k, v, [12], scale=0.8, mask=keep)
    ref = taylor_shift_attention_reference(q, k, v, attn_mask=keep, scale=0.8, is_causal=True)
    assert rel_err(out, ref) <= tolerance(torch.float64)
    assert (out[1, :, :6] == 0).all()  # padded rows see nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_state_low_precision(dtype):
    q, k, v = make_qkv(2, 2, 300, 300, 8, dtype=dtype, seed=7, unit=True)
    state = TaylorShiftState((2, 2), 8, dtype=dtype)
    assert state.state.dtype == torch.float32  # accumulated in float32
    out = _decode(state, q, k, v, [260], scale=2.0)
    assert out.dtype == dtype
    ref = taylor_shift_attention_reference(q, k, v, scale=2.0, is_causal=True)
    assert rel_err(out, ref) <= tolerance(dtype)
    parallel = taylor_shift_attention(q, k, v, scale=2.0, is_causal=True, backend="efficient")
    assert rel_err(out, parallel) <= tolerance(dtype)


def test_step_cost_does_not_grow_with_context():
    """The state has a fixed size and step never touches earlier positions: a step after a long prefill
    sees the context only through the state."""
    d, dv = 4, 3
    q, k, v = make_qkv(1, 1, 2001, 2001, d, dv=dv, dtype=torch.float64, seed=9)
    state = TaylorShiftState((1, 1), d, dv, dtype=torch.float64)
    shape, nbytes = state.state.shape, state.nbytes
    assert nbytes == feature_dim(d) * (dv + 1) * 8
    state.prefill(q[..., :2000, :], k[..., :2000, :], v[..., :2000, :])
    assert state.state.shape == shape and state.nbytes == nbytes and state.length == 2000
    # the same step from a state rebuilt out of the bare sums gives the same answer: nothing else is kept
    clone = TaylorShiftState((1, 1), d, dv, dtype=torch.float64)
    clone.state.copy_(state.state)
    clone.length = state.length
    args = (q[..., 2000:, :], k[..., 2000:, :], v[..., 2000:, :])
    y = state.step(*args)
    assert torch.equal(y, clone.step(*args))
    ref = taylor_shift_attention_reference(q, k, v, is_causal=True, rows=torch.tensor([2000]))
    assert rel_err(y, ref) < 1e-12
    state.reset()
    assert state.length == 0 and (state.state == 0).all()


def test_prefill_is_differentiable_step_is_not():
    q, k, v = (t.requires_grad_(True) for t in make_qkv(1, 2, 12, 12, 4, dtype=torch.float64, seed=1))
    state = TaylorShiftState((1, 2), 4, dtype=torch.float64, chunk_size=5)
    out = state.prefill(q, k, v)
    up = torch.randn_like(out)
    out.backward(up)
    ref = taylor_shift_attention_reference(q, k, v, is_causal=True)
    grads = torch.autograd.grad(ref, (q, k, v), up)
    for a, b in zip((q.grad, k.grad, v.grad), grads, strict=True):
        assert rel_err(a, b) < 1e-12
    assert not state.state.requires_grad
    y = state.step(q[..., :1, :], k[..., :1, :], v[..., :1, :])
    assert not y.requires_grad


def test_state_errors():
    with pytest.raises(ValueError, match="batch_shape"):
        TaylorShiftState((2, -1), 4)
    with pytest.raises(ValueError, match="head_dim"):
        TaylorShiftState((2,), 0)
    with pytest.raises(ValueError, match="value_dim"):
        TaylorShiftState((2,), 4, 0)
    with pytest.raises(TypeError, match="dtype"):
        TaylorShiftState((2,), 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="chunk_size"):
        TaylorShiftState((2,), 4, chunk_size=0)
    with pytest.raises(ValueError, match="coefficients"):
        TaylorShiftState((2,), 4, coefficients=(0.5, 2.0, 1.0))
    state = TaylorShiftState((2, 3), 4)
    q, k, v = make_qkv(2, 3, 5, 5, 4)
    with pytest.raises(ValueError, match="one position"):
        state.step(q, k, v)
    with pytest.raises(ValueError, match="batch dims"):
        state.prefill(q[:1], k[:1], v[:1])
    with pytest.raises(ValueError, match="head sizes"):
        state.prefill(q, k, v[..., :3])
    with pytest.raises(ValueError, match="positions"):
        state.prefill(q, k[..., :4, :], v[..., :4, :])
    with pytest.raises(ValueError, match="key mask"):
        state.prefill(q, k, v, torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask"):
        state.prefill(q, k, v, torch.ones(5))
    with pytest.raises(ValueError, match="scale"):
        state.prefill(q, k, v, scale=torch.ones(4, 1, 1))
    assert state.length == 0  # nothing was consumed by the failed calls


# --------------------------------------------------------------------------------------- the module


def _module(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    kw.setdefault("dim", 32)
    kw.setdefault("num_heads", 4)
    kw.setdefault("causal", True)
    m = TaylorShiftAttention(**kw).to(dtype).eval()
    if m.temperature is not None:
        with torch.no_grad():
            m.temperature.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0][: m.num_heads]).view(-1, 1, 1))
    return m


def _x(B=2, N=37, C=32, seed=1, dtype=torch.float64):
    return torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def test_causal_forward_matches_the_formula():
    """Cosine logits × temperature, causal Taylor-softmax, per-row factor √(n_i/d), projection."""
    m = _module()
    x = _x()
    pad = torch.zeros(2, 37, dtype=torch.bool)
    pad[1, :5] = True  # left padding
    pad[0, 30:] = True  # right padding
    B, N, H, d = 2, 37, 4, 8
    q, k, v = m.qkv(x).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    keep = (~pad)[:, None, None, :]
    att = taylor_shift_attention_reference(q, k, v, attn_mask=keep, scale=m.temperature, is_causal=True)
    n = (~pad).cumsum(-1).double().view(B, 1, N, 1)  # valid keys j <= i
    expected = m.proj((att * torch.sqrt(n / d)).transpose(1, 2).reshape(B, N, H * d))
    for backend in ("direct", "efficient", "auto"):
        m.backend = backend
        assert rel_err(m(x, key_padding_mask=pad), expected) < 1e-12
    # without padding n_i = i + 1
    att = taylor_shift_attention_reference(q, k, v, scale=m.temperature, is_causal=True)
    n = torch.arange(1, N + 1, dtype=torch.float64).view(1, 1, N, 1)
    expected = m.proj((att * torch.sqrt(n / d)).transpose(1, 2).reshape(B, N, H * d))
    assert rel_err(m(x), expected) < 1e-12


def test_causal_module_backends_same_outputs_and_gradients():
    results = {}
    for backend in ("direct", "efficient"):
        m = _module(backend=backend)
        x = _x().requires_grad_(True)
        out = m(x)
        out.square().sum().backward()
        results[backend] = (out.detach(), x.grad, {n: p.grad for n, p in m.named_parameters()})
    (o1, dx1, dp1), (o2, dx2, dp2) = results["direct"], results["efficient"]
    assert rel_err(o2, o1) < 1e-12 and rel_err(dx2, dx1) < 1e-11
    for name in dp1:
        assert rel_err(dp2[name], dp1[name]) < 1e-10, name


def test_causal_module_does_not_look_ahead():
    m = _module()
    x = _x()
    x2 = x.clone()
    x2[:, 20:] = torch.randn(2, 17, 32, dtype=torch.float64)
    assert rel_err(m(x2)[:, :20], m(x)[:, :20]) < 1e-13


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"normalize_qk": False}, {"output_scale": False}, {"coefficients": (1.0, 0.0, 0.2)}, {"head_dim": 12}],
)
@pytest.mark.parametrize("backend", ["direct", "efficient"])
def test_prefill_and_steps_equal_forward_float64(kwargs, backend):
    m = _module(backend=backend, **kwargs)
    x = _x()
    y = m(x)
    cache = m.new_cache(2)
    assert isinstance(cache, TaylorShiftCache) and cache.length == 0
    y0 = m.prefill(x[:, :11], cache)
    assert cache.length == 11
    y1 = m.prefill(x[:, 11:20], cache)  # chunked prefill continues the sequence
    ys = []
    for t in range(20, 37):
        ys.append(m.step(x[:, t : t + 1], cache))
        assert cache.length == t + 1
    assert rel_err(torch.cat([y0, y1, *ys], dim=1), y) < 1e-12
    assert cache.n_valid.tolist() == [37, 37]


def test_prefill_equals_forward_and_steps_float32():
    m = _module(dtype=torch.float32, dim=64, num_heads=4)
    x = _x(B=3, N=300, C=64, dtype=torch.float32)
    with torch.no_grad():
        y = m(x)
        cache = m.new_cache(3)
        assert cache.state.state.dtype == torch.float32
        y_pre = m.prefill(x[:, :250], cache)
        y_steps = torch.cat([m.step(x[:, t : t + 1], cache) for t in range(250, 300)], dim=1)
    assert rel_err(y_pre, y[:, :250]) <= tolerance(torch.float32)
    assert rel_err(y_steps, y[:, 250:]) <= tolerance(torch.float32)


def test_prefill_with_left_padding_equals_forward():
    m = _module()
    x = _x(N=30)
    pad = torch.zeros(2, 30, dtype=torch.bool)
    pad[1, :7] = True
    y = m(x, key_padding_mask=pad)
    cache = m.new_cache(2)
    y_pre = m.prefill(x[:, :20], cache, key_padding_mask=pad[:, :20])
    assert cache.n_valid.tolist() == [20, 13]
    y_steps = [m.step(x[:, t : t + 1], cache) for t in range(20, 30)]
    assert rel_err(torch.cat([y_pre, *y_steps], dim=1), y) < 1e-12
    assert cache.n_valid.tolist() == [30, 23] and cache.length == 30


def test_half_precision_module_decodes():
    m = _module(dtype=torch.bfloat16)
    x = _x(N=40, dtype=torch.bfloat16)
    cache = m.new_cache(2)
    assert cache.state.state.dtype == torch.float32
    with torch.no_grad():
        y = m(x)
        y_dec = torch.cat([m.prefill(x[:, :30], cache), *[m.step(x[:, t : t + 1], cache) for t in range(30, 40)]], 1)
    assert y_dec.dtype == torch.bfloat16 and torch.isfinite(y_dec).all()
    assert rel_err(y_dec, y) < 2e-2


def test_cache_reset_and_dtype_device_defaults():
    m = _module()
    cache = m.new_cache(2)
    assert cache.state.state.dtype == torch.float64 and cache.batch_size == 2
    cache32 = m.new_cache(1, device="cpu", dtype=torch.float32)
    assert cache32.state.state.dtype == torch.float32
    x = _x()
    nbytes = cache.nbytes
    a = m.prefill(x, cache)
    assert cache.nbytes == nbytes == 2 * 4 * feature_dim(8) * 9 * 8 + 2 * 8
    cache.reset()
    assert cache.length == 0 and cache.n_valid.tolist() == [0, 0]
    assert torch.equal(m.prefill(x, cache), a)


def test_decoding_errors():
    plain = _module(causal=False)
    x = _x()
    for call in (lambda: plain.new_cache(2), lambda: plain.prefill(x, None), lambda: plain.step(x[:, :1], None)):
        with pytest.raises(ValueError, match="causal=True"):
            call()
    m = _module()
    cache = m.new_cache(2)
    with pytest.raises(TypeError, match="new_cache"):
        m.prefill(x, object())
    with pytest.raises(ValueError, match="batch size"):
        m.prefill(x[:1], cache)
    with pytest.raises(ValueError, match=r"\(B, 1, 32\)"):
        m.step(x[:, :2], cache)
    with pytest.raises(ValueError, match="x must"):
        m.prefill(torch.randn(2, 5, 31, dtype=torch.float64), cache)
    with pytest.raises(ValueError, match="another module"):
        _module(num_heads=2).prefill(x, cache)
    with pytest.raises(ValueError, match="key_padding_mask"):
        m.prefill(x, cache, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            m.new_cache(bad)
    with pytest.raises(TypeError, match="causal"):
        TaylorShiftAttention(32, 4, causal="yes")
    assert cache.length == 0


# ------------------------------------------------------------------------------ the lean step path


@pytest.mark.parametrize("form", ["symmetric", "full"])
@pytest.mark.parametrize("d", [1, 2, 5, 16])
def test_augmented_pairs_give_the_features(form, d):
    """φ(x) is the upper triangle of [x | 1][x | 1]ᵀ: two gathers and a product give exactly taylor_features."""
    x = torch.randn(3, 2, 4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    x1 = torch.cat([x, torch.ones(3, 2, 4, 1, dtype=torch.float64)], dim=-1)
    phi = one_row_features(x1, augmented_pairs(d, form, x.device))
    assert torch.equal(phi, taylor_features(x, form).transpose(-1, -2))


def _general_step(m, x_t, cache):
    """The module step written with the general pieces: _project, TaylorShiftState.step, _output."""
    q, k, v, scale = m._project(x_t)
    out = cache.state.step(q, k, v, scale=scale)
    cache.n_valid += 1
    return m._output(out, cache.n_valid.view(-1, 1, 1, 1))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"normalize_qk": False}, {"output_scale": False}, {"coefficients": (1.0, 0.0, 0.2)}, {"head_dim": 12}],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_module_step_equals_the_general_path(kwargs, dtype):
    """The module's fused step (one tensor for the q, k, v rows of all heads, features by gathers, one fused
    update, one read-out) computes what the general pieces compute, state included."""
    m = _module(dtype=dtype, **kwargs)
    x = _x(N=30, dtype=dtype)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[1, :4] = True  # different counts per sequence
    fused, general = m.new_cache(2), m.new_cache(2)
    with torch.no_grad():
        for cache in (fused, general):
            m.prefill(x[:, :20], cache, key_padding_mask=pad)
        for t in range(20, 30):
            y = m.step(x[:, t : t + 1], fused)
            y_ref = _general_step(m, x[:, t : t + 1], general)
            assert y.dtype == dtype and y.shape == (2, 1, 32)
            assert rel_err(y, y_ref) <= {torch.float64: 1e-14, torch.float32: 1e-6}.get(dtype, 1e-2), t
    assert rel_err(fused.state.state, general.state.state) <= (1e-14 if dtype == torch.float64 else 1e-6)
    assert fused.length == general.length == 30 and torch.equal(fused.n_valid, general.n_valid)


def test_module_step_with_a_cache_of_another_dtype():
    """A float64 module decoding into a float32 state (new_cache(dtype=...)), and the reverse."""
    for module_dtype, cache_dtype in ((torch.float64, torch.float32), (torch.float32, torch.float64)):
        m = _module(dtype=module_dtype)
        x = _x(N=25, dtype=module_dtype)
        cache = m.new_cache(2, dtype=cache_dtype)
        assert cache.state.state.dtype == cache_dtype
        with torch.no_grad():
            y = torch.cat([m.prefill(x[:, :15], cache), *[m.step(x[:, t : t + 1], cache) for t in range(15, 25)]], 1)
            assert y.dtype == module_dtype
            assert rel_err(y, m(x)) < 1e-6


def test_module_step_runs_without_autograd():
    m = _module()
    cache = m.new_cache(2)
    y = m.step(_x(N=1).requires_grad_(True), cache)
    assert torch.is_grad_enabled() and not y.requires_grad


def _top_level_ops(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.cpu_parent is None)


def test_step_operation_count():
    """A step is ~80 kFLOP per block, so its cost is the number of tensor operations: the module step is about
    30 of them (72 before the fused path), TaylorShiftState.step 16 (48 before). Generous bounds: a regression
    guard, not an exact count (it depends on how torch records composite operations)."""
    m = _module(dtype=torch.float32)
    x = _x(N=3, dtype=torch.float32)
    cache = m.new_cache(2)
    with torch.inference_mode():
        m.prefill(x[:, :1], cache)
        m.step(x[:, 1:2], cache)  # the first step makes the constants
        assert _top_level_ops(lambda: m.step(x[:, 2:3], cache)) <= 36
    state = TaylorShiftState((2, 4), 8)
    q, k, v = make_qkv(2, 4, 1, 1, 8)
    with torch.inference_mode():
        assert _top_level_ops(lambda: state.step(q, k, v, scale=torch.ones(4, 1, 1))) <= 20


# ----------------------------------------------------------------------------------- long contexts


def _long_decode(N, steps):
    """Prefill N - steps positions in one call, then decode the rest token by token (float32, unit q/k,
    temperatures 1 and 4): within 1e-5 of the float64 oracle for both parts."""
    d, H = 16, 2
    q, k, v = make_qkv(1, H, N, N, d, dtype=torch.float32, seed=2024, unit=True)
    scale = torch.tensor([1.0, 4.0]).view(1, H, 1, 1)
    state = TaylorShiftState((1, H), d)
    P = N - steps
    out = _decode(state, q, k, v, [P], scale=scale)
    rows = torch.cat([torch.randperm(P, generator=torch.Generator().manual_seed(0))[:256], torch.arange(P, N)])
    ref = taylor_shift_attention_reference(q, k, v, scale=scale, rows=rows, is_causal=True)
    assert torch.isfinite(out).all()
    assert rel_err(out[..., rows[:256], :], ref[..., :256, :]) < 1e-6
    assert rel_err(out[..., P:, :], ref[..., 256:, :]) < 1e-5


def test_long_decode_8k():
    _long_decode(8192, 64)


@pytest.mark.slow
def test_long_decode_64k():
    _long_decode(65_536, 256)


@pytest.mark.slow
def test_many_steps_from_scratch():
    """8,192 single steps from an empty state (one float32 addition per token): error stays below 1e-5."""
    d, H, N = 16, 2, 8192
    q, k, v = make_qkv(1, H, N, N, d, dtype=torch.float32, seed=7, unit=True)
    state = TaylorShiftState((1, H), d)
    out = _decode(state, q, k, v, [], scale=4.0)
    rows = torch.arange(N - 256, N)
    ref = taylor_shift_attention_reference(q, k, v, scale=4.0, rows=rows, is_causal=True)
    assert rel_err(out[..., rows, :], ref) < 1e-5
    assert math.isfinite(out.abs().max().item())

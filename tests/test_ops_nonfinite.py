"""Non-finite inputs propagate, on every path alike; only rows without an attendable key give zeros.

The contract (README, "Non-finite inputs"): a row's output is non-finite when its query, the scale, or a key
or value that the row attends to is NaN or ±Inf, as in the float64 reference and in SDPA; a row with no
attendable key is exactly 0 whatever the inputs; every other row is finite and equals the reference. The
tests put the bad value where every path must see it (an attended position) and compare the pattern of
non-finite rows of every path with the pattern the contract gives and with the reference's.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_qkv, rel_err
from taylorshift import TaylorShiftAttention, taylor_shift_attention, taylor_shift_attention_reference
from taylorshift.ops import TaylorShiftState

NAN, INF = math.nan, math.inf
B, H, L, d = 2, 2, 23, 4  # L = 23 with chunk/block 8: the bad position sits inside a later chunk


def _paths(causal: bool):
    """Every way to compute the same attention: ``name -> fn(q, k, v, mask, scale)``."""

    def op(backend, **extra):
        def fn(q, k, v, mask, scale):
            return taylor_shift_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=causal, backend=backend)

        return fn

    def chunked(q, k, v, mask, scale):  # small chunks and blocks: the bad value is in a later chunk
        from taylorshift.ops.causal import causal_efficient_attention
        from taylorshift.ops.direct import direct_attention
        from taylorshift.ops.efficient import efficient_attention
        from taylorshift.ops.inputs import check_inputs

        inp = check_inputs(q, k, v, mask, scale).cast()
        if causal:
            return causal_efficient_attention(inp, chunk_size=8), direct_attention(inp, block_size=8, is_causal=True)
        return efficient_attention(inp, chunk_size=8), direct_attention(inp, block_size=8)

    paths = {
        "direct": op("direct"),
        "efficient": op("efficient"),
        "efficient chunk 8": lambda *a: chunked(*a)[0],
        "direct block 8": lambda *a: chunked(*a)[1],
    }
    if causal:

        def decode(q, k, v, mask, scale):  # prefill 10 positions, then one step per position
            state = TaylorShiftState((B, H), d, dtype=q.dtype, chunk_size=4)
            assert mask is None or mask[..., 10:].all(), "a step cannot mask its own key"
            first = state.prefill(q[..., :10, :], k[..., :10, :], v[..., :10, :], _head(mask, 10), scale)
            steps = [state.step(q[..., t : t + 1, :], k[..., t : t + 1, :], v[..., t : t + 1, :], scale)
                     for t in range(10, L)]  # fmt: skip
            return torch.cat([first, *steps], dim=-2)

        paths["decode (prefill + step)"] = decode
    return paths


def _head(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if mask is None else mask[..., :n]


def _expected_rows(where: str, pos: int, causal: bool, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, L)`` bools: the rows the contract says are non-finite for one bad entry at ``where``/``pos``, and
    the rows that have an attendable key."""
    rows = torch.arange(L)
    has_key = torch.ones(B, H, L, dtype=torch.bool)
    if mask is not None:
        seen = mask.expand(B, H, 1, L).cumsum(-1).gt(0).squeeze(-2) if causal else mask.expand(B, H, 1, L).any(-1)
        has_key = seen if causal else seen.expand(B, H, L)
    bad = torch.zeros(B, H, L, dtype=torch.bool)
    if where == "scale":  # the scale of head 1
        bad[:, 1] = True
    elif where == "q":  # one query of (sequence 0, head 1)
        bad[0, 1, pos] = True
    else:  # a key or value of (sequence 0, head 0) at an attended position: every row that sees it
        bad[0, 0] = rows >= pos if causal else True
    return bad & has_key, has_key


def _inputs(where: str, value: float, dtype: torch.dtype):
    q, k, v = make_qkv(B, H, L, L, d, dtype=dtype, seed=3)
    scale = torch.full((H, 1, 1), 0.8, dtype=dtype)
    pos = 13  # inside the second chunk of 8
    if where == "q":
        q[0, 1, pos, 2] = value
    elif where == "k":
        k[0, 0, pos, 0] = value
    elif where == "v":
        v[0, 0, pos, 3] = value
    else:
        scale[1] = value
    return q, k, v, scale, pos


def _check(out: torch.Tensor, expected_bad: torch.Tensor, ref: torch.Tensor, label: str) -> None:
    bad = ~torch.isfinite(out).all(-1)
    assert torch.equal(bad, expected_bad), f"{label}: non-finite rows {bad.nonzero().tolist()}"
    good = ~expected_bad
    assert rel_err(out[good], ref[good]) < 1e-4, label


# a bad value at a causally masked position is unspecified (0 · NaN, as in SDPA): causal "v" is tested below
CASES = [(c, w) for c in (False, True) for w in ("q", "k", "v", "scale") if not (c and w == "v")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("causal,where", CASES, ids=[f"{'causal' if c else 'full'}-{w}" for c, w in CASES])
def test_non_finite_inputs_propagate_on_every_path(causal, where, value, dtype):
    q, k, v, scale, pos = _inputs(where, value, dtype)
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    mask[1, ..., :10] = False  # causal: rows 0-9 of sequence 1 have no attendable key, so 0 whatever the inputs
    mask[0, ..., 3] = False
    expected, has_key = _expected_rows(where, pos, causal, mask)
    assert has_key.all() != causal
    ref = taylor_shift_attention_reference(q, k, v, attn_mask=mask, scale=scale, is_causal=causal)
    _check(ref, expected, ref, "reference")
    for name, fn in _paths(causal).items():
        out = fn(q, k, v, mask, scale)
        _check(out, expected, ref, name)
        assert (out[~has_key] == 0).all(), f"{name}: rows without an attendable key must be exactly 0"


@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "inf"])
def test_causal_bad_value_reaches_every_later_row(value):
    """The part of the v-contract that is specified under causality: every row that attends the bad value."""
    q, k, v, scale, pos = _inputs("v", value, torch.float64)
    for name, fn in _paths(True).items():
        out = fn(q, k, v, None, scale)
        assert not torch.isfinite(out[0, 0, pos:]).all(-1).any(), name
        assert torch.isfinite(out[:, 1]).all() and torch.isfinite(out[1]).all(), name


@pytest.mark.parametrize("backend", ["direct", "efficient"])
def test_nan_scale_is_nan_not_zero(backend):
    q, k, v = make_qkv(1, 2, 6, 6, 4)
    out = taylor_shift_attention(q, k, v, scale=torch.tensor(NAN), backend=backend)
    assert out.isnan().all()
    assert taylor_shift_attention_reference(q, k, v, scale=torch.tensor(NAN)).isnan().all()


@pytest.mark.parametrize("backend", ["direct", "efficient"])
@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_rows_stay_zero_with_finite_gradients(backend, causal):
    q, k, v = make_qkv(2, 1, 7, 7, 3, dtype=torch.float64, seed=1)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1] = False
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = taylor_shift_attention(*leaves, attn_mask=mask, is_causal=causal, backend=backend)
    assert (out[1] == 0).all() and torch.isfinite(out).all()
    out.square().sum().backward()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
        assert (t.grad[1] == 0).all()


@pytest.mark.parametrize("backend", ["direct", "efficient"])
def test_module_nan_input_gives_nan_not_the_bias(backend):
    torch.manual_seed(0)
    m = TaylorShiftAttention(8, 2, backend=backend)
    x = torch.randn(2, 5, 8)
    clean = m(x)
    x[0, 2, 3] = NAN
    y = m(x)
    assert y[0].isnan().all(), "every position of sequence 0 attends the NaN token"
    assert not torch.allclose(torch.nan_to_num(y[0]), m.proj.bias.expand(5, 8))
    assert torch.equal(y[1], clean[1]), "sequence 1 is untouched"
    loss = y.square().mean()
    assert loss.isnan(), "a NaN input must not give a finite loss"


def test_module_step_propagates_nan():
    torch.manual_seed(0)
    m = TaylorShiftAttention(8, 2, causal=True).eval()
    x = torch.randn(1, 6, 8)
    x[0, 3, 1] = NAN
    cache = m.new_cache(1)
    with torch.no_grad():
        ys = [m.step(x[:, t : t + 1], cache) for t in range(6)]
        parallel = m(x)
    y = torch.cat(ys, dim=1)
    assert torch.isfinite(y[0, :3]).all() and y[0, 3:].isnan().all()
    # the parallel form also reaches rows 0-2 through 0 · NaN in the product with the values (as SDPA does)
    assert parallel[0, 3:].isnan().all()

"""Property-based check: on random shapes, scales, coefficients and key masks, both backends agree
with each other and with the float64 oracle."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import rel_err
from taylorshift import taylor_shift_attention, taylor_shift_attention_reference


@st.composite
def problems(draw):
    batch = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    L, S = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    d, dv = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    a = draw(st.floats(0.05, 3.0))
    b = draw(st.floats(-2.0, 2.0))
    c = b * b / (4 * a) + draw(st.floats(0.0, 2.0))
    scale = draw(st.floats(-3.0, 3.0))
    mask_kind = draw(st.sampled_from(["none", "key", "general"]))
    return batch, L, S, d, dv, seed, (a, b, c), scale, mask_kind


@settings(max_examples=150, deadline=None)
@given(problems())
def test_backends_agree_on_random_problems(problem):
    batch, L, S, d, dv, seed, coefficients, scale, mask_kind = problem
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, L, d, generator=g, dtype=torch.float64)
    k = torch.randn(*batch, S, d, generator=g, dtype=torch.float64)
    v = torch.randn(*batch, S, dv, generator=g, dtype=torch.float64)
    mask = None
    if mask_kind == "key":
        mask = torch.rand(*batch, 1, S, generator=g) > 0.4
    elif mask_kind == "general":
        mask = torch.rand(*batch, L, S, generator=g) > 0.4
    kw = dict(attn_mask=mask, scale=scale, coefficients=coefficients)
    ref = taylor_shift_attention_reference(q, k, v, **kw)
    direct = taylor_shift_attention(q, k, v, backend="direct", **kw)
    assert rel_err(direct, ref) < 1e-10
    auto = taylor_shift_attention(q, k, v, backend="auto", **kw)
    assert rel_err(auto, ref) < 1e-10
    if mask_kind != "general":
        efficient = taylor_shift_attention(q, k, v, backend="efficient", **kw)
        assert rel_err(efficient, ref) < 1e-9
        assert rel_err(efficient, direct) < 1e-9

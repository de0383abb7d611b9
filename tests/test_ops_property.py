"""Property-based check: on random shapes, scales, coefficients and key masks, both backends agree
with each other and with the float64 oracle.

Runs under the hypothesis profile loaded in ``tests/conftest.py``: ``ci`` (the default: derandomised, so every
run checks the same examples) or, with ``HYPOTHESIS_PROFILE=explore``, fresh random examples and more of them.
"""

from __future__ import annotations

import os

import pytest
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
    causal = draw(st.booleans())
    return batch, L, S, d, dv, seed, (a, b, c), scale, mask_kind, causal


def _agree(out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Same rows non-finite (a row whose weights are all exactly 0 is 0/0), the rest within ``tol``."""
    bad = ~torch.isfinite(ref)
    assert torch.equal(~torch.isfinite(out), bad)
    assert rel_err(out[~bad], ref[~bad]) < tol


@given(problems())
def test_backends_agree_on_random_problems(problem):
    batch, L, S, d, dv, seed, coefficients, scale, mask_kind, causal = problem
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, L, d, generator=g, dtype=torch.float64)
    k = torch.randn(*batch, S, d, generator=g, dtype=torch.float64)
    v = torch.randn(*batch, S, dv, generator=g, dtype=torch.float64)
    mask = None
    if mask_kind == "key":
        mask = torch.rand(*batch, 1, S, generator=g) > 0.4
    elif mask_kind == "general":
        mask = torch.rand(*batch, L, S, generator=g) > 0.4
    kw = dict(attn_mask=mask, scale=scale, coefficients=coefficients, is_causal=causal)
    try:
        ref = taylor_shift_attention_reference(q, k, v, **kw)
    except ValueError as err:  # a coefficient ratio float64 cannot carry: every path says so
        assert "coefficients" in str(err)
        for backend in ("direct", "efficient", "auto"):
            with pytest.raises(ValueError, match="coefficients"):
                taylor_shift_attention(q, k, v, backend=backend, **kw)
        return
    direct = taylor_shift_attention(q, k, v, backend="direct", **kw)
    _agree(direct, ref, 1e-10)
    auto = taylor_shift_attention(q, k, v, backend="auto", **kw)
    _agree(auto, ref, 1e-10)
    if mask_kind != "general":
        efficient = taylor_shift_attention(q, k, v, backend="efficient", **kw)
        _agree(efficient, ref, 1e-9)
        _agree(efficient, direct, 1e-9)


def test_the_ci_profile_is_deterministic():
    """CI runs the same examples every time (a failure there is reproducible, never luck); exploratory runs opt in."""
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.print_blob and ci.deadline is None and ci.database is None
    assert settings.get_profile("explore").max_examples > ci.max_examples
    assert not settings.get_profile("explore").derandomize
    assert settings.get_current_profile_name() == os.environ.get("HYPOTHESIS_PROFILE", "ci")

"""``taylor_shift_causal`` and ``CausalState``: the recurrent causal op with its state in the signature.

Whatever the split of a sequence into calls (each passing its final state to the next), the concatenated outputs
equal one causal call over the whole sequence: the float64 oracle to 1e-12, the parallel op in float32 and half
precision to the dtype's tolerance; gradients flow through the outputs and through the states.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_qkv, rel_err, tolerance
from taylorshift import CausalState, taylor_shift_attention, taylor_shift_attention_reference, taylor_shift_causal
from taylorshift.ops import feature_dim


def _run(q, k, v, cuts, *, padding=None, state=None, **kw):
    """The op over the pieces ``[0, cuts[0]), [cuts[0], cuts[1]), …`` of the sequence, each continuing the last
    one's state; returns the concatenated outputs and the final state."""
    outs, t = [], 0
    for end in [*cuts, q.shape[-2]]:
        pad = None if padding is None else padding[..., t:end]
        out, state = taylor_shift_causal(
            q[..., t:end, :],
            k[..., t:end, :],
            v[..., t:end, :],
            initial_state=state,
            output_final_state=True,
            key_padding_mask=pad,
            **kw,
        )
        outs.append(out)
        t = end
    return torch.cat(outs, dim=-2), state


def _oracle(q, k, v, padding=None, **kw):
    keep = None if padding is None else (~padding).unsqueeze(-2)  # (..., 1, L)
    return taylor_shift_attention_reference(q, k, v, attn_mask=keep, is_causal=True, **kw)


@st.composite
def splits(draw):
    batch = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    L = draw(st.integers(1, 48))
    d, dv = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    cuts = sorted(draw(st.lists(st.integers(0, L), max_size=6)))  # repeated cuts: calls with L = 0
    singles = draw(st.booleans())  # end with single-token steps (the O(F·dv) update)
    if singles:
        start = cuts[-1] if cuts else 0
        cuts = cuts + list(range(start + 1, L))
    scale = draw(st.sampled_from(["default", "float", "per-head"]))
    coefficients = draw(st.sampled_from([(0.5, 1.0, 1.0), (1.0, 0.0, 0.2), (2.0, -1.0, 0.5)]))
    padding = draw(st.sampled_from(["none", "random", "left"]))
    chunk = draw(st.sampled_from([None, 1, 3, 8]))
    seed = draw(st.integers(0, 2**31 - 1))
    return batch, L, d, dv, cuts, scale, coefficients, padding, chunk, seed


@given(splits())
def test_any_split_equals_the_oracle_float64(problem):
    batch, L, d, dv, cuts, scale_kind, coefficients, padding_kind, chunk, seed = problem
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, L, d, generator=g, dtype=torch.float64)
    k = torch.randn(*batch, L, d, generator=g, dtype=torch.float64)
    v = torch.randn(*batch, L, dv, generator=g, dtype=torch.float64)
    scale = {"default": None, "float": 0.7, "per-head": torch.rand(batch[-1], 1, 1, generator=g, dtype=torch.float64)}
    scale = scale[scale_kind] * 2 if scale_kind == "per-head" else scale[scale_kind]
    padding = None
    if padding_kind == "random":
        padding = torch.rand(*batch, L, generator=g) < 0.3
    elif padding_kind == "left":
        padding = torch.arange(L) < torch.randint(0, L + 1, (*batch, 1), generator=g)
    out, state = _run(q, k, v, cuts, padding=padding, scale=scale, coefficients=coefficients, chunk_size=chunk)
    ref = _oracle(q, k, v, padding, scale=scale, coefficients=coefficients)
    assert rel_err(out, ref) <= 1e-12
    assert state.length == L and state.batch_shape == tuple(batch)
    valid = L if padding is None else (~padding).sum(-1)
    assert torch.equal(state.n_keys, torch.as_tensor(valid).expand(*batch))
    if padding is not None:  # rows before the first valid key see nothing: exactly 0
        none_yet = (~padding).cumsum(-1) == 0
        assert (out[none_yet] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cuts", [[], [1], [100, 101, 102], [37, 64, 200]])
def test_low_precision_splits_equal_the_parallel_op(dtype, cuts):
    q, k, v = make_qkv(2, 3, 260, 260, 8, dtype=dtype, seed=len(cuts), unit=True)
    scale = torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1)
    out, state = _run(q, k, v, cuts, scale=scale)
    assert out.dtype == dtype and state.dtype == torch.float32
    parallel = taylor_shift_attention(q, k, v, is_causal=True, scale=scale)
    assert rel_err(out, _oracle(q, k, v, scale=scale)) <= tolerance(dtype)
    assert rel_err(out, parallel) <= 2 * tolerance(dtype)


def test_gradients_through_outputs_and_states_float64():
    """Truncated-BPTT style: three calls chained by their states, a loss on every output and on the final
    state's sums; the gradients of q, k, v equal those of one causal call (and of the sums' closed form)."""
    B, H, L, d, dv = 2, 2, 23, 4, 3
    q, k, v = (t.requires_grad_(True) for t in make_qkv(B, H, L, L, d, dv=dv, dtype=torch.float64, seed=4))
    padding = torch.zeros(B, 1, L, dtype=torch.bool)
    padding[1, :, :3] = True
    out, state = _run(q, k, v, [5, 6, 15], padding=padding, scale=0.9, chunk_size=4)
    up = torch.randn_like(out)
    up_state = torch.randn_like(state.sums)
    grads = torch.autograd.grad((out * up).sum() + (state.sums * up_state).sum(), (q, k, v))
    from taylorshift.ops import taylor_features

    ref = _oracle(q, k, v, padding, scale=0.9)
    keep = (~padding).unsqueeze(-1).double()  # (B, 1, L, 1)
    sums = taylor_features(k.detach(), "symmetric")  # closed form of the state, differentiable by hand below
    assert torch.allclose(state.sums, sums @ (torch.cat([v, torch.ones_like(v[..., :1])], -1) * keep), rtol=1e-12)
    # the state's gradient, written with autograd-friendly features: φ(k) = [k_i k_j (i <= j), k, 1]
    i, j = torch.triu_indices(d, d)
    phi = torch.cat([k[..., i] * k[..., j], k, torch.ones_like(k[..., :1])], -1)  # (B, H, L, F)
    closed = phi.mT @ (torch.cat([v, torch.ones_like(v[..., :1])], -1) * keep)
    expected = torch.autograd.grad((ref * up).sum() + (closed * up_state).sum(), (q, k, v))
    for got, exp in zip(grads, expected, strict=True):
        assert rel_err(got, exp) < 1e-11


def test_gradient_into_the_initial_state_gradcheck():
    B, L, d, dv = 2, 5, 2, 2
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, L, n, generator=g, dtype=torch.float64, requires_grad=True) for n in (d, d, dv))
    prefix = CausalState.zeros((B,), d, dv, dtype=torch.float64)
    _, prefix = taylor_shift_causal(
        *(torch.randn(B, 4, n, generator=g, dtype=torch.float64) for n in (d, d, dv)), output_final_state=True
    )
    sums0 = prefix.sums.clone().requires_grad_(True)

    def f(q, k, v, sums0):
        out, state = taylor_shift_causal(
            q, k, v, initial_state=CausalState(sums0, prefix.n_keys, 4), output_final_state=True, chunk_size=2
        )
        return out, state.sums

    assert torch.autograd.gradcheck(f, (q, k, v, sums0))
    # and through a single step with gradients (it takes the chunked path then)
    assert torch.autograd.gradcheck(f, (q[:, :1].detach().requires_grad_(), k[:, :1], v[:, :1], sums0))


def test_single_step_update_equals_the_chunked_path():
    """L = 1 without gradients runs the O(F·dv) update; with gradients the chunked kernel: same numbers."""
    q, k, v = make_qkv(2, 3, 9, 9, 5, dv=4, dtype=torch.float64, seed=2)
    _, state = taylor_shift_causal(q[..., :8, :], k[..., :8, :], v[..., :8, :], output_final_state=True)
    last = (q[..., 8:, :], k[..., 8:, :], v[..., 8:, :])
    padding = torch.tensor([[False], [True]]).view(2, 1, 1)
    for pad in (None, padding):
        with torch.no_grad():
            fast, s1 = taylor_shift_causal(*last, initial_state=state, output_final_state=True, key_padding_mask=pad)
        slow, s2 = taylor_shift_causal(
            *(t.clone().requires_grad_(True) for t in last),
            initial_state=state,
            output_final_state=True,
            key_padding_mask=pad,
        )
        assert rel_err(fast, slow.detach()) < 1e-14 and rel_err(s1.sums, s2.sums.detach()) < 1e-14
        assert torch.equal(s1.n_keys, s2.n_keys) and s1.length == s2.length == 9
    assert s1.n_keys.tolist() == [[9, 9, 9], [8, 8, 8]]
    assert torch.equal(
        state.sums, taylor_shift_causal(q[..., :8, :], k[..., :8, :], v[..., :8, :], output_final_state=True)[1].sums
    )  # inputs are not modified


def test_state_object():
    s = CausalState.zeros((2, 3), 4, 5, dtype=torch.bfloat16)
    F = feature_dim(4)
    assert s.sums.shape == (2, 3, F, 6) and s.dtype == torch.float32 and s.n_keys.dtype == torch.int64
    assert (s.batch_shape, s.head_dim, s.value_dim, s.length, s.form) == ((2, 3), 4, 5, 0, "symmetric")
    assert s.nbytes == 2 * 3 * F * 6 * 4 + 2 * 3 * 8
    s64 = s.to(dtype=torch.float64)
    assert s64.dtype == torch.float64 and s64.n_keys.dtype == torch.int64 and s.dtype == torch.float32
    assert CausalState.zeros((1,), 3, form="full").head_dim == 3
    assert "head_dim=4" in repr(s)
    with pytest.raises(TypeError, match="float32 or float64"):
        s.to(dtype=torch.float16)
    with pytest.raises(TypeError, match="sums"):
        CausalState(torch.zeros(2, 15, 5, dtype=torch.float16), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="feature count"):
        CausalState(torch.zeros(2, 14, 5), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="n_keys"):
        CausalState(torch.zeros(2, 15, 5), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="length"):
        CausalState(torch.zeros(2, 15, 5), torch.zeros(2, dtype=torch.int64), -1)
    with pytest.raises(ValueError, match="head_dim"):
        CausalState.zeros((2,), 0)


def test_mismatched_state_and_bad_arguments():
    q, k, v = make_qkv(2, 3, 4, 4, 5, dv=6)
    state = CausalState.zeros((2, 3), 5, 6)
    cases = [
        (dict(initial_state=CausalState.zeros((2, 4), 5, 6)), ValueError, "batch dims"),
        (dict(initial_state=CausalState.zeros((2, 3), 4, 6)), ValueError, "head sizes"),
        (dict(initial_state=CausalState.zeros((2, 3), 5, 5)), ValueError, "head sizes"),
        (dict(initial_state=state.to(dtype=torch.float64)), TypeError, "initial_state.to"),
        (dict(initial_state=state.sums), TypeError, "CausalState"),
        (dict(output_final_state=1), TypeError, "output_final_state"),
        (dict(key_padding_mask=torch.zeros(2, 3, 4)), TypeError, "bool"),
        (dict(key_padding_mask=torch.zeros(2, 3, 5, dtype=torch.bool)), ValueError, "broadcastable"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(scale=torch.ones(4, 1, 1)), ValueError, "scale"),
    ]
    for kwargs, error, needle in cases:
        with pytest.raises(error, match=needle):
            taylor_shift_causal(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="positions"):
        taylor_shift_causal(q, k[..., :3, :], v[..., :3, :])
    # a float64 call continues a float64 state; half precision a float32 one
    out, s = taylor_shift_causal(
        q.double(), k.double(), v.double(), initial_state=state.to(dtype=torch.float64), output_final_state=True
    )
    assert out.dtype == torch.float64 and s.dtype == torch.float64
    out, s = taylor_shift_causal(q.half(), k.half(), v.half(), initial_state=state, output_final_state=True)
    assert out.dtype == torch.float16 and s.dtype == torch.float32 and s.length == 4
    assert taylor_shift_causal(q, k, v)[1] is None

"""Tracing and export: ``torch.export`` with a dynamic sequence length, ``torch.jit.trace``, and a clear word
about ``torch.jit.script``.

An exported program must give the eager result at lengths other than the example's (the ops switch to their
unblocked functional form while exporting, so no Python loop specialises the length).
"""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from conftest import make_qkv, rel_err
from taylorshift import TaylorShiftAttention, taylor_shift_attention
from taylorshift.models import create_model

N = Dim("N", min=2, max=1024)


class Op(torch.nn.Module):
    def __init__(self, backend: str, causal: bool) -> None:
        super().__init__()
        self.backend, self.causal = backend, causal

    def forward(self, q, k, v, mask=None):
        return taylor_shift_attention(q, k, v, attn_mask=mask, is_causal=self.causal, backend=self.backend)


def _args(n: int, masked: bool, seed: int = 0, dtype=torch.float32):
    q, k, v = make_qkv(2, 3, n, n, 4, dtype=dtype, seed=seed)
    if not masked:
        return (q, k, v)
    mask = torch.ones(2, 1, 1, n, dtype=torch.bool)
    mask[1, ..., n // 2 :] = False
    return (q, k, v, mask)


def _dynamic(masked: bool):
    return ({2: N}, {2: N}, {2: N}) + (({3: N},) if masked else ())


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "keymask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("backend", ["direct", "efficient", "auto"])
def test_op_exports_with_a_dynamic_length(backend, causal, masked):
    op = Op(backend, causal)
    program = export(op, _args(16, masked), dynamic_shapes=_dynamic(masked))
    for n in (7, 45):  # two lengths other than the example's
        args = _args(n, masked, seed=n)
        assert rel_err(program.module()(*args), op(*args)) < 1e-6, n


@pytest.mark.parametrize("backend", ["direct", "efficient"])
def test_export_with_inputs_that_require_grad(backend):
    op = Op(backend, False)
    args = tuple(t.requires_grad_(True) if t.is_floating_point() else t for t in _args(16, True))
    program = export(op, args, dynamic_shapes=_dynamic(True))
    test = _args(30, True, seed=1)
    assert rel_err(program.module()(*test), op(*test)) < 1e-6


def test_auto_under_a_symbolic_length_uses_the_example_length():
    """Documented decision: ``auto`` resolves once, from the example's length, and the program keeps that
    backend at every length (both backends compute the same function, so only the speed depends on it)."""
    from taylorshift import resolve_backend

    small, large = _args(8, False), make_qkv(1, 1, 300, 300, 2)
    assert resolve_backend(*small) == "direct" and resolve_backend(*large) == "efficient"
    for example in (small, large):
        program = export(Op("auto", False), example, dynamic_shapes=_dynamic(False))
        args = make_qkv(*example[0].shape[:2], 50, 50, example[0].shape[-1], seed=4)
        assert rel_err(program.module()(*args), taylor_shift_attention(*args)) < 1e-6


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("backend", ["direct", "efficient"])
def test_module_exports_with_a_dynamic_length(backend, causal):
    torch.manual_seed(0)
    m = TaylorShiftAttention(16, 2, backend=backend, causal=causal).eval()
    x, pad = torch.randn(2, 12, 16), torch.zeros(2, 12, dtype=torch.bool)
    pad[1, 8:] = True
    program = export(m, (x, pad), dynamic_shapes=({1: N}, {1: N}))
    for n in (5, 33):
        x, pad = torch.randn(2, n, 16), torch.zeros(2, n, dtype=torch.bool)
        pad[0, n - 2 :] = True
        assert rel_err(program.module()(x, pad), m(x, pad)) < 1e-6, n


@pytest.mark.parametrize("name", ["pixels_cpu", "listops_cpu", "fortunes_lm"])
def test_models_export_with_a_dynamic_length(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    ids = torch.randint(0, 10, (2, 24))
    program = export(model, (ids,), dynamic_shapes=({1: Dim("N", min=2, max=512)},))
    for n in (9, 61):
        ids = torch.randint(0, 10, (2, n))
        assert rel_err(program.module()(ids), model(ids)) < 1e-5, (name, n)


def test_jit_trace_works_at_the_example_shape():
    torch.manual_seed(0)
    m = TaylorShiftAttention(16, 2).eval()
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        traced = torch.jit.trace(m, (x,), check_trace=False)
        assert rel_err(traced(x), m(x)) < 1e-6
    op = torch.jit.trace(Op("auto", True), _args(16, False), check_trace=False)
    args = _args(16, False, seed=5)
    assert rel_err(op(*args), taylor_shift_attention(*args, is_causal=True)) < 1e-6


def test_jit_script_is_a_clear_error():
    m = TaylorShiftAttention(16, 2)
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*not supported.*torch\.export"):
        torch.jit.script(m)
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*not supported"):
        torch.jit.script(create_model("pixels_cpu"))


class _CausalStep(torch.nn.Module):
    """One decoding step of the recurrent op with its state as an input, as the deployment step graph runs it."""

    def forward(self, q, k, v, sums, n_keys):
        from taylorshift import CausalState, taylor_shift_causal

        with torch.no_grad():
            out, state = taylor_shift_causal(q, k, v, initial_state=CausalState(sums, n_keys, 0),
                                             output_final_state=True)
        return out, state.sums


def test_causal_single_position_update_exports_and_the_chunked_form_refuses():
    from taylorshift import taylor_shift_causal

    q, k, v = make_qkv(2, 3, 9, 9, 4)
    _, state = taylor_shift_causal(q[..., :8, :], k[..., :8, :], v[..., :8, :], output_final_state=True)
    args = (q[..., 8:, :], k[..., 8:, :], v[..., 8:, :], state.sums, state.n_keys)
    program = export(_CausalStep(), args)
    out, sums = program.module()(*args)
    ref, ref_state = taylor_shift_causal(*args[:3], initial_state=state, output_final_state=True)
    assert rel_err(out, ref) < 1e-6 and rel_err(sums, ref_state.sums) < 1e-6
    assert rel_err(out, taylor_shift_attention(q, k, v, is_causal=True)[..., 8:, :]) < 1e-5  # the last row
    with pytest.raises(Exception, match="exports or traces only a single-position update"):
        export(_CausalStep(), (q, k, v, state.sums, state.n_keys))

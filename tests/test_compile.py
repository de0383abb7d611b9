"""torch.compile: the ops trace without graph breaks, and compiled equals eager (slow: inductor builds)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_qkv, rel_err
from taylorshift import TaylorShiftAttention, taylor_shift_attention


def _call(backend, mask):
    def fn(q, k, v, scale):
        return taylor_shift_attention(q, k, v, attn_mask=mask, scale=scale, backend=backend)

    return fn


@pytest.mark.parametrize("backend", ["direct", "efficient"])
def test_no_graph_breaks(backend):
    torch._dynamo.reset()
    q, k, v = make_qkv(2, 2, 40, 40, 4)
    mask = torch.rand(2, 1, 1, 40) > 0.2
    explanation = torch._dynamo.explain(_call(backend, mask))(q, k, v, torch.ones(2, 1, 1))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["direct", "efficient"])
def test_compiled_equals_eager_forward_and_backward(backend):
    torch._dynamo.reset()
    mask = torch.rand(2, 1, 1, 70, generator=torch.Generator().manual_seed(0)) > 0.2
    fn = _call(backend, mask)
    compiled = torch.compile(fn, fullgraph=True)
    q, k, v = make_qkv(2, 2, 50, 70, 8, dtype=torch.float32, seed=3)
    scale = torch.tensor([0.5, 2.0]).view(2, 1, 1)
    results = []
    for f in (fn, compiled):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, scale)]
        out = f(*leaves)
        out.square().sum().backward()
        results.append([out.detach()] + [t.grad for t in leaves])
    for name, a, b in zip(["out", "dq", "dk", "dv", "dscale"], *results, strict=True):
        assert rel_err(a, b) < 1e-5, name


@pytest.mark.slow
def test_compiled_module_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = TaylorShiftAttention(32, 4, backend="efficient").eval()
    x = torch.randn(2, 64, 32)
    pad = torch.zeros(2, 64, dtype=torch.bool)
    pad[1, 40:] = True
    assert rel_err(torch.compile(m)(x, pad), m(x, pad)) < 1e-5

"""Resource and dtype limits: a feature state that cannot fit is a clear error before any allocation, and
mixed dtypes under autocast follow ``scaled_dot_product_attention``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_qkv, rel_err
from taylorshift import taylor_shift_attention, taylor_shift_attention_reference
from taylorshift.ops import TaylorShiftState


@pytest.mark.parametrize("causal", [False, True])
def test_a_state_that_cannot_fit_is_a_clear_error(causal):
    """d = 2048: F ≈ 2.1 M features, so the state of one head is 17 GB in float32; 1024 heads cannot fit on
    any machine (17 TB), and the check runs before anything is allocated."""
    q = torch.zeros(64, 16, 1, 2048)
    with pytest.raises(torch.OutOfMemoryError, match=r"head size d=2048.*backend='direct'"):
        taylor_shift_attention(q, q, q, backend="efficient", is_causal=causal)
    with pytest.raises(torch.OutOfMemoryError, match=r"head size d=2048"):
        TaylorShiftState((64, 16), 2048)


def test_the_check_uses_the_available_memory(monkeypatch):
    from taylorshift.ops import memory as ops_memory

    q, k, v = make_qkv(2, 2, 8, 8, 16)
    need = ops_memory.efficient_bytes(4, 8, 8, 16, 16, torch.float32)
    assert need > 4 * 153 * 17 * 4  # at least the four states (F = 153, dv + 1 = 17)
    monkeypatch.setattr(ops_memory, "available_bytes", lambda device: need - 1)
    monkeypatch.setattr(ops_memory, "_CHECK_ABOVE", 0)
    with pytest.raises(torch.OutOfMemoryError, match=r"needs about .* head size d=16"):
        taylor_shift_attention(q, k, v, backend="efficient")
    assert torch.isfinite(taylor_shift_attention(q, k, v, backend="direct")).all()
    monkeypatch.setattr(ops_memory, "available_bytes", lambda device: need)
    ref = taylor_shift_attention_reference(q, k, v)
    assert rel_err(taylor_shift_attention(q, k, v, backend="efficient"), ref) < 2e-5
    monkeypatch.setattr(ops_memory, "available_bytes", lambda device: None)  # unknown: no check
    taylor_shift_attention(q, k, v, backend="efficient")


def test_available_memory_is_read_from_the_system():
    from taylorshift.ops import memory as ops_memory

    free = ops_memory.available_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_mixed_dtypes_under_cpu_autocast_follow_sdpa():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(1, 2, 9, 8)
    k, v = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = lin(x)
        assert q.dtype == torch.bfloat16
        expected_dtype = F.scaled_dot_product_attention(q, k, v).dtype
        outs = {b: taylor_shift_attention(q, k, v, backend=b) for b in ("direct", "efficient")}
    assert expected_dtype == torch.bfloat16
    ref = taylor_shift_attention_reference(q, k.bfloat16(), v.bfloat16())  # what autocast gives SDPA
    for b, out in outs.items():
        assert out.dtype == expected_dtype, b
        assert rel_err(out, ref) < 1e-2, b
    with pytest.raises(TypeError, match="key has dtype torch.float32 but query has torch.bfloat16"):
        taylor_shift_attention(q, k, v)  # outside autocast mixed dtypes stay an error, as in SDPA


def test_autocast_leaves_float64_alone_and_computes_in_float32():
    q, k, v = make_qkv(1, 2, 30, 30, 8, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out64 = taylor_shift_attention(q, k, v)
        out32 = taylor_shift_attention(q.float(), k.float(), v.float(), backend="efficient")
    assert out64.dtype == torch.float64 and rel_err(out64, taylor_shift_attention_reference(q, k, v)) < 1e-12
    # inputs are cast to bfloat16 as SDPA's are, but the kernel itself computes in float32 (not bf16 matmuls)
    ref = taylor_shift_attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out32.dtype == torch.bfloat16 and rel_err(out32, ref) < 5e-3


@pytest.mark.parametrize("causal", [False, True])
def test_the_check_lets_empty_calls_through(causal):
    q = torch.zeros(0, 2, 5, 4)
    assert taylor_shift_attention(q, q, q, backend="efficient", is_causal=causal).shape == (0, 2, 5, 4)
    q, v = torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 0)
    assert taylor_shift_attention(q, q, v, backend="efficient", is_causal=causal).shape == (1, 2, 5, 0)
    assert TaylorShiftState((0, 2), 4).nbytes == 0


@pytest.mark.parametrize("backend", ["direct", "efficient"])
@pytest.mark.parametrize("tau", [1.0, 4.0, 16.0])
def test_a_rows_largest_share_is_bounded_by_the_temperature(backend, tau):
    """docs/causal.md: with unit-norm q, k and temperature τ ≥ 1 one key gets at most p(τ) / (p(τ) + (n-1)/2) of a
    row (p ≥ 1/2, reached at τ·cos θ = -1), and that share is attained; random unit vectors stay below it."""
    n, d = 64, 8
    p = lambda x: 1 + x + x * x / 2  # noqa: E731
    bound = p(tau) / (p(tau) + (n - 1) / 2)
    eye = torch.eye(n, dtype=torch.float64)  # values = one-hot keys: the output row is the attention row
    e1, e2 = torch.eye(d, dtype=torch.float64)[:2]
    k = torch.stack([e1] + [(-1 / tau) * e1 + (1 - 1 / tau**2) ** 0.5 * e2] * (n - 1))  # cos = 1, then -1/τ
    row = taylor_shift_attention(e1[None, None], k[None], eye[None], scale=tau, backend=backend)[0, 0]
    assert abs(row[0].item() - bound) < 1e-12 and abs(row.sum().item() - 1) < 1e-12
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 32, d, generator=g, dtype=torch.float64), dim=-1)
    kr = F.normalize(torch.randn(4, n, d, generator=g, dtype=torch.float64), dim=-1)
    rows = taylor_shift_attention(q, kr, eye.expand(4, n, n), scale=tau, backend=backend)
    assert rows.max().item() <= bound + 1e-12 and rows.min().item() >= 0

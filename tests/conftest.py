"""Shared test helpers: tolerances per dtype, input factories and a gradient check."""

from __future__ import annotations

import pytest
import torch

# Relative Frobenius error allowed against the float64 oracle (which sees the same rounded inputs).
# Half-precision paths compute in float32, so their error is the rounding of the output itself.
TOLERANCE = {
    torch.float64: 1e-12,
    torch.float32: 2e-5,
    torch.bfloat16: 1e-2,
    torch.float16: 2e-3,
}


def tolerance(dtype: torch.dtype) -> float:
    """Tolerance for ``dtype``; an unknown dtype is an error, never a silent skip."""
    if dtype not in TOLERANCE:
        raise KeyError(f"no tolerance defined for {dtype}: add one to tests/conftest.py")
    return TOLERANCE[dtype]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖_F / ‖ref‖_F in float64 (absolute error if ref is zero)."""
    out, ref = out.double(), ref.double()
    den = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / den if den > 0 else diff


def make_qkv(B, H, L, S, d, dv=None, dtype=torch.float32, seed=0, unit=False):
    """Random q ``(B, H, L, d)``, k ``(B, H, S, d)``, v ``(B, H, S, dv)`` in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv
    q = torch.randn(B, H, L, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, S, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, S, dv, generator=g, dtype=torch.float64)
    if unit:
        q = q / q.norm(dim=-1, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def assert_every_parameter_has_a_gradient(module: torch.nn.Module, label: str, nonzero: bool = True) -> None:
    """After a backward: every parameter of ``module`` has a finite (and, if ``nonzero``, not all-zero) gradient;
    ``label`` starts the failure messages."""
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{label}: {pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{label}: {pname} has a non-finite gradient"
        if nonzero:
            assert p.grad.abs().sum() > 0, f"{label}: {pname} has a zero gradient"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test sees an empty cache dir, so a user's stored calibration never changes dispatch."""
    monkeypatch.setenv("TAYLORSHIFT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))

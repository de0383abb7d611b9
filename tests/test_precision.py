"""precision= (ops.precision): the low-precision efficient path against the float64 oracle, the unchanged
float32 default, and the calibrated choice (ops.calibration precision section, bench.calibrate)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from taylorshift import taylor_shift_attention
from taylorshift.bench.calibrate import calibrate_precision, choose_precision, precision_entries
from taylorshift.ops.calibration import (
    CalibrationWarning,
    calibration_path,
    lookup_precision,
    read_entries,
    read_precision,
    save_entries,
    save_precision,
)
from taylorshift.ops.precision import default_low_precision, low_dtype
from taylorshift.ops.reference import taylor_shift_attention_reference

LOW = [torch.bfloat16, torch.float16]
BOUND = 2e-2  # the bound against the float64 oracle, outputs (absolute) and gradients (relative to max)


def _unit_inputs(n, d, dtype, *, heads=2, seed=0, pad=0):
    """Unit-norm q and k, N(0, 1) values, in ``dtype``; a key-padding mask with ``pad`` masked keys."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.nn.functional.normalize(torch.randn(1, heads, n, d, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(1, heads, n, d, generator=g)
    mask = None
    if pad:
        mask = torch.ones(1, 1, 1, n, dtype=torch.bool)
        mask[..., n - pad :] = False
    return q.to(dtype), k.to(dtype), v.to(dtype), mask


def _check_against_oracle(q, k, v, mask, temperature, precision, causal=False, rows=None):
    """Forward and backward of the efficient kernel against the float64 oracle on the same (rounded) inputs;
    returns the output and gradient errors."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = taylor_shift_attention(
        *leaves, attn_mask=mask, scale=temperature, backend="efficient", precision=precision, is_causal=causal
    )
    assert out.dtype == q.dtype
    sel = slice(None) if rows is None else rows
    up = torch.randn(out[..., sel, :].shape, generator=torch.Generator().manual_seed(1))
    (out[..., sel, :].float() * up).sum().backward()
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = taylor_shift_attention_reference(*ref_leaves, attn_mask=mask, scale=temperature, rows=rows, is_causal=causal)
    (ref * up.double()).sum().backward()
    err_out = (out[..., sel, :].double() - ref).abs().max().item()
    err_grad = max(
        ((a.grad.double() - b.grad).abs().max() / b.grad.abs().max()).item()
        for a, b in zip(leaves, ref_leaves, strict=True)
    )
    return err_out, err_grad


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("pad", [0, 37])
def test_low_precision_path_against_oracle(dtype, temperature, pad):
    name = str(dtype).removeprefix("torch.")
    q, k, v, mask = _unit_inputs(1031, 16, dtype, pad=pad)
    err_out, err_grad = _check_against_oracle(q, k, v, mask, temperature, name)
    assert err_out < BOUND and err_grad < BOUND, (err_out, err_grad)
    # and no worse than about 2x the float32 computation of the same half-precision inputs (flash-attn's rule)
    err32, grad32 = _check_against_oracle(q, k, v, mask, temperature, "float32")
    assert err_out <= 2 * err32 + 4e-3 and err_grad <= 2 * grad32 + 4e-3, (err_out, err32, err_grad, grad32)


@pytest.mark.parametrize("dtype", LOW)
def test_causal_with_low_precision_inputs_meets_the_bound(dtype):
    q, k, v, mask = _unit_inputs(513, 8, dtype, pad=5)
    name = str(dtype).removeprefix("torch.")
    err_out, err_grad = _check_against_oracle(q, k, v, mask, 4.0, name, causal=True)
    assert err_out < BOUND and err_grad < BOUND


def test_float32_inputs_opt_in_and_the_low_path_really_runs():
    q, k, v, _ = _unit_inputs(700, 16, torch.float32)
    exact = taylor_shift_attention(q, k, v, backend="efficient", scale=4.0)
    low = taylor_shift_attention(q, k, v, backend="efficient", scale=4.0, precision="bfloat16")
    assert low.dtype == torch.float32
    diff = (low - exact).abs().max().item()
    assert 0 < diff < BOUND
    err, gerr = _check_against_oracle(q, k, v, None, 4.0, "float16")
    assert err < 5e-3 and gerr < BOUND


def test_float32_default_path_unchanged_and_accurate():
    q, k, v, mask = _unit_inputs(16384, 16, torch.float32, heads=1, pad=100)
    auto = taylor_shift_attention(q, k, v, attn_mask=mask, backend="efficient", scale=4.0)
    f32 = taylor_shift_attention(q, k, v, attn_mask=mask, backend="efficient", scale=4.0, precision="float32")
    assert torch.equal(auto, f32)
    rows = torch.arange(0, 16384, 127)
    ref = taylor_shift_attention_reference(q.double(), k.double(), v.double(), attn_mask=mask, scale=4.0, rows=rows)
    assert (auto[..., rows, :].double() - ref).abs().max().item() < 1e-4


def test_auto_follows_the_machine_and_the_stored_choice():
    q, k, v, _ = _unit_inputs(600, 8, torch.bfloat16)
    f32 = taylor_shift_attention(q, k, v, backend="efficient", precision="float32")
    low = taylor_shift_attention(q, k, v, backend="efficient", precision="bfloat16")
    expected = low if default_low_precision("cpu", torch.bfloat16) else f32
    assert torch.equal(taylor_shift_attention(q, k, v, backend="efficient"), expected)
    save_precision({"cpu/bfloat16/d8": {"choice": "bfloat16"}})
    assert torch.equal(taylor_shift_attention(q, k, v, backend="efficient"), low)
    save_precision({"cpu/bfloat16/d8": {"choice": "float32"}})
    assert torch.equal(taylor_shift_attention(q, k, v, backend="efficient"), f32)
    assert low_dtype("auto", torch.float32, "cpu", 8) is None  # float32 inputs never lowered by auto


def test_bad_precision_arguments():
    q = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="precision must be one of"):
        taylor_shift_attention(q, q, q, precision="fp8")
    with pytest.raises(ValueError, match="precision='bfloat16' needs"):
        taylor_shift_attention(q.double(), q.double(), q.double(), precision="bfloat16")


def test_precision_section_round_trip_and_coexists_with_crossovers():
    save_entries({"cpu/float32/d16": {"n0": 200.0, "n0_model": 153.0}})
    save_precision({"cpu/bfloat16/d16": {"choice": "bfloat16", "points": [[4096, "forward", 2.0, 1.0]]}})
    assert lookup_precision("cpu", "bfloat16", 16) == "bfloat16"
    assert lookup_precision("cpu", "float16", 16) is None
    save_entries({"cpu/float32/d32": {"n0": 600.0, "n0_model": 561.0}})  # keeps the precision section
    assert set(read_entries()) == {"cpu/float32/d16", "cpu/float32/d32"}
    assert read_precision()["cpu/bfloat16/d16"]["points"] == [[4096, "forward", 2.0, 1.0]]
    with pytest.raises(ValueError, match="choice"):
        save_precision({"cpu/bfloat16/d16": {"choice": "float16"}})
    with pytest.raises(ValueError, match="precision key"):
        save_precision({"cpu/float32/d16": {"choice": "float32"}})


def test_invalid_precision_entries_are_ignored_with_a_warning(monkeypatch):
    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "entries": {},
                "precision": {"cpu/bfloat16/d8": {"choice": "bfloat16"}, "cpu/float16/d8": {"choice": "int8"}},
            }
        )
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lookup_precision("cpu", "bfloat16", 8) == "bfloat16"
        assert lookup_precision("cpu", "float16", 8) is None
    assert any(issubclass(w.category, CalibrationWarning) for w in caught)
    monkeypatch.setenv("TAYLORSHIFT_CALIBRATION", "off")
    assert lookup_precision("cpu", "bfloat16", 8) is None


def test_choice_is_never_slower_in_its_own_measurements():
    assert choose_precision("bfloat16", [(4096, "forward", 2.0, 1.0), (4096, "train", 5.0, 3.0)]) == "bfloat16"
    assert choose_precision("bfloat16", [(4096, "forward", 2.0, 1.0), (4096, "train", 5.0, 6.0)]) == "float32"
    assert choose_precision("float16", [(4096, "forward", 1.0, 1.0)]) == "float32"
    with pytest.raises(ValueError):
        choose_precision("bfloat16", [])


@pytest.mark.parametrize("dtype", LOW)
def test_calibrate_precision_measures_both_and_stores_a_consistent_choice(dtype):
    result = calibrate_precision(8, dtype, heads=2, lengths=[64, 128], repeats=1)
    if result.probe[result.dtype] < result.probe["float32"] / 8:  # emulated format (float16 on most CPUs)
        assert result.points == [] and result.choice == "float32"
    else:
        assert len(result.points) == 4 and {m for _, m, _, _ in result.points} == {"forward", "train"}
        faster_everywhere = all(tl < t32 for _, _, t32, tl in result.points)
        assert result.choice == (result.dtype if faster_everywhere else "float32")
    save_precision(precision_entries([result]))
    assert lookup_precision("cpu", result.dtype, 8) == result.choice


@pytest.mark.parametrize("low_rate", [1.0, 1000.0])
def test_calibrate_precision_probe_and_fake_timings(monkeypatch, low_rate):
    import taylorshift.bench.calibrate as cal

    monkeypatch.setattr(cal, "matmul_probe", lambda dtype, device="cpu": 100.0 if dtype == torch.float32 else low_rate)
    calls = []

    def timer(fn, reps):  # the low-precision call is the second of each pair: make it the faster
        calls.append(fn)
        return 2.0 if len(calls) % 2 else 1.0

    result = cal.calibrate_precision(8, torch.bfloat16, heads=1, lengths=[32], timer=timer)
    if low_rate < 100.0 / 8:
        assert result.choice == "float32" and result.points == [] and not calls
    else:
        assert result.choice == "bfloat16" and len(result.points) == 2


@pytest.mark.slow
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_at_65536(dtype, causal):
    q, k, v, mask = _unit_inputs(65536, 16, dtype, heads=1, pad=300)
    rows = torch.arange(0, 65536, 257)
    name = str(dtype).removeprefix("torch.")
    err_out, err_grad = _check_against_oracle(q, k, v, mask, 4.0, name, causal=causal, rows=rows)
    assert err_out < BOUND and err_grad < BOUND, (err_out, err_grad)


def test_cli_calibrate_precision_stores_and_shows(capsys):
    from taylorshift.cli import main

    argv = ["calibrate", "--precision", "--dtype", "bfloat16", "--head-dims", "4", "--lengths", "32", "--repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "stored in" in out
    choice = lookup_precision("cpu", "bfloat16", 4)
    assert choice in ("float32", "bfloat16")
    assert main(["calibrate", "--show"]) == 0
    assert f"precision cpu/bfloat16/d4: {choice}" in capsys.readouterr().out

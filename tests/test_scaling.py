"""Tests of ``taylorshift.bench.scaling`` and the ``taylorshift scaling`` command."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from taylorshift import taylor_shift_attention_reference
from taylorshift.bench.scaling import (
    FP16_MAX,
    QUANTITIES,
    measure_scaling,
    prepare,
    random_qkv,
    run_sequence,
    samples_for,
    summary,
)


def _norms(res) -> dict[str, float]:
    return {q: res.norm_sum[q] / res.norm_count[q] for q in QUANTITIES}


@pytest.mark.parametrize("variant", ["normalised", "paper", "raw"])
@pytest.mark.parametrize("raw_scale", ["sdpa", "none"])
def test_float64_output_is_taylorshift_attention(variant, raw_scale):
    """The measured pipeline computes our attention: oracle agreement to 1e-10, also when chunked."""
    n, d, tau = 257, 8, 1.7
    q, k, v = random_qkv(n, d, seed=3)
    prep = prepare(variant, q, k, raw_scale=raw_scale, temperature=tau)
    if variant == "raw":
        ref = taylor_shift_attention_reference(q, k, v, scale=None if raw_scale == "sdpa" else 1.0)
    else:
        ref = taylor_shift_attention_reference(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, scale=tau)
    for chunk in (None, 31):
        res = run_sequence(prep, v, chunk=chunk, keep_output=True)
        assert res.output64.dtype == torch.float64
        torch.testing.assert_close(res.output64, ref, rtol=0, atol=1e-10)
        # float16 storage of a well-scaled problem: small but non-zero error
        assert torch.isfinite(res.output16).all()
        rel = math.sqrt(res.err_sq / res.ref_sq)
        assert 1e-5 < rel < 5e-3


def test_primary_variant_is_the_library_scheme():
    """'normalised' = L2-normalised q, k, τ on q, V' divided by N, coefficients unchanged."""
    q, k, _ = random_qkv(10, 4, seed=0)
    p = prepare("normalised", q, k, temperature=2.0)
    torch.testing.assert_close(p.q, 2.0 * q / q.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(p.k, k / k.norm(dim=-1, keepdim=True))
    assert p.value_norm == 10.0 and p.weights == (0.5, 1.0, 1.0)
    r = prepare("raw", q, k)
    torch.testing.assert_close(r.q, q / 2.0)
    assert r.value_norm == 1.0
    pp = prepare("paper", q, k)
    assert pp.weights == (0.5, 2.0, 4.0)  # (a, √d·b, d·c) with d = 4


def test_norms_match_explicit_formulas():
    """Each measured quantity is the norm of what its name says, written out with an L×S matrix."""
    n, d = 50, 3
    q, k, v = random_qkv(n, d, seed=1)
    for variant in ("normalised", "raw"):
        prep = prepare(variant, q, k)
        got = _norms(run_sequence(prep, v, chunk=7))
        qt, kt, m = prep.q, prep.k, prep.value_norm
        a, b, c = prep.weights
        s = qt @ kt.T  # (N, N)
        w = a * s * s + b * s + c
        num, den = (w @ v) / m, w.sum(-1) / m
        vp = torch.cat([v, torch.ones(n, 1, dtype=v.dtype)], -1) / m
        kk = torch.einsum("ni,nj->nij", kt, kt).reshape(n, d * d)
        want = {
            "qq": (qt.norm(dim=-1) ** 2).mean(),
            "kk": (kt.norm(dim=-1) ** 2).mean(),
            "kkv": torch.linalg.matrix_norm(kk.T @ vp),
            "state": torch.linalg.matrix_norm(torch.cat([kk, kt, torch.ones(n, 1, dtype=v.dtype)], -1).T @ vp),
            "numerator": num.norm(dim=-1).mean(),
            "denominator": den.abs().mean(),
            "output": (num / den[:, None]).norm(dim=-1).mean(),
        }
        for name in QUANTITIES:
            assert got[name] == pytest.approx(float(want[name]), rel=1e-12), (variant, name)


def test_normalised_stays_bounded_raw_grows_with_n():
    d = 4
    short, long = 64, 4096
    rows = measure_scaling([short, long], [d], samples=1, variants=("normalised", "raw"), seed=0)
    by = {(r["variant"], r["N"]): r for r in rows}
    ratio = long / short
    for q in ("kkv", "state"):
        # normalised: the state is an average over keys and does not grow with N
        assert by["normalised", long][f"{q}_norm"] < 1.5 * by["normalised", short][f"{q}_norm"]
        assert by["normalised", long][f"{q}_norm"] < 3.0
        # raw: a sum over keys, growing roughly ∝ N
        grow = by["raw", long][f"{q}_norm"] / by["raw", short][f"{q}_norm"]
        assert 0.5 * ratio < grow < 2.0 * ratio, (q, grow)
    for n in (short, long):
        # normalised denominator = mean over keys of p(cos), and p maps [-1, 1] into [0.5, 2.5]
        assert 0.5 <= by["normalised", n]["denominator_norm"] <= 2.5
        assert by["normalised", n]["denominator_amax"] <= 2.5
    # raw denominator ≈ N·E[p(s)] = N·(a·E[s²] + c) = 1.5·N for s = q·k/√d, q, k ~ N(0, I)
    assert by["raw", long]["denominator_norm"] / long == pytest.approx(1.5, rel=0.1)


def test_fp16_overflow_flags_raw_not_normalised():
    """Raw: the denominator ≈ 1.5·N·‖q‖²/d passes 65504 at N = 32768 for many rows; normalised: ≤ 2.5."""
    d = 4
    q, k, v = random_qkv(32768, d, seed=0)
    raw = run_sequence(prepare("raw", q, k), v)
    assert raw.amax["denominator"] > FP16_MAX
    assert raw.nonfinite16["denominator"]
    assert math.sqrt(raw.err_sq / raw.ref_sq) > 0.05  # overflowed rows come out as 0 in float16
    norm = run_sequence(prepare("normalised", q, k), v)
    assert not any(norm.nonfinite16.values())
    assert math.sqrt(norm.err_sq / norm.ref_sq) < 5e-3
    # the flag is not always on: raw at a short length stays finite
    q, k, v = random_qkv(1024, d, seed=0)
    assert not any(run_sequence(prepare("raw", q, k), v).nonfinite16.values())


def test_no_logit_scale_overflows_earlier():
    """Without 1/√d the raw denominator is ≈ N·(d/2 + 1): 9·8192 > 65504 at d = 16."""
    rows = measure_scaling([8192], [16], samples=1, variants=("normalised", "raw"), raw_scale="none")
    by = {r["variant"]: r for r in rows}
    assert by["raw"]["fp16_overflow"] and "denominator" in by["raw"]["fp16_nonfinite"]
    assert not by["normalised"]["fp16_overflow"]
    table = summary(rows)
    assert table[0]["raw_first_overflow"] == 8192 and table[0]["normalised_first_overflow"] is None


def test_samples_shrink_for_large_problems():
    assert samples_for(16, 8, 4) == 4
    assert samples_for(65536, 64, 4) == 1
    assert samples_for(1024, 64, 100) < 100


def test_bad_arguments_raise():
    q, k, _ = random_qkv(4, 2, seed=0)
    with pytest.raises(ValueError, match="variant"):
        prepare("cosine", q, k)
    with pytest.raises(ValueError, match="raw_scale"):
        prepare("raw", q, k, raw_scale="half")
    with pytest.raises(ValueError, match="variants"):
        measure_scaling([4], [2], variants=("nope",))
    with pytest.raises(ValueError, match="ns"):
        measure_scaling([0], [2])
    with pytest.raises(ValueError, match="samples"):
        measure_scaling([4], [2], samples=0)


def test_cli_writes_csv_json_png(tmp_path, capsys):
    from taylorshift.cli import main

    out = tmp_path / "res"
    rc = main(["scaling", "--n", "16", "64", "--d", "4", "--samples", "1", "--seed", "5", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fp16 overflow at N" in printed

    with open(out / "scaling.csv") as f:
        lines = f.read().splitlines()
    comments = [ln for ln in lines if ln.startswith("#")]
    assert any(ln.startswith("# torch: ") for ln in comments)
    assert any(ln.startswith("# command: taylorshift scaling") for ln in comments)
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))
    assert {(r["variant"], int(r["N"])) for r in rows} == {
        ("normalised", 16), ("normalised", 64), ("raw", 16), ("raw", 64)
    }
    assert all(float(r["kkv_norm"]) > 0 for r in rows)

    data = json.loads((out / "scaling.json").read_text())
    assert data["header"]["torch"] == torch.__version__
    assert "date" in data["header"] and "--seed 5" in data["header"]["command"]
    assert len(data["rows"]) == 4

    png = (out / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000

    out2 = tmp_path / "noplot"
    assert main(["scaling", "--n", "16", "--d", "2", "--samples", "1", "--no-plot", "--out", str(out2)]) == 0
    assert (out2 / "scaling.csv").exists() and not (out2 / "scaling.png").exists()

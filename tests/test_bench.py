"""Tests of taylorshift.bench: crossover finder, sweep bookkeeping, memory measurement, files, CLI."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from conftest import assert_one_error_line, cli_error, run_cli_with_file_size_limit
from taylorshift.bench import (
    STATUSES,
    BenchBackend,
    MemoryMeter,
    Point,
    SweepConfig,
    compute_crossovers,
    find_crossings,
    find_crossover,
    naive_softmax_attention,
    run_sweep,
    sequence_lengths,
    time_call,
)
from taylorshift.bench.backends import BACKENDS, make_workload
from taylorshift.bench.io import (
    CROSSOVERS_CSV,
    META_KEYS,
    POINTS_CSV,
    RESULT_JSON,
    read_csv,
    read_results,
    write_results,
)
from taylorshift.bench.memory import MIB, is_out_of_memory
from taylorshift.bench.sweep import CROSSOVER_COLUMNS, POINT_COLUMNS

# -- crossover finder ---------------------------------------------------------------------------------


def geometric(lo: float, hi: float, k: int) -> list[float]:
    return [lo * (hi / lo) ** (i / (k - 1)) for i in range(k)]


def test_crossing_of_power_laws_is_exact():
    # a = 1000·N (linear), b = N² (quadratic): straight lines on log-log axes crossing at N = 1000.
    ns = geometric(64, 4096, 13)
    a = [1000.0 * n for n in ns]
    b = [n * n for n in ns]
    (c,) = find_crossings(ns, a, b)
    assert c.n == pytest.approx(1000.0, rel=1e-12)
    assert c.direction == -1  # a becomes the cheaper one
    x = find_crossover(ns, a, b)
    assert x.relation == "at" and x.n == pytest.approx(1000.0, rel=1e-12)
    assert x.describe() == "1000"


def test_crossing_between_samples_is_log_log_interpolated():
    ns = [100.0, 400.0]
    a, b = [4.0, 1.0], [1.0, 4.0]  # log-ratio +log4 -> -log4: zero at the geometric midpoint
    (c,) = find_crossings(ns, a, b)
    assert c.n == pytest.approx(200.0, rel=1e-12)


def test_crossing_exactly_at_a_sample_point():
    ns = [100, 200, 400, 800]
    a = [3.0, 2.0, 1.0, 0.5]
    b = [1.5, 1.5, 1.0, 1.0]  # a > b, a > b, a == b at 400, a < b
    (c,) = find_crossings(ns, a, b)
    assert c.n == pytest.approx(400.0, rel=1e-12) and c.direction == -1
    assert find_crossover(ns, a, b).n == pytest.approx(400.0, rel=1e-12)


def test_touching_without_crossing_is_not_a_crossing():
    ns = [1, 2, 3]
    assert find_crossings(ns, [2.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == []


def test_no_crossing_reports_below_or_above_the_range():
    ns = [64, 128, 256]
    below = find_crossover(ns, [1.0, 1.0, 1.0], [2.0, 3.0, 4.0])
    assert below.relation == "below" and below.n is None and below.describe() == "< 64"
    above = find_crossover(ns, [5.0, 6.0, 7.0], [2.0, 3.0, 4.0])
    assert above.relation == "above" and above.n is None and above.describe() == "> 256"
    assert find_crossings(ns, [5.0, 6.0, 7.0], [2.0, 3.0, 4.0]) == []


def test_noisy_curves_use_the_last_downward_crossing():
    ns = [100, 200, 400, 800, 1600]
    a = [2.0, 0.5, 2.0, 0.5, 0.25]
    b = [1.0] * 5
    crossings = find_crossings(ns, a, b)
    assert [c.direction for c in crossings] == [-1, 1, -1]
    x = find_crossover(ns, a, b)
    assert x.n == pytest.approx(crossings[-1].n) and 400 < x.n < 800
    # ends above: no crossover in range, even though a was below b in between
    assert find_crossover(ns[:3], a[:3], b[:3]).relation == "above"


def test_crossover_input_validation():
    with pytest.raises(ValueError, match="same length"):
        find_crossings([1, 2], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="increasing"):
        find_crossings([2, 1], [1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        find_crossings([1, 2], [0.0, 1.0], [1.0, 1.0])
    assert find_crossover([64], [1.0], [2.0]).relation == "none"


# -- sweep bookkeeping --------------------------------------------------------------------------------


def test_sequence_lengths_cover_the_range_and_the_analytic_crossovers():
    ns = sequence_lengths(32, 64, 4096, points_per_octave=4, dense=5)
    assert ns == sorted(set(ns)) and ns[0] == 64 and ns[-1] == 4096
    assert all(n % 16 == 0 for n in ns)
    assert len([n for n in ns if 1057 / 1.5 < n < 1057 * 1.5]) >= 5  # dense around N0_speed = 1057
    assert len([n for n in ns if 574 / 1.5 < n < 574 * 1.5]) >= 5  # and N0_memory = 574
    assert sequence_lengths(32, 64, 4096, points_per_octave=1, dense=0) == [64, 128, 256, 512, 1024, 2048, 4096]


def _pt(mode, d, backend, n, t, m=None, status="ok"):
    return Point(mode, d, 1, 1, n, backend, "float32", "cpu", status, time_ms=t, peak_mib=m)


def test_compute_crossovers_from_points():
    ns = [64, 128, 256, 512, 1024]
    pts = []
    for n in ns:
        pts.append(_pt("forward", 16, "direct", n, t=n * n / 1e4, m=n * n / 1e3))  # crosses time at N=100
        pts.append(_pt("forward", 16, "efficient", n, t=n / 1e2, m=n / 1.0))  # and memory at N=1000
    pts.append(_pt("forward", 16, "direct", 2048, t=None, status="oom"))
    rows = {(r.versus, r.metric): r for r in compute_crossovers(pts)}
    assert rows["direct", "time"].measured == pytest.approx(100.0, rel=1e-9)
    # time theory: the implemented symmetric form, (d+1)(d+2)/2 = 153 at d = 16; memory: the paper's 158
    assert rows["direct", "time"].theory == 153 and rows["direct", "time"].ratio == pytest.approx(100 / 153)
    assert rows["direct", "memory"].measured == pytest.approx(1000.0, rel=1e-9)
    assert rows["direct", "memory"].theory == 158


def test_sdpa_memory_crossover_has_no_theory():
    pts = [_pt("forward", 16, b, n, t=1.0 + (b == "efficient"), m=10.0 + (b == "efficient"))
           for n in (64, 128) for b in ("efficient", "sdpa")]
    rows = {r.metric: r for r in compute_crossovers(pts)}
    assert rows["memory"].theory is None and rows["memory"].relation == "above"
    assert rows["time"].theory == 153  # symmetric form at d = 16


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n_max"):
        SweepConfig(n_min=128, n_max=64).validate()
    with pytest.raises(ValueError, match="backend"):
        SweepConfig(backends=("flash",)).validate()
    with pytest.raises(ValueError, match="mode"):
        SweepConfig(modes=("inference",)).validate()


TINY = dict(head_dims=(8,), heads=1, batch=1, n_min=16, n_max=64, points_per_octave=1, dense=0,
            repeats=1, warmup=0, measure_memory=False, budget_seconds=None)


def _raiser(err: BaseException, from_n: int) -> BenchBackend:
    def fn(q, k, v):
        if q.shape[-2] >= from_n:
            raise err
        return v.clone()

    name = f"fake_{type(err).__name__}"
    return BenchBackend(name, fn, lambda n, d: float(n), lambda n, d, mode: float(n), "fake")


@pytest.mark.parametrize(
    "err, status",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"), "oom"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), "oom"),
        (ValueError("something else"), "error"),
    ],
)
def test_failures_are_recorded_and_the_sweep_goes_on(err, status):
    fake = _raiser(err, from_n=32)
    result = run_sweep(SweepConfig(**TINY), backends=["efficient", fake], progress=False)
    got = {(p.backend, p.n): p for p in result.points}
    assert got[fake.name, 16].status == "ok"
    assert got[fake.name, 32].status == status and type(err).__name__ in got[fake.name, 32].note
    assert got[fake.name, 64].status == status and "not run" in got[fake.name, 64].note
    assert all(got["efficient", n].status == "ok" and got["efficient", n].time_ms > 0 for n in (16, 32, 64))


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_points_over_the_budgets_are_skipped_not_run():
    calls = []

    def fn(q, k, v):
        calls.append(q.shape[-2])
        return v

    spy = BenchBackend("spy", fn, lambda n, d: float(n * n), lambda n, d, mode: 2.0 * n * n, "spy")
    # memory model: 2·N²·4 bytes = 8 KiB at N=32, 32 KiB at N=64; budget 16 KiB
    cfg = SweepConfig(**{**TINY, "budget_memory_mib": 16 / 1024})
    result = run_sweep(cfg, backends=[spy], progress=False)
    assert [p.status for p in result.points] == ["ok", "ok", "skipped-budget"]
    assert "budget" in result.points[-1].note and result.points[-1].predicted_mib == pytest.approx(1 / 32)
    assert 64 not in calls
    # time: predicted from the measured time of the previous point scaled by the FLOP model (N²)
    slow = BenchBackend("slow", lambda q, k, v: time.sleep(0.01 * (q.shape[-2] / 16) ** 2) or v,
                        lambda n, d: float(n * n), lambda n, d, mode: 1.0, "slow")
    result = run_sweep(SweepConfig(**{**TINY, "budget_seconds": 0.08}), backends=[slow], progress=False)
    assert [p.status for p in result.points] == ["ok", "ok", "skipped-budget"]  # 10 ms, 40 ms, ~160 ms
    assert result.points[2].predicted_ms == pytest.approx(4 * result.points[1].time_ms, rel=1e-6)


# -- timing and workloads -----------------------------------------------------------------------------


def test_time_call_measures_a_known_duration():
    t = time_call(lambda: time.sleep(0.01), repeats=3, warmup=1)
    assert 0.009 < t.median < 0.05 and t.min <= t.median <= t.max and t.inner == 1
    fast = time_call(lambda: None, repeats=2, warmup=5)
    assert fast.inner > 1  # fast calls are timed in blocks


def test_backends_compute_attention():
    q, k, v = (torch.randn(1, 2, 16, 8, dtype=torch.float64) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(naive_softmax_attention(q, k, v), ref)
    torch.testing.assert_close(BACKENDS["direct"].fn(q, k, v), BACKENDS["efficient"].fn(q, k, v))


def test_train_workload_computes_gradients():
    step = make_workload("efficient", "train", 1, 1, 16, 4, seed=1)
    step()  # runs forward and backward without error
    with pytest.raises(ValueError, match="mode"):
        make_workload("efficient", "inference", 1, 1, 16, 4)


# -- memory measurement (one worker process for the module) --------------------------------------------


@pytest.fixture(scope="module")
def meter():
    with MemoryMeter("cpu", threads=1, limit_bytes=512 * MIB) as m:
        yield m


def test_memory_meter_sees_a_known_allocation(meter):
    r = meter.measure_allocation(64 * MIB)
    assert r.status == "ok"
    assert 60 <= r.peak_mib <= 70


def test_memory_meter_records_allocation_failure_as_oom(meter):
    r = meter.measure_allocation(4096 * MIB)  # beyond the 512 MiB limit
    assert r.status == "oom" and "allocate" in r.note
    assert meter.measure_allocation(8 * MIB).status == "ok"  # the worker survives


def test_memory_of_direct_grows_quadratically(meter):
    small = meter.measure(dict(backend="direct", mode="forward", batch=1, heads=1, n=1024, d=16))
    big = meter.measure(dict(backend="direct", mode="forward", batch=1, heads=1, n=2048, d=16))
    assert small.status == big.status == "ok"
    # one 1024² float32 matrix is 4 MiB: the completed-square forward holds the weights (s + m)² only, no
    # separate logits (before it, two such matrices: 8 MiB)
    assert 3.5 <= small.peak_mib <= 7 and 3.2 <= big.peak_mib / small.peak_mib <= 4.8


# -- files and CLI ------------------------------------------------------------------------------------


def test_result_files_schema(tmp_path, meter):
    fake = _raiser(torch.OutOfMemoryError("x"), from_n=64)
    cfg = SweepConfig(**{**TINY, "measure_memory": True, "budget_memory_mib": 1e-3})
    result = run_sweep(cfg, backends=["direct", "efficient", fake], progress=False, meter=meter,
                       meta={"command": "test", "dtype": "float32"})
    paths = write_results(result, tmp_path)
    assert {p.name for p in paths} == {POINTS_CSV, CROSSOVERS_CSV, RESULT_JSON}
    meta, rows = read_csv(tmp_path / POINTS_CSV)
    assert meta == {"command": "test", "dtype": "float32"}
    assert tuple(rows[0]) == POINT_COLUMNS
    assert {r["status"] for r in rows} <= set(STATUSES)
    assert {r["status"] for r in rows} >= {"oom", "skipped-budget"}
    _, xrows = read_csv(tmp_path / CROSSOVERS_CSV)
    assert not xrows or tuple(xrows[0]) == CROSSOVER_COLUMNS
    doc = json.loads((tmp_path / RESULT_JSON).read_text())
    assert set(doc) == {"meta", "config", "interrupted", "points", "crossovers"}
    assert len(doc["points"]) == len(rows) == 9 and set(doc["points"][0]) == set(POINT_COLUMNS)
    back = read_results(tmp_path)
    assert back.config == result.config and back.meta == result.meta
    assert [(p.n, p.backend, p.status) for p in back.points] == [(p.n, p.backend, p.status) for p in result.points]
    for p, q in zip(back.points, result.points, strict=True):
        assert (p.time_ms is q.time_ms is None) or p.time_ms == pytest.approx(q.time_ms, rel=1e-5)


def test_cli_bench_end_to_end(tmp_path, capsys):
    from taylorshift.cli import main

    out = tmp_path / "res"
    threads = torch.get_num_threads()
    try:
        rc = main(["bench", "--head-dims", "8", "--heads", "1", "--n-min", "32", "--n-max", "128",
                   "--points-per-octave", "1", "--dense", "0", "--repeats", "1", "--warmup", "0",
                   "--threads", "1", "--no-progress", "--budget-memory", "256MiB", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    text = capsys.readouterr().out
    assert "efficient vs direct" in text and str(out / POINTS_CSV) in text
    meta, rows = read_csv(out / POINTS_CSV)
    assert set(META_KEYS) <= set(meta)
    assert meta["torch_version"] == torch.__version__ and meta["dtype"] == "float32"
    assert meta["command"].startswith("taylorshift bench --head-dims 8 --heads 1")
    assert "64 MiB allocation measured as" in meta["memory_calibration"]
    assert len(rows) == 3 * 4 and all(r["status"] == "ok" for r in rows)
    assert all(float(r["peak_mib"]) >= 0 for r in rows) and all(float(r["time_ms"]) > 0 for r in rows)
    png = out / "bench_d8_forward.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    # the summary of an earlier run, without measuring
    assert main(["bench", "--from-results", str(out), "--no-plots"]) == 0
    again = capsys.readouterr().out
    assert again.split("Files")[0] == text.split("Files")[0]


def test_cli_parses_sizes_and_help_mentions_every_option():
    import argparse

    from taylorshift.bench import cli_bench

    assert cli_bench.parse_size_mib("512") == 512 and cli_bench.parse_size_mib("8GiB") == 8192
    assert cli_bench.parse_size_mib("none") is None and cli_bench.parse_size_mib("auto") < 0
    with pytest.raises(argparse.ArgumentTypeError):
        cli_bench.parse_size_mib("lots")
    parser = argparse.ArgumentParser()
    cli_bench.add_arguments(parser)
    for action in parser._actions:
        assert action.help, f"option {action.option_strings} has no help"
    args = parser.parse_args(["--quick", "--heads", "2", "--budget-seconds", "none", "--device", "cpu"])
    cfg = cli_bench.build_config(args)
    assert cfg.heads == 2 and cfg.head_dims == cli_bench.QUICK["head_dims"] and cfg.budget_seconds is None
    assert math.isfinite(cfg.budget_memory_mib) and cfg.budget_memory_mib > 0


# ------------------------------------------------------------------------------------------ CLI errors
# the smallest sweep: one point, no memory worker, no plots
TINY_BENCH = ["bench", "--head-dims", "4", "--heads", "1", "--n-min", "16", "--n-max", "16", "--dense", "0",
              "--backends", "direct", "--repeats", "1", "--warmup", "0", "--no-memory", "--no-plots", "--no-progress",
              "--threads", "1"]


def _no_sweep(monkeypatch):
    import taylorshift.bench.sweep as sweep

    def must_not_run(*args, **kwargs):
        raise AssertionError("measured before checking the options")

    monkeypatch.setattr(sweep, "run_sweep", must_not_run)


def test_cli_bench_device_errors(capsys, monkeypatch):
    _no_sweep(monkeypatch)
    cli_error(capsys, [*TINY_BENCH, "--device", "nosuch"], "--device", "unknown device 'nosuch'")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cli_error(capsys, [*TINY_BENCH, "--device", "cuda"], "--device", "CUDA is not available")
    cli_error(capsys, [*TINY_BENCH, "--device", "cuda:3"], "--device", "CUDA is not available")


def test_cli_bench_out_that_is_a_file(tmp_path, capsys, monkeypatch):
    _no_sweep(monkeypatch)
    (tmp_path / "file").write_text("x")
    cli_error(capsys, [*TINY_BENCH, "--out", str(tmp_path / "file")], "--out", "is an existing file")


def test_cli_bench_out_read_only(capsys, monkeypatch, read_only_dir):
    _no_sweep(monkeypatch)
    read_only_dir.freeze()
    cli_error(capsys, [*TINY_BENCH, "--out", str(read_only_dir.path / "res")], "--out", "cannot be created")


def test_cli_bench_out_on_a_full_disk(tmp_path):
    ((rc, err),) = run_cli_with_file_size_limit([[*TINY_BENCH, "--out", str(tmp_path / "res")]], limit_bytes=300)
    assert_one_error_line(rc, err, "(output of --out)", str(tmp_path / "res"))
    assert not [p.name for p in (tmp_path / "res").iterdir() if p.stat().st_size == 0 or "tmp" in p.name]


def test_cli_bench_from_results_errors(tmp_path, capsys):
    cli_error(capsys, ["bench", "--from-results", str(tmp_path / "nothing"), "--no-plots"], "--from-results")

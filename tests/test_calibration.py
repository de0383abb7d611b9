"""Calibrated dispatch: storage, lookup, the threshold choice, and the `taylorshift calibrate` command."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from conftest import cli_error
from taylorshift import resolve_backend
from taylorshift.analysis import crossover_exact
from taylorshift.bench.calibrate import calibrate_head_dim, calibration_entries, choose_threshold, default_lengths
from taylorshift.cli import main
from taylorshift.ops import calibration
from taylorshift.ops.efficient import DEFAULT_FORM


def _store(d, n0, dtype="float32"):
    calibration.save_entries({calibration.entry_key("cpu", dtype, d): {"n0": n0, "n0_model": crossover_exact(
        d, form=DEFAULT_FORM), "max_slowdown": 1.0}})


def _choice(n, d=8, dtype=torch.float32):
    q = torch.randn(1, 1, n, d, dtype=dtype)
    return resolve_backend(q, q, q)


def test_without_calibration_auto_uses_the_model():
    n_model = crossover_exact(8, form=DEFAULT_FORM)  # 45
    assert _choice(40) == "direct" and _choice(50) == "efficient"
    assert calibration.load_entries() == {}
    assert n_model == 45


def test_calibration_moves_the_crossover_and_is_keyed_by_dtype_and_d():
    _store(8, 400.0)
    assert _choice(300) == "direct" and _choice(500) == "efficient"
    assert _choice(300, dtype=torch.float64) == "efficient"  # no float64 entry: the model (45)
    assert _choice(300, d=4) == "efficient"  # no d=4 entry
    # L != S: the model rescaled by the measured ratio
    q, k = torch.randn(1, 1, 10, 8), torch.randn(1, 1, 5000, 8)
    assert resolve_backend(q, k, k) == "direct"  # few queries: direct costs 10·5000, efficient ~ 5010·F·ρ


def test_calibration_can_be_disabled(monkeypatch):
    _store(8, 400.0)
    monkeypatch.setenv("TAYLORSHIFT_CALIBRATION", "off")
    assert _choice(300) == "efficient"


def test_damaged_file_is_ignored():
    path = calibration.calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with pytest.warns(calibration.CalibrationWarning):
        assert calibration.load_entries() == {}
    assert _choice(50) == "efficient"
    path.write_text(json.dumps({"version": 1, "entries": {"cpu/float32/d8": {"n0": "x"}}}))
    with pytest.warns(calibration.CalibrationWarning):
        assert _choice(50) == "efficient"


def test_save_merges_and_is_atomic():
    _store(8, 100.0)
    _store(16, 500.0)
    data = json.loads(calibration.calibration_path().read_text())
    assert set(data["entries"]) == {"cpu/float32/d8", "cpu/float32/d16"}
    assert not [p.name for p in calibration.cache_dir().iterdir() if p.name != "calibration.json"]  # no temp files


@pytest.mark.parametrize(
    "points,expected_range",
    [
        # clean crossing between 200 and 400
        ([(100, 1.0, 2.0), (200, 2.0, 3.0), (400, 8.0, 6.0), (800, 32.0, 12.0)], (200, 400)),
        # efficient always faster: threshold below every point
        ([(100, 2.0, 1.0), (200, 4.0, 2.0)], (0, 100)),
        # direct always faster: threshold above every point
        ([(100, 1.0, 2.0), (200, 2.0, 4.0)], (200, 10**9)),
    ],
)
def test_choose_threshold(points, expected_range):
    n0, worst = choose_threshold(points)
    assert expected_range[0] <= n0 <= expected_range[1]
    assert worst == pytest.approx(1.0)


def test_choose_threshold_minimises_the_worst_slowdown_on_noisy_curves():
    # a noisy dip at 150 (efficient 3 % faster) must not drag the threshold below a clear direct win at 200
    pts = [(100, 1.0, 1.5), (150, 1.0, 0.97), (200, 1.0, 1.2), (400, 2.0, 1.0), (800, 8.0, 2.0)]
    n0, worst = choose_threshold(pts)
    assert 200 < n0 < 400
    assert worst == pytest.approx(1.0 / 0.97)
    for n, td, te in pts:  # never more than 10 % slower than the faster backend at a measured N
        assert (te if n > n0 else td) <= 1.1 * min(td, te)


def test_calibrate_head_dim_with_a_fake_timer():
    """The measurement loop with a synthetic clock: direct ~ N², efficient ~ 300·N."""

    def fake_timer(fn, repeats):
        fn()  # the real call runs, so the shapes are exercised
        return float(fake_timer.next.pop(0))

    lengths = [64, 128, 256, 512, 1024]
    fake_timer.next = [x for n in lengths for x in (n * n, 300 * n)]
    result = calibrate_head_dim(8, heads=1, lengths=lengths, repeats=1, timer=fake_timer)
    assert 256 < result.n0 < 512 and result.max_slowdown == pytest.approx(1.0)
    entries = calibration_entries([result])
    assert list(entries) == ["cpu/float32/d8"] and entries["cpu/float32/d8"]["points"][0][0] == 64
    assert len(default_lengths(16)) == 13


def test_cli_calibrate_stores_and_shows(capsys):
    assert main(["calibrate", "--head-dims", "4", "--heads", "1", "--lengths", "16", "64", "256",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "N0 measured" in out and "stored in" in out
    assert "cpu/float32/d4" in calibration.load_entries()
    assert main(["calibrate", "--show"]) == 0
    assert "cpu/float32/d4" in capsys.readouterr().out


def test_cli_calibrate_dry_run_stores_nothing(capsys):
    assert main(["calibrate", "--head-dims", "4", "--heads", "1", "--lengths", "16", "32", "--repeats", "1",
                 "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert calibration.load_entries() == {}


# ------------------------------------------------------------------------------------ a damaged store
def _write_file(payload) -> None:
    path = calibration.calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))


def _entry(n0, d=8):
    return {"n0": n0, "n0_model": crossover_exact(d, form=DEFAULT_FORM), "max_slowdown": 1.0}


def test_calibrate_with_the_variable_off_keeps_the_other_entries(capsys, monkeypatch):
    _store(8, 400.0)
    _store(16, 900.0)
    monkeypatch.setenv("TAYLORSHIFT_CALIBRATION", "off")
    assert main(["calibrate", "--head-dims", "4", "--heads", "1", "--lengths", "16", "32", "--repeats", "1"]) == 0
    assert "ignores it while TAYLORSHIFT_CALIBRATION is off" in capsys.readouterr().out
    stored = json.loads(calibration.calibration_path().read_text())["entries"]
    assert set(stored) == {"cpu/float32/d4", "cpu/float32/d8", "cpu/float32/d16"}
    assert stored["cpu/float32/d16"]["n0"] == 900.0


@pytest.mark.parametrize("entries", [[1, 2], "x", None, 3])
def test_entries_that_are_not_a_mapping_never_break_attention(entries):
    _write_file({"version": 1, "entries": entries})
    with pytest.warns(UserWarning, match=re.escape(str(calibration.calibration_path()))):
        assert _choice(50) == "efficient" and _choice(40) == "direct"  # the analytic model (45)


def test_damaged_file_warns_once_with_its_path_and_keeps_valid_entries():
    path = calibration.calibration_path()
    _write_file("{not json")
    with pytest.warns(UserWarning, match=re.escape(str(path)) + ".*not valid JSON"):
        assert _choice(50) == "efficient"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the unchanged file does not warn again
        assert _choice(50) == "efficient"
    _write_file({"version": 1, "entries": {"cpu/float32/d8": _entry(400.0), "cpu/float32/d16": {"n0": "x"},
                                           "bad key": _entry(10.0)}})
    with pytest.warns(UserWarning, match=re.escape(str(path)) + ".*1 valid entr"):
        assert _choice(300) == "direct" and _choice(500) == "efficient"  # the valid d=8 entry is used


@pytest.mark.parametrize("n0", [float("inf"), float("nan"), -400.0, 0.0, "400", True, None])
def test_an_invalid_n0_is_ignored_with_a_warning(n0):
    _write_file(json.dumps({"version": 1, "entries": {"cpu/float32/d8": _entry(n0)}}))
    with pytest.warns(UserWarning, match="n0"):
        assert _choice(50) == "efficient" and _choice(40) == "direct"  # the model, not "always direct"


def test_save_refuses_invalid_entries():
    with pytest.raises(ValueError, match="n0"):
        calibration.save_entries({"cpu/float32/d8": _entry(float("inf"))})


@pytest.mark.parametrize("value, used", [("off ", False), (" OFF", False), ("0", False), ("No", False),
                                         ("false", False), ("on", True), (" yes ", True), ("1", True),
                                         ("TRUE", True), ("", True)])
def test_the_variable_accepts_the_documented_values(monkeypatch, value, used):
    _store(8, 400.0)
    monkeypatch.setenv("TAYLORSHIFT_CALIBRATION", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _choice(300) == ("direct" if used else "efficient")


@pytest.mark.parametrize("value", ["maybe", "of", "2", "disabled"])
def test_an_unknown_value_of_the_variable_warns_and_the_cli_refuses_it(monkeypatch, capsys, value):
    _store(8, 400.0)
    monkeypatch.setenv("TAYLORSHIFT_CALIBRATION", value)
    monkeypatch.setattr(calibration, "_warned_env", set())
    with pytest.warns(UserWarning, match=f"TAYLORSHIFT_CALIBRATION={value!r}"):
        assert _choice(300) == "efficient"  # attention still works; the file is not used
    cli_error(capsys, ["calibrate", "--show"], "TAYLORSHIFT_CALIBRATION", repr(value))


def test_calibrate_checks_the_store_before_measuring(capsys, monkeypatch):
    import taylorshift.bench.calibrate as calibrate_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("measured before checking where to store")

    monkeypatch.setattr(calibrate_module, "calibrate_head_dim", must_not_run)
    calibration.calibration_path().mkdir(parents=True)
    cli_error(capsys, ["calibrate", "--head-dims", "4", "--heads", "1", "--lengths", "16", "--repeats", "1"],
              "calibration file", "is a directory")


def test_calibrate_device_errors(capsys, monkeypatch):
    cli_error(capsys, ["calibrate", "--device", "nosuch", "--head-dims", "4"], "--device", "nosuch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cli_error(capsys, ["calibrate", "--device", "cuda", "--head-dims", "4"], "--device", "CUDA is not available")

"""The command line's one error path (one line on stderr, exit status 2, --debug for the traceback), the
argparse types the subcommands share, the output checks made before any work, and the atomic writes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from conftest import assert_one_error_line, cli_error, run_cli_with_file_size_limit
from taylorshift.cli import main

SCALING = ["scaling", "--n", "16", "--d", "4", "--samples", "1", "--no-plot"]


# ------------------------------------------------------------------------------------------- demo
@pytest.mark.parametrize("argv, option", [
    (["--head-dims", "-4"], "--head-dims"),
    (["--head-dims", "0"], "--head-dims"),
    (["--lengths", "-10"], "--lengths"),
    (["--lengths", "16", "0"], "--lengths"),
    (["--heads", "0"], "--heads"),
    (["--repeats", "-1"], "--repeats"),
])
def test_demo_rejects_non_positive_sizes(capsys, argv, option):
    cli_error(capsys, ["demo", *argv], f"argument {option}", "positive integer")


# --------------------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "warm"])
def test_scaling_temperature_must_be_finite_and_positive(capsys, tmp_path, value):
    cli_error(capsys, [*SCALING, "--out", str(tmp_path), "--temperature", value], "--temperature")


def test_scaling_temperature_is_checked_by_the_library_too():
    from taylorshift.bench.scaling import measure_scaling

    with pytest.raises(ValueError, match="temperature"):
        measure_scaling([4], [2], 1, temperature=float("nan"))


def test_scaling_out_read_only(capsys, read_only_dir):
    read_only_dir.freeze()
    cli_error(capsys, [*SCALING, "--out", str(read_only_dir.path / "res")], "--out", "cannot be created")


def test_scaling_out_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    cli_error(capsys, [*SCALING, "--out", str(tmp_path / "file")], "--out", "is an existing file")


def test_scaling_out_on_a_full_disk(tmp_path):
    ((rc, err),) = run_cli_with_file_size_limit([[*SCALING, "--out", str(tmp_path / "res")]], limit_bytes=300)
    assert_one_error_line(rc, err, "(output of --out)", str(tmp_path / "res"))
    assert not [p.name for p in (tmp_path / "res").iterdir()]  # nothing half-written


# ------------------------------------------------------------------------------------ other commands
def test_data_prepare_into_a_read_only_cache(capsys, read_only_dir):
    read_only_dir.freeze()
    cli_error(capsys, ["data", "prepare", "listops", "--size", "10", "--cache-dir", str(read_only_dir.path / "c")],
              "--cache-dir", "cannot be created")


def test_usage_errors_are_one_line(capsys):
    cli_error(capsys, ["crossover", "--head-dims", "0"], "argument --head-dims", "--help")
    cli_error(capsys, ["bench", "--mode", "sideways"], "argument --mode", "invalid choice")
    cli_error(capsys, ["data", "prepare", "nosuch"], "argument task", "invalid choice")
    cli_error(capsys, ["generate"], "--checkpoint")  # a required option
    cli_error(capsys, ["eval", "--checkpoint", "x", "--batch-size", "0"], "--batch-size")


def test_generate_with_a_missing_checkpoint(capsys, tmp_path):
    cli_error(capsys, ["generate", "--checkpoint", str(tmp_path / "none.safetensors")], "no checkpoint at")


# ------------------------------------------------------------------------------------ the mechanism
def test_debug_shows_the_traceback(capsys, monkeypatch):
    from taylorshift.cli import CLIError

    with pytest.raises(CLIError, match="--head-dims"):
        main(["demo", "--head-dims", "0", "--debug"])
    with pytest.raises(CLIError):
        main(["--debug", "demo", "--head-dims", "0"])
    monkeypatch.setenv("TAYLORSHIFT_DEBUG", "1")
    with pytest.raises(CLIError):
        main(["demo", "--head-dims", "0"])
    monkeypatch.setenv("TAYLORSHIFT_DEBUG", "sometimes")
    cli_error(capsys, ["demo", "--head-dims", "4"], "TAYLORSHIFT_DEBUG='sometimes'")


def test_debug_in_a_subprocess_prints_the_traceback():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-m", "taylorshift", "demo", "--lengths", "-10"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("taylorshift demo: error: argument --lengths")
    done = subprocess.run([sys.executable, "-m", "taylorshift", "demo", "--lengths", "-10", "--debug"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_shared_argparse_types():
    from taylorshift.cli import non_negative_float, non_negative_int, positive_float, positive_int

    assert positive_int("3") == 3 and non_negative_int("0") == 0
    assert positive_float("1e-3") == 1e-3 and non_negative_float("0") == 0.0
    for parse, bad in [(positive_int, "0"), (positive_int, "1.5"), (non_negative_int, "-1"),
                       (positive_float, "inf"), (positive_float, "nan"), (positive_float, "0"),
                       (positive_float, "-inf"), (non_negative_float, "-1e-9"), (non_negative_float, "NaN")]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    """Only the expected error types become one line; a bug still shows where it is."""
    import taylorshift.demo

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(taylorshift.demo, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["demo"])


# ------------------------------------------------------------------------------------ atomic writes
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_leaves_nothing_on_failure_and_cleans_stale_temporaries(tmp_path):
    from taylorshift import files

    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), files.atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    stale = tmp_path / f".out.json.tmp{_dead_pid()}"
    stale.write_text("left by a killed run")
    alive = tmp_path / f".out.json.tmp{os.getppid()}"  # a running process's temporary is not touched
    alive.write_text("being written")
    files.atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and not stale.exists() and alive.exists()
    assert target.stat().st_mode & 0o777 == files.file_mode()
    with pytest.raises(ValueError, match="mode"), files.atomic_open(target, "a"):
        pass


def test_write_problems(tmp_path):
    from taylorshift import files

    (tmp_path / "f").write_text("x")
    assert files.dir_write_problem(tmp_path / "new" / "deeper") is None
    assert "existing file" in files.dir_write_problem(tmp_path / "f")
    assert "is a file" in files.dir_write_problem(tmp_path / "f" / "sub")
    assert files.file_write_problem(tmp_path / "g.json") is None
    assert "does not exist" in files.file_write_problem(tmp_path / "no" / "g.json")
    assert files.file_write_problem(tmp_path / "no" / "g.json", create_parents=True) is None
    assert "is a directory" in files.file_write_problem(tmp_path)

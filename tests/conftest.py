"""Shared test helpers: tolerances per dtype, input factories and a gradient check."""

from __future__ import annotations

import os

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


# ------------------------------------------------------------------------------------------ the CLI
def cli_error(capsys, argv: list[str], *needles: str, only_line: bool = True) -> str:
    """Run ``taylorshift argv`` in-process and check the CLI's error contract: exit status 2, one line
    ``taylorshift <command>: error: ...`` on stderr (the only line, if ``only_line``; otherwise the last one)
    that contains every string of ``needles``, and no traceback. Returns that line."""
    from taylorshift.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    line = assert_one_error_line(rc, err, *needles)
    if only_line:
        assert err.strip() == line, f"more than the error on stderr: {err[-2000:]}"
    assert line.startswith(f"taylorshift {argv[0]}: error: "), line
    return line


class ReadOnlyDir:
    """A folder to fill and then make read-only (:meth:`freeze`): ``chmod 555`` for a normal user; as root,
    whom permissions do not stop, a tmpfs mounted there and remounted read-only (the test is skipped where
    root may not mount)."""

    def __init__(self, path) -> None:
        import os
        import subprocess

        self.path, self.mounted = path, False
        path.mkdir()
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], capture_output=True)
            if done.returncode != 0:
                pytest.skip("as root, a read-only folder needs a tmpfs mount, which is not permitted here")
            self.mounted = True

    def freeze(self) -> None:
        import subprocess

        if self.mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)
        else:
            self.path.chmod(0o555)

    def close(self) -> None:
        import subprocess

        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)  # lazy: even if a file is open
        else:
            self.path.chmod(0o755)


@pytest.fixture
def read_only_dir(tmp_path):
    """A :class:`ReadOnlyDir` at ``tmp_path / "ro"``, cleaned up after the test."""
    d = ReadOnlyDir(tmp_path / "ro")
    yield d
    d.close()


def run_cli_with_file_size_limit(argvs: list[list[str]], limit_bytes: int) -> list[tuple[int, str]]:
    """Run ``taylorshift argv`` for each of ``argvs`` in a subprocess whose writes to files stop at
    ``limit_bytes`` (``RLIMIT_FSIZE``: a write beyond it fails with EFBIG, as one on a full disk fails with
    ENOSPC). Returns ``(exit status, stderr)`` per command; an uncaught exception gives status -1 and its
    traceback."""
    import json
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    import taylorshift

    code = textwrap.dedent(f"""
        import contextlib, io, json, resource, signal, sys, traceback
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        from taylorshift.cli import main
        results = []
        for argv in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = main(argv)
                except BaseException:
                    traceback.print_exc(file=err)
                    rc = -1
            results.append([rc, err.getvalue()])
        print(json.dumps(results))
    """)
    src = str(Path(taylorshift.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def assert_one_error_line(rc: int, err: str, *needles: str) -> str:
    """The error contract for output captured elsewhere (see :func:`cli_error`): status 2, the last stderr line
    is the only error line, it holds ``needles``, and there is no traceback."""
    assert rc == 2, f"exit status {rc}, stderr: {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


# Hypothesis profiles. "ci" (the default) is derandomised: every run checks the same examples, so a failure is
# reproducible and never luck; print_blob shows how to replay one. "explore" (HYPOTHESIS_PROFILE=explore) draws
# fresh random examples, more of them, for local bug hunting (add --hypothesis-seed=N to replay a run); "dev" is
# random at the CI size. Each profile states derandomize itself: with the CI variable set, Hypothesis makes
# derandomised settings the default that unstated fields inherit.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # a dev dependency: the property tests import it themselves
    _hypothesis_settings = None
if _hypothesis_settings is not None:
    _hypothesis_settings.register_profile(
        "ci", max_examples=150, derandomize=True, print_blob=True, deadline=None, database=None
    )
    _hypothesis_settings.register_profile(
        "dev", max_examples=150, derandomize=False, print_blob=True, deadline=None
    )
    _hypothesis_settings.register_profile(
        "explore", max_examples=2000, derandomize=False, print_blob=True, deadline=None
    )
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

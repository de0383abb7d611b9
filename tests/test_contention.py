"""benchmarks/contention.py and benchmarks/precision.py at tiny sizes, and the operation count that contention
scales with (one parallel region per computing operation)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_efficient_operations_per_chunk_do_not_grow_with_d():
    cont = _load("contention")
    rows = {d: cont.count_launches("efficient", 2048, d, cont.DTYPES["float32"]) for d in (16, 64)}
    per_chunk = {d: r["launches"] / r["chunks_per_pass"] for d, r in rows.items()}
    # 8 row blocks: about a dozen operations per chunk and pass whatever d (was d + 4 per pass)
    assert per_chunk[64] < 1.3 * per_chunk[16] + 4, rows
    assert rows[16]["row_blocks"] == rows[64]["row_blocks"] == 8
    assert cont.count_launches("sdpa", 256, 16, cont.DTYPES["float32"])["launches"] == 1


def test_contention_script_runs_tiny(tmp_path):
    out = tmp_path / "c.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "contention.py"),
        "--n",
        "64",
        "--dims",
        "4",
        "--backends",
        "efficient",
        "sdpa",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--count",
        "--env",
        "GOMP_SPINCOUNT=1000",
        "--chunk-size",
        "16",
        "--json",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    data = json.loads(out.read_text())
    assert {r["backend"] for r in data["rows"]} == {"efficient", "sdpa"}
    assert all(r["slowdown"] > 0 and len(r["concurrent_ms"]) == 2 for r in data["rows"])
    assert all(r["omp_wait_policy"] == "inherited" and len(r["rounds"]) == 1 for r in data["rows"])
    assert data["counts"] and data["meta"]["n"] == 64
    assert data["meta"]["env"] == ["GOMP_SPINCOUNT=1000"] and data["meta"]["chunk_size"] == 16
    efficient = [c for c in data["counts"] if c["backend"] == "efficient"]
    assert efficient and all(c["chunk"] == 16 and c["chunks_per_pass"] == 4 for c in efficient)


def test_contention_script_compares_wait_policies(tmp_path):
    """Two wait policies side by side: one row each, with their own alone and concurrent timings."""
    out, md = tmp_path / "c.json", tmp_path / "c.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "contention.py"), "--n", "64", "--dims", "4", "--backends",
           "efficient", "--repeats", "1", "--threads", "1", "--omp-wait-policy", "inherit", "passive",
           "--json", str(out), "--markdown", str(md)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    assert [r["omp_wait_policy"] for r in rows] == ["inherited", "passive"]
    assert all(r["alone_ms"] > 0 and r["slowdown"] > 0 for r in rows)
    assert "| efficient | 4 | passive |" in md.read_text()
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "contention.py"), "--env", "NOVALUE"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--env takes KEY=VALUE" in bad.stderr


@pytest.mark.slow
def test_precision_script_runs_tiny(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "precision.py"),
        "--n",
        "128",
        "--dims",
        "4",
        "32",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--skip-contention",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    data = json.loads((tmp_path / "precision.json").read_text())
    assert len(data["precision"]) == 3 * 3  # three input dtypes x (d = 4, 32 forward, 32 train)
    assert len(data["matmul"]) == 2 and all(r["bfloat16"] > 0 for r in data["matmul"])
    assert "| inputs | d | mode |" in (tmp_path / "precision.md").read_text()

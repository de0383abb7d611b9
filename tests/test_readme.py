"""The README's Python examples run as written, and its two commands match .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(_python_blocks()) >= 1


def test_readme_examples_run():
    for block in _python_blocks():
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = "scripts/setup.sh dev && .venv/bin/python -m pytest -q"
    assert cmd in readme and cmd in ci

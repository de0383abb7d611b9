#!/usr/bin/env bash
# Create .venv (if missing) and install taylorshift into it.
#   scripts/setup.sh        -> runtime + benchmark extras
#   scripts/setup.sh dev    -> also the test tools (pytest, hypothesis, ruff) and the PyPI attention baselines
# torch is pinned to 2.13.0 here: on the project's machines that is the local CPU build;
# the package itself accepts torch>=2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="bench"
[ "${1:-}" = "dev" ] && extra="dev,baselines"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra]"

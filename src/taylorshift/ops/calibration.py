"""Stored crossover calibrations that ``backend="auto"`` uses instead of the analytic model.

``taylorshift calibrate`` measures, for each head size, where efficient overtakes direct on this machine
and stores the result here: a small JSON file ``calibration.json`` in the cache directory
(``$TAYLORSHIFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/taylorshift``, else ``~/.cache/taylorshift``).
Set ``TAYLORSHIFT_CALIBRATION=off`` to ignore it.

An entry is keyed by device type, compute dtype and head size ``d`` and holds the measured crossover
``n0`` (for ``L = S = N``, ``dv = d``) and the analytic ``n0_model`` of the implemented feature form.
Their ratio ``ρ = n0 / n0_model`` rescales the analytic FLOP model, so the calibrated rule
``ρ · flops_efficient(L, S, d, dv) < flops_direct(L, S, d, dv)`` also covers ``L ≠ S`` and ``dv ≠ d``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

FILENAME = "calibration.json"
VERSION = 1

_cache: dict[str, Any] = {"path": None, "mtime": None, "entries": {}}


def cache_dir() -> Path:
    """The directory that holds ``calibration.json`` (not created here)."""
    if os.environ.get("TAYLORSHIFT_CACHE_DIR"):
        return Path(os.environ["TAYLORSHIFT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "taylorshift"


def calibration_path() -> Path:
    return cache_dir() / FILENAME


def entry_key(device_type: str, dtype: str, d: int) -> str:
    """``"cpu/float32/d32"``; ``dtype`` without the ``torch.`` prefix."""
    return f"{device_type}/{dtype.removeprefix('torch.')}/d{d}"


def load_entries(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """All stored entries (empty if there is no file, it is disabled, or it cannot be read)."""
    if os.environ.get("TAYLORSHIFT_CALIBRATION", "").lower() in ("off", "0", "false", "no"):
        return {}
    path = calibration_path() if path is None else path
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return {}
    if _cache["path"] == path and _cache["mtime"] == mtime:
        return _cache["entries"]
    try:
        data = json.loads(path.read_text())
        entries = data["entries"] if data.get("version") == VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        entries = {}  # a damaged file must never break attention; `taylorshift calibrate` rewrites it
    _cache.update(path=path, mtime=mtime, entries=entries)
    return entries


def lookup_ratio(device_type: str, dtype: str, d: int) -> float | None:
    """``ρ = n0 / n0_model`` for this device type, dtype and head size, or None."""
    entry = load_entries().get(entry_key(device_type, dtype, d))
    try:
        ratio = float(entry["n0"]) / float(entry["n0_model"])
    except (TypeError, KeyError, ValueError, ZeroDivisionError):
        return None
    return ratio if ratio > 0 else None


def save_entries(new_entries: dict[str, dict[str, Any]], path: Path | None = None) -> Path:
    """Merge ``new_entries`` into the stored file, written atomically (temp file + rename)."""
    path = calibration_path() if path is None else path
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = dict(load_entries(path)) if path.exists() else {}
    entries.update(new_entries)
    payload = json.dumps({"version": VERSION, "entries": entries}, indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""Stored crossover calibrations that ``backend="auto"`` uses instead of the analytic model.

``taylorshift calibrate`` measures, for each head size, where efficient overtakes direct on this machine
and stores the result here: a small JSON file ``calibration.json`` in the cache directory
(``$TAYLORSHIFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/taylorshift``, else ``~/.cache/taylorshift``).

``TAYLORSHIFT_CALIBRATION`` switches its use by ``auto``: unset, empty, ``1``, ``on``, ``true`` or ``yes``
(any case, spaces ignored) use the stored file; ``0``, ``off``, ``false`` or ``no`` ignore it (``auto`` then
follows the analytic model). Any other value is a mistake: attention warns once and ignores the file,
``taylorshift calibrate`` refuses to run. The variable never affects what ``taylorshift calibrate`` stores:
new entries are always merged with those on disk.

An entry is keyed by device type, compute dtype and head size ``d`` and holds the measured crossover
``n0`` (for ``L = S = N``, ``dv = d``) and the analytic ``n0_model`` of the implemented feature form.
Their ratio ``ρ = n0 / n0_model`` rescales the analytic FLOP model, so the calibrated rule
``ρ · flops_efficient(L, S, d, dv) < flops_direct(L, S, d, dv)`` also covers ``L ≠ S`` and ``dv ≠ d``.

A second section, ``precision``, holds what ``taylorshift calibrate --precision`` measured for half-precision
inputs (key ``<device>/<bfloat16|float16>/d<head size>``): ``choice`` (the input's format when its
low-precision efficient path was faster at every measured length, else ``"float32"``) and the timings. It
decides ``precision="auto"`` (:mod:`taylorshift.ops.precision`); ``TAYLORSHIFT_CALIBRATION`` switches it like
the crossovers.

The file is validated when read, entry by entry: a damaged file never breaks attention. What is invalid
(unparsable JSON, an unknown version, ``entries`` that is not a mapping, a malformed key, an ``n0`` or
``n0_model`` that is not a finite positive number) is ignored with one warning per file version naming the
path and the problem; valid entries beside it are still used.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from taylorshift.files import atomic_open
from taylorshift.switches import parse_switch

FILENAME = "calibration.json"
VERSION = 1
ENV_VAR = "TAYLORSHIFT_CALIBRATION"
_KEY = re.compile(r"[a-z_]+/[a-z0-9_]+/d[1-9][0-9]*")

PRECISION_SECTION = "precision"
_LOW = ("bfloat16", "float16")

_cache: dict[str, Any] = {"path": None, "mtime": None, "entries": {}, "precision": {}}
_warned_env: set[str] = set()


class CalibrationWarning(UserWarning):
    """The calibration file (or ``TAYLORSHIFT_CALIBRATION``) is invalid; what is invalid is ignored."""


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


def calibration_enabled(strict: bool = False) -> bool:
    """Whether ``auto`` uses the stored file, from ``TAYLORSHIFT_CALIBRATION`` (see the module docstring).

    Args:
        strict: raise on an invalid value instead of warning (once per value) and returning False.

    Raises:
        ValueError: with ``strict``, an invalid value.
    """
    value = os.environ.get(ENV_VAR)
    try:
        return parse_switch(ENV_VAR, value, default=True)
    except ValueError as err:
        if strict:
            raise
        if value not in _warned_env:
            _warned_env.add(value)
            warnings.warn(f"{err}; the stored calibration is not used", CalibrationWarning, stacklevel=3)
        return False


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def entry_problem(key: Any, entry: Any) -> str | None:
    """Why ``key: entry`` is not a usable calibration entry, or None."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        return f"key {key!r} is not of the form <device>/<dtype>/d<head size>"
    if not isinstance(entry, dict):
        return f"entry {key!r} is not a mapping"
    for name in ("n0", "n0_model"):
        if not _positive_number(entry.get(name)):
            return f"entry {key!r} has {name} = {entry.get(name)!r}, not a finite positive number"
    slowdown = entry.get("max_slowdown", 1.0)
    if not _positive_number(slowdown):
        return f"entry {key!r} has max_slowdown = {slowdown!r}, not a finite positive number"
    return None


def precision_problem(key: Any, entry: Any) -> str | None:
    """Why ``key: entry`` is not a usable entry of the precision section, or None."""
    if not isinstance(key, str) or not _KEY.fullmatch(key) or key.split("/")[1] not in _LOW:
        return f"precision key {key!r} is not of the form <device>/<bfloat16|float16>/d<head size>"
    if not isinstance(entry, dict):
        return f"precision entry {key!r} is not a mapping"
    if entry.get("choice") not in ("float32", key.split("/")[1]):
        return f"precision entry {key!r} has choice = {entry.get('choice')!r}, not 'float32' or the key's dtype"
    return None


def _valid(section: Any, name: str, check) -> tuple[dict[str, dict[str, Any]], list[str]]:
    if not isinstance(section, dict):
        return {}, [f"{name!r} is a {type(section).__name__}, not a mapping"]
    valid, problems = {}, []
    for key, entry in section.items():
        problem = check(key, entry)
        if problem is None:
            valid[key] = entry
        else:
            problems.append(problem)
    return valid, problems


def _parse(text: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """Valid crossover and precision entries of a file's text, and the problems found."""
    try:
        data = json.loads(text)
    except ValueError as err:
        return {}, {}, [f"not valid JSON ({err})"]
    if not isinstance(data, dict):
        return {}, {}, [f"holds a {type(data).__name__}, not a mapping"]
    if data.get("version") != VERSION:
        return {}, {}, [f"has version {data.get('version')!r}, expected {VERSION}"]
    entries, problems = _valid(data.get("entries"), "entries", entry_problem)
    precision, more = _valid(data.get(PRECISION_SECTION, {}), PRECISION_SECTION, precision_problem)
    return entries, precision, problems + more


def read_entries(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The valid entries stored in ``path`` (default :func:`calibration_path`), whatever
    ``TAYLORSHIFT_CALIBRATION`` says; empty if there is no file. Invalid parts are ignored with one
    :class:`CalibrationWarning` per file version. The result is cached until the file changes: do not
    modify it."""
    path = calibration_path() if path is None else path
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        _cache.update(path=None, mtime=None, entries={}, precision={})
        return {}
    if _cache["path"] == path and _cache["mtime"] == mtime:
        return _cache["entries"]
    try:
        entries, precision, problems = _parse(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        entries, precision, problems = {}, {}, [f"cannot be read ({err})"]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        warnings.warn(
            f"calibration file {path}: {problems[0]}{more}; ignoring what is invalid "
            f"({len(entries)} valid entries kept). Rerun 'taylorshift calibrate' to rewrite it.",
            CalibrationWarning,
            stacklevel=3,
        )
    _cache.update(path=path, mtime=mtime, entries=entries, precision=precision)
    return entries


def read_precision(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The valid entries of the precision section of ``path`` (as :func:`read_entries`, same cache)."""
    path = calibration_path() if path is None else path
    read_entries(path)
    return _cache["precision"] if _cache["path"] == path else {}


def lookup_precision(device_type: str, dtype: str, d: int) -> str | None:
    """The stored ``choice`` (``"float32"`` or ``dtype``) for half-precision inputs of ``dtype`` and head size
    ``d``, or None (no entry, or ``TAYLORSHIFT_CALIBRATION`` off)."""
    if not calibration_enabled():
        return None
    entry = read_precision().get(entry_key(device_type, dtype, d))
    return None if entry is None else entry["choice"]


def load_entries(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The entries ``auto`` uses: :func:`read_entries`, or nothing when ``TAYLORSHIFT_CALIBRATION`` is off
    (or invalid)."""
    if not calibration_enabled():
        return {}
    return read_entries(path)


def lookup_ratio(device_type: str, dtype: str, d: int) -> float | None:
    """``ρ = n0 / n0_model`` for this device type, dtype and head size, or None."""
    entry = load_entries().get(entry_key(device_type, dtype, d))
    if entry is None:
        return None
    return float(entry["n0"]) / float(entry["n0_model"])


def save_entries(new_entries: dict[str, dict[str, Any]], path: Path | None = None) -> Path:
    """Merge ``new_entries`` into the stored file (its valid entries are kept whatever
    ``TAYLORSHIFT_CALIBRATION`` says), written atomically.

    Raises:
        ValueError: an entry of ``new_entries`` is invalid (see :func:`entry_problem`).
        OSError: the file cannot be written.
    """
    for key, entry in new_entries.items():
        problem = entry_problem(key, entry)
        if problem is not None:
            raise ValueError(f"cannot store calibration: {problem}")
    path = calibration_path() if path is None else path
    entries = dict(read_entries(path))
    entries.update(new_entries)
    return _write(path, entries, dict(read_precision(path)))


def save_precision(new_entries: dict[str, dict[str, Any]], path: Path | None = None) -> Path:
    """Merge ``new_entries`` into the precision section of the stored file (the crossovers are kept).

    Raises:
        ValueError: an entry is invalid (see :func:`precision_problem`).
        OSError: the file cannot be written.
    """
    for key, entry in new_entries.items():
        problem = precision_problem(key, entry)
        if problem is not None:
            raise ValueError(f"cannot store calibration: {problem}")
    path = calibration_path() if path is None else path
    precision = dict(read_precision(path))
    precision.update(new_entries)
    return _write(path, dict(read_entries(path)), precision)


def _write(path: Path, entries: dict[str, Any], precision: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": VERSION, "entries": entries}
    if precision:
        data[PRECISION_SECTION] = precision
    with atomic_open(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
    return path

"""Where prepared data lives, and the manifest of sha256 checksums that vouches for it.

The cache is a directory outside the repository: ``--cache-dir`` if given, else ``$TAYLORSHIFT_DATA_DIR``, else
``~/.cache/taylorshift/data``. Every file a ``prepare`` step fetches or generates is recorded in
``<cache>/manifest.json`` with its sha256, size and the parameters that produced it, so ``taylorshift data verify``
can tell a complete cache from a corrupted or hand-edited one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from taylorshift.files import file_mode

ENV_VAR = "TAYLORSHIFT_DATA_DIR"
MANIFEST = "manifest.json"


class DataSourceError(RuntimeError):
    """A data source could not be obtained (a tool or file is missing); the message says what to install or do."""


class DataNotPreparedError(FileNotFoundError):
    """A dataset's files are not in the cache; the message names the ``taylorshift data prepare`` command."""


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the value it must have."""


def _readable(path: str | os.PathLike) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the usual permissions (0666 less the umask)."""
    os.chmod(path, file_mode())


def default_cache_dir() -> Path:
    """``$TAYLORSHIFT_DATA_DIR`` if set, else ``~/.cache/taylorshift/data`` (not created)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "taylorshift" / "data"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else :func:`default_cache_dir`; returned as an absolute path (not created)."""
    return (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()).absolute()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The cache's manifest (``{"files": {relative path: entry}}``); empty if there is none yet."""
    path = resolve_cache_dir(cache_dir) / MANIFEST
    if not path.exists():
        return {"files": {}}
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest.setdefault("files", {})
    return manifest


def record_files(cache_dir: str | os.PathLike | None, task: str, paths: list[Path],
                 params: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Hash ``paths`` (inside the cache) and record them in the manifest under ``task``; returns the new entries.

    The manifest is rewritten atomically (temporary file + rename), so an interrupted run never leaves it half
    written.
    """
    root = resolve_cache_dir(cache_dir)
    manifest = load_manifest(root)
    entries = {}
    for p in paths:
        rel = Path(p).absolute().relative_to(root).as_posix()
        entries[rel] = {"task": task, "sha256": sha256_file(p), "bytes": Path(p).stat().st_size,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "params": params or {}}
    manifest["files"].update(entries)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    _readable(tmp)
    os.replace(tmp, root / MANIFEST)
    return entries


def verify_cache(cache_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Re-hash every file in the manifest. Returns ``(relative path, status)`` with status ``ok``, ``missing``
    or ``sha256 mismatch``."""
    root = resolve_cache_dir(cache_dir)
    out = []
    for rel, entry in sorted(load_manifest(root)["files"].items()):
        p = root / rel
        if not p.exists():
            out.append((rel, "missing"))
        else:
            out.append((rel, "ok" if sha256_file(p) == entry["sha256"] else "sha256 mismatch"))
    return out


def atomic_save_npz(path: Path, **arrays: Any) -> None:
    """``numpy.savez_compressed`` to a temporary file next to ``path``, then rename it into place."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        _readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

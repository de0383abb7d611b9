"""Writing result files safely: atomic replacement, ordinary permissions, no stale temporaries, checks first.

Every file the package writes for a user (checkpoints, run configs and summaries, benchmark tables, the
calibration store) goes through :func:`atomic_write` or :func:`atomic_open`: the content is written to
``.<name>.tmp<pid>`` beside the target, flushed to disk and renamed over it, so an interruption or a full disk
leaves the old file or the new one, never half of one. The temporary file is removed when the write fails,
and a temporary left by a process that was killed (its pid no longer runs) is removed by the next write of the
same file. Files get mode ``0666`` less the umask, like any file ``open()`` creates.

:func:`dir_write_problem` and :func:`file_write_problem` say, before any work is done, why an output location
cannot be written (so a command fails in a second rather than after an hour of measuring).
"""

from __future__ import annotations

import errno
import glob
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_TMP_MARK = ".tmp"


def file_mode() -> int:
    """``0o666`` less this process's umask: the mode ``open()`` gives a new file."""
    try:  # Linux >= 4.7 reports the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name this process writes ``path`` under: ``.<name>.tmp<pid>`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from a failed earlier write
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` left by processes that no longer run; returns what was removed."""
    path = Path(path)
    prefix = f".{path.name}{_TMP_MARK}"
    removed = []
    try:
        candidates = list(path.parent.glob(f"{glob.escape(prefix)}*"))
    except OSError:
        return removed
    for p in candidates:
        pid = p.name[len(prefix):]
        if pid.isdigit() and not _pid_running(int(pid)):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` creates the content at a temporary path, which is then
    flushed to disk, given mode :func:`file_mode` and renamed over ``path``.

    Raises:
        OSError: the folder is not writable, the disk is full, ...; the temporary file is removed.
    """
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _raise_with_filename(err, path)
    return path


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_open(path) as f: ...``: like ``open(path, mode)`` for writing, but the file appears
    (atomically, see :func:`atomic_write`) only when the block ends without an exception."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes whole files: mode must start with 'w', got {mode!r}")
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _raise_with_filename(err, path)


def _raise_with_filename(err: BaseException, path: Path) -> None:
    """Re-raise ``err``; an ``OSError`` without a file name (a failed ``write`` or ``close``: a full disk)
    gets ``path``, so the message says which file could not be written."""
    if isinstance(err, OSError) and err.filename is None and err.errno is not None:
        raise OSError(err.errno, err.strerror, str(path)) from err
    raise err


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def dir_write_problem(path: str | os.PathLike) -> str | None:
    """Why files cannot be created in the folder ``path`` (created later if missing), or None if they can.

    Checks that ``path`` is not a file, that its nearest existing ancestor is a folder, and that the process
    may create entries there (``os.access``, which also reports a read-only file system).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        return "is an existing file, not a directory"
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        return f"cannot be created: {base} is a file, not a directory"
    if not os.access(base, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(base) else "permission denied"
        what = "is not writable" if base == path.absolute() else f"cannot be created in {base}"
        return f"{what} ({reason})"
    return None


def file_write_problem(path: str | os.PathLike, create_parents: bool = False) -> str | None:
    """Why the file ``path`` cannot be written, or None. Without ``create_parents`` its folder must exist."""
    path = Path(path).expanduser()
    if path.is_dir():
        return "is a directory, not a file"
    parent = path.absolute().parent
    if not create_parents and not parent.is_dir():
        return f"directory {parent} does not exist" if not parent.exists() else f"{parent} is not a directory"
    problem = dir_write_problem(parent)
    if problem is None and path.exists() and not os.access(path, os.W_OK):
        return "is not writable (permission denied)"
    return None if problem is None else f"directory {parent} {problem}"


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def os_error(err: BaseException, path: str | os.PathLike) -> OSError:
    """An ``OSError`` with errno and filename for a library error that only says ``os error N`` in its text
    (safetensors reports a full disk that way)."""
    m = re.search(r"os error (\d+)", str(err))
    code = int(m.group(1)) if m else errno.EIO
    return OSError(code, os.strerror(code) if m else str(err), str(path))

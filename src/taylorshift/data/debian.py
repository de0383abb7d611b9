"""Data shipped in Debian packages: found in a ``--source`` folder, an installed copy, or fetched with apt-get.

:func:`locate_files` looks, in order, in a folder given as ``source``, in the folders where the packages install
their files, and finally runs ``apt-get download`` + ``dpkg-deb -x`` into a temporary folder (no root needed once
``apt-get update`` has run). A :class:`DebianSource` names the packages, says how to recognise a complete folder
and holds the words that the :class:`~taylorshift.data.cache.DataSourceError` messages use for this data.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from taylorshift.data.cache import DataSourceError


@dataclass(frozen=True)
class DebianSource:
    """One task's Debian packages and how its error messages speak of them.

    Attributes:
        what: the data, as the subject of a sentence (``"Fashion-MNIST"``).
        packages: the Debian packages that hold the files.
        subdir: where the files lie inside the packages (``/subdir`` once installed).
        task: the ``taylorshift data prepare`` task, for the ``--source DIR`` hint.
        complete: whether a folder holds every file the task needs.
        contents: what :attr:`complete` looks for (``"the expected files"``).
        folder: what to pass as ``--source DIR`` (``"a folder of fortune files"``).
        manual: how to get the files by hand, where apt-get is missing.
        archive: where the packages are published, for the hint to run ``apt-get update``.
        source_problem: what is wrong with a ``--source`` folder that :attr:`source_ok` rejects.
        source_ok: whether a ``--source`` folder is usable; default :attr:`complete`.
    """

    what: str
    packages: tuple[str, ...]
    subdir: str
    task: str
    complete: Callable[[Path], bool]
    contents: str
    folder: str
    manual: str
    archive: str
    source_problem: str
    source_ok: Callable[[Path], bool] | None = None

    def _words(self) -> tuple[str, str, str]:
        """``(noun, pronoun, names)``: "package" or "packages", "it" or "them", the names joined by spaces."""
        many = len(self.packages) > 1
        return ("packages" if many else "package"), ("them" if many else "it"), " ".join(self.packages)


def apt_download(spec: DebianSource, dest: Path) -> Path:
    """``apt-get download`` the packages into ``dest`` and unpack them there; returns the folder with the files.

    Raises:
        DataSourceError: apt-get or dpkg-deb is not on PATH, or the download failed.
    """
    noun, them, wanted = spec._words()
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt is None or dpkg is None:
        raise DataSourceError(
            f"{spec.what} needs the Debian {noun} {wanted}, fetched with 'apt-get download' and unpacked with "
            f"'dpkg-deb', but apt-get or dpkg-deb is not on PATH. Either install {them} ('sudo apt-get install "
            f"{wanted}') on a Debian/Ubuntu machine, or {spec.manual} and run 'taylorshift data prepare "
            f"{spec.task} --source DIR'.")
    result = subprocess.run([apt, "download", *spec.packages], cwd=dest, capture_output=True, text=True)
    debs = [deb for name in spec.packages for deb in sorted(dest.glob(f"{name}_*.deb"))]
    if result.returncode != 0 or not debs:
        raise DataSourceError(
            f"'apt-get download {wanted}' failed ({result.stderr.strip() or result.stdout.strip()}). Run "
            f"'sudo apt-get update' ({spec.archive}) and retry, or install {them} with 'sudo apt-get install "
            f"{wanted}', or pass {spec.folder} with --source DIR.")
    unpacked = dest / "unpacked"
    for deb in debs:
        subprocess.run([dpkg, "-x", str(deb), str(unpacked)], check=True, capture_output=True)
    return unpacked / spec.subdir


def locate_files(spec: DebianSource, source: str | Path | None, system_dirs: Sequence[str],
                 fetch_dir: Path) -> tuple[Path, str]:
    """The folder that holds the task's files, and where it came from (for the manifest).

    Args:
        spec: the packages and messages.
        source: a folder given by the user; used alone when given.
        system_dirs: folders of an installed copy, tried in order.
        fetch_dir: an empty temporary folder for :func:`apt_download`, the last resort.

    Raises:
        DataSourceError: ``source`` is unusable, or the packages could not be fetched or lack the files.
    """
    if source is not None:
        src = Path(source)
        if not (spec.source_ok or spec.complete)(src):
            raise DataSourceError(f"--source {src} {spec.source_problem}")
        return src, str(src)
    for folder in system_dirs:
        if spec.complete(Path(folder)):
            return Path(folder), str(Path(folder))
    src = apt_download(spec, fetch_dir)
    noun, _, _ = spec._words()
    if not spec.complete(src):
        raise DataSourceError(f"the {noun} {', '.join(spec.packages)} did not contain {spec.contents} in "
                              f"/{spec.subdir}; pass {spec.folder} with --source DIR")
    return src, f"apt-get download {' '.join(spec.packages)}"

"""Debian manual pages as a byte-level document-classification corpus: what kind of page is this?

Source: the English manual pages (``/usr/share/man/man[1-8]``) of the Debian 12 packages in :data:`PACKAGES`,
fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a temporary folder (no root needed once
``apt-get update`` has run; nothing is installed), or read from ``--source DIR`` (one unpacked package per
sub-folder). The package versions are recorded in the cache manifest.

Label: the kind of page, from the manual section it is filed under: 0 = command (sections 1, 6, 8), 1 =
programming interface (2, 3), 2 = file format, device or convention (4, 5, 7).

What a model sees: the page rendered to plain text by :mod:`taylorshift.data.roff`, without everything that
names the section or the page: the ``.TH``/``.Dt`` header, any text before the first heading, and the
sections NAME, SYNOPSIS (and "SYNTAX", "C SYNTAX", ...), LIBRARY, SEE ALSO, TABLE OF CONTENTS, AUTHOR(S),
COPYRIGHT, COLOPHON and REPORTING BUGS are dropped, and every cross reference loses its section number
(``printf(3)`` becomes ``printf``). A document therefore starts with DESCRIPTION (or whatever section
comes first after those), so its first bytes are the same for every class; the kind must be read from the prose
and examples. Symlinks, ``.so`` aliases, duplicate texts and pages shorter than 2,048 bytes after stripping are
left out.

Samples: each page is cut at line ends into passages of at most 4,000 bytes (:func:`split_passages`); its first
four passages of at least 2,048 bytes are kept, so that a few very long pages (``proc(5)``, ``perlfunc``) do not
dominate. Pages of the largest class are then dropped at random (seeded) until no class holds more than 45 % of
the passages (:func:`balance`). The train / val / test split (default 80 / 10 / 10 %) is by page, stratified by
class, so all passages of a page are in one split. A sample is a passage as UTF-8 bytes in a 4,000-byte window,
padded with byte 0 (the LRA Text encoding); ``length`` below 4,000 crops it (a random window when training).

The corpus as prepared from Debian 12 on 2026-12-02 (165 packages, e.g. manpages and manpages-dev 6.03-2,
perl-doc 5.36.0-7+deb12u3, libssl-doc 3.0.20-1~deb12u2, systemd 252.39-1~deb12u2, coreutils 9.1-1; the manifest
lists all versions, and newer package versions change the counts slightly): 5,182 pages (1,855 command,
2,611 programming interface, 716 file format/convention) giving 9,198 passages (3,385 / 4,139 / 1,674; 32.4 MB).
With the default split: train 4,144 pages / 7,353 passages, val 519 / 946, test 519 / 899; majority class
(programming interface) 45.0 % of train and 44.6 % of test passages. Passage length: median 3,821 bytes, 10 %
below 2,441, 25 % below 3,186 (the rest fill most of the 4,000-byte window). The largest sources are
manpages-dev, mpich-doc, erlang-manpages, perl-doc, libssl-doc (about 280-385 pages each); 3,192 pages give one
passage, 832 give the maximum of four. The residue of the stripping: 45 passages still hold a line "NAME"
(mostly inside examples) and 33 Open MPI pages keep a "FORTRAN SYNTAX (...)" section.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from taylorshift.data.cache import (
    DataNotPreparedError,
    DataSourceError,
    atomic_save_npz,
    record_files,
    resolve_cache_dir,
)
from taylorshift.data.roff import render_sections
from taylorshift.data.sequences import ByteTextDataset

# The packages whose English manual pages make the corpus (Debian 12 "bookworm" main), grouped by the class most
# of their pages belong to (every page is labelled by its own section). package -> sections taken (None: 1-8).
_COMMANDS = (
    "coreutils util-linux git-man openssl systemd dpkg-dev postfix openssh-client openssh-server sudo iproute2 "
    "e2fsprogs lvm2 xfsprogs btrfs-progs nfs-common nfs-kernel-server samba iptables cryptsetup-bin dovecot-core "
    "inn2 slapd ldap-utils exim4-base exim4-config bind9 courier-base sysstat quota texlive-binaries netpbm nmh "
    "mutt zsh-common nut-server wpasupplicant unbound nsd openvpn smartmontools multipath-tools kmod grub-common "
    "dracut-core open-iscsi autofs isc-dhcp-server cups-daemon rsyslog ifupdown mdadm ethtool nftables sssd-common "
    "krb5-user krb5-kdc libpam-modules apparmor cron man-db apt pcp podman buildah emboss texlive-base "
    "texlive-extra-utils x11-apps x11-xserver-utils x11-utils gdal-bin ceph-common lxc smbclient mariadb-client "
    "nmap procps ntpsec bioperl procmail devscripts debhelper bsdgames nvme-cli sg3-utils ndctl fio notmuch "
    "varnish nilfs-tools kbd cyrus-common nut-client linuxptp ppp libreswan pacemaker-cli-utils drbd-utils "
    "chrony mtools ffmpeg imagemagick-6.q16 graphicsmagick sox tcpdump strace lsof nethack-common mailutils "
    "fetchmail isync msmtp gpgsm gpg-agent dirmngr clamav clamav-daemon clamav-freshclam lintian texinfo "
    "console-setup isc-dhcp-client radvd opendkim"
).split()
_INTERFACES = (
    "manpages-dev libx11-doc libssl-doc libcurl4-doc libbsd-dev tcl8.6-doc tk8.6-doc perl-doc libsystemd-dev "
    "libselinux1-dev libpcre2-dev libpcp3-dev ncurses-doc openmpi-doc mpich-doc liburing-dev libmemcached-dev "
    "libkeyutils-dev libseccomp-dev libsdl1.2-dev"
).split()
_FILES = (
    "manpages libsane-common groff groff-base debconf-doc xserver-xorg-core xserver-xorg-input-libinput "
    "xserver-xorg-input-wacom xserver-xorg-video-intel xserver-xorg-video-nouveau fontconfig-config "
    "erlang-manpages golang-github-containers-common neomutt keepalived xkb-data mercurial-common collectd-core "
    "ctdb corosync"
).split()
PACKAGES: dict[str, tuple[str, ...] | None] = {name: None for name in _COMMANDS + _INTERFACES + _FILES}
PACKAGES["perl-doc"] = ("3",)  # its section-1 pages are Perl language manuals, not commands
# manual section -> class
SECTION_CLASSES: dict[str, int] = {"1": 0, "6": 0, "8": 0, "2": 1, "3": 1, "4": 2, "5": 2, "7": 2}
CLASS_NAMES: tuple[str, ...] = ("command", "programming interface", "file format, device or convention")
# sections of a page that name it or its manual section: never part of a document
DROPPED_SECTIONS: frozenset[str] = frozenset({
    "NAME", "SYNOPSIS", "SYNTAX", "LIBRARY", "SEE ALSO", "TABLE OF CONTENTS", "COLOPHON", "AUTHOR",
    "AUTHORS", "COPYRIGHT", "REPORTING BUGS", "COPYRIGHT AND LICENSE", "LICENSE", "LICENCE"})
MIN_BYTES = 2048  # pages and passages shorter than this (after stripping) are left out
PASSAGE_BYTES = 4000  # pages are cut into passages of at most this many bytes, at line ends
MAX_PASSAGES = 4  # passages taken from one page (its first ones), so that the longest pages do not dominate
DEFAULT_LENGTH = 4000
FOLDER = "manpages"
FILENAME = "manpages-sections.npz"
SPLITS = ("train", "val", "test")
MAX_CLASS_FRACTION = 0.45  # prepare caps the largest classes at this share of the corpus (seeded subsample)

# "ls(1)", "printf(3)", "SSL_new(3ssl)", "perlfunc (1)", "sane-v4l(5)": cross references that name a section
_SECTION_REF = re.compile(r"(?<=[\w.+\-:>*\])\"'])[ \t]?\((?:[1-9][a-zA-Z+]*|n)\)")
_PAGE_NAME = re.compile(r"^(?P<name>.+)\.(?P<section>[1-9])(?P<suffix>[a-zA-Z0-9+]*)(?:\.gz)?$")


def document_text(source: str) -> str:
    """A manual page as a document whose kind must be read from its text.

    The roff source is rendered to plain text (:func:`taylorshift.data.roff.render_sections`); the header
    (``.TH`` / ``.Dt``, which states the section) is never rendered, nor is any text before the first heading
    (the leftovers of macro preambles); the sections in :data:`DROPPED_SECTIONS` (NAME, SYNOPSIS, LIBRARY,
    SEE ALSO, a table of contents, authors and copyright) and every section whose heading ends with SYNOPSIS
    or SYNTAX (``C SYNTAX``) are dropped; every cross reference's section number is removed (``printf(3)``
    becomes ``printf``).
    """
    kept = [s.text() for s in render_sections(source) if s.heading is not None and s.heading not in DROPPED_SECTIONS
            and not s.heading.endswith(("SYNOPSIS", "SYNTAX"))]  # also "C SYNTAX", "FORTRAN SYNTAX", ...
    text = "\n\n".join(kept)
    text = _SECTION_REF.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def iter_pages(root: Path, sections: tuple[str, ...] | None = None) -> Iterator[tuple[str, str, bytes]]:
    """``(section, file name, roff source)`` of the English manual pages under ``root/usr/share/man/man[1-8]``.

    Symbolic links and ``.so`` redirections (one page under several names) are skipped; ``.gz`` files are
    decompressed. Pages come in sorted order.
    """
    base = root / "usr" / "share" / "man"
    for folder in sorted(base.glob("man[1-8]")) if base.is_dir() else []:
        for path in sorted(folder.iterdir()):
            m = _PAGE_NAME.match(path.name)
            if path.is_symlink() or not path.is_file() or m is None or m.group("section") != folder.name[3]:
                continue
            if sections is not None and m.group("section") not in sections:
                continue
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            if data.lstrip().startswith(b".so ") and data.count(b"\n") <= 2:
                continue
            yield m.group("section"), path.name, data


def _apt_fetch(packages: list[str], dest: Path, progress: Callable[[int], object] | None) -> dict[str, tuple[Path,
                                                                                                            str]]:
    """``apt-get download`` each package into ``dest`` and unpack it; ``{package: (root, version)}``."""
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt is None or dpkg is None:
        raise DataSourceError(
            "the manpages corpus is built from Debian packages fetched with 'apt-get download' and unpacked with "
            "'dpkg-deb', but apt-get or dpkg-deb is not on PATH. On another system, unpack the packages listed in "
            "taylorshift.data.manpages.PACKAGES into one folder each (DIR/<package>/usr/share/man/...) and run "
            "'taylorshift data prepare manpages --source DIR'.")
    # one apt-get call for all packages (loading apt's cache once per package would take minutes); the progress
    # callback counts the .deb files as they arrive
    log = dest / "apt-get.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen([apt, "download", *packages], cwd=dest, stdout=log_file, stderr=subprocess.STDOUT)
    seen = 0
    while proc.poll() is None:
        time.sleep(0.5)
        done = len(list(dest.glob("*.deb")))
        if progress is not None and done > seen:
            progress(done - seen)
        seen = max(seen, done)
    proc.wait()
    missing = [name for name in packages if not list(dest.glob(f"{name}_*.deb"))]
    if proc.returncode != 0 or missing:
        said = log.read_text(errors="replace").strip()[-500:]
        raise DataSourceError(
            f"'apt-get download' of the {len(packages)} manual-page packages failed ({said}"
            f"{'; missing: ' + ' '.join(missing) if missing else ''}). Run 'sudo apt-get update' (the packages are "
            "in Debian's main archive) and retry, or pass a folder of unpacked packages with --source DIR.")
    if progress is not None and len(packages) > seen:
        progress(len(packages) - seen)
    roots = {}
    for name in packages:
        deb = sorted(dest.glob(f"{name}_*.deb"))[0]
        root = dest / name
        subprocess.run([dpkg, "-x", str(deb), str(root)], check=True, capture_output=True)
        roots[name] = (root, deb.name.split("_")[1])
        deb.unlink()
    return roots


def collect_documents(roots: dict[str, Path], min_bytes: int = MIN_BYTES,
                      packages: dict[str, tuple[str, ...] | None] | None = None,
                      progress: Callable[[int], object] | None = None) -> tuple[list[bytes], list[int], list[str]]:
    """Render every page of the unpacked packages into documents.

    Args:
        roots: package name → the folder it was unpacked into.
        min_bytes: leave out documents shorter than this (UTF-8 bytes after stripping).
        packages: package → sections to take (None: all); default :data:`PACKAGES`; packages not in it take all.
        progress: called with 1 after each package.

    Returns:
        ``(documents, labels, ids)``: UTF-8 bytes, class indices (:data:`SECTION_CLASSES`) and
        ``"package/file"`` ids, in package order. A document whose text another page already gave is left out.
    """
    if min_bytes < 1:
        raise ValueError(f"min_bytes must be positive, got {min_bytes}")
    packages = PACKAGES if packages is None else packages
    docs, labels, ids, seen = [], [], [], set()
    for name, root in roots.items():
        for section, fname, data in iter_pages(Path(root), packages.get(name)):
            doc = document_text(_decode(data)).encode("utf-8")
            digest = hashlib.sha256(doc).digest()
            if len(doc) < min_bytes or digest in seen:
                continue
            seen.add(digest)
            docs.append(doc)
            labels.append(SECTION_CLASSES[section])
            ids.append(f"{name}/{fname}")
        if progress is not None:
            progress(1)
    return docs, labels, ids


def split_passages(doc: bytes, length: int = PASSAGE_BYTES, min_bytes: int = MIN_BYTES,
                   max_passages: int = MAX_PASSAGES) -> list[bytes]:
    """Cut a document into consecutive passages of at most ``length`` bytes.

    Each cut falls on the last line end (else the last space) in the second half of the window, so passages
    hold whole lines and never split a UTF-8 character there; only the first ``max_passages`` passages are
    returned, and a passage shorter than ``min_bytes`` (the document's tail) is dropped.
    """
    if not 0 < min_bytes <= length:
        raise ValueError(f"need 0 < min_bytes <= length, got min_bytes={min_bytes}, length={length}")
    if max_passages < 1:
        raise ValueError(f"max_passages must be positive, got {max_passages}")
    out, start = [], 0
    while start < len(doc) and len(out) < max_passages:
        end = start + length
        if end >= len(doc):
            cut = len(doc)
        else:
            cut = doc.rfind(b"\n", start + length // 2, end)
            if cut < 0:
                cut = doc.rfind(b" ", start + length // 2, end)
            cut = end if cut < 0 else cut + 1
        piece = doc[start:cut]
        if len(piece) >= min_bytes:
            out.append(piece)
        start = cut
        while start < len(doc) and doc[start:start + 1] in (b"\n", b" "):
            start += 1
    return out


def balance(labels: list[int] | np.ndarray, weights: list[int] | np.ndarray | None = None,
            max_fraction: float = MAX_CLASS_FRACTION, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subsample of items (pages) in which no class holds much more than
    ``max_fraction`` of the total weight (passages); only the too-large classes lose items.

    Args:
        labels: class of each item.
        weights: positive weight of each item (default 1 each: then the cap is exact).
        max_fraction: largest share of the total weight a class may keep.
        seed: the subsample's seed.
    """
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}")
    y = np.asarray(labels)
    w = np.ones(len(y), dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    if w.shape != y.shape or (w < 1).any():
        raise ValueError(f"weights must be positive integers, one per label; got shape {w.shape} for {y.shape}")
    classes = np.unique(y)
    totals = np.array([w[y == c].sum() for c in classes])
    # the largest cap C with C <= max_fraction * sum(min(total_k, C)): bisection on integers
    lo, hi = 0, int(totals.max(initial=0))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid <= max_fraction * np.minimum(totals, mid).sum():
            lo = mid
        else:
            hi = mid - 1
    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        keep.append(idx[np.cumsum(w[idx]) <= lo])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def prepare_manpages(cache_dir: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
                     progress: Callable[[int], object] | None = None) -> list[Path]:
    """Build ``<cache>/manpages/manpages-sections.npz`` and record its sha256 in the manifest.

    Args:
        cache_dir: the data cache.
        source: a folder with one unpacked package per sub-folder (``DIR/<package>/usr/share/man/man*/...``);
            every sub-folder is read. Default: ``apt-get download`` each package of :data:`PACKAGES` into a
            temporary folder (no root needed once ``apt-get update`` has run).
        progress: called with the number of packages fetched, then with 1 after each package is rendered.

    Raises:
        DataSourceError: a package could not be fetched, ``source`` is not a folder of unpacked packages, or no
            page is long enough; the message says what to do.
    """
    folder = resolve_cache_dir(cache_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        if source is not None:
            src = Path(source)
            if not src.is_dir():
                raise DataSourceError(f"--source {src} is not a folder of unpacked packages "
                                      "(DIR/<package>/usr/share/man/man*/...)")
            roots = {p.name: (p, "unknown") for p in sorted(src.iterdir()) if (p / "usr" / "share" / "man").is_dir()}
            if not roots:
                raise DataSourceError(f"--source {src} holds no unpacked package (no <package>/usr/share/man)")
            origin = str(src)
        else:
            roots = _apt_fetch(list(PACKAGES), Path(tmp), progress)
            origin = "apt-get download " + " ".join(PACKAGES)
        docs, labels, ids = collect_documents({name: root for name, (root, _) in roots.items()},
                                              progress=progress)
    if not docs:
        raise DataSourceError(f"{origin}: no manual page of at least {MIN_BYTES} bytes in sections 1-8")
    found = len(set(labels))
    if found * MAX_CLASS_FRACTION < 1:
        raise DataSourceError(f"{origin}: the pages fall into {found} of the {len(CLASS_NAMES)} classes "
                              f"({', '.join(CLASS_NAMES)}); no class may hold more than {MAX_CLASS_FRACTION:.0%}")
    pieces = [split_passages(d) for d in docs]
    keep = balance(labels, [len(p) for p in pieces])
    passages = [q for k in keep for q in pieces[k]]
    page_of = np.repeat(np.arange(len(keep)), [len(pieces[k]) for k in keep]).astype(np.int32)
    page_labels = np.asarray([labels[k] for k in keep], dtype=np.int8)
    data = np.frombuffer(b"".join(passages), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(q) for q in passages])]).astype(np.int64)
    dest = folder / FILENAME
    atomic_save_npz(dest, data=data, offsets=offsets, pages=page_of, page_labels=page_labels,
                    page_ids=np.asarray([ids[k] for k in keep]), class_names=np.asarray(CLASS_NAMES))
    versions = {name: version for name, (_, version) in roots.items()}
    per_class = np.bincount(page_labels[page_of], minlength=len(CLASS_NAMES)).tolist()
    record_files(cache_dir, "manpages", [dest], {
        "source": origin, "pages": len(keep), "passages": len(passages), "passages_per_class": per_class,
        "pages_per_class": np.bincount(page_labels, minlength=len(CLASS_NAMES)).tolist(), "min_bytes": MIN_BYTES,
        "passage_bytes": PASSAGE_BYTES, "max_passages": MAX_PASSAGES, "packages": versions})
    return [dest]


def load_manpages(cache_dir: str | os.PathLike | None = None) -> tuple[list[bytes], np.ndarray, np.ndarray,
                                                                         list[str]]:
    """``(passages, pages int (P,), page_labels int (M,), page_ids)`` of the prepared corpus: passage ``i``
    comes from page ``pages[i]``, whose class is ``page_labels[pages[i]]``."""
    path = resolve_cache_dir(cache_dir) / FOLDER / FILENAME
    if not path.exists():
        raise DataNotPreparedError(f"{path} not found: run 'taylorshift data prepare manpages' "
                                   "(with --cache-dir if that is not the default)")
    with np.load(path) as z:
        data, offsets, pages, page_labels, ids = z["data"], z["offsets"], z["pages"], z["page_labels"], z["page_ids"]
    raw = data.tobytes()
    passages = [raw[offsets[i]: offsets[i + 1]] for i in range(len(offsets) - 1)]
    return passages, pages.astype(np.int64), page_labels.astype(np.int64), [str(i) for i in ids]


def split_documents(labels: np.ndarray | list[int], seed: int = 0, val_fraction: float = 0.1,
                    test_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Stratified, seeded split of documents (pages) by their labels: ``{"train", "val", "test"}`` → sorted
    index arrays that partition ``range(len(labels))``; the same arguments give the same split."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < frac < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val, n_test = int(round(len(idx) * val_fraction)), int(round(len(idx) * test_fraction))
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val: n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {s: np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for s, p in parts.items()}


def manpages_bytes(split: str = "train", cache_dir: str | os.PathLike | None = None, length: int = DEFAULT_LENGTH,
                   seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
                   random_crop: bool | None = None) -> ByteTextDataset:
    """The passages of the prepared corpus's ``split`` as ``(byte tokens LongTensor (length,), label)`` pairs.

    Args:
        split: ``train``, ``val`` or ``test``.
        cache_dir: the data cache.
        length: bytes per sample; longer passages are cropped, shorter ones padded with byte 0.
        seed, val_fraction, test_fraction: the split by page, stratified by class (the same values give the
            same split; all passages of a page are in the same split).
        random_crop: a uniformly random window of passages longer than ``length``; default True for ``train``
            and False (the first ``length`` bytes) otherwise.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    passages, pages, page_labels, _ = load_manpages(cache_dir)
    chosen = split_documents(page_labels, seed, val_fraction, test_fraction)[split]
    idx = np.flatnonzero(np.isin(pages, chosen))
    crop = (split == "train") if random_crop is None else random_crop
    return ByteTextDataset([passages[i] for i in idx], [int(page_labels[pages[i]]) for i in idx], length=length,
                           random_crop=crop)

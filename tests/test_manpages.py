"""The manpages task on fixture packages written here (no network, no Debian tools): the roff renderer, the
stripping of everything that names a page's section, the prepare step, the seeded split, the class balance, the
byte dataset, the registry and training-config entries, errors and the CLI."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from taylorshift.cli import main
from taylorshift.data import manpages
from taylorshift.data.cache import DataNotPreparedError, DataSourceError, load_manifest
from taylorshift.data.registry import get_task
from taylorshift.data.roff import render, render_sections, unescape
from taylorshift.train.config import TrainConfig, make_config, read_config_file

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lra" / "manpages.yaml"

MAN_PAGE = r""".\" Copyright notice that must not appear
.TH FROBNICATE 1 2023-01-01 "frob 1.0" "User Commands"
\\
preamble leftovers
.de XX
.  B defined-macro-body-never-rendered
..
.SH NAME
frobnicate \- turn widgets into gadgets
.SH SYNOPSIS
.B frobnicate
.RB [ \-v ]
.I file
.SH DESCRIPTION
.B frobnicate
reads each
.IR file ,
and writes \fBgadgets\fP to standard output \(em see
.BR gadget (5)
and \fBwidget\fR(3) for the formats.
.PP
Second paragraph with an escaped hyphen \-x and a string \*(lq quoted \*(rq.
.TP
.B \-v
Be verbose.
.nf
literal   line one
literal   line two
.fi
.TS
tab(@);
l l.
cellA@cellB
.TE
.SH "SEE ALSO"
.BR widget (3),
.BR gadget (5)
.SH AUTHOR
Written by Somebody.
"""

MDOC_PAGE = r""".Dd January 1, 2023
.Dt LISTER 8
.Os
.Sh NAME
.Nm lister
.Nd list things
.Sh SYNOPSIS
.Nm
.Op Fl l
.Ar path
.Sh DESCRIPTION
The
.Nm
utility lists
.Ar path
in long format with
.Fl l ,
like
.Xr ls 1
does, and calls
.Fn strlen "const char *s" .
.Sh SEE ALSO
.Xr ls 1
"""


def test_unescape():
    assert unescape(r"\fBbold\fP and \fIitalic\fR") == "bold and italic"
    assert unescape(r"a\-b \(em c\(aqd \e \&.x") == "a-b -- c'd \\ .x"
    assert unescape(r"size \s-1small\s0 \*(C+ str \[u00E9]") == "size small  str \u00e9"
    assert unescape(r'text \" a comment') == "text "


def test_render_man_page():
    sections = render_sections(MAN_PAGE)
    headings = [s.heading for s in sections]
    assert headings == [None, "NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO", "AUTHOR"]
    text = render(MAN_PAGE)
    assert "frobnicate reads each file, and writes gadgets to standard output -- see gadget(5)" in text
    assert "literal   line one\nliteral   line two" in text  # no-fill lines kept as they are
    assert "cellA  cellB" in text and "tab(@)" not in text  # table data, not its format lines
    assert "defined-macro-body" not in text and "Copyright" not in text and "User Commands" not in text
    assert "[-v]" in text


def test_document_text_strips_what_gives_the_section_away():
    doc = manpages.document_text(MAN_PAGE)
    assert doc.startswith("DESCRIPTION\nfrobnicate reads each file")
    for gone in ("NAME", "SYNOPSIS", "SEE ALSO", "AUTHOR", "Somebody", "turn widgets into gadgets", "(5)", "(3)",
                 "User Commands", "FROBNICATE", "2023", "preamble"):
        assert gone not in doc, gone
    assert "see gadget and widget for the formats" in doc  # references keep their names
    mpi = manpages.document_text(".TH MPI_Send 3\n.SH C SYNTAX\n.SS C Syntax\n.nf\n#include <mpi.h>\n.fi\n"
                                 ".SH DESCRIPTION\nSends a message.\n.SH TABLE OF CONTENTS\nSYNOPSIS\n")
    assert mpi == "DESCRIPTION\nSends a message.\n"
    mdoc = manpages.document_text(MDOC_PAGE)
    assert mdoc.startswith("DESCRIPTION\nThe lister utility lists path in long format with -l, like ls does")
    assert "strlen(const char *s)" in mdoc
    for gone in ("LISTER", "list things", "(1)", " 1\n", "January", "SEE ALSO"):
        assert gone not in mdoc, gone


def _words(rng: np.random.Generator, vocab: list[str], size: int) -> str:
    return " ".join(rng.choice(vocab, size=size))


def _package_tree(root, per_class: int = 10, seed: int = 0):
    """Two fake unpacked packages: ``per_class`` long pages each of sections 1, 3 and 5 (class-specific words),
    plus pages that must be skipped: short, a ``.so`` redirection, a symlink, a duplicate and a non-English one."""
    rng = np.random.default_rng(seed)
    vocab = {"1": ["option", "prints", "command", "--verbose", "exit", "status", "user"],
             "3": ["function", "returns", "pointer", "NULL", "errno", "argument", "struct"],
             "5": ["file", "format", "entry", "field", "line", "configuration", "comment"]}
    for pkg_i, pkg in enumerate(("pkg-one", "pkg-two")):
        base = root / pkg / "usr" / "share" / "man"
        for section, words in vocab.items():
            folder = base / f"man{section}"
            folder.mkdir(parents=True)
            for k in range(per_class // 2 + (per_class % 2) * (pkg_i == 0)):
                body = "\n.PP\n".join(_words(rng, words, 60) for _ in range(8 + 8 * (k % 2)))
                page = (f".TH PAGE{k} {section}\n.SH NAME\npage{k} \\- summary\n.SH DESCRIPTION\n{body}\n"
                        f".SH SEE ALSO\n.BR other ({section})\n")
                path = folder / f"page{pkg_i}{k}.{section}.gz"
                path.write_bytes(gzip.compress(page.encode()))
        man1 = base / "man1"
        (man1 / "short.1").write_text(".TH SHORT 1\n.SH DESCRIPTION\ntoo short\n")
        (man1 / "alias.1").write_text(".so man1/page00.1\n")
        (man1 / "link.1.gz").symlink_to(man1 / f"page{pkg_i}0.1.gz")
        (base / "de" / "man1").mkdir(parents=True)
        (base / "de" / "man1" / "seite.1").write_text(".TH SEITE 1\n.SH BESCHREIBUNG\n" + "Wort " * 600)
    # the same page in a third package: dropped as a duplicate
    dup = root / "pkg-three" / "usr" / "share" / "man" / "man1"
    dup.mkdir(parents=True)
    shutil.copy(root / "pkg-one" / "usr" / "share" / "man" / "man1" / "page00.1.gz", dup / "copy.1.gz")
    return root


def test_collect_documents(tmp_path):
    src = _package_tree(tmp_path / "src")
    roots = {p.name: p for p in sorted(src.iterdir())}
    docs, labels, ids = manpages.collect_documents(roots, packages={})
    assert len(docs) == 30 and np.bincount(labels).tolist() == [10, 10, 10]
    assert all(len(d) >= manpages.MIN_BYTES for d in docs)
    assert not any(i.startswith("pkg-three/") or "short" in i or "alias" in i or "link" in i for i in ids)
    assert all(b"summary" not in d and b"PAGE" not in d and b"SEE ALSO" not in d for d in docs)
    # a package restricted to some sections keeps only those
    docs, labels, _ = manpages.collect_documents(roots, packages={"pkg-one": ("3",), "pkg-two": ("3",),
                                                                        "pkg-three": ("3",)})
    assert set(labels) == {1} and len(docs) == 10
    with pytest.raises(ValueError, match="min_bytes"):
        manpages.collect_documents(roots, min_bytes=0)


def test_split_passages():
    doc = b"".join(f"line {i:04d} of the page\n".encode() for i in range(1000))  # 22 bytes a line
    parts = manpages.split_passages(doc, length=1000, min_bytes=500, max_passages=100)
    joined = b"".join(parts)
    assert joined == doc[: len(joined)] and len(doc) - len(joined) < 500  # cut at line ends; only the tail lost
    assert all(500 <= len(p) <= 1000 and p.endswith(b"\n") for p in parts)
    assert manpages.split_passages(doc, length=1000, min_bytes=500, max_passages=3) == parts[:3]
    assert manpages.split_passages(doc[:400], length=1000, min_bytes=500) == []  # too short
    tail = manpages.split_passages(doc[:1300], length=1000, min_bytes=500)
    assert len(tail) == 1  # the 300-odd byte tail is dropped
    with pytest.raises(ValueError, match="min_bytes"):
        manpages.split_passages(doc, length=100, min_bytes=200)


def test_balance_caps_the_largest_class():
    labels = [0] * 70 + [1] * 20 + [2] * 10
    keep = manpages.balance(labels, max_fraction=0.45, seed=0)
    counts = np.bincount(np.asarray(labels)[keep])
    assert counts.max() / counts.sum() <= 0.45 and counts[1] == 20 and counts[2] == 10
    np.testing.assert_array_equal(keep, manpages.balance(labels, max_fraction=0.45, seed=0))
    assert len(manpages.balance([0, 1, 2], max_fraction=0.5)) == 3  # already balanced: nothing dropped
    # weighted: items of class 0 weigh 3 (passages per page), so fewer of them are kept
    weights = [3] * 70 + [1] * 30
    keep = manpages.balance(labels, weights, max_fraction=0.5)
    w0 = 3 * int((np.asarray(labels)[keep] == 0).sum())
    assert w0 <= 30 and w0 >= 27
    with pytest.raises(ValueError, match="max_fraction"):
        manpages.balance(labels, max_fraction=0)
    with pytest.raises(ValueError, match="weights"):
        manpages.balance(labels, [0] * 100)


def test_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    a = manpages.split_documents(labels, seed=3)
    b = manpages.split_documents(labels, seed=3)
    c = manpages.split_documents(labels, seed=4)
    for s in manpages.SPLITS:
        np.testing.assert_array_equal(a[s], b[s])
    assert any(not np.array_equal(a[s], c[s]) for s in manpages.SPLITS)
    joined = np.concatenate([a[s] for s in manpages.SPLITS])
    assert len(joined) == len(set(joined.tolist())) == len(labels)
    assert np.bincount(labels[a["val"]]).tolist() == [5, 3, 2] == np.bincount(labels[a["test"]]).tolist()
    with pytest.raises(ValueError, match="val_fraction"):
        manpages.split_documents(labels, val_fraction=0)


def test_prepare_from_source_and_dataset(tmp_path):
    src = _package_tree(tmp_path / "src", per_class=20)
    cache = tmp_path / "cache"
    task = get_task("manpages")
    assert not task.is_prepared(cache)
    ticks = []
    paths = task.prepare(cache, source=src, progress=ticks.append)
    assert task.is_prepared(cache) and paths == [cache / manpages.FOLDER / manpages.FILENAME]
    assert sum(ticks) == 3  # one per package rendered
    entry = load_manifest(cache)["files"][f"{manpages.FOLDER}/{manpages.FILENAME}"]["params"]
    assert entry["pages_per_class"] == [20, 20, 20] and entry["pages"] == 60
    passages, pages, page_labels, ids = manpages.load_manpages(cache)
    assert len(page_labels) == len(ids) == 60 and len(passages) == len(pages) == entry["passages"]
    assert np.bincount(page_labels[pages]).tolist() == entry["passages_per_class"]
    assert all(manpages.MIN_BYTES <= len(p) <= manpages.PASSAGE_BYTES for p in passages)
    assert len(passages) > 60  # the fixture pages (about 3.7 kB) give one or two passages each
    split = manpages.split_documents(page_labels)
    sizes = {}
    for name in manpages.SPLITS:
        ds = task.dataset(name, cache, length=512)
        sizes[name] = len(ds)
        assert len(ds) == int(np.isin(pages, split[name]).sum())
        tokens, label = ds[0]
        assert tokens.shape == (512,) and tokens.dtype == torch.long and 0 <= int(tokens.min())
        assert int(tokens.max()) < task.vocab_size and label in (0, 1, 2)
    assert sum(sizes.values()) == len(passages)
    val = task.dataset("val", cache, length=512)
    torch.testing.assert_close(val[1][0], task.dataset("val", cache, length=512)[1][0])  # first window: fixed
    first = passages[int(np.flatnonzero(np.isin(pages, split["val"]))[1])]
    assert bytes(val[1][0].tolist()) == first[:512]
    padded, _ = task.dataset("test", cache, length=8192)[0]
    assert int(padded[-1]) == 0  # shorter passages are padded with byte 0
    with pytest.raises(ValueError, match="split"):
        task.dataset("dev", cache)


def test_training_config_defaults_to_text_preset_with_three_classes(tmp_path):
    cfg = TrainConfig(task="manpages", max_steps=1, out_dir=str(tmp_path))
    assert cfg.model == "text_bytes_cpu" and cfg.model_overrides == {"num_classes": 3}
    cfg = TrainConfig(task="manpages", max_steps=1, out_dir=str(tmp_path), model_overrides={"depth": 1})
    assert cfg.model_overrides == {"num_classes": 3, "depth": 1}
    cfg = make_config(read_config_file(CONFIG))
    assert cfg.task == "manpages" and cfg.model == "text_bytes_cpu" and cfg.model_overrides == {"num_classes": 3}


def test_missing_sources_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataNotPreparedError, match="taylorshift data prepare manpages"):
        get_task("manpages").dataset("train", tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataSourceError, match="apt-get") as err:
        manpages.prepare_manpages(tmp_path)
    assert "--source" in str(err.value)
    with pytest.raises(DataSourceError, match="not a folder of unpacked packages"):
        manpages.prepare_manpages(tmp_path, source=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no unpacked package"):
        manpages.prepare_manpages(tmp_path, source=tmp_path / "empty")
    short = tmp_path / "short" / "pkg" / "usr" / "share" / "man" / "man1"
    short.mkdir(parents=True)
    (short / "tiny.1").write_text(".TH T 1\n.SH DESCRIPTION\nshort\n")
    with pytest.raises(DataSourceError, match="no manual page of at least"):
        manpages.prepare_manpages(tmp_path, source=tmp_path / "short")
    (short / "long.1").write_text(".TH L 1\n.SH DESCRIPTION\n" + "word " * 1000)
    with pytest.raises(DataSourceError, match="1 of the 3 classes"):
        manpages.prepare_manpages(tmp_path, source=tmp_path / "short")


def _fake_debian_tools(folder, fail: str | None = None):
    """``apt-get`` and ``dpkg-deb`` stand-ins: ``apt-get download P...`` writes ``P_1.0_all.deb`` files (holding the
    package name) unless P is ``fail``; ``dpkg-deb -x DEB DIR`` writes a long page of sections 1, 3 and 5 into DIR."""
    folder.mkdir()
    apt = folder / "apt-get"
    apt.write_text("#!/bin/sh\nshift\nfor p in \"$@\"; do\n"
                   f"  if [ \"$p\" = \"{fail}\" ]; then echo \"E: Unable to locate package $p\"; exit 100; fi\n"
                   "  echo \"$p\" > \"${p}_1.0_all.deb\"\ndone\n")
    dpkg = folder / "dpkg-deb"
    dpkg.write_text("#!/bin/sh\nname=$(cat \"$2\")\nfor s in 1 3 5; do\n  mkdir -p \"$3/usr/share/man/man$s\"\n"
                    "  { echo \".TH X $s\"; echo '.SH DESCRIPTION'; i=0; while [ $i -lt 200 ]; do "
                    "echo \"$name $s line $i\"; i=$((i+1)); done; } > \"$3/usr/share/man/man$s/$name.$s\"\ndone\n")
    for tool in (apt, dpkg):
        tool.chmod(0o755)
    return {"apt-get": str(apt), "dpkg-deb": str(dpkg)}


def test_prepare_fetches_with_apt_get(tmp_path, monkeypatch):
    tools = _fake_debian_tools(tmp_path / "bin")
    monkeypatch.setattr(shutil, "which", tools.get)
    monkeypatch.setattr(manpages, "PACKAGES", {"pkg-a": None, "pkg-b": None, "pkg-c": ("3",)})
    ticks = []
    manpages.prepare_manpages(tmp_path / "cache", progress=ticks.append)
    assert sum(ticks) == 6  # 3 packages fetched, 3 rendered
    params = load_manifest(tmp_path / "cache")["files"][f"{manpages.FOLDER}/{manpages.FILENAME}"]["params"]
    assert params["packages"] == {"pkg-a": "1.0", "pkg-b": "1.0", "pkg-c": "1.0"}
    assert params["source"].startswith("apt-get download pkg-a")
    _, _, _, ids = manpages.load_manpages(tmp_path / "cache")
    assert sorted(ids) == [f"pkg-{p}/pkg-{p}.{s}" for p in "ab" for s in "135"] + ["pkg-c/pkg-c.3"]
    assert not [p for p in (tmp_path / "cache" / manpages.FOLDER).iterdir() if p.name.startswith(".fetch")]


def test_apt_get_failure_names_the_package(tmp_path, monkeypatch):
    tools = _fake_debian_tools(tmp_path / "bin", fail="pkg-b")
    monkeypatch.setattr(shutil, "which", tools.get)
    monkeypatch.setattr(manpages, "PACKAGES", {"pkg-a": None, "pkg-b": None})
    with pytest.raises(DataSourceError, match="Unable to locate package pkg-b") as err:
        manpages.prepare_manpages(tmp_path / "cache")
    assert "missing: pkg-b" in str(err.value) and "apt-get update" in str(err.value)


def test_cli_prepare(tmp_path, capsys):
    src = _package_tree(tmp_path / "src")
    cache = tmp_path / "cache"
    assert main(["data", "prepare", "manpages", "--source", str(src), "--cache-dir", str(cache),
                 "--no-progress"]) == 0
    assert f"{manpages.FOLDER}/{manpages.FILENAME}" in capsys.readouterr().out
    assert main(["data", "verify", "--cache-dir", str(cache)]) == 0
    assert main(["data", "prepare", "manpages", "--size", "3", "--cache-dir", str(cache)]) == 2
    assert "does not apply" in capsys.readouterr().err

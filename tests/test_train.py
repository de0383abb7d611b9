"""Training and evaluation: config loading, schedule, exact resume, checkpoint integrity, backend agreement,
the CLI, and DistributedDataParallel with two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from taylorshift.data import get_task
from taylorshift.train import CheckpointError, RunExistsError, TrainConfig, Trainer, load_model, train
from taylorshift.train.checkpoint import read_checkpoint
from taylorshift.train.config import apply_overrides, make_config, read_config_file
from taylorshift.train.eval import evaluate_checkpoint
from taylorshift.train.loop import learning_rate
from taylorshift.train.metrics import read_metrics

pytest.importorskip("safetensors", reason="checkpoints need safetensors (pip install 'taylorshift[train]')")

TINY = {"depth": 1, "dim": 32, "num_heads": 2, "head_dim": 16, "drop_path": 0.1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A tiny ListOps cache: 96/24/24 short expressions (20-60 tokens)."""
    root = tmp_path_factory.mktemp("data")
    get_task("listops").prepare(root, size=96, val_size=24, test_size=24, min_length=20, max_length=60)
    return str(root)


def tiny_config(data_dir: str, out: Path, **kw) -> TrainConfig:
    base = dict(task="listops", model="listops_cpu", model_overrides=dict(TINY), cache_dir=data_dir, out_dir=str(out),
                max_steps=12, batch_size=8, warmup_steps=3, ckpt_every=4, log_every=2, eval_every=6, threads=1,
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def train_rows(path: Path) -> list[tuple]:
    return [(r["step"], r["split"], r["loss"], r["accuracy"], r["lr"]) for r in read_metrics(path)]


# ------------------------------------------------------------------------------------------------- config
def test_config_from_yaml_json_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("task: pixels\nmax_steps: 5\nmodel_overrides:\n  depth: 1\n")
    (tmp_path / "c.json").write_text(json.dumps({"task": "pixels", "max_steps": 5}))
    data = read_config_file(tmp_path / "c.yaml")
    assert data == read_config_file(tmp_path / "c.json") | {"model_overrides": {"depth": 1}}
    data = apply_overrides(data, ["lr=0.003", "model_overrides.dim=32", "bf16=true", "attention=softmax"])
    cfg = make_config(data)
    assert cfg.lr == 0.003 and cfg.model_overrides == {"depth": 1, "dim": 32} and cfg.bf16 is True
    assert cfg.model == "pixels_cpu" and cfg.attention == "softmax"
    assert cfg.out_dir == str(Path("runs") / "pixels-pixels_cpu-softmax")


@pytest.mark.parametrize("data, match", [
    ({"task": "pixels"}, "exactly one of max_steps, epochs, budget_minutes"),
    ({"task": "pixels", "max_steps": 3, "epochs": 1.0}, "exactly one"),
    ({"task": "pixels", "max_steps": 3, "nonsense": 1}, "unknown config field"),
    ({"task": "pixels", "max_steps": 0}, "max_steps must be an int >= 1"),
    ({"task": "pixels", "max_steps": 3, "budget_clock": "moon"}, "budget_clock"),
    ({"task": "pixels", "max_steps": 3, "label_smoothing": 2.0}, "label_smoothing"),
    ({"max_steps": 3}, "needs a task"),
])
def test_config_errors(data, match):
    with pytest.raises(ValueError, match=match):
        make_config(data)


def test_config_file_errors(tmp_path):
    (tmp_path / "c.txt").write_text("task: x")
    with pytest.raises(ValueError, match=r"\.json, \.yaml or \.yml"):
        read_config_file(tmp_path / "c.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config_file(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        read_config_file(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["lr"])


def test_learning_rate_schedule():
    cfg = TrainConfig(task="pixels", max_steps=100, lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    lrs = [learning_rate(cfg, s, 100, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # non-increasing after warm-up
    assert learning_rate(cfg, 100, 100, 10) == pytest.approx(0.1)


# --------------------------------------------------------------------------------- training and resume
def test_interrupt_and_resume_equals_uninterrupted(data_dir, tmp_path, monkeypatch):
    full = train(tiny_config(data_dir, tmp_path / "full"))
    assert full["steps"] == 12 and 0.0 <= full["test"]["accuracy"] <= 1.0

    original = Trainer.save

    def save_then_stop(self):
        original(self)
        if self.step == 8:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C right after the step-8 checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_dir, tmp_path / "cut"))
    monkeypatch.setattr(Trainer, "save", original)
    assert read_checkpoint(tmp_path / "cut")[1]["step"] == 8
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny_config(data_dir, tmp_path / "cut"))
    resumed = train(tiny_config(data_dir, tmp_path / "cut"), resume=True)

    a, b = train_rows(tmp_path / "full" / "metrics.csv"), train_rows(tmp_path / "cut" / "metrics.csv")
    assert len(a) == len(b) > 6 and a == b  # train, val and test rows identical to the printed digits
    assert resumed["test"] == full["test"]
    ta, _ = read_checkpoint(tmp_path / "full")
    tb, _ = read_checkpoint(tmp_path / "cut")
    for key in ta:
        if key.startswith(("model.", "optim.")):
            assert torch.equal(ta[key], tb[key]), key
    assert (tmp_path / "cut" / "curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["max_steps"] == 12


def test_resume_with_different_run_is_refused(data_dir, tmp_path):
    train(tiny_config(data_dir, tmp_path / "r", max_steps=4))
    with pytest.raises(CheckpointError, match="different run.*lr"):
        train(tiny_config(data_dir, tmp_path / "r", max_steps=4, lr=0.5), resume=True)


def test_corrupted_and_foreign_checkpoints(data_dir, tmp_path):
    train(tiny_config(data_dir, tmp_path / "r", max_steps=4))
    path = tmp_path / "r" / "checkpoint.safetensors"
    raw = path.read_bytes()
    flipped = bytearray(raw)
    flipped[-20] ^= 0xFF  # one bit pattern in the last tensor's bytes
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted.*sha256"):
        read_checkpoint(bad)
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupted or not a safetensors"):
        load_model(bad)
    bad.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointError):
        load_model(bad)
    import safetensors.torch as st

    st.save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(CheckpointError, match="not a taylorshift training checkpoint"):
        load_model(bad)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")
    # resuming into a folder whose checkpoint is corrupted fails clearly, not with a stack trace from torch
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted"):
        train(tiny_config(data_dir, tmp_path / "r", max_steps=4), resume=True)


def test_checkpoint_of_another_model_is_refused(data_dir, tmp_path):
    from taylorshift.models import create_model
    from taylorshift.train.checkpoint import restore_model

    train(tiny_config(data_dir, tmp_path / "r", max_steps=2))
    tensors, _ = read_checkpoint(tmp_path / "r")
    other = create_model("listops_cpu", **dict(TINY, depth=2))
    with pytest.raises(CheckpointError, match="does not match the model: missing"):
        restore_model(other, tensors)
    other = create_model("listops_cpu", **dict(TINY, dim=64, num_heads=4))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        restore_model(other, tensors)


def test_model_must_fit_task(data_dir, tmp_path):
    with pytest.raises(ValueError, match="10 classes|classes but task"):
        Trainer(tiny_config(data_dir, tmp_path / "x", model="pathfinder_cpu"))


def test_budget_minutes_fixes_steps(data_dir, tmp_path):
    s = train(tiny_config(data_dir, tmp_path / "b", max_steps=None, budget_minutes=0.05, budget_clock="cpu",
                          eval_every=0))
    assert s["steps"] >= 12  # calibration needs 12 steps; then it fits the budget
    _, meta = read_checkpoint(tmp_path / "b")
    assert meta["total_steps"] == s["steps"]


# ------------------------------------------------------------------------------------ evaluation
def test_eval_direct_equals_efficient(data_dir, tmp_path):
    train(tiny_config(data_dir, tmp_path / "r", max_steps=6, backend="efficient"))
    result = evaluate_checkpoint(str(tmp_path / "r"), "test", backend="efficient", compare_backend="direct")
    c = result["compare"]
    assert result["count"] == 24 and c["prediction_agreement"] == 1.0
    assert c["max_abs_logit_diff"] <= 1e-4 * max(1.0, c["max_abs_logit"])
    model, meta = load_model(tmp_path / "r" / "checkpoint.safetensors", backend="direct")
    assert not model.training and meta["config"]["backend"] == "efficient"


def test_cli_train_and_eval(data_dir, tmp_path):
    from taylorshift.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--task", "listops", "--max-steps", "3", "--batch-size", "8", "--cache-dir", data_dir,
               "--out-dir", str(out), "--set", "model_overrides.depth=1", "--set", "model_overrides.dim=32",
               "--set", "model_overrides.num_heads=2", "--no-progress", "--threads", "1"])
    assert rc == 0 and (out / "summary.json").exists()
    assert main(["train", "--task", "listops", "--max-steps", "3", "--cache-dir", data_dir, "--out-dir", str(out),
                 "--no-progress"]) == 1  # run exists
    assert main(["train", "--task", "listops"]) == 2  # no budget
    result_path = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out), "--compare-backend", "direct", "--json", str(result_path)]) == 0
    assert json.loads(result_path.read_text())["compare"]["prediction_agreement"] == 1.0
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 1


def test_bf16_autocast_trains(data_dir, tmp_path):
    s = train(tiny_config(data_dir, tmp_path / "bf", max_steps=3, bf16=True, eval_every=0))
    assert s["val"]["loss"] == pytest.approx(s["val"]["loss"]) and s["val"]["loss"] < 10


# ------------------------------------------------------------------------------------------- torchrun
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built in")
def test_torchrun_two_processes_match_one(data_dir, tmp_path):
    """DDP over 2 gloo processes (global batch 8 = 2 x 4) follows the single-process loss curve."""
    common = ["--task", "listops", "--max-steps", "6", "--batch-size", "8", "--cache-dir", data_dir,
              "--log-every", "1", "--no-progress", "--threads", "1", "--set", "model_overrides.depth=1",
              "--set", "model_overrides.dim=32", "--set", "model_overrides.num_heads=2",
              "--set", "model_overrides.drop_path=0.0", "--eval-samples", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "taylorshift", "train", "--out-dir", str(tmp_path / "one"), *common],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "taylorshift", "train", "--out-dir", str(tmp_path / "two"), *common],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    rows1 = [r for r in read_metrics(tmp_path / "one" / "metrics.csv") if r["split"] == "train"]
    rows2 = [r for r in read_metrics(tmp_path / "two" / "metrics.csv") if r["split"] == "train"]
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2] == [str(s) for s in range(1, 7)]
    for r1, r2 in zip(rows1, rows2, strict=True):
        assert float(r2["loss"]) == pytest.approx(float(r1["loss"]), rel=1e-4, abs=1e-5)
        assert float(r2["accuracy"]) == pytest.approx(float(r1["accuracy"]))
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2

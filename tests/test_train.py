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

from conftest import assert_one_error_line, cli_error, run_cli_with_file_size_limit
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


def _rewrite_metadata(path: Path, change) -> None:
    """Edit a checkpoint's safetensors header as a hex editor would: ``change(metadata)`` alters the string
    metadata dict in place; the header is re-serialised (padded to 8 bytes), the tensor bytes are kept."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    change(header["__metadata__"])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def _edit_meta(path: Path, change) -> None:
    def edit(metadata):
        meta = json.loads(metadata["meta"])
        change(meta)
        metadata["meta"] = json.dumps(meta)

    _rewrite_metadata(path, edit)


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    """A 4-step run whose last checkpoint is at step 4 (copy its checkpoint before altering it)."""
    out = tmp_path_factory.mktemp("finished") / "r"
    train(tiny_config(data_dir, out, max_steps=4, eval_every=0))
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst / "checkpoint.safetensors"


def test_checkpoint_metadata_is_covered_by_the_hash(finished_run, tmp_path, data_dir):
    path = _copy_run(finished_run, tmp_path / "r")
    raw = path.read_bytes()
    # one flipped bit in the step count of the header: 4 -> 5
    at = raw.index(b'\\"step\\": ') + len(b'\\"step\\": ')
    assert raw[at:at + 1] == b"4"
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:])
    with pytest.raises(CheckpointError, match="corrupted: its metadata .*step"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="metadata"):  # --resume refuses it: no extra steps trained
        train(tiny_config(data_dir, tmp_path / "r", max_steps=4, eval_every=0), resume=True)
    # a hyper-parameter edited in the header
    path.write_bytes(raw)
    _edit_meta(path, lambda m: m["config"].update(label_smoothing=0.9))
    with pytest.raises(CheckpointError, match="metadata"):
        read_checkpoint(path)
    # an optimizer group's learning rate
    path.write_bytes(raw)
    _edit_meta(path, lambda m: m["param_groups"][0].update(lr=m["param_groups"][0]["lr"] * 10))
    with pytest.raises(CheckpointError, match="metadata"):
        load_model(path)
    # any other metadata entry, and the hash itself
    path.write_bytes(raw)
    _rewrite_metadata(path, lambda md: md.update(note="added"))
    with pytest.raises(CheckpointError, match="metadata"):
        read_checkpoint(path)
    path.write_bytes(raw)
    _rewrite_metadata(path, lambda md: md.pop("meta_sha256", None))
    with pytest.raises(CheckpointError, match="metadata"):
        read_checkpoint(path)
    path.write_bytes(raw)
    assert read_checkpoint(path)[1]["step"] == 4  # the untouched file is fine


def test_checkpoint_of_the_first_format_is_read_with_a_warning(finished_run, tmp_path, data_dir):
    from taylorshift.train.checkpoint import UnverifiedCheckpointWarning

    path = _copy_run(finished_run, tmp_path / "r")

    def to_v1(md):
        md["format"] = "taylorshift-checkpoint-v1"
        md.pop("meta_sha256", None)

    _rewrite_metadata(path, to_v1)
    with pytest.warns(UnverifiedCheckpointWarning, match="metadata .* not covered"):
        _, meta = read_checkpoint(path)
    assert meta["step"] == 4
    # its tensors are still verified
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="tensors do not match"):
        read_checkpoint(path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_checkpoint_temporaries_are_removed_and_permissions_match(data_dir, tmp_path, finished_run):
    # resume: a run dir with the temporary file of a killed run
    run = tmp_path / "r"
    _copy_run(finished_run, run)
    stale = run / f".checkpoint.safetensors.tmp{_dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    Trainer(tiny_config(data_dir, run, max_steps=4, eval_every=0), resume=True)
    assert not stale.exists()
    # a new run's save
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    stale = fresh / f".checkpoint.safetensors.tmp{_dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    from taylorshift.train.checkpoint import save_checkpoint

    save_checkpoint(fresh / "checkpoint.safetensors", torch.nn.Linear(2, 2), None, {"step": 0})
    assert not stale.exists() and [p.name for p in fresh.iterdir()] == ["checkpoint.safetensors"]
    # the checkpoint has the mode of the other run files (0666 less the umask), not mkstemp's 0600
    modes = {p.name: p.stat().st_mode & 0o777 for p in finished_run.iterdir()}
    assert modes["checkpoint.safetensors"] == modes["config.json"] == modes["summary.json"], modes


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
                 "--no-progress"]) == 2  # run exists
    assert main(["train", "--task", "listops"]) == 2  # no budget
    result_path = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out), "--compare-backend", "direct", "--json", str(result_path)]) == 0
    assert json.loads(result_path.read_text())["compare"]["prediction_agreement"] == 1.0
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2


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


# ------------------------------------------------------------------------------------------ CLI errors
# the command line of tiny_config(max_steps=2) (so --resume continues a run made with it)
CLI_TINY = ["--max-steps", "2", "--batch-size", "8", "--warmup-steps", "3", "--no-progress", "--threads", "1",
            "--set", f"model_overrides={json.dumps(TINY)}", "--ckpt-every", "4", "--log-every", "2"]


@pytest.mark.parametrize("argv, needles", [
    (["--task", "nosuch", "--max-steps", "2"], ["--task nosuch", "unknown task 'nosuch'", "listops"]),
    (["--task", "nosuch", "--model", "listops_cpu", "--max-steps", "2"], ["--task nosuch", "unknown task"]),
    (["--task", "listops", "--max-steps", "2", "--set", "data_options.seq_len=5"],
     ["--set data_options.seq_len=5", "'seq_len'"]),
    (["--task", "fortunes-lm", "--max-steps", "2", "--set", "data_options.seq_len=abc"],
     ["--set data_options.seq_len=abc", "seq_len", "int"]),
    (["--task", "listops", "--max-steps", "2", "--set", "lr=abc"], ["--set lr=abc", "lr must be a finite number"]),
    (["--task", "listops", "--max-steps", "2", "--set", "lr=Infinity"], ["--set lr=Infinity", "lr"]),
    (["--task", "listops", "--max-steps", "2", "--lr", "inf"], ["argument --lr", "finite"]),
    (["--task", "listops", "--max-steps", "2", "--lr", "nan"], ["argument --lr"]),
    (["--task", "listops", "--max-steps", "2", "--set", "model_overrides.nope=1"], ["model_overrides.nope", "nope"]),
    (["--task", "listops", "--max-steps", "2", "--model", "nope"], ["--model nope", "unknown model"]),
])
def test_cli_train_config_errors_are_one_line(capsys, argv, needles):
    line = cli_error(capsys, ["train", *argv], *needles)
    assert "default model" not in line


def test_train_config_rejects_non_finite_numbers_and_wrong_types():
    for field, value in [("lr", float("inf")), ("lr", float("nan")), ("weight_decay", float("inf")),
                         ("grad_clip", float("nan")), ("epochs", float("inf")), ("lr", "0.1"), ("batch_size", 2.0),
                         ("bf16", "yes"), ("betas", (0.9, float("nan")))]:
        budget = {} if field == "epochs" else {"max_steps": 3}
        with pytest.raises(ValueError, match=field):
            TrainConfig(task="listops", **budget, **{field: value})


def test_cli_train_out_dir_that_is_a_file(data_dir, tmp_path, capsys):
    common = ["train", "--task", "listops", "--cache-dir", data_dir, *CLI_TINY]
    (tmp_path / "file").write_text("x")
    cli_error(capsys, [*common, "--out-dir", str(tmp_path / "file")], "--out-dir", "is an existing file")
    cli_error(capsys, [*common, "--out-dir", str(tmp_path / "file" / "run")], "--out-dir", "is a file")


def test_cli_train_into_a_read_only_folder(data_dir, capsys, read_only_dir):
    read_only_dir.freeze()
    cli_error(capsys, ["train", "--task", "listops", "--cache-dir", data_dir, *CLI_TINY, "--out-dir",
                       str(read_only_dir.path / "new")], "--out-dir", "cannot be created")


def test_cli_train_resume_in_a_read_only_folder(data_dir, capsys, read_only_dir, finished_run):
    _copy_run(finished_run, read_only_dir.path / "run")
    read_only_dir.freeze()
    cli_error(capsys, ["train", "--task", "listops", "--cache-dir", data_dir, *CLI_TINY, "--max-steps", "6",
                       "--out-dir", str(read_only_dir.path / "run"), "--resume"], "--out-dir", "not writable")


def test_cli_eval_json_into_a_missing_folder_fails_before_evaluating(tmp_path, capsys, finished_run, monkeypatch):
    import taylorshift.train.eval as eval_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("evaluated before checking --json")

    monkeypatch.setattr(eval_module, "evaluate_checkpoint", must_not_run)
    cli_error(capsys, ["eval", "--checkpoint", str(finished_run), "--json", str(tmp_path / "missing" / "e.json")],
              "--json", "does not exist")


def test_cli_train_on_a_full_disk_is_one_line(data_dir, tmp_path, finished_run):
    common = ["train", "--task", "listops", "--cache-dir", data_dir, *CLI_TINY]
    _copy_run(finished_run, tmp_path / "resume")
    results = run_cli_with_file_size_limit([
        [*common, "--out-dir", str(tmp_path / "new")],
        [*common, "--max-steps", "6", "--out-dir", str(tmp_path / "resume"), "--resume"],
    ], limit_bytes=300)
    for (rc, err), run in zip(results, ("new", "resume"), strict=True):
        assert_one_error_line(rc, err, "(output of --out-dir)", str(tmp_path / run))
    assert not list((tmp_path / "resume").glob(".*tmp*"))  # no half-written temporaries left
    assert read_checkpoint(tmp_path / "resume")[1]["step"] == 4  # the checkpoint is intact


def test_a_diverging_run_does_not_name_a_missing_checkpoint(data_dir, tmp_path, monkeypatch):
    import taylorshift.train.loop as loop

    real = loop.loss_and_correct

    def nan_loss(logits, targets, smoothing):
        loss, correct, count = real(logits, targets, smoothing)
        return loss * float("nan"), correct, count

    monkeypatch.setattr(loop, "loss_and_correct", nan_loss)
    with pytest.raises(FloatingPointError, match="no checkpoint was written"):
        train(tiny_config(data_dir, tmp_path / "r", max_steps=2))

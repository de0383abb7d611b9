"""The training loop behind ``taylorshift train``: one process or many (``torchrun``), resumable exactly.

Order of data: epoch ``e`` visits the training examples in ``randperm(n, seed = config.seed · 1,000,003 + e)``
order, global batch ``s`` of the epoch is the slice ``[s·B, (s+1)·B)`` and process ``r`` of ``W`` takes the
``r``-th of its ``W`` equal parts. So the batches are a function of the step alone, and a run resumed from a
checkpoint at step ``k`` sees exactly the batches an uninterrupted run sees after step ``k``; with the model,
AdamW moments and RNG state restored, its losses are the same.

Budgets: ``max_steps``, ``epochs`` or ``budget_minutes`` of CPU (or wall) time. With a time budget, the loop
times 10 steps from the third on (inside the warm-up), fixes the total step count from that rate, and stores it in the
checkpoint, so the cosine schedule is well defined and a resumed run keeps it.

Outputs in ``out_dir``: ``config.json`` (resolved config), ``metrics.csv``, ``curves.png``,
``checkpoint.safetensors`` (every ``ckpt_every`` steps and at the end) and ``summary.json`` (written last:
its presence means the run finished).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taylorshift.data import get_task
from taylorshift.files import atomic_open, remove_stale_temps
from taylorshift.models.registry import model_config
from taylorshift.train import checkpoint as ckpt
from taylorshift.train import distributed as dist_utils
from taylorshift.train.batches import Batch, autocast, evaluate, logits_of, loss_and_correct, make_batch
from taylorshift.train.config import TrainConfig, write_config
from taylorshift.train.metrics import MetricsLog, plot_curves

CALIBRATION_STEPS = (2, 10)  # with a time budget: time 10 steps from step 2 on to fix the step count
VAL_FRACTION, VAL_MAX = 0.1, 2000  # tasks without a val split hold out this part of the training set


def holdout_split(n: int) -> tuple[list[int], list[int]]:
    """``(val, train)`` indices of a training set of ``n`` examples for tasks without a val split: a fixed
    seeded ``VAL_FRACTION`` (at most ``VAL_MAX``) is held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(12345)).tolist()
    n_val = max(1, min(VAL_MAX, int(n * VAL_FRACTION)))
    return sorted(perm[:n_val]), sorted(perm[n_val:])


class RunExistsError(FileExistsError):
    """``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


def learning_rate(cfg: TrainConfig, step: int, total: int | None, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine to ``lr · min_lr_ratio`` at ``total``."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if total is None or total <= warmup:
        return cfg.lr
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and conv kernels; none on biases, norms, CLS tokens,
    positional tables and the attention temperatures."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or any(s in name for s in ("cls_token", "pos_embed", "temperature"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process (Linux ``VmHWM``), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class _Clock:
    """Training time on both clocks, paused during evaluation and checkpointing."""

    def __init__(self, wall: float = 0.0, cpu: float = 0.0) -> None:
        self.wall, self.cpu = wall, cpu
        self._start: tuple[float, float] | None = None

    def start(self) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        if self._start is not None:
            self.wall += time.perf_counter() - self._start[0]
            self.cpu += time.process_time() - self._start[1]
            self._start = None

    def read(self, which: str) -> float:
        running = self._start is not None
        self.stop()
        value = self.cpu if which == "cpu" else self.wall
        if running:
            self.start()
        return value


class Trainer:
    """Runs one :class:`TrainConfig`. Use :func:`train` unless you need the pieces."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.info = dist_utils.setup()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.out_dir)
        self.ckpt_path = self.out / ckpt.FILENAME
        self.task = get_task(cfg.task)
        self.kind = self.task.kind
        self._check_run_dir(resume, overwrite)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.model_config = model_config(cfg.model, cfg.attention, cfg.backend, **cfg.model_overrides)
        self._check_model_fits_task()
        from taylorshift.models.registry import build_model

        self.model = build_model(self.model_config).to(self.info.device)
        self._setup_sequence_parallel()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=cfg.betas)
        self._load_data()
        self.step, self.total_steps = 0, self._planned_steps()
        self.warmup = self._warmup(self.total_steps)
        self.clock = _Clock()
        self.metrics = MetricsLog(self.out / "metrics.csv", enabled=self.info.is_main)
        self.interval_sums = torch.zeros(3, dtype=torch.float64, device=self.info.device)
        if self.resuming:
            self._resume()
        self.ddp = self.model
        if self.info.enabled and self.sp_size == 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model)

    # ----------------------------------------------------------------------------------------------- setup
    def _setup_sequence_parallel(self) -> None:
        """``sequence_parallel = K > 1``: groups of K consecutive ranks share every example, each holding a
        contiguous part of its sequence; the groups are data parallel. Gradients are summed over all ranks
        (:func:`dist_utils.sum_gradients`) instead of DDP."""
        info, size = self.info, self.cfg.sequence_parallel
        self.sp_size, self.sp_group, self.dp_index, self.dp_size = size, None, info.rank, info.world_size
        if size == 1:
            return
        if not info.enabled:
            raise ValueError(f"sequence_parallel={size} needs {size} or a multiple of {size} processes: launch "
                             f"with torchrun --nproc_per_node {size} -m taylorshift train ...")
        if self.kind not in ("tokens", "lm"):
            raise ValueError(f"sequence_parallel works on token and LM tasks; task {self.task.name!r} is {self.kind}")
        if getattr(self.model_config, "drop_path", 0.0) > 0:
            raise ValueError("sequence_parallel needs drop_path = 0 (pass --set model_overrides.drop_path=0): "
                             "stochastic depth drops whole examples, and the ranks sharing an example would draw "
                             "different masks")
        from taylorshift.distributed import set_sequence_parallel

        self.sp_group, self.dp_index, self.dp_size = dist_utils.new_groups(info, size)
        set_sequence_parallel(self.model, self.sp_group)

    def _check_run_dir(self, resume: bool, overwrite: bool) -> None:
        self.resuming = False
        if self.ckpt_path.exists() or (self.out / "metrics.csv").exists():
            if resume and self.ckpt_path.exists():
                self.resuming = True
            elif overwrite:
                if self.info.is_main:
                    for name in (ckpt.FILENAME, "metrics.csv", "summary.json", "curves.png", "config.json"):
                        (self.out / name).unlink(missing_ok=True)
            else:
                raise RunExistsError(f"{self.out} already holds a run: pass --resume to continue it, --overwrite "
                                     "to start again, or another --out-dir")
        elif resume and self.info.is_main:
            print(f"no checkpoint in {self.out}: starting a new run")
        self.out.mkdir(parents=True, exist_ok=True)
        if self.info.is_main:  # a checkpoint half-written by a killed run
            remove_stale_temps(self.ckpt_path)
        dist_utils.barrier(self.info)

    def _check_model_fits_task(self) -> None:
        mc, task = self.model_config, self.task
        if self.kind == "lm":
            vocab = getattr(mc, "vocab_size", None)
            if vocab is not None and task.vocab_size is not None and vocab < task.vocab_size:
                raise ValueError(f"model {self.cfg.model!r} has vocab_size {vocab} but task {task.name!r} "
                                 f"needs {task.vocab_size}")
            return
        if self.kind == "image" and not hasattr(mc, "img_size"):
            raise ValueError(f"task {task.name!r} gives images; model {self.cfg.model!r} is a sequence model "
                             "(choose a ViT preset, e.g. vit_tiny_fmnist)")
        if self.kind == "tokens" and not hasattr(mc, "input_dim"):
            raise ValueError(f"task {task.name!r} gives token sequences; model {self.cfg.model!r} is not a "
                             "sequence classifier")
        if mc.num_classes != task.num_classes:
            raise ValueError(f"model {self.cfg.model!r} has {mc.num_classes} classes but task {task.name!r} has "
                             f"{task.num_classes}; pass model_overrides.num_classes={task.num_classes}")
        if self.kind == "tokens" and task.vocab_size is not None and mc.input_dim < task.vocab_size:
            raise ValueError(f"model {self.cfg.model!r} takes {mc.input_dim} token ids but task {task.name!r} "
                             f"uses {task.vocab_size}")

    def _load_data(self) -> None:
        cfg, task = self.cfg, self.task
        train = task.dataset("train", cfg.cache_dir, **cfg.data_options)
        indices = list(range(len(train)))
        if "val" in task.splits:
            self.val_set = task.dataset("val", cfg.cache_dir, **cfg.data_options)
        else:  # hold out a seeded part of the training set
            val_idx, indices = holdout_split(len(train))
            self.val_set = torch.utils.data.Subset(train, val_idx)
        if cfg.train_samples is not None:
            indices = indices[: cfg.train_samples]
        self.train_set, self.train_indices = train, indices
        self.test_set = task.dataset("test", cfg.cache_dir, **cfg.data_options)
        world = self.dp_size  # data-parallel groups (the processes, without sequence parallelism)
        if cfg.batch_size % world:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the number of data-parallel "
                             f"groups ({world})")
        self.steps_per_epoch = len(indices) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size ({cfg.batch_size}) is larger than the training set ({len(indices)})")

    def _planned_steps(self) -> int | None:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        if self.cfg.epochs is not None:
            return max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))
        return None  # time budget: fixed after calibration

    def _warmup(self, total: int | None) -> int:
        w = self.cfg.warmup_steps
        if total is None or w == 0:
            return w
        return min(w, max(1, total // 10))

    def _resume(self) -> None:
        tensors, meta = ckpt.read_checkpoint(self.ckpt_path)
        saved = meta.get("config", {})
        own = self.cfg.identity()
        diff = sorted(k for k in own if saved.get(k) != own[k])
        if diff:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {own[k]!r}" for k in diff)
            raise ckpt.CheckpointError(f"checkpoint {self.ckpt_path} belongs to a different run ({details})")
        if meta.get("config", {}).get("sequence_parallel", 1) != self.cfg.sequence_parallel:
            raise ckpt.CheckpointError("checkpoint was written with sequence_parallel="
                                       f"{meta['config'].get('sequence_parallel', 1)}; resume with the same value")
        if meta.get("world_size", 1) != self.info.world_size:
            raise ckpt.CheckpointError(f"checkpoint was written by {meta.get('world_size')} process(es); resume "
                                       f"with the same number (now {self.info.world_size})")
        ckpt.restore_model(self.model, tensors, source=f"checkpoint {self.ckpt_path}")
        ckpt.restore_optimizer(self.optimizer, tensors, meta)
        ckpt.restore_rng(tensors, meta)
        self.step = int(meta["step"])
        self.total_steps = meta.get("total_steps")
        self.warmup = int(meta.get("warmup", self.warmup))
        self.clock = _Clock(meta.get("train_seconds", 0.0), meta.get("cpu_seconds", 0.0))
        self.interval_sums.copy_(torch.tensor(meta.get("interval_sums", [0.0, 0.0, 0.0]), dtype=torch.float64))
        self.metrics.truncate_after(self.step)
        if self.info.is_main:
            print(f"resumed {self.out} at step {self.step}" + (f" of {self.total_steps}" if self.total_steps else ""))

    # ------------------------------------------------------------------------------------------ the loop
    def _batch_indices(self, step: int) -> list[int]:
        cfg = self.cfg
        epoch, within = divmod(step, self.steps_per_epoch)
        if getattr(self, "_perm_epoch", None) != epoch:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.train_indices), generator=g).tolist()
            self._perm_epoch = epoch
        start = within * cfg.batch_size
        global_batch = self._perm[start: start + cfg.batch_size]
        local = cfg.batch_size // self.dp_size
        part = global_batch[self.dp_index * local: (self.dp_index + 1) * local]
        return [self.train_indices[i] for i in part]

    def _batch(self, step: int):
        """The batch of ``step`` for this process: its data-parallel part, and with sequence parallelism its part
        of every sequence (items drawn under a per-step seed, so random crops agree within the group)."""
        indices = self._batch_indices(step)
        if self.sp_size == 1:
            return make_batch(self.kind, [self.train_set[i] for i in indices], self.task.pad_id, self.info.device)
        from taylorshift.distributed import split_sequence

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.cfg.seed * 1_000_003 + step) * 1_009 + self.dp_index)
            items = [self.train_set[i] for i in indices]
        batch = make_batch(self.kind, items, self.task.pad_id, self.info.device)
        rank, size = self.info.rank % self.sp_size, self.sp_size
        targets = split_sequence(batch.targets, rank, size) if self.kind == "lm" else batch.targets
        return Batch(split_sequence(batch.inputs, rank, size), targets, split_sequence(batch.padding, rank, size))

    def _group_loss(self, loss: torch.Tensor, correct: torch.Tensor, count: int):
        """With sequence parallelism: ``(group loss, this rank's share, correct, count)`` of the whole sequences.
        Classifiers: every rank has the group's logits, so the loss is replicated and each rank backpropagates
        ``1/K`` of it. LMs: each rank has its positions; its share is its sum of losses over the group's count."""
        if self.kind != "lm":
            return loss, loss / self.sp_size, correct, count
        import torch.distributed as dist

        stats = torch.stack([torch.tensor(float(count), dtype=torch.float64, device=loss.device), correct.double()])
        dist.all_reduce(stats, group=self.sp_group)
        share = loss * (count / stats[0])
        total = share.detach().clone()
        dist.all_reduce(total, group=self.sp_group)
        return total, share, stats[1], int(stats[0])

    def _meta(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model_config": ckpt.model_config_dict(self.model_config),
            "task": {"name": self.task.name, "kind": self.kind},
            "step": self.step, "total_steps": self.total_steps, "warmup": self.warmup,
            "train_seconds": self.clock.wall, "cpu_seconds": self.clock.cpu, "world_size": self.info.world_size,
            "interval_sums": self.interval_sums.tolist(),
        }

    def save(self) -> None:
        if self.info.is_main:
            ckpt.save_checkpoint(self.ckpt_path, self.model, self.optimizer, self._meta())
        dist_utils.barrier(self.info)

    def run_eval(self, split: str) -> dict[str, float] | None:
        """Evaluate on ``split`` (main process only) and log it."""
        if self.info.is_main:
            from taylorshift.distributed import sequence_parallel_disabled

            dataset = self.val_set if split == "val" else self.test_set
            with sequence_parallel_disabled(self.model):  # whole sequences, on this process alone
                r = evaluate(self.model, self.kind, dataset, self.task.pad_id, self.info.device,
                             self.cfg.eval_batch_size, self.cfg.eval_samples, self.cfg.bf16)
            self.metrics.append(step=self.step, split=split, epoch=self.step / self.steps_per_epoch, loss=r.loss,
                                accuracy=r.accuracy, samples=r.count, train_seconds=self.clock.wall,
                                cpu_seconds=self.clock.cpu)
            result = {"loss": r.loss, "accuracy": r.accuracy, "count": r.count}
        else:
            result = None
        dist_utils.barrier(self.info)
        return result

    def _calibrate(self, t_start: float) -> None:
        """Fix the total step count from the measured rate of the last CALIBRATION_STEPS[1] steps."""
        per_step = (self.clock.read(self.cfg.budget_clock) - t_start) / CALIBRATION_STEPS[1]
        done = self.clock.read(self.cfg.budget_clock)
        remaining = self.cfg.budget_minutes * 60 - done
        total = max(self.step, self.step + int(remaining / max(per_step, 1e-9)))
        self.total_steps = dist_utils.max_over_ranks(self.info, total)
        self.warmup = self._warmup(self.total_steps)
        if self.info.is_main:
            print(f"budget {self.cfg.budget_minutes} {self.cfg.budget_clock}-minutes: {per_step * 1000:.0f} ms/step "
                  f"-> {self.total_steps} steps")

    def train(self) -> dict[str, Any]:
        """Train to the end of the budget, evaluate on val and test, write the summary; returns it."""
        cfg, info = self.cfg, self.info
        if info.is_main:
            write_config(cfg, self.out / "config.json")
        bar = None
        if cfg.progress and info.is_main:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg.task}/{cfg.attention}",
                           unit="step", dynamic_ncols=True)
            except ImportError:
                bar = None
        self.model.train()
        acc_loss = self.interval_sums  # loss·n, correct, n since the last train row
        interval_start = (self.clock.read("wall"), self.step)
        calib_t0 = calib_step0 = None
        self.clock.start()
        while self.total_steps is None or self.step < self.total_steps:
            if self.total_steps is None and calib_t0 is None and self.step >= CALIBRATION_STEPS[0]:
                calib_t0, calib_step0 = self.clock.read(cfg.budget_clock), self.step
            lr = learning_rate(cfg, self.step, self.total_steps, self.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = self._batch(self.step)
            with autocast(cfg.bf16, info.device):
                logits = logits_of(self.ddp, self.kind, batch)
            loss, correct, count = loss_and_correct(logits, batch.targets, cfg.label_smoothing)
            share = loss  # what this process backpropagates
            if self.sp_size > 1:
                loss, share, correct, count = self._group_loss(loss, correct, count)
            if not torch.isfinite(loss):
                last = (f"the last checkpoint is {self.ckpt_path}" if self.ckpt_path.exists()
                        else "no checkpoint was written")
                raise FloatingPointError(f"training loss is {loss.item()} at step {self.step}: lower lr "
                                         f"({cfg.lr}) or disable bf16; {last}")
            self.optimizer.zero_grad(set_to_none=True)
            share.backward()
            if self.sp_size > 1:  # Σ over ranks = Σ over groups of their loss's gradient; mean over the groups
                dist_utils.sum_gradients(info, list(self.model.parameters()), self.dp_size)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            acc_loss += torch.stack([loss.detach().double() * count, correct.double(),
                                     torch.tensor(float(count), dtype=torch.float64, device=info.device)])
            if bar is not None:
                bar.update(1)
            if calib_t0 is not None and self.total_steps is None and self.step - calib_step0 == CALIBRATION_STEPS[1]:
                self._calibrate(calib_t0)
                if bar is not None:
                    bar.total = self.total_steps
                    bar.refresh()
            last = self.total_steps is not None and self.step >= self.total_steps
            if self.step % cfg.log_every == 0 or last:
                self.clock.stop()
                s = dist_utils.mean_over_ranks(info, acc_loss)
                wall = self.clock.wall
                rate = (self.step - interval_start[1]) * cfg.batch_size / max(wall - interval_start[0], 1e-9)
                self.metrics.append(step=self.step, split="train", epoch=self.step / self.steps_per_epoch,
                                    loss=float(s[0] / s[2]), accuracy=float(s[1] / s[2]), lr=lr,
                                    samples=self.step * cfg.batch_size, train_seconds=wall,
                                    cpu_seconds=self.clock.cpu, samples_per_second=rate)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(s[0] / s[2]):.3f}", acc=f"{float(s[1] / s[2]):.3f}")
                acc_loss.zero_()
                interval_start = (wall, self.step)
                self.clock.start()
            evaluate_now = cfg.eval_every and self.step % cfg.eval_every == 0 and not last
            save_now = self.step % cfg.ckpt_every == 0 and not last
            if evaluate_now or save_now:
                self.clock.stop()
                if evaluate_now:
                    self.run_eval("val")
                if save_now:
                    self.save()
                self.clock.start()
        self.clock.stop()
        if bar is not None:
            bar.close()
        self.save()
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        val = self.run_eval("val")
        test = self.run_eval("test")
        summary = None
        if self.info.is_main:
            plot_curves({f"{cfg.attention}": self.out / "metrics.csv"}, self.out / "curves.png",
                        title=f"{cfg.task} / {cfg.model} / {cfg.attention}")
            params = sum(p.numel() for p in self.model.parameters())
            summary = {
                "task": cfg.task, "model": cfg.model, "attention": cfg.attention, "backend": cfg.backend,
                "steps": self.step, "samples_seen": self.step * cfg.batch_size, "parameters": params,
                "train_seconds": self.clock.wall, "cpu_seconds": self.clock.cpu,
                "samples_per_second": self.step * cfg.batch_size / max(self.clock.wall, 1e-9),
                "peak_rss_mib": peak_rss_mib(), "world_size": self.info.world_size,
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "val": val, "test": test,
            }
            with atomic_open(self.out / "summary.json") as f:
                f.write(json.dumps(summary, indent=2) + "\n")
        dist_utils.barrier(self.info)
        return summary or {}


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (see :class:`Trainer`); returns the summary (empty on non-main processes)."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    try:
        return trainer.train()
    finally:
        dist_utils.teardown(trainer.info)

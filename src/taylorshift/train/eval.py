"""``taylorshift eval``: evaluate a checkpoint on a split, with any TaylorShift backend, and compare backends.

Direct and efficient TaylorShift compute the same function, so a model trained with one backend can be
evaluated with the other: ``--compare-backend`` runs both and reports how many predictions agree and the
largest logit difference.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from taylorshift.cli import output_file, positive_int
from taylorshift.files import atomic_open


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint.safetensors or a run folder holding one")
    parser.add_argument("--split", default="test", help="split to evaluate (default test; 'val' on tasks without "
                        "a val split is the held-out part of train)")
    parser.add_argument("--backend", choices=("auto", "direct", "efficient"),
                        help="TaylorShift backend to evaluate with (default: the one trained with)")
    parser.add_argument("--compare-backend", choices=("auto", "direct", "efficient"),
                        help="also evaluate with this backend and report prediction agreement")
    parser.add_argument("--samples", type=positive_int, help="evaluate on the first N examples only")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--cache-dir", help="data cache (default: the one in the checkpoint's config)")
    parser.add_argument("--threads", type=positive_int, help="torch threads")
    parser.add_argument("--json", help="also write the result to this JSON file (its folder must exist)")


def evaluate_checkpoint(checkpoint: str, split: str = "test", backend: str | None = None,
                        compare_backend: str | None = None, samples: int | None = None, batch_size: int = 64,
                        cache_dir: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint; returns accuracy, loss and (with ``compare_backend``) the agreement.

    Raises:
        CheckpointError: unusable checkpoint. ValueError: unknown split or a backend for softmax attention.
    """
    import torch

    from taylorshift.data import get_task
    from taylorshift.train.batches import evaluate
    from taylorshift.train.checkpoint import load_model
    from taylorshift.train.loop import holdout_split

    model, meta = load_model(checkpoint, backend=backend)
    cfg = meta["config"]
    task = get_task(cfg["task"])
    cache = cache_dir if cache_dir is not None else cfg.get("cache_dir")
    if split in task.splits:
        dataset = task.dataset(split, cache, **cfg.get("data_options", {}))
    elif split == "val":  # the held-out part of train the trainer validated on
        train = task.dataset("train", cache, **cfg.get("data_options", {}))
        dataset = torch.utils.data.Subset(train, holdout_split(len(train))[0])
    else:
        raise ValueError(f"split must be one of {task.splits + ('val',)}, got {split!r}")
    device = torch.device("cpu")
    bf16 = bool(cfg.get("bf16", False))
    t0 = time.perf_counter()
    r = evaluate(model, task.kind, dataset, task.pad_id, device, batch_size, samples, bf16,
                 keep_logits=compare_backend is not None)
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint), "task": task.name, "split": split, "attention": cfg["attention"],
        "trained_backend": cfg["backend"], "backend": backend or cfg["backend"], "accuracy": r.accuracy,
        "loss": r.loss, "count": r.count, "seconds": time.perf_counter() - t0,
    }
    if compare_backend is not None:
        other, _ = load_model(checkpoint, backend=compare_backend)
        t0 = time.perf_counter()
        r2 = evaluate(other, task.kind, dataset, task.pad_id, device, batch_size, samples, bf16, keep_logits=True)
        out["compare"] = {
            "backend": compare_backend, "accuracy": r2.accuracy, "seconds": time.perf_counter() - t0,
            "prediction_agreement": float((r.predictions == r2.predictions).float().mean()),
            "max_abs_logit_diff": float((r.logits - r2.logits).abs().max()),
            "max_abs_logit": float(r.logits.abs().max()),
        }
    return out


def run(args: argparse.Namespace) -> int:
    if args.json:
        output_file(args.json, "--json")  # before the evaluation, not after it
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = evaluate_checkpoint(args.checkpoint, args.split, args.backend, args.compare_backend, args.samples,
                                 args.batch_size, args.cache_dir)
    print(f"{result['task']} {result['split']} ({result['count']} predictions) {result['attention']} "
          f"[{result['backend']}]: accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}")
    if "compare" in result:
        c = result["compare"]
        print(f"  vs backend {c['backend']}: accuracy {c['accuracy']:.4f}, predictions agree "
              f"{100 * c['prediction_agreement']:.2f} %, max |logit diff| {c['max_abs_logit_diff']:.2e} "
              f"(max |logit| {c['max_abs_logit']:.2f})")
    if args.json:
        with atomic_open(args.json) as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return 0

"""``taylorshift train``: train a model on a task from the command line (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import json
import sys

from taylorshift.cli import CLIError, non_negative_float, non_negative_int, output_dir, positive_float, positive_int

EPILOG = """\
examples:
  taylorshift data prepare pixels
  taylorshift train --task pixels --attention taylorshift --budget-minutes 10
  taylorshift train --task listops --attention softmax --max-steps 2000 --set model_overrides.depth=1
  taylorshift train --config configs/lra/listops.yaml --attention taylorshift --resume
  torchrun --nproc_per_node 2 -m taylorshift train --task pixels --max-steps 500 --threads 1
  torchrun --nproc_per_node 2 -m taylorshift train --task listops --max-steps 500 --sequence-parallel 2 \
      --set model_overrides.drop_path=0

Precedence: TrainConfig defaults < --config file < --set key=value < explicit flags.
A run folder (--out-dir, default runs/<task>-<model>-<attention>) gets config.json, metrics.csv, curves.png,
checkpoint.safetensors (every --ckpt-every steps and at the end) and summary.json. Interrupt at any time;
--resume continues from the last checkpoint with the same losses an uninterrupted run would have.
Errors (a bad value, an unknown task, an unwritable --out-dir, ...) are reported in one line before any work.
"""

# flag -> TrainConfig field, for flags that map one-to-one
_FLAGS = ("task", "model", "attention", "backend", "cache_dir", "out_dir", "batch_size", "eval_batch_size",
          "max_steps", "epochs", "budget_minutes", "budget_clock", "lr", "weight_decay", "warmup_steps",
          "label_smoothing", "grad_clip", "seed", "train_samples", "eval_every", "eval_samples", "ckpt_every",
          "log_every", "threads", "sequence_parallel")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    g = parser.add_argument_group("what to train")
    g.add_argument("--config", help="YAML or JSON file of TrainConfig fields")
    g.add_argument("--task", help="data task (see 'taylorshift data list')")
    g.add_argument("--model", help="model preset (default: the task's CPU preset)")
    g.add_argument("--attention", help="taylorshift (default), softmax, or an installed baseline")
    g.add_argument("--backend", choices=("auto", "direct", "efficient"), help="TaylorShift backend (default auto)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any TrainConfig field; dotted keys reach into dicts, e.g. model_overrides.depth=1 "
                   "or data_options.seq_len=256 (repeatable)")
    g = parser.add_argument_group("budget (exactly one)")
    g.add_argument("--max-steps", type=positive_int, help="optimizer steps")
    g.add_argument("--epochs", type=positive_float, help="passes over the training set")
    g.add_argument("--budget-minutes", type=positive_float, help="train for this many minutes (see --budget-clock)")
    g.add_argument("--budget-clock", choices=("cpu", "wall"), help="clock of --budget-minutes (default cpu time)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, help="global batch size (default 32)")
    g.add_argument("--lr", type=positive_float, help="peak learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=non_negative_float, help="AdamW weight decay (default 0.05)")
    g.add_argument("--warmup-steps", type=non_negative_int, help="linear warm-up steps (default 100)")
    g.add_argument("--label-smoothing", type=non_negative_float, help="default 0.1")
    g.add_argument("--grad-clip", type=non_negative_float, help="max gradient norm, 0 = off (default 1.0)")
    g.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    g.add_argument("--seed", type=non_negative_int, help="seed of init, data order and dropout (default 0)")
    g.add_argument("--train-samples", type=positive_int, help="train on the first N examples only")
    g = parser.add_argument_group("run folder, evaluation and checkpoints")
    g.add_argument("--out-dir", help="run folder (default runs/<task>-<model>-<attention>)")
    g.add_argument("--cache-dir", help="data cache (default $TAYLORSHIFT_DATA_DIR or ~/.cache/taylorshift/data)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="delete the run in --out-dir and start again")
    g.add_argument("--eval-every", type=non_negative_int, help="validation every N steps (default 0: at the end only)")
    g.add_argument("--eval-samples", type=positive_int, help="evaluate on at most N examples per split")
    g.add_argument("--eval-batch-size", type=positive_int, help="default 64")
    g.add_argument("--ckpt-every", type=positive_int, help="checkpoint every N steps (default 200)")
    g.add_argument("--log-every", type=positive_int, help="log training metrics every N steps (default 10)")
    g.add_argument("--threads", type=positive_int, help="torch threads per process")
    g.add_argument("--sequence-parallel", type=positive_int, metavar="K",
                   help="split every example's sequence across K processes (torchrun; TaylorShift attention, token "
                   "and LM tasks, drop_path 0); the processes form WORLD/K data-parallel groups (default 1: off)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def resolve_config(args: argparse.Namespace):
    """The :class:`TrainConfig` from defaults, ``--config``, ``--set`` and flags (in that order).

    Raises:
        CLIError: an invalid value; the message names where it came from (the flag, the ``--set`` item or
            the ``--config`` file).
    """
    from taylorshift.train.config import ConfigError, apply_overrides, make_config, read_config_file

    data = read_config_file(args.config) if args.config else {}
    source = {name: f"--config {args.config}" for name in data}  # field -> where its value came from
    data = apply_overrides(data, args.overrides)
    for item in args.overrides:
        source[item.partition("=")[0].split(".")[0]] = f"--set {item}"
    for name in _FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
            source[name] = f"--{name.replace('_', '-')} {value}"
    if args.bf16:
        data["bf16"] = True
    if args.no_progress:
        data["progress"] = False
    budget_flags = [n for n in ("max_steps", "epochs", "budget_minutes") if getattr(args, n, None) is not None]
    if budget_flags:  # a budget flag replaces the file's budget
        for n in ("max_steps", "epochs", "budget_minutes"):
            if n not in budget_flags:
                data.pop(n, None)
    try:
        return make_config(data)
    except ConfigError as err:
        where = source.get(err.field)
        raise CLIError(f"{where}: {err}" if where else str(err)) from None


def run(args: argparse.Namespace) -> int:
    from taylorshift.train.loop import train

    cfg = resolve_config(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    output_dir(cfg.out_dir, "--out-dir")
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun with --resume --out-dir {cfg.out_dir} to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    if summary:
        val, test = summary.get("val") or {}, summary.get("test") or {}
        print(f"{cfg.task} {cfg.model} {cfg.attention}: {summary['steps']} steps, "
              f"{summary['train_seconds']:.0f} s, val acc {val.get('accuracy', float('nan')):.4f}, "
              f"test acc {test.get('accuracy', float('nan')):.4f} -> {cfg.out_dir}")
    return 0

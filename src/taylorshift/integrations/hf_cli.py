"""``taylorshift convert-hf``: a trained TaylorShift language model checkpoint as a Hugging Face model folder.

Example::

    taylorshift convert-hf --checkpoint runs/fortunes/checkpoint.safetensors --out fortunes-hf
    python -c "import taylorshift.integrations.hf_model; from transformers import AutoModelForCausalLM; \\
               m = AutoModelForCausalLM.from_pretrained('fortunes-hf')"

The folder holds ``config.json`` (model type ``taylorshift``) and ``model.safetensors``; the converted model has the
same weights and computes the same logits, so greedy generation gives the same bytes (see docs/hf.md).
"""

from __future__ import annotations

import argparse

from taylorshift.cli import CLIError, output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint.safetensors of a TaylorShift language model written by 'taylorshift train' "
        "(e.g. task fortunes-lm), or its run folder",
    )
    parser.add_argument("--out", required=True, help="folder to write config.json and model.safetensors into")


def run(args: argparse.Namespace) -> int:
    out = output_dir(args.out, "--out")
    try:
        from taylorshift.integrations.hf_model import convert_checkpoint
    except ImportError as err:
        raise CLIError(str(err)) from None
    try:
        model = convert_checkpoint(args.checkpoint, out)
    except (TypeError, ValueError) as err:
        if "checkpoint" in str(err) or "language model" in str(err) or "attention" in str(err):
            raise CLIError(f"--checkpoint {args.checkpoint}: {err}") from None
        raise
    n = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out} ({type(model).__name__}, {n:,} parameters); load it with "
        "AutoModelForCausalLM.from_pretrained after importing taylorshift.integrations.hf_model"
    )
    return 0

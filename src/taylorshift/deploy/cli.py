"""``taylorshift export``: export a trained checkpoint to ONNX (optionally int8-quantized) or ExecuTorch.

Examples::

    taylorshift export --checkpoint runs/pixels-pixels_cpu-taylorshift --format onnx --out pixels.onnx
    taylorshift export --checkpoint runs/pixels-pixels_cpu-taylorshift --format onnx --quantize int8 \\
        --out pixels.int8.onnx
    taylorshift export --checkpoint runs/fortunes --format onnx --graph step --out lm_step.onnx
    taylorshift export --checkpoint runs/pixels-pixels_cpu-taylorshift --format executorch --out pixels.pte

The checkpoint is read with :func:`taylorshift.train.checkpoint.load_model` (safetensors, never unpickled).
``--graph forward`` (default) exports the model's forward pass with dynamic batch and sequence axes
(:func:`taylorshift.deploy.export_onnx`); ``--graph step`` the decoding step of a TaylorShift language model
(:func:`taylorshift.deploy.export_lm_step`), which :class:`taylorshift.deploy.OnnxLMRunner` runs.
``--format executorch`` writes an ExecuTorch program lowered to XNNPACK (batch 1, a ``.pte`` and its ``.json``;
:mod:`taylorshift.deploy.executorch`), which :class:`taylorshift.deploy.executorch.ExecuTorchModel` runs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from taylorshift.cli import CLIError, output_file, positive_int

FORMATS = ("onnx", "executorch")
QUANTIZATIONS = ("int8",)
DEFAULT_LENGTH = 64


def _format(text: str) -> str:
    if text not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"unknown format {text!r}; supported: {', '.join(FORMATS)}"
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint.safetensors written by 'taylorshift train' (or its run folder)",
    )
    parser.add_argument(
        "--format",
        type=_format,
        default="onnx",
        help="onnx (default; ONNX Runtime) or executorch (a .pte for ExecuTorch with XNNPACK, batch 1; needs the "
        "executorch extra)",
    )
    parser.add_argument("--out", required=True, help="the file to write (its folder must exist)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default=None,
        help="int8: dynamic quantization of the linear layers' weights and inputs (ONNX Runtime's quantizer, or "
        "XNNPACK's with --format executorch); the attention stays float32",
    )
    parser.add_argument(
        "--graph",
        choices=("forward", "step"),
        default="forward",
        help="forward: the model's forward pass, dynamic batch and sequence axes (default); step: the decoding "
        "step of a TaylorShift language model (token + state in, logits + state out)",
    )
    parser.add_argument(
        "--backend",
        choices=("efficient", "direct"),
        default="efficient",
        help="TaylorShift algorithm recorded in a forward graph (default efficient: memory linear in the length; "
        "direct holds the N x N weights). Not 'auto': it would be fixed by the example length",
    )
    parser.add_argument(
        "--length",
        type=positive_int,
        default=None,
        help=f"length of the example input the forward graph is recorded with (default min({DEFAULT_LENGTH}, "
        "max_len)); the graph runs at every length up to max_len. Not for a ViT (its length is its image size)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="sequences per call of a step graph (fixed; default 1)"
    )


def example_input(model, length: int | None):
    """The example a forward graph is recorded with: classifier ``(ids, key_padding_mask)``, ViT images, LM ids."""
    import torch

    from taylorshift.deploy.graphs import check_length, graph_spec

    spec = graph_spec(model)
    if spec.family == "vit":
        if length is not None:
            raise CLIError("--length: a ViT's sequence length is set by its image size; leave --length out")
        cfg = model.config
        size = cfg.img_size if cfg.input_size is None else cfg.input_size
        return (torch.zeros(2, cfg.in_chans, size, size),)
    n = min(DEFAULT_LENGTH, spec.max_len) if length is None else length
    try:
        check_length(spec, n, "--length")
    except ValueError as err:
        raise CLIError(str(err)) from None
    if n < 2:
        raise CLIError("--length must be at least 2 (the exporter fixes sizes 0 and 1; the graph still takes 1)")
    ids = torch.zeros(2, n, dtype=torch.long)
    if spec.family == "lm":
        return (ids,)
    return (ids, torch.zeros(2, n, dtype=torch.bool))


def run(args: argparse.Namespace) -> int:
    from taylorshift.deploy import export_lm_step, export_onnx, quantize_int8
    from taylorshift.deploy.graphs import require
    from taylorshift.train.checkpoint import load_model

    output_file(args.out, "--out")
    if args.graph == "step" and args.length is not None:
        raise CLIError("--length is for forward graphs; a step graph takes one token")
    if args.format == "executorch":
        return _run_executorch(args)
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module)
    model, _meta = load_model(args.checkpoint)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx" if args.quantize else out
        if args.graph == "step":
            export_lm_step(model, fp32, batch_size=args.batch_size)
        else:
            export_onnx(model, fp32, example_input(model, args.length), backend=args.backend)
        size = fp32.stat().st_size
        if args.quantize:
            quantize_int8(fp32, out)
    what = f"{type(model).__name__} ({model.config.attention}), {args.graph} graph"
    if args.graph == "forward" and model.config.attention == "taylorshift":
        what += f", backend {args.backend}"
    line = f"wrote {out}: {what}, {out.stat().st_size / 1024:.0f} KiB"
    if args.quantize:
        line += f" ({args.quantize}; float32: {size / 1024:.0f} KiB)"
    print(line)
    return 0


def _run_executorch(args: argparse.Namespace) -> int:
    from taylorshift.deploy.executorch import export_executorch, export_lm_step_executorch, require_executorch
    from taylorshift.train.checkpoint import load_model

    if args.quantize and args.graph == "step":
        raise CLIError("--quantize: the ExecuTorch step program is exported in float32; quantize forward graphs")
    require_executorch()
    model, _meta = load_model(args.checkpoint)
    out = Path(args.out)
    if args.graph == "step":
        export_lm_step_executorch(model, out, batch_size=args.batch_size)
    else:
        example = tuple(t[:1] for t in example_input(model, args.length))  # batch 1: the program's batch is fixed
        export_executorch(model, out, example, backend=args.backend, quantize=args.quantize)
    what = f"{type(model).__name__} ({model.config.attention}), {args.graph} graph"
    if args.graph == "forward" and model.config.attention == "taylorshift":
        what += f", backend {args.backend}"
    kind = "int8 linear layers" if args.quantize else "float32"
    print(f"wrote {out} (+ {out.name}.json): {what}, ExecuTorch/XNNPACK {kind}, {out.stat().st_size / 1024:.0f} KiB")
    return 0

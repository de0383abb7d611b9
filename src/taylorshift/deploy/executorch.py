"""ExecuTorch with XNNPACK: the second on-device runtime (a ``.pte`` program and a small runner).

* :func:`export_executorch`: a registry model's forward pass, lowered to XNNPACK, with a dynamic sequence axis
  (classifier, LM) and the backend fixed as for ONNX (:mod:`taylorshift.deploy.graphs`); ``quantize="int8"``
  applies XNNPACK's dynamic int8 quantization to the linear layers first.
* :func:`export_lm_step_executorch`: the TaylorShift LM's decoding step (token + state in, logits + state out;
  :class:`taylorshift.deploy.LMStep`).
* :class:`ExecuTorchModel`: load a ``.pte`` and run it on tensors, checking lengths against what it was
  exported for.

Differences from the ONNX graphs, both from how ExecuTorch works:

- **The batch size is fixed** (``example_input``'s): ExecuTorch plans every intermediate buffer ahead of time
  for the *largest* shapes a program accepts, so an open batch axis would plan for an unbounded batch.
- **Memory is planned for ``max_len``.** For the same reason the planned buffers hold the longest sequence the
  program accepts: a softmax program sized for 16k tokens reserves its ``N × N`` weights for 16k whatever the
  input. Pass ``max_len`` to export for a shorter bound (a device exports for the lengths it needs).

A ``.pte`` file has no metadata slot of its own, so the export writes ``<file>.json`` next to it (family,
attention, backend, batch size, length bounds, input names), which :class:`ExecuTorchModel` reads.

Needs ``executorch`` (``pip install 'taylorshift[executorch]'``), which is *not* part of the ``deploy`` extra:
its dependency set is large (coremltools, scikit-learn, pandas, torchao, …). It installs next to the pinned
torch 2.13.0 without replacing it (checked with executorch 1.5.1 and torchao 0.18.0).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from taylorshift.deploy.graphs import (
    GraphSpec,
    _as_tuple,
    attention_kind,
    check_length,
    dynamic_shapes,
    graph_spec,
    quiet_exporter,
    with_backend,
)

_HINT = "pip install 'taylorshift[executorch]'"


def require_executorch(module: str = "executorch") -> Any:
    """Import ``module`` of ExecuTorch or raise an ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs ExecuTorch ({module}), which the 'executorch' extra installs: {_HINT}") from None


def metadata_path(path: str | os.PathLike) -> Path:
    """The JSON file beside a ``.pte`` program that says what it holds."""
    return Path(str(path) + ".json")


def _quantize_int8(module: nn.Module, inputs: tuple[Tensor, ...], shapes) -> nn.Module:
    """XNNPACK's dynamic int8 quantization of the linear layers (per-channel int8 weights, activations quantized
    per call), through torchao's PT2E flow; the attention itself stays float32, as with ONNX Runtime."""
    quantizer = require_executorch("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    pt2e = require_executorch("torchao.quantization.pt2e.quantize_pt2e")
    graph = torch.export.export(module, inputs, dynamic_shapes=shapes).module()
    config = quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    prepared = pt2e.prepare_pt2e(graph, quantizer.XNNPACKQuantizer().set_global(config))
    prepared(*inputs)  # dynamic quantization: no calibration statistics are kept, one call traces the observers
    return pt2e.convert_pt2e(prepared)


def _lower(module: nn.Module, inputs: tuple[Tensor, ...], shapes, path: Path, quantize: str | None = None) -> None:
    exir = require_executorch("executorch.exir")
    xnnpack = require_executorch("executorch.backends.xnnpack.partition.xnnpack_partitioner")
    with torch.no_grad(), quiet_exporter():
        if quantize == "int8":
            module = _quantize_int8(module, inputs, shapes)
        program = torch.export.export(module, inputs, dynamic_shapes=shapes)
        edge = exir.to_edge_transform_and_lower(program, partitioner=[xnnpack.XnnpackPartitioner()])
        buffer = edge.to_executorch().buffer
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer)
    os.replace(tmp, path)


def _write_metadata(path: Path, info: dict[str, Any]) -> None:
    target = metadata_path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
    os.replace(tmp, target)


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: Tensor | tuple[Tensor, ...],
    *,
    backend: Literal["efficient", "direct"] = "efficient",
    max_len: int | None = None,
    quantize: Literal["int8"] | None = None,
) -> Path:
    """Export a registry model's forward pass to an ExecuTorch program (XNNPACK) with a dynamic sequence axis.

    Args:
        model: a :class:`~taylorshift.models.SequenceClassifier`, :class:`~taylorshift.models.VisionTransformer`
            or :class:`~taylorshift.models.CausalLM` (TaylorShift or softmax attention).
        path: the ``.pte`` file to write (its folder must exist); ``<path>.json`` is written beside it.
        example_input: classifier ``x (B, N)`` or ``(x, key_padding_mask)``, ViT ``images (B, C, S, S)``, LM
            ``ids (B, N)``; ``N >= 2``. ``B`` is fixed in the program, ``N`` is not.
        backend: ``"efficient"`` or ``"direct"`` (see :mod:`taylorshift.deploy.graphs`).
        max_len: longest length the program takes, ``N … model max_len``; the memory plan is sized for it
            (default: the model's ``max_len``).
        quantize: None (float32) or ``"int8"``: XNNPACK's dynamic int8 quantization of the linear layers
            (per-channel weights; the attention stays float32).

    Returns:
        ``Path(path)``.

    Raises:
        ImportError: ExecuTorch missing (the ``executorch`` extra).
        TypeError: not a registry model, or ``example_input`` not tensors.
        ValueError: unknown backend or quantization, a bad ``max_len``, an example longer than it or shorter than 2.
    """
    require_executorch()
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    inputs = _as_tuple(example_input)
    spec = graph_spec(model, len(inputs))
    if max_len is not None:
        if not spec.seq_axis:
            raise ValueError("max_len: a ViT's sequence length is fixed by its image size; leave max_len out")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 2 <= max_len <= spec.max_len:
            raise ValueError(f"max_len must be an int in [2, {spec.max_len}] (the model's max_len), got {max_len!r}")
        spec = GraphSpec(spec.family, spec.input_names, spec.seq_axis, max_len)
    model = with_backend(model, backend)
    shapes = dynamic_shapes(spec, inputs, batch=False)
    path = Path(path)
    _lower(model, inputs, shapes, path, quantize)
    _write_metadata(path, {
        "graph": "forward", "family": spec.family, "quantized": quantize,
        "backend": backend if attention_kind(model) == "taylorshift" else None,
        "attention": attention_kind(model), "max_len": spec.max_len, "inputs": list(spec.input_names),
        "batch_size": int(inputs[0].shape[0]), "example_shape": list(inputs[0].shape), "runtime": "executorch-xnnpack",
    })
    return path


def export_lm_step_executorch(model: nn.Module, path: str | os.PathLike, *, batch_size: int = 1) -> Path:
    """Export a TaylorShift LM's decoding step (:class:`taylorshift.deploy.LMStep`) to an ExecuTorch program.

    Shapes: ``(token (B, 1) int64, position (B,) int64, *states (B, H, F, d + 1))`` →
    ``(logits (B, vocab), *new_states)``, all fixed: the state does not grow with the context.

    Raises:
        ImportError: ExecuTorch missing. TypeError: not a CausalLM. ValueError: softmax attention, bad batch size.
    """
    from taylorshift.deploy.decode import LMStep, _check_lm

    require_executorch()
    _check_lm(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    step = LMStep(copy.deepcopy(model).eval()).eval()
    states = step.initial_states(batch_size)
    token = torch.zeros(batch_size, 1, dtype=torch.long)
    position = torch.zeros(batch_size, dtype=torch.long)
    path = Path(path)
    _lower(step, (token, position, *states), None, path)
    _write_metadata(path, {
        "graph": "lm_step", "family": "lm", "backend": "recurrent", "attention": attention_kind(model),
        "max_len": model.config.max_len, "vocab_size": model.config.vocab_size, "depth": len(model.blocks),
        "batch_size": batch_size, "state_shapes": [list(s) for s in step.state_shapes(batch_size)],
        "runtime": "executorch-xnnpack",
    })
    return path


class ExecuTorchModel:
    """A ``.pte`` program written by :func:`export_executorch` or :func:`export_lm_step_executorch`, loaded once.

    ``model(*inputs)`` runs the ``forward`` method on tensors and returns its outputs (one tensor, or a tuple
    for a step program). Inputs are checked against the export: batch size and, for sequence models, the
    length bounds (``ValueError`` instead of the runtime's abort).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        runtime = require_executorch("executorch.runtime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ExecuTorch program at {path}")
        meta = metadata_path(path)
        self.info: dict[str, Any] = json.loads(meta.read_text()) if meta.is_file() else {}
        self.path = path
        self._method = runtime.Runtime.get().load_program(str(path)).load_method("forward")

    def _check(self, inputs: tuple[Tensor, ...]) -> None:
        info = self.info
        if not info:
            return
        names = info.get("inputs")
        if names is not None and len(inputs) != len(names):
            raise ValueError(f"this program takes {len(names)} input(s) ({', '.join(names)}), got {len(inputs)}")
        first = inputs[0]
        if info.get("batch_size") is not None and first.shape[0] != info["batch_size"]:
            raise ValueError(f"this program was exported for batch size {info['batch_size']}, got {first.shape[0]}")
        if info.get("graph") == "forward" and info.get("family") in ("classifier", "lm"):
            spec = GraphSpec(info["family"], tuple(info["inputs"]), True, info["max_len"])
            check_length(spec, int(first.shape[1]), "input")

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if not inputs or not all(isinstance(t, Tensor) for t in inputs):
            raise TypeError("ExecuTorchModel takes tensors, e.g. model(ids) or model(token, position, *states)")
        self._check(inputs)
        out = self._method.execute(list(inputs))
        return out[0] if len(out) == 1 else tuple(out)

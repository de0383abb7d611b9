"""Export of the registry's models to ONNX: which inputs a family's graph takes, which axes stay dynamic, and
the fixed TaylorShift backend the graph is recorded with.

A graph is recorded by PyTorch's maintained exporter (``torch.onnx.export(..., dynamo=True)``, i.e.
``torch.export`` then a translation to ONNX). While exporting, the TaylorShift kernels run their unblocked
functional form (see :func:`taylorshift.ops.common.exporting`), so the sequence length stays a symbol and the
graph runs at every length:

================ ========================================== =====================================================
family           graph inputs (names)                       dynamic axes
================ ========================================== =====================================================
classifier       ``x (B, N)`` ids or ``(B, N, input_dim)``,  batch ``B`` and length ``N`` (``1 … max_len``)
                 optional ``key_padding_mask (B, N)`` bool
ViT              ``images (B, C, S, S)``                    batch only: ``N = (img_size / patch)² + 1`` is fixed
                                                            by the config (a learned position per patch, and the
                                                            model refuses other image sizes)
causal LM        ``ids (B, N)``                             batch ``B`` and length ``N`` (``1 … max_len``)
================ ========================================== =====================================================

The output is ``logits`` (``(B, classes)``, or ``(B, N, vocab)`` for the LM). The decoding step of the LM is
a graph of its own (:mod:`taylorshift.deploy.decode`).

**Backend.** A graph holds one algorithm, chosen at export: ``"efficient"`` (default) or ``"direct"``. Not
``"auto"``: it picks by length, and under export it resolves once, from the example's length, so the graph would
keep whatever suited the example at every length, silently. Both are the same function (the tests hold both to
the eager model); they differ in cost: the efficient graph holds ``N × F`` features per head (memory linear in
``N``), the direct graph the ``N × N`` weights (quadratic), so ``"efficient"`` is what lets long inputs fit in a
small device's memory and ``"direct"`` is faster only for short inputs (``N`` below about ``(d+1)(d+2)/2``).
A graph with both behind a length test would carry both sets of operations, to save time only on short inputs;
export two files instead if that matters. Causal attention under export is the direct causal form whatever the
backend (one chunk; see :mod:`taylorshift.ops.causal`), so the LM's full-sequence graph is quadratic in ``N``;
generation on a device uses the step graph, whose cost does not grow with the context.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

EXPORT_BACKENDS = ("efficient", "direct")
METADATA_KEY = "taylorshift"  # key of the JSON entry in the ONNX model's metadata_props
_EXTRA_HINT = "pip install 'taylorshift[deploy]'"


def require(module: str) -> Any:
    """Import an optional deployment dependency (``onnx``, ``onnxscript``, ``onnxruntime``) or raise an
    ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"this needs {module.split('.')[0]}, which the 'deploy' extra installs: {_EXTRA_HINT}"
        ) from None


@dataclass(frozen=True)
class GraphSpec:
    """What a family's graph takes: input names, which of their axes are dynamic, and the longest length."""

    family: Literal["classifier", "vit", "lm"]
    input_names: tuple[str, ...]
    seq_axis: bool  # whether axis 1 of the inputs is the (dynamic) sequence length
    max_len: int | None  # longest sequence (classifier, LM); None for a ViT (fixed number of patches)


def graph_spec(model: nn.Module, n_inputs: int = 1) -> GraphSpec:
    """The :class:`GraphSpec` of a registry model.

    Raises:
        TypeError: ``model`` is not a :class:`~taylorshift.models.SequenceClassifier`,
            :class:`~taylorshift.models.VisionTransformer` or :class:`~taylorshift.models.CausalLM`.
        ValueError: a key padding mask given to a family that takes none.
    """
    from taylorshift.models import CausalLM, SequenceClassifier, VisionTransformer

    if isinstance(model, SequenceClassifier):
        names = ("x", "key_padding_mask")[:n_inputs]
        return GraphSpec("classifier", names, True, model.config.max_len)
    if n_inputs != 1:
        raise ValueError(f"example_input: a {type(model).__name__} takes one input, got {n_inputs}")
    if isinstance(model, VisionTransformer):
        return GraphSpec("vit", ("images",), False, None)
    if isinstance(model, CausalLM):
        return GraphSpec("lm", ("ids",), True, model.config.max_len)
    raise TypeError(
        f"model must be a SequenceClassifier, VisionTransformer or CausalLM (taylorshift.models), "
        f"got {type(model).__name__}"
    )


def with_backend(model: nn.Module, backend: str) -> nn.Module:
    """A copy of ``model`` in eval mode whose TaylorShift attention modules all use ``backend`` (softmax
    attention has no backend and is left as it is)."""
    from taylorshift.nn import TaylorShiftAttention

    if backend not in EXPORT_BACKENDS:
        raise ValueError(
            f"backend must be one of {EXPORT_BACKENDS} for export, got {backend!r} ('auto' would resolve once, "
            "from the example's length, and keep that choice at every length)"
        )
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, TaylorShiftAttention):
            module.backend = backend
    return model


def attention_kind(model: nn.Module) -> str:
    """``model.config.attention`` when there is one, else ``"unknown"``."""
    return str(getattr(getattr(model, "config", None), "attention", "unknown"))


def _as_tuple(example_input: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    inputs = (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("example_input must be a tensor or a tuple of tensors, e.g. (ids,) or (x, key_padding_mask)")
    return inputs


def check_length(spec: GraphSpec, n: int, what: str) -> None:
    """``ValueError`` unless a length ``n`` fits the graph (``1 … max_len``)."""
    if spec.max_len is not None and not 1 <= n <= spec.max_len:
        raise ValueError(
            f"{what} has length {n}; this model takes sequences of 1 to {spec.max_len} tokens "
            "(max_len of its positional table)"
        )


def dynamic_shapes(spec: GraphSpec, inputs: tuple[Tensor, ...], batch: bool = True) -> tuple[dict[int, Any], ...]:
    """``torch.export`` dynamic shapes: axis 0 (batch) and, for sequence models, axis 1 (length).

    The example length must be at least 2 (the exporter specialises sizes 0 and 1); the graph itself runs
    at every length from 1.
    """
    from torch.export import Dim

    axes: dict[int, Any] = {}
    if batch:
        axes[0] = Dim("batch", min=1, max=1 << 20)
    if spec.seq_axis:
        n = int(inputs[0].shape[1])
        check_length(spec, n, "example_input")
        if n < 2:
            raise ValueError(f"example_input must have at least 2 tokens (the exporter fixes sizes 0 and 1), got {n}")
        axes[1] = Dim("N", min=2, max=spec.max_len)
    return tuple(dict(axes) for _ in inputs)


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notices that say nothing about the user's model: two inputs sharing the sequence
    axis (``x`` and ``key_padding_mask``), and the deprecation warnings of its own internals."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        yield


def write_metadata(path: str | os.PathLike, info: dict[str, Any]) -> None:
    """Store ``info`` as JSON under :data:`METADATA_KEY` in the ONNX file's ``metadata_props`` (rewrites it)."""
    onnx = require("onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, sort_keys=True)
    onnx.save(proto, str(path))


def read_metadata(path_or_session: Any) -> dict[str, Any]:
    """The :data:`METADATA_KEY` entry of an exported graph (a path or an ``onnxruntime.InferenceSession``);
    ``{}`` for a graph exported by someone else."""
    if isinstance(path_or_session, (str, os.PathLike)):
        onnx = require("onnx")
        props = {p.key: p.value for p in onnx.load(str(path_or_session), load_external_data=False).metadata_props}
    else:
        props = path_or_session.get_modelmeta().custom_metadata_map
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: Tensor | tuple[Tensor, ...],
    *,
    backend: Literal["efficient", "direct"] = "efficient",
    dynamic_batch: bool = True,
) -> Path:
    """Export a registry model's forward pass to an ONNX file with a dynamic sequence axis.

    The model is copied and put in eval mode; its TaylorShift attention is fixed to ``backend`` (see the
    module docstring for why not ``"auto"``). The file records, in its metadata, the family, the backend, the
    attention type and the longest length, which :class:`taylorshift.deploy.OnnxModel` checks inputs against.

    Args:
        model: a :class:`~taylorshift.models.SequenceClassifier`, :class:`~taylorshift.models.VisionTransformer`
            or :class:`~taylorshift.models.CausalLM` (TaylorShift or softmax attention).
        path: the ``.onnx`` file to write (its folder must exist).
        example_input: what ``model`` is called with: classifier ``x (B, N)`` or ``(x, key_padding_mask)``,
            ViT ``images (B, C, S, S)``, LM ``ids (B, N)``; ``N >= 2``. The graph runs at other lengths.
        backend: ``"efficient"`` or ``"direct"``.
        dynamic_batch: keep the batch axis dynamic (else the example's batch size is fixed).

    Returns:
        ``Path(path)``.

    Raises:
        ImportError: onnx / onnxscript missing (the ``deploy`` extra).
        TypeError: not a registry model, or ``example_input`` not tensors.
        ValueError: unknown backend, an example longer than ``max_len`` or shorter than 2.
    """
    require("onnx")
    require("onnxscript")
    inputs = _as_tuple(example_input)
    spec = graph_spec(model, len(inputs))
    model = with_backend(model, backend)
    shapes = dynamic_shapes(spec, inputs, dynamic_batch)
    path = Path(path)
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            model,
            inputs,
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=list(spec.input_names),
            output_names=["logits"],
            verbose=False,
        )
        program.save(str(path))
    write_metadata(
        path,
        {
            "graph": "forward",
            "family": spec.family,
            "backend": backend if attention_kind(model) == "taylorshift" else None,
            "attention": attention_kind(model),
            "max_len": spec.max_len,
            "inputs": list(spec.input_names),
            "dynamic_batch": dynamic_batch,
            "example_shape": list(inputs[0].shape),
        },
    )
    return path

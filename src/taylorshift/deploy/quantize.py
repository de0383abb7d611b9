"""int8 dynamic quantization of an exported graph with ONNX Runtime's quantizer.

Dynamic quantization stores the weights of the linear layers (``MatMul`` / ``Gemm`` with a constant weight) as
int8, and quantizes their input activations on the fly, per call. Only products with a *constant* weight are
quantized (``MatMulConstBOnly``): the attention itself (the Taylor features, the state products, the
normalising division) stays float32, so the polynomial weights and the ``N``-term sums keep full precision.
Embedding tables (``Gather``) stay float32 as well.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from taylorshift.deploy.graphs import read_metadata, require, write_metadata


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike, *, per_channel: bool = False) -> Path:
    """Write an int8 dynamically quantized copy of the ONNX graph ``source`` to ``target``.

    Args:
        source: an exported graph (:func:`taylorshift.deploy.export_onnx` or
            :func:`taylorshift.deploy.export_lm_step`).
        target: the file to write (may not be ``source``).
        per_channel: one scale per output channel of each weight (default one per tensor).

    Returns:
        ``Path(target)``; its metadata is the source's with ``"quantized": "int8"``.

    Raises:
        FileNotFoundError: no ``source``. ValueError: ``target`` is ``source``. ImportError: onnxruntime missing.
    """
    quantization = require("onnxruntime.quantization")
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise FileNotFoundError(f"no ONNX file at {source}")
    if source.resolve() == target.resolve():
        raise ValueError("target must differ from source (the fp32 graph is read while the int8 one is written)")
    meta = read_metadata(source)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor it skips (the attention's), with its type
    try:
        _quantize(quantization, source, target, per_channel)
    finally:
        root.setLevel(level)
    write_metadata(target, {**meta, "quantized": "int8"})
    return target


def _quantize(quantization, source: Path, target: Path, per_channel: bool) -> None:
    # ONNX shape inference and graph optimisation first, as the quantizer recommends (its symbolic shape
    # inference cannot follow the dynamic sequence axis through the attention, so it is skipped)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantization.shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantization.quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=quantization.QuantType.QInt8,
            per_channel=per_channel,
            extra_options={"MatMulConstBOnly": True},
        )

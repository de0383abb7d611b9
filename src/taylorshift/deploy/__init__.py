"""Deployment: export the registry's models to ONNX, quantize them, and run them with ONNX Runtime.

* :func:`export_onnx`: a model's forward pass with a dynamic sequence axis and a fixed backend
  (:mod:`taylorshift.deploy.graphs` documents the inputs, dynamic axes and the backend choice per family).
* :func:`export_lm_step`: a TaylorShift LM's single-token step (token + state in, logits + state out).
* :func:`quantize_int8`: int8 dynamic quantization of an exported graph (ONNX Runtime's quantizer).
* :class:`OnnxModel`, :class:`OnnxLMRunner`: run a forward graph; prefill and generate through a step graph.

Needs the ``deploy`` extra (``pip install 'taylorshift[deploy]'``: onnx, onnxscript, onnxruntime); importing
this package does not, the functions raise an ``ImportError`` naming the extra when it is missing.
"""

from taylorshift.deploy.decode import LMStep, export_lm_step
from taylorshift.deploy.graphs import EXPORT_BACKENDS, export_onnx, read_metadata
from taylorshift.deploy.quantize import quantize_int8
from taylorshift.deploy.runtime import LMState, OnnxLMRunner, OnnxModel

__all__ = [
    "EXPORT_BACKENDS",
    "LMState",
    "LMStep",
    "OnnxLMRunner",
    "OnnxModel",
    "export_lm_step",
    "export_onnx",
    "quantize_int8",
    "read_metadata",
]

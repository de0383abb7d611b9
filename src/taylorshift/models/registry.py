"""Model presets by task, with the attention type as an argument: ``create_model(name, attention=...)``.

Paper-sized presets (from the paper's code, ``training/architectures/taylor_shift*.py``; ``pathfinder`` has the
size of the code's LRA baseline, the only Pathfinder model there):

============== ======== ===== ===== ===== ==== ===== =================================================
name           family   D     depth heads d    mlp   input
============== ======== ===== ===== ===== ==== ===== =================================================
listops        sequence 512   4     8     64   2.0   17-symbol one-hot / ids, ≤ 2048 tokens, 10 classes
listops_conv   sequence 512   4     8     64   2.0   as ``listops`` with the convolutional embedding
text_bytes     sequence 256   4     4     64   4.0   256 bytes, ≤ 4000 tokens (IMDB), 2 classes
pixels         sequence 256   1     4     64   1.0   256 grey levels, 1024 pixels (CIFAR-10), 10 classes
pathfinder     sequence 64    4     4     16   1.0   256 grey levels, 1024 pixels, 2 classes (LRA size)
vit_tiny       vit      192   12    3     64   4.0   224×224 RGB, patch 16, 1000 classes
vit_small      vit      384   12    6     64   4.0   224×224 RGB, patch 16, 1000 classes
vit_small_conv vit      384   12    6     64   4.0   as ``vit_small`` with the convolutional stem
============== ======== ===== ===== ===== ==== ===== =================================================

CPU-sized presets (``*_cpu`` and ``vit_tiny_fmnist``) for training on a few CPU cores: the same inputs and
architecture with ``D = 64`` and **head size d = 16**. The head size sets where efficient TaylorShift pays
off: it is cheaper than direct above ``N ≈ (d+1)(d+2)/2`` tokens (the FLOP model behind ``backend="auto"``),
153 for d = 16 but 2145 for d = 64. With d = 64 only the longest paper task (text, 4001 tokens) is past the
crossover; with d = 16 all the 500–4000-token tasks are far past it, so the efficient form's linear cost in
N shows on hardware we have. ``vit_tiny_fmnist`` (28×28 padded to 32, patch 4: 65 tokens) stays below it.

================ ======== ===== ===== ===== ==== ===== =================================================
name             family   D     depth heads d    mlp   input
================ ======== ===== ===== ===== ==== ===== =================================================
listops_cpu      sequence 64    2     4     16   2.0   as ``listops``
text_bytes_cpu   sequence 64    2     4     16   2.0   as ``text_bytes``, ≤ 4096 tokens
pixels_cpu       sequence 64    1     4     16   1.0   as ``pixels``
pathfinder_cpu   sequence 64    2     4     16   1.0   as ``pathfinder``
vit_tiny_fmnist  vit      64    4     4     16   2.0   28×28 grey (padded to 32), patch 4, 10 classes
vit_pathfinder16 vit      64    4     4     16   2.0   16×16 grey, convolutional stem to 4×4 (16 tokens), 2 classes
================ ======== ===== ===== ===== ==== ===== =================================================

Every classifier preset uses drop-path 0.05 and LayerScale 1e-4 (the paper's defaults); override any config
field through ``create_model(name, **overrides)``.

Language model (:class:`~taylorshift.models.lm.CausalLM`, causal attention, byte vocabulary):

=============== ======== ===== ===== ===== ==== ===== =================================================
name            family   D     depth heads d    mlp   input
=============== ======== ===== ===== ===== ==== ===== =================================================
fortunes_lm     lm       128   4     8     16   4.0   bytes (256), trained on 512, contexts ≤ 4096
=============== ======== ===== ===== ===== ==== ===== =================================================

``fortunes_lm`` is sized for CPU training on the ``fortunes-lm`` task (2.3 MB of text): 0.86 M parameters, so
an epoch of 512-byte windows takes minutes on two cores. The head size d = 16 keeps TaylorShift's recurrent
decoding state small and its per-token cost low: ``F = d(d+1)/2 + d + 1 = 153`` features, a state of
``F·(d+1)`` numbers per head (about 10 KiB in fp32, 330 KiB for all 8 heads × 4 blocks) against the softmax KV
cache's ``2·H·d = 256`` numbers per token and block (4 KiB per token for the model), so the state is smaller than
the cache from about 80 tokens of context on. Drop-path is 0 (a small LM on a small corpus; LayerScale stays).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from torch import nn

from taylorshift.models.classifier import SequenceClassifier, SequenceClassifierConfig
from taylorshift.models.lm import CausalLM, CausalLMConfig
from taylorshift.models.vit import VisionTransformer, ViTConfig
from taylorshift.nn import check_attention
from taylorshift.ops.inputs import check_backend

ModelConfig = SequenceClassifierConfig | ViTConfig | CausalLMConfig

_Seq, _ViT = SequenceClassifierConfig, ViTConfig
_CPU = {"dim": 64, "num_heads": 4, "head_dim": 16}

_PRESETS: dict[str, ModelConfig] = {
    # paper sizes
    "listops": _Seq(17, 10, 2048, dim=512, depth=4, num_heads=8, head_dim=64, mlp_ratio=2.0),
    "listops_conv": _Seq(17, 10, 2048, dim=512, depth=4, num_heads=8, head_dim=64, mlp_ratio=2.0, embed="conv"),
    "text_bytes": _Seq(256, 2, 4000, dim=256, depth=4, num_heads=4, head_dim=64, mlp_ratio=4.0),
    "pixels": _Seq(256, 10, 1024, dim=256, depth=1, num_heads=4, head_dim=64, mlp_ratio=1.0),
    "pathfinder": _Seq(256, 2, 1024, dim=64, depth=4, num_heads=4, head_dim=16, mlp_ratio=1.0),
    "vit_tiny": _ViT(1000, dim=192, depth=12, num_heads=3, head_dim=64),
    "vit_small": _ViT(1000, dim=384, depth=12, num_heads=6, head_dim=64),
    "vit_small_conv": _ViT(1000, dim=384, depth=12, num_heads=6, head_dim=64, stem="conv"),
    # CPU sizes: D = 64, d = 16
    "listops_cpu": _Seq(17, 10, 2048, depth=2, mlp_ratio=2.0, **_CPU),
    "text_bytes_cpu": _Seq(256, 2, 4096, depth=2, mlp_ratio=2.0, **_CPU),
    "pixels_cpu": _Seq(256, 10, 1024, depth=1, mlp_ratio=1.0, **_CPU),
    "pathfinder_cpu": _Seq(256, 2, 1024, depth=2, mlp_ratio=1.0, **_CPU),
    "vit_tiny_fmnist": _ViT(10, img_size=32, input_size=28, patch_size=4, in_chans=1, depth=4, mlp_ratio=2.0, **_CPU),
    "vit_pathfinder16": _ViT(2, img_size=16, patch_size=4, in_chans=1, stem="conv", depth=4, mlp_ratio=2.0, **_CPU),
    # language model (CPU size)
    "fortunes_lm": CausalLMConfig(256, 4096, dim=128, depth=4, num_heads=8, head_dim=16, mlp_ratio=4.0),
}

_MODEL_CLASSES: dict[type, type[nn.Module]] = {
    SequenceClassifierConfig: SequenceClassifier,
    ViTConfig: VisionTransformer,
    CausalLMConfig: CausalLM,
}


def list_models() -> list[str]:
    """Names of the registered presets, sorted."""
    return sorted(_PRESETS)


def model_config(name: str, attention: str = "taylorshift", backend: str = "auto", **overrides: Any) -> ModelConfig:
    """The resolved config of preset ``name`` (a fresh copy) with the attention type, backend and overrides.

    Args:
        name: a name from :func:`list_models`.
        attention: ``"taylorshift"`` or ``"softmax"``.
        backend: TaylorShift backend ``"auto"``, ``"direct"`` or ``"efficient"`` (softmax takes ``"auto"``).
        **overrides: config fields to replace, e.g. ``depth=1, dim=32``.

    Raises:
        ValueError: unknown name, attention type, backend or override field, or an invalid value.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
    check_attention(attention)
    check_backend(backend)
    base = _PRESETS[name]
    valid = {f.name for f in dataclasses.fields(base)} - {"attention", "backend"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for model {name!r}; valid fields: {sorted(valid)}")
    return dataclasses.replace(copy.deepcopy(base), attention=attention, backend=backend, **overrides)


def build_model(config: ModelConfig) -> nn.Module:
    """The model for a resolved config (e.g. one saved next to a checkpoint)."""
    if type(config) not in _MODEL_CLASSES:
        raise TypeError(f"config must be one of {[c.__name__ for c in _MODEL_CLASSES]}, got {type(config).__name__}")
    return _MODEL_CLASSES[type(config)](config)


def create_model(name: str, attention: str = "taylorshift", backend: str = "auto", **overrides: Any) -> nn.Module:
    """Build preset ``name`` with the given attention type; arguments as in :func:`model_config`.

    Example:
        ``create_model("listops_cpu", attention="softmax")``,
        ``create_model("vit_small", attention="taylorshift", backend="efficient", drop_path=0.1)``.
    """
    return build_model(model_config(name, attention, backend, **overrides))

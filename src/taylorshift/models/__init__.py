"""Architectures built from :mod:`taylorshift.nn`, and the preset registry (``create_model``)."""

from taylorshift.models.classifier import SequenceClassifier, SequenceClassifierConfig
from taylorshift.models.registry import build_model, create_model, list_models, model_config
from taylorshift.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "SequenceClassifier",
    "SequenceClassifierConfig",
    "ViTConfig",
    "VisionTransformer",
    "build_model",
    "create_model",
    "list_models",
    "model_config",
]

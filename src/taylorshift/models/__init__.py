"""Architectures built from :mod:`taylorshift.nn` (sequence classifier, ViT, causal LM), and the preset registry
(``create_model``)."""

from taylorshift.models.classifier import SequenceClassifier, SequenceClassifierConfig
from taylorshift.models.lm import CausalLM, CausalLMConfig, LMCache
from taylorshift.models.registry import build_model, create_model, list_models, model_config
from taylorshift.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "CausalLM",
    "CausalLMConfig",
    "LMCache",
    "SequenceClassifier",
    "SequenceClassifierConfig",
    "ViTConfig",
    "VisionTransformer",
    "build_model",
    "create_model",
    "list_models",
    "model_config",
]

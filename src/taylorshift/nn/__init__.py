"""Modules built on the TaylorShift operators: attention, transformer blocks, embeddings."""

from taylorshift.nn.attention import TaylorShiftAttention
from taylorshift.nn.blocks import Block, DropPath, LayerScale, Mlp, init_weights
from taylorshift.nn.embeddings import (
    ConvStem,
    ConvTextEmbed,
    PatchEmbed,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    sinusoidal_encoding,
)
from taylorshift.nn.factory import ATTENTION_TYPES, check_attention, make_attention
from taylorshift.nn.softmax_attention import SoftmaxAttention

__all__ = [
    "ATTENTION_TYPES",
    "Block",
    "ConvStem",
    "ConvTextEmbed",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SinusoidalPositionalEncoding",
    "SoftmaxAttention",
    "TaylorShiftAttention",
    "TokenEmbedding",
    "check_attention",
    "init_weights",
    "make_attention",
    "sinusoidal_encoding",
]

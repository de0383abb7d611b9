"""A native Hugging Face ``transformers`` model on TaylorShift, with recurrent generation.

``TaylorShiftConfig`` / ``TaylorShiftModel`` / ``TaylorShiftForCausalLM`` / ``TaylorShiftForSequenceClassification``
are ``PreTrainedModel`` subclasses built from this library's blocks (:func:`taylorshift.models.encoder.make_blocks`:
pre-norm blocks with causal :class:`~taylorshift.nn.TaylorShiftAttention`, the paper's normalisation: unit q/k,
per-head temperature, output factor ``√(n_i/d)``), the same architecture as :class:`taylorshift.models.CausalLM`
(token embedding, fixed sinusoidal positions, blocks, LayerNorm, linear head). Importing this module registers
them with ``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM`` and ``AutoModelForSequenceClassification``
(model type ``"taylorshift"``), so ``save_pretrained`` folders load with the Auto classes.

Generation. The model's cache, :class:`TaylorShiftDecodingCache`, holds every layer's TaylorShift state (a
:class:`taylorshift.CausalState`, ``B·H·F·(d+1)`` numbers, whatever the context) instead of keys and values, and
``model.generate(...)`` feeds it back, so each new token costs the same whatever the context length: the
attention of a step is :func:`taylorshift.taylor_shift_causal` with ``L = 1``. The cache is created by the model
on its first call with ``use_cache=True`` (``generate`` does not make a ``DynamicCache`` for it); left-padded
batches work (positions count the unpadded tokens, padded keys are never attended).

Conversion: :func:`from_causal_lm` turns a trained :class:`~taylorshift.models.CausalLM` (TaylorShift attention)
into a ``TaylorShiftForCausalLM`` with the same weights; :func:`convert_checkpoint` does it for a training
checkpoint (e.g. ``fortunes_lm``) and saves the folder (``taylorshift convert-hf``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taylorshift.integrations.hf import require_transformers

require_transformers()

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import (  # noqa: E402
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from taylorshift.models.encoder import make_blocks  # noqa: E402
from taylorshift.models.lm import CausalLM, CausalLMConfig  # noqa: E402
from taylorshift.nn import SinusoidalPositionalEncoding  # noqa: E402
from taylorshift.nn.attention import TaylorShiftAttention, TaylorShiftCache  # noqa: E402
from taylorshift.nn.blocks import LayerScale, init_weights  # noqa: E402
from taylorshift.ops import DEFAULT_COEFFICIENTS, check_coefficients  # noqa: E402

__all__ = [
    "TaylorShiftConfig",
    "TaylorShiftDecodingCache",
    "TaylorShiftForCausalLM",
    "TaylorShiftForSequenceClassification",
    "TaylorShiftModel",
    "convert_checkpoint",
    "from_causal_lm",
]


class TaylorShiftConfig(PreTrainedConfig):
    """Configuration of the TaylorShift transformers models (standard transformers field names).

    Attributes:
        vocab_size: token ids ``[0, vocab_size)`` (256 for bytes).
        hidden_size: model width ``D``.
        num_hidden_layers: number of blocks.
        num_attention_heads: heads ``H``.
        head_dim: size of each head (default ``hidden_size // num_attention_heads``).
        intermediate_size: MLP hidden width (default ``4 · hidden_size``).
        max_position_embeddings: longest context (sizes the sinusoidal table).
        attention_dropout: key-dropout probability in training (``TaylorShiftAttention(attn_drop=...)``).
        drop_path_rate: stochastic depth of the last block (linear from 0).
        layer_scale_init: initial LayerScale value; None disables LayerScale.
        coefficients: ``(a, b, c)`` of the weight polynomial (default the Taylor-softmax ``1 + x + x²/2``).
        normalize_qk: unit q/k and a learnable per-head temperature (the paper's logits).
        temperature_init: initial value of that temperature (the paper's 1).
        output_scale: the paper's output factor ``√(n_i/d)``.
        attention_backend: ``"auto"``, ``"direct"`` or ``"efficient"`` for the parallel (training) forward.
        initializer_range: std of the truncated-normal init of the linear layers.
    """

    model_type = "taylorshift"

    vocab_size: int = 256
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 4096
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.0
    layer_scale_init: float | None = 1e-4
    coefficients: list | tuple = DEFAULT_COEFFICIENTS
    normalize_qk: bool = True
    temperature_init: float = 1.0
    output_scale: bool = True
    attention_backend: str = "auto"
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self.coefficients = list(check_coefficients(tuple(self.coefficients)))
        super().__post_init__(**kwargs)
        self.lm_config()  # validates the sizes, the attention options and the backend once, here

    def lm_config(self) -> CausalLMConfig:
        """The equivalent :class:`~taylorshift.models.CausalLMConfig` (what the blocks are built from)."""
        return CausalLMConfig(
            vocab_size=self.vocab_size,
            max_len=self.max_position_embeddings,
            dim=self.hidden_size,
            depth=self.num_hidden_layers,
            num_heads=self.num_attention_heads,
            head_dim=self.head_dim,
            mlp_ratio=self.intermediate_size / self.hidden_size,
            attention="taylorshift",
            backend=self.attention_backend,
            drop_path=self.drop_path_rate,
            layer_scale_init=self.layer_scale_init,
            temperature_init=self.temperature_init,
            attn_kwargs={
                "attn_drop": self.attention_dropout,
                "coefficients": tuple(self.coefficients),
                "normalize_qk": self.normalize_qk,
                "output_scale": self.output_scale,
            },
        )


@dataclass
class TaylorShiftDecodingCache:
    """The generation cache of a TaylorShift model: one :class:`~taylorshift.nn.attention.TaylorShiftCache` per
    layer (each a :class:`taylorshift.CausalState` of ``B·H·F·(d+1)`` running sums plus per-sequence counts).

    Its size does not depend on the number of tokens seen (:attr:`nbytes`).
    """

    layers: list[TaylorShiftCache]

    @property
    def n_valid(self) -> Tensor:
        """``(B,)``: unpadded tokens seen per sequence (the next token's position)."""
        return self.layers[0].n_valid

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen, padding included."""
        return self.layers[layer_idx].length

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Select the batch rows ``beam_idx`` (beam search)."""
        for layer in self.layers:
            st = layer.state
            cur = st.current
            st.current = type(cur)(cur.sums.index_select(0, beam_idx), cur.n_keys.index_select(0, beam_idx),
                                   cur.length, cur.form)  # fmt: skip
            st.batch_shape = st.current.batch_shape
            layer.n_valid = layer.n_valid.index_select(0, beam_idx)


class TaylorShiftPreTrainedModel(PreTrainedModel):
    """Weight init and the transformers hooks shared by the TaylorShift models."""

    config_class = TaylorShiftConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # the model makes its own (recurrent) cache
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The library's init: truncated-normal linear layers, unit-variance token embeddings (see
        :class:`~taylorshift.models.CausalLM`), LayerScale at ``layer_scale_init``, temperatures at
        ``temperature_init``."""
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            init_weights(module, std=self.config.initializer_range)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)
        elif isinstance(module, LayerScale):
            module.gamma.fill_(self.config.layer_scale_init)
        elif isinstance(module, TaylorShiftAttention) and module.temperature is not None:
            module.temperature.fill_(self.config.temperature_init)
        elif isinstance(module, SinusoidalPositionalEncoding):  # a fixed table (not saved): rebuild it in place
            fresh = SinusoidalPositionalEncoding(module.dim, module.max_len)
            module.pe = fresh.pe.to(module.pe.device)


class TaylorShiftModel(TaylorShiftPreTrainedModel):
    """The decoder without a head: ``input_ids (B, N)`` → hidden states ``(B, N, hidden_size)``."""

    def __init__(self, config: TaylorShiftConfig) -> None:
        super().__init__(config)
        lm = config.lm_config()
        self.embed = nn.Embedding(lm.vocab_size, lm.dim)
        self.pos = SinusoidalPositionalEncoding(lm.dim, lm.max_len)
        self.blocks = make_blocks(lm, causal=True)
        self.norm = nn.LayerNorm(lm.dim, eps=1e-6)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def new_cache(self, batch_size: int, device: torch.device | None = None) -> TaylorShiftDecodingCache:
        """An empty generation cache for ``batch_size`` sequences."""
        return TaylorShiftDecodingCache([b.attn.new_cache(batch_size, device=device) for b in self.blocks])

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: TaylorShiftDecodingCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        """Hidden states of the new tokens.

        Args:
            input_ids: ``(B, N)`` token ids, or ``inputs_embeds (B, N, D)``.
            attention_mask: ``(B, N)`` or ``(B, seen + N)`` (1 = token, 0 = padding; the last ``N`` columns
                describe the new tokens). Padded tokens are never attended and not counted in positions.
            position_ids: ``(B, N)``; default the number of unpadded tokens before each token.
            cache: a :class:`TaylorShiftDecodingCache` to continue (updated in place and returned).
            use_cache: run recurrently and return the cache (default ``config.use_cache`` in eval mode, False in
                training); otherwise the parallel causal forward.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, N, D)
        B, N = h.shape[:2]
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        use_cache = use_cache or cache is not None
        padding = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < N:
                raise ValueError(f"attention_mask must be (B, seen + N) with B={B}, N={N}; got "
                                 f"{tuple(attention_mask.shape)}")  # fmt: skip
            valid = attention_mask[:, -N:].bool()
            padding = None if bool(valid.all()) else ~valid  # (B, N), True = padding
        if use_cache and cache is None:
            cache = self.new_cache(B, device=h.device)
        if position_ids is None:
            counted = torch.ones(B, N, dtype=torch.long, device=h.device) if padding is None else (~padding).long()
            before = cache.n_valid.unsqueeze(-1) if cache is not None else 0
            position_ids = (before + counted.cumsum(-1) - 1).clamp_min(0)
        h = self.pos(h, positions=position_ids)
        for i, block in enumerate(self.blocks):
            h = block.prefill(h, cache.layers[i], key_padding_mask=padding) if use_cache else block(h, padding)
        h = self.norm(h)
        if return_dict is False:
            return (h, cache) if use_cache else (h,)
        return BaseModelOutputWithPast(last_hidden_state=h, cache=cache if use_cache else None)


class TaylorShiftForCausalLM(TaylorShiftPreTrainedModel, GenerationMixin):
    """:class:`TaylorShiftModel` with a linear next-token head; ``generate`` decodes recurrently."""

    def __init__(self, config: TaylorShiftConfig) -> None:
        super().__init__(config)
        self.model = TaylorShiftModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: TaylorShiftDecodingCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Next-token logits ``(B, N, vocab_size)`` (the last ``logits_to_keep`` positions if > 0) and, with
        ``labels (B, N)`` (-100 = ignore), the mean cross-entropy of predicting token ``i + 1`` at position ``i``."""
        out = self.model(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache, return_dict=True)
        h = out.last_hidden_state
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        if return_dict is False:
            return tuple(t for t in (loss, logits, out.cache) if t is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


class TaylorShiftForSequenceClassification(TaylorShiftPreTrainedModel):
    """:class:`TaylorShiftModel` with a linear head on the last unpadded token: ``(B, num_labels)`` logits;
    ``num_labels == 1`` is regression (MSE), otherwise classification (cross-entropy)."""

    def __init__(self, config: TaylorShiftConfig) -> None:
        super().__init__(config)
        self.model = TaylorShiftModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast | tuple:
        out = self.model(input_ids, attention_mask, inputs_embeds=inputs_embeds, use_cache=False, return_dict=True)
        h = out.last_hidden_state  # (B, N, D)
        B, N = h.shape[:2]
        if attention_mask is None:
            last = torch.full((B,), N - 1, device=h.device)
        else:  # the last unpadded position (left or right padding)
            m = attention_mask[:, -N:].bool()
            last = torch.where(m, torch.arange(N, device=h.device), -1).amax(-1).clamp_min(0)
        logits = self.score(h[torch.arange(B, device=h.device), last])  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        if return_dict is False:
            return tuple(t for t in (loss, logits) if t is not None)
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)


AutoConfig.register("taylorshift", TaylorShiftConfig, exist_ok=True)
AutoModel.register(TaylorShiftConfig, TaylorShiftModel, exist_ok=True)
AutoModelForCausalLM.register(TaylorShiftConfig, TaylorShiftForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(TaylorShiftConfig, TaylorShiftForSequenceClassification, exist_ok=True)


# ------------------------------------------------------------------------------------------------ conversion


def config_from_causal_lm(cfg: CausalLMConfig, **overrides: Any) -> TaylorShiftConfig:
    """The :class:`TaylorShiftConfig` of a TaylorShift :class:`~taylorshift.models.CausalLMConfig`."""
    if cfg.attention != "taylorshift":
        raise ValueError(f"only TaylorShift language models convert (attention={cfg.attention!r})")
    ak = dict(cfg.attn_kwargs)
    allowed = {"attn_drop", "coefficients", "normalize_qk", "output_scale", "qkv_bias", "proj_drop", "temperature_init"}
    unknown = set(ak) - allowed
    if unknown or not ak.get("qkv_bias", True) or ak.get("proj_drop", 0.0):
        raise ValueError(f"attention options {sorted(ak)} have no TaylorShiftConfig field")
    hidden = max(1, round(cfg.dim * cfg.mlp_ratio))
    return TaylorShiftConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        intermediate_size=hidden,
        max_position_embeddings=cfg.max_len,
        attention_dropout=ak.get("attn_drop", 0.0),
        drop_path_rate=cfg.drop_path,
        layer_scale_init=cfg.layer_scale_init,
        coefficients=list(ak.get("coefficients", DEFAULT_COEFFICIENTS)),
        normalize_qk=ak.get("normalize_qk", True),
        temperature_init=ak.get("temperature_init", cfg.temperature_init),
        output_scale=ak.get("output_scale", True),
        attention_backend=cfg.backend,
        **overrides,
    )


_RENAME = (("embed.", "model.embed."), ("blocks.", "model.blocks."), ("norm.", "model.norm."), ("head.", "lm_head."))


def from_causal_lm(model: CausalLM, **config_overrides: Any) -> TaylorShiftForCausalLM:
    """A :class:`TaylorShiftForCausalLM` with the weights of a TaylorShift :class:`~taylorshift.models.CausalLM`
    (same function: same logits, same generated tokens), in eval mode."""
    if not isinstance(model, CausalLM):
        raise TypeError(f"model must be a taylorshift CausalLM, got {type(model).__name__}")
    hf = TaylorShiftForCausalLM(config_from_causal_lm(model.config, **config_overrides))
    state = {}
    for key, value in model.state_dict().items():
        prefix = next(p for p in _RENAME if key.startswith(p[0]))
        state[prefix[1] + key[len(prefix[0]) :]] = value
    hf.load_state_dict(state, strict=True)
    return hf.to(next(model.parameters()).dtype).eval()


def convert_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> TaylorShiftForCausalLM:
    """Convert a training checkpoint of a TaylorShift language model (e.g. ``fortunes_lm``) and, with ``out_dir``,
    save it there (``config.json`` + ``model.safetensors``, loadable with ``AutoModelForCausalLM``)."""
    from taylorshift.train.checkpoint import load_model

    model, _ = load_model(checkpoint)
    if not isinstance(model, CausalLM):
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}, not a language model (CausalLM)")
    hf = from_causal_lm(model)
    if out_dir is not None:
        hf.save_pretrained(out_dir)
    return hf

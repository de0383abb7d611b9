"""``attn_implementation="taylorshift"`` in Hugging Face transformers models (tiny random configs, no downloads).

The attention function is checked against the float64 oracle (grouped-query heads, masks, dropout), and whole
models for causality, padding invariance on either side, encoders with padding and cached generation.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import rel_err  # noqa: E402
from taylorshift import taylor_shift_attention_reference  # noqa: E402
from taylorshift.integrations.hf import register, taylorshift_attention_forward  # noqa: E402

NAME = register()


class _Module(torch.nn.Module):
    def __init__(self, groups: int, causal: bool):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal


def _qkv(B=2, H=4, Hkv=2, L=9, S=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, S, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, S, d, generator=g, dtype=torch.float64)
    return q, k, v


def _expected(q, k, v, keep, scale):
    """The oracle on key/value heads repeated for their query heads; ``keep`` (B, 1 or H, L, S) bool."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return taylor_shift_attention_reference(q, k, v, attn_mask=keep, scale=scale).transpose(1, 2)


def _causal(L, S, offset=0):
    return (torch.arange(L).view(L, 1) + offset) >= torch.arange(S)


_KEY_PATTERNS = ["causal-none", "causal-left-pad", "causal-right-pad", "bidir-pad", "decode-step"]
_OTHER_PATTERNS = ["general", "chunk-after-cache"]  # the efficient backend refuses these (tested below)


@pytest.mark.parametrize(
    ("case", "backend"),
    [(c, b) for c in _KEY_PATTERNS for b in ("auto", "direct", "efficient")]
    + [(c, b) for c in _OTHER_PATTERNS for b in ("auto", "direct")],
)
def test_attention_function_equals_the_oracle(case, backend):
    B, L, S = 2, 9, 9
    if case in ("decode-step", "chunk-after-cache"):
        L = 1 if case == "decode-step" else 4
    q, k, v = _qkv(L=L, S=S)
    valid = torch.ones(B, S, dtype=torch.bool)
    causal, mask = True, None
    if case == "causal-none":
        keep = _causal(L, S).expand(B, 1, L, S)
    elif case == "causal-left-pad":
        valid[1, :3] = False
        mask = keep = _causal(L, S) & valid[:, None, None, :]
    elif case == "causal-right-pad":
        valid[0, 6:] = False
        mask = keep = _causal(L, S) & valid[:, None, None, :]
    elif case == "bidir-pad":
        causal = False
        valid[1, 5:] = False
        mask = keep = valid[:, None, None, :].expand(B, 1, L, S)
    elif case == "general":  # sliding window of 3 (Mistral-style)
        keep = _causal(L, S) & ~_causal(L, S, offset=-3)
        mask = keep.expand(B, 1, L, S)
    else:  # no mask with a cache before the chunk: the last query sees every key
        keep = _causal(L, S, offset=S - L).expand(B, 1, L, S)
    out, weights = taylorshift_attention_forward(_Module(2, causal), q, k, v, mask, scaling=0.4, backend=backend)
    assert weights is None and out.shape == (B, L, 4, 8) and out.is_contiguous()
    assert rel_err(out, _expected(q, k, v, keep, 0.4)) < 1e-12


def test_attention_function_errors_and_float_masks():
    q, k, v = _qkv()
    module = _Module(2, True)
    with pytest.raises(ValueError, match="general|key-padding"):
        taylorshift_attention_forward(module, q, k, v, torch.ones(2, 1, 9, 9, dtype=torch.bool).tril(-1).logical_not(),
                                      backend="efficient")  # fmt: skip
    zero_inf = torch.zeros(2, 1, 9, 9, dtype=torch.float64).masked_fill(~_causal(9, 9), torch.finfo(torch.float64).min)
    out, _ = taylorshift_attention_forward(module, q, k, v, zero_inf, scaling=0.4)
    assert rel_err(out, _expected(q, k, v, _causal(9, 9).expand(2, 1, 9, 9), 0.4)) < 1e-12
    with pytest.raises(ValueError, match="additive bias"):
        taylorshift_attention_forward(module, q, k, v, torch.randn(2, 1, 9, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="position biases"):
        taylorshift_attention_forward(module, q, k, v, None, position_bias=torch.zeros(1))
    with pytest.raises(ValueError, match="multiple"):
        taylorshift_attention_forward(module, q[:, :3], k, v, None)
    with pytest.raises(ValueError, match="own implementations"):
        register("sdpa")


def test_key_dropout_in_training():
    """Training with dropout p drops each key of each (batch, head) with probability p, before normalising."""
    q, k, v = _qkv()
    module = _Module(2, False).train()
    torch.manual_seed(5)
    out, _ = taylorshift_attention_forward(module, q, k, v, None, dropout=0.5, scaling=0.4)
    torch.manual_seed(5)
    keep = torch.rand(2, 4, 1, 9) >= 0.5
    assert rel_err(out, _expected(q, k, v, keep, 0.4)) < 1e-12
    module.eval()
    out_eval, _ = taylorshift_attention_forward(module, q, k, v, None, dropout=0.5, scaling=0.4)
    assert rel_err(out_eval, _expected(q, k, v, None, 0.4)) < 1e-12


def test_normalize_qk_logits_are_cosines():
    q, k, v = _qkv()
    out, _ = taylorshift_attention_forward(_Module(2, False), q, k, v, None, scaling=0.4, normalize_qk=True,
                                           temperature=3.0)  # fmt: skip
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    assert rel_err(out, _expected(qn, kn, v, None, 3.0)) < 1e-12


# ---------------------------------------------------------------------------------------------- whole models


def _llama(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3, **kw,
    )  # fmt: skip
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=NAME, dtype=torch.float64).eval()


def _ids(B=2, N=14, seed=1):
    return torch.randint(3, 64, (B, N), generator=torch.Generator().manual_seed(seed))


def test_llama_uses_taylorshift_and_is_causal():
    model = _llama()
    assert model.config._attn_implementation == NAME
    ids = _ids()
    with torch.no_grad():
        logits = model(ids).logits
        changed = ids.clone()
        changed[:, 9:] = (changed[:, 9:] + 7) % 64
        logits2 = model(changed).logits
        sdpa = _llama()
        sdpa.set_attn_implementation("sdpa")
        assert rel_err(sdpa(ids).logits, logits) > 1e-3  # a different attention, not softmax under another name
    assert rel_err(logits2[:, :9], logits[:, :9]) < 1e-13
    assert rel_err(logits2[:, 9:], logits[:, 9:]) > 1e-3


@pytest.mark.parametrize("side", ["left", "right"])
def test_llama_padding_invariance(side):
    model = _llama()
    ids = _ids(N=12)
    lengths = [12, 8]
    mask = torch.zeros(2, 12, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, 12 - n :] = 1
        else:
            mask[b, :n] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, position_ids=position_ids).logits
        for b in range(2):
            pos = mask[b].bool()
            alone = model(ids[b : b + 1, pos]).logits[0]
            assert rel_err(batch[b, pos], alone) < 1e-12, (side, b)


def test_llama_generate_with_and_without_cache():
    """The generic path decodes through transformers' key/value cache (not recurrently): cached greedy decoding
    gives the tokens of uncached greedy decoding, also for a left-padded batch."""
    model = _llama()
    ids = _ids(N=10)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kw)
        uncached = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached, uncached) and cached.shape == (2, 16)


def test_llama_trains():
    """A few optimiser steps through the attention: gradients everywhere, loss going down."""
    model = _llama(attention_dropout=0.1)
    model.train()
    ids = _ids(B=4, N=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bert_encoder_with_padding():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, initializer_range=0.3,
    )  # fmt: skip
    model = transformers.BertModel._from_config(cfg, attn_implementation=NAME, dtype=torch.float64).eval()
    ids = _ids(N=11)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        h = model(ids, attention_mask=mask).last_hidden_state
        alone = model(ids[1:, :7]).last_hidden_state
        full = model(ids[1:]).last_hidden_state  # without the mask the padding is attended
        model.set_attn_implementation("sdpa")
        sdpa = model(ids[1:, :7]).last_hidden_state
    assert rel_err(h[1, :7], alone[0]) < 1e-12
    assert rel_err(full[0, :7], alone[0]) > 1e-3  # bidirectional: later tokens matter, so the mask did its work
    assert rel_err(sdpa, alone) > 1e-3

"""The native transformers models (``TaylorShiftForCausalLM`` & co.): recurrent generation, Auto classes, local
save/load round trip, padding, and the conversion of our ``CausalLM`` checkpoints (tiny random models)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from conftest import rel_err  # noqa: E402
from taylorshift.cli import main  # noqa: E402
from taylorshift.integrations.hf_model import (  # noqa: E402
    TaylorShiftConfig,
    TaylorShiftDecodingCache,
    TaylorShiftForCausalLM,
    TaylorShiftForSequenceClassification,
    TaylorShiftModel,
    convert_checkpoint,
    from_causal_lm,
)
from taylorshift.models import create_model  # noqa: E402


def _config(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=256, initializer_range=0.2, layer_scale_init=0.5)  # fmt: skip
    return TaylorShiftConfig(**{**base, **kw})


def _lm(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return TaylorShiftForCausalLM(_config(**kw)).to(dtype).eval()


def _ids(B=2, N=12, seed=1, vocab=64):
    return torch.randint(1, vocab, (B, N), generator=torch.Generator().manual_seed(seed))


def test_config_uses_transformers_names_and_auto_classes():
    cfg = _config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (32, 2, 4, 48)
    assert AutoConfig.for_model("taylorshift").model_type == "taylorshift"
    assert type(AutoModel.from_config(cfg)) is TaylorShiftModel
    assert type(AutoModelForCausalLM.from_config(cfg)) is TaylorShiftForCausalLM
    assert type(AutoModelForSequenceClassification.from_config(cfg)) is TaylorShiftForSequenceClassification
    warm = TaylorShiftForCausalLM(_config(temperature_init=2.5))
    assert all((b.attn.temperature == 2.5).all() for b in warm.model.blocks)
    with pytest.raises(ValueError, match="backend"):
        _config(attention_backend="fast")
    with pytest.raises(ValueError):
        _config(coefficients=(0.5, 2.0, 1.0))  # p would go negative


def test_recurrent_forward_equals_parallel_and_continues():
    model = _lm()
    ids = _ids(N=20)
    with torch.no_grad():
        parallel = model(ids, use_cache=False).logits
        out = model(ids[:, :13], use_cache=True)
        assert isinstance(out.cache, TaylorShiftDecodingCache) and out.cache.get_seq_length() == 13
        nbytes = out.cache.nbytes
        rest = model(ids[:, 13:], cache=out.cache)
        assert rest.cache is out.cache and out.cache.get_seq_length() == 20 and out.cache.nbytes == nbytes
    assert rel_err(torch.cat([out.logits, rest.logits], 1), parallel) < 1e-12


def test_generate_with_cache_equals_greedy_without_cache():
    model = _lm()
    ids = _ids(N=9)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded batch
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, use_cache=True, return_dict_in_generate=True, **kw)
    uncached = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached) and uncached.shape == (2, 21)
    assert isinstance(cached.cache, TaylorShiftDecodingCache)
    assert cached.cache.n_valid.tolist() == [20, 16]  # positions count the unpadded tokens
    beams = model.generate(ids, num_beams=3, **kw)  # beam search reorders the recurrent cache
    assert torch.equal(beams, model.generate(ids, num_beams=3, use_cache=False, **kw))
    # the padded sequence generates what it generates alone
    alone = model.generate(ids[1:, 4:], max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(alone[0, 5:], cached.sequences[1, 9:])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(side):
    model = _lm()
    ids = _ids(N=12)
    mask = torch.ones_like(ids)
    if side == "left":
        mask[1, :5] = 0
    else:
        mask[1, 7:] = 0
    pos = mask[1].bool()
    with torch.no_grad():
        alone = model(ids[1:, pos], use_cache=False).logits[0]
        for use_cache in (False, True):
            batch = model(ids, attention_mask=mask, use_cache=use_cache).logits
            assert rel_err(batch[1, pos], alone) < 1e-12, use_cache


def test_causality_and_training_step():
    model = _lm(attention_dropout=0.1, drop_path_rate=0.1)
    ids = _ids(N=16)
    with torch.no_grad():
        a = model(ids).logits
        changed = ids.clone()
        changed[:, 10:] = 5
        b = model(changed).logits
    assert rel_err(b[:, :10], a[:, :10]) < 1e-13 and rel_err(b[:, 10:], a[:, 10:]) > 1e-3
    model.train()
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_save_load_round_trip(tmp_path):
    model = _lm(dtype=torch.float32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is TaylorShiftForCausalLM
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    assert loaded.config.coefficients == [0.5, 1.0, 1.0] and loaded.config.normalize_qk


def test_sequence_classification(tmp_path):
    torch.manual_seed(0)
    model = TaylorShiftForSequenceClassification(_config(num_labels=3)).double().eval()
    ids = _ids(N=10)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        for b in range(2):
            alone = model(ids[b : b + 1, mask[b].bool()]).logits
            assert rel_err(logits[b : b + 1], alone) < 1e-12
    out = model(ids, attention_mask=mask, labels=torch.tensor([0, 2]))
    out.loss.backward()
    assert logits.shape == (2, 3) and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.float64).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, logits)


def _trained_lm():
    """The fortunes_lm preset (byte vocabulary, D = 128, 4 blocks of 8 heads) with random weights, LayerScale
    raised so that attention shapes the output."""
    torch.manual_seed(3)
    model = create_model("fortunes_lm").eval()
    with torch.no_grad():
        for block in model.blocks:
            block.ls1.gamma.fill_(0.3)
            block.ls2.gamma.fill_(0.3)
    return model


def test_converted_lm_generates_the_same_bytes(tmp_path):
    from taylorshift.train.checkpoint import model_config_dict, save_checkpoint

    model = _trained_lm()
    meta = {"config": {"task": "fortunes-lm"}, "model_config": model_config_dict(model.config)}
    path = save_checkpoint(tmp_path / "checkpoint.safetensors", model, None, meta)
    assert main(["convert-hf", "--checkpoint", str(path), "--out", str(tmp_path / "hf")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    prompt = torch.tensor([list(b"The meaning of life")])
    ours = torch.stack(list(model.generate(prompt, 40, temperature=0.0)), dim=1)
    theirs = hf.generate(prompt, max_new_tokens=40, do_sample=False, pad_token_id=0)[:, prompt.shape[1] :]
    assert torch.equal(ours, theirs)
    with torch.no_grad():
        assert rel_err(hf(prompt).logits, model(prompt)) < 1e-6
    assert torch.equal(convert_checkpoint(path).lm_head.weight, model.head.weight)
    hot = create_model("fortunes_lm", dim=32, depth=1, num_heads=4, max_len=64, temperature_init=3.0)
    assert from_causal_lm(hot).config.temperature_init == 3.0
    with pytest.raises(TypeError, match="CausalLM"):
        from_causal_lm(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="TaylorShift"):
        from_causal_lm(create_model("fortunes_lm", attention="softmax", dim=32, depth=1, num_heads=4, max_len=64))

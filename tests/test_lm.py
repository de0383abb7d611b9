"""The causal language model with both attention kinds: training pass, causality, incremental decoding against the
parallel forward, the caches, generation (determinism, greedy, streaming) and ``taylorshift generate``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_every_parameter_has_a_gradient, rel_err, tolerance
from taylorshift.cli import main
from taylorshift.generate import decode_stream, generate_bytes, generate_text
from taylorshift.models import CausalLM, CausalLMConfig, LMCache, create_model, model_config
from taylorshift.models.lm import sample_next
from taylorshift.nn import SoftmaxAttention, TaylorShiftAttention
from taylorshift.nn.factory import CAUSAL_ATTENTION_TYPES  # the baselines are not causal
from taylorshift.nn.softmax_attention import KVCache

TINY = {"dim": 32, "depth": 2, "num_heads": 2, "head_dim": 16, "max_len": 600}


def _lm(attention: str, seed: int = 0, **extra) -> CausalLM:
    torch.manual_seed(seed)
    return create_model("fortunes_lm", attention=attention, **{**TINY, "layer_scale_init": 1.0, **extra})


def _ids(B: int, N: int, seed: int = 1, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (B, N), generator=torch.Generator().manual_seed(seed))


def test_preset_and_registry():
    cfg = model_config("fortunes_lm")
    assert isinstance(cfg, CausalLMConfig)
    assert (cfg.vocab_size, cfg.dim, cfg.depth, cfg.num_heads, cfg.head_dim) == (256, 128, 4, 8, 16)
    for attention, cls in (("taylorshift", TaylorShiftAttention), ("softmax", SoftmaxAttention)):
        model = _lm(attention)
        assert isinstance(model, CausalLM)
        assert {type(b.attn) for b in model.blocks} == {cls} and all(b.attn.causal for b in model.blocks)
    with pytest.raises(ValueError, match="vocab_size"):
        CausalLMConfig(vocab_size=0)
    with pytest.raises(ValueError, match="max_len"):
        CausalLMConfig(max_len=-1)
    with pytest.raises(ValueError, match="causal"):
        CausalLMConfig(attn_kwargs={"causal": False})
    with pytest.raises(ValueError, match="attention type"):
        CausalLMConfig(attention="linear")
    assert set(CAUSAL_ATTENTION_TYPES) >= {"taylorshift", "softmax"}
    with pytest.raises(ValueError, match="no causal form"):
        CausalLMConfig(attention="performer")


@pytest.mark.parametrize("attention", CAUSAL_ATTENTION_TYPES)
def test_forward_backward_every_parameter_gets_a_gradient(attention):
    model = _lm(attention, drop_path=0.1, layer_scale_init=1e-4).train()
    ids = _ids(2, 24)
    logits = model(ids)
    assert logits.shape == (2, 24, 256) and torch.isfinite(logits).all()
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.5  # near uniform at init
    loss.backward()
    assert_every_parameter_has_a_gradient(model, attention)


@pytest.mark.parametrize("attention", CAUSAL_ATTENTION_TYPES)
def test_forward_is_causal(attention):
    model = _lm(attention).double().eval()
    ids = _ids(2, 20)
    changed = ids.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :12], b[:, :12]) or rel_err(a[:, :12], b[:, :12]) < 1e-14
    assert rel_err(a[:, 12:], b[:, 12:]) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("attention", CAUSAL_ATTENTION_TYPES)
def test_prefill_and_steps_equal_the_parallel_forward(attention, dtype):
    model = _lm(attention).to(dtype).eval()
    ids = _ids(2, 290)
    with torch.no_grad():
        full = model(ids)  # (2, 290, 256)
        cache = model.new_cache(2)
        parts = [model.prefill(ids[:, :200], cache), model.prefill(ids[:, 200:270], cache)]  # chunked prefill
        parts += [model.step(ids[:, t : t + 1], cache) for t in range(270, 290)]
    assert cache.length == 290 and all(c.length == 290 for c in cache.layers)
    assert rel_err(torch.cat(parts, 1), full) < 10 * tolerance(dtype)


def test_softmax_kv_cache_grows_and_stays_exact():
    attn = SoftmaxAttention(32, 2, head_dim=16, causal=True).double().eval()
    x = torch.randn(1, 700, 32, dtype=torch.float64)
    cache = attn.new_cache(1)
    assert isinstance(cache, KVCache) and cache.capacity == 0
    with torch.no_grad():
        out = [attn.prefill(x[:, :250], cache)]
        cap = cache.capacity
        assert cap >= 250 and cap % 256 == 0
        out += [attn.step(x[:, t : t + 1], cache) for t in range(250, 700)]  # grows past the first capacity
        full = attn(x)
    assert cache.capacity > cap and cache.length == 700
    assert cache.nbytes == 2 * 2 * cache.capacity * 16 * 8
    assert rel_err(torch.cat(out, 1), full) < 1e-12


def test_softmax_causal_padding_and_errors():
    attn = SoftmaxAttention(32, 2, head_dim=16, causal=True).double().eval()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[0, 6:] = True
    with torch.no_grad():
        masked, plain = attn(x, key_padding_mask=pad), attn(x)
    assert rel_err(masked[0, :6], plain[0, :6]) < 1e-14 and rel_err(masked[1], plain[1]) < 1e-14
    with pytest.raises(ValueError, match="causal=True"):
        SoftmaxAttention(32, 2).new_cache(1)
    with pytest.raises(ValueError, match="one token"):
        attn.step(x, attn.new_cache(2))
    with pytest.raises(ValueError, match="batch size"):
        attn.prefill(x, attn.new_cache(3))
    with pytest.raises(TypeError, match="causal"):
        SoftmaxAttention(32, 2, causal=1)


def test_cache_memory_constant_for_taylorshift_growing_for_softmax():
    sizes = {}
    for attention in CAUSAL_ATTENTION_TYPES:
        model = _lm(attention).eval()
        sizes[attention] = []
        with torch.no_grad():
            cache = model.new_cache(1)
            for n in (100, 550):  # the softmax cache holds 512 tokens after the first prefill
                model.prefill(_ids(1, n - cache.length), cache)
                sizes[attention].append(cache.nbytes)
    ts, sm = sizes["taylorshift"], sizes["softmax"]
    F_ = 16 * 17 // 2 + 16 + 1
    assert ts[0] == ts[1] and ts[0] >= 2 * 2 * F_ * 17 * 4  # depth · heads · F · (d + 1) · fp32
    assert sm[1] > sm[0] >= 2 * 2 * 2 * 100 * 16 * 4  # depth · (k, v) · heads · n · d · fp32


def test_lm_input_errors():
    model = _lm("softmax").eval()
    with pytest.raises(ValueError, match="integer"):
        model(torch.randn(1, 4))
    with pytest.raises(ValueError, match="lie in"):
        model(torch.tensor([[1, 256]]))
    with pytest.raises(ValueError, match="max_len"):
        model(_ids(1, 601))
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="batch size"):
        model.prefill(_ids(2, 3), cache)
    with pytest.raises(ValueError, match="one token"):
        model.step(_ids(1, 2), cache)
    with pytest.raises(TypeError, match="LMCache"):
        model.prefill(_ids(1, 3), object())
    # generate validates when called, not when first iterated
    with pytest.raises(ValueError, match="temperature"):
        model.generate(_ids(1, 3), 5, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(_ids(1, 3), 5, top_k=0)
    with pytest.raises(ValueError, match="exceed max_len"):
        model.generate(_ids(1, 3), 600)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 5)


@pytest.mark.parametrize("attention", CAUSAL_ATTENTION_TYPES)
def test_generation_is_deterministic_with_a_seed_and_greedy_matches_forward(attention):
    model = _lm(attention).eval()
    prompt = _ids(2, 7)

    def run(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return torch.stack(list(model.generate(prompt, 12, generator=g, **kw)), 1)  # (2, 12)

    a, b = run(0, top_k=20), run(0, top_k=20)
    assert a.shape == (2, 12) and a.dtype == torch.long and torch.equal(a, b)
    assert not torch.equal(run(0), run(1))
    assert torch.is_grad_enabled()  # generation does not leak inference mode to the caller
    # greedy decoding through the cache = argmax of the parallel forward, token by token
    greedy = torch.stack(list(model.generate(prompt, 10, temperature=0)), 1)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, seq[:, 7:])
    assert list(model.generate(prompt[0], 0)) == []  # 1-D prompt, nothing to generate


def test_sample_next():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    assert sample_next(logits, temperature=0).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {1, 3}


def test_generate_text_and_utf8_streaming():
    model = _lm("taylorshift").eval()
    a = "".join(generate_text(model, "Hé", 20, temperature=1.0, seed=3))
    assert a == "".join(generate_text(model, b"H\xc3\xa9", 20, temperature=1.0, seed=3))
    stream = list(generate_bytes(model, "", 20, temperature=1.0, seed=3, stop_byte=None))
    assert len(stream) == 20 and all(0 <= v < 256 for v in stream)
    first = stream[0]
    stopped = list(generate_bytes(model, "", 20, temperature=1.0, seed=3, stop_byte=first))
    assert stopped == [first]
    # a character is written when its last byte arrives; a broken sequence becomes U+FFFD
    assert list(decode_stream(list("é!".encode()))) == ["", "é", "!", ""]
    assert "".join(decode_stream([0xC3, 0x41])) == "\ufffdA"
    with pytest.raises(ValueError, match="byte-level"):
        list(generate_bytes(create_model("fortunes_lm", **TINY, vocab_size=17), "x", 2))


@pytest.mark.parametrize("attention", CAUSAL_ATTENTION_TYPES)
def test_generate_cli(tmp_path, capsys, attention):
    pytest.importorskip("safetensors")
    from taylorshift.train.checkpoint import model_config_dict, save_checkpoint

    model = _lm(attention).eval()
    path = save_checkpoint(tmp_path / "checkpoint.safetensors", model, None,
                           {"config": {"task": "fortunes-lm"}, "model_config": model_config_dict(model.config)})
    args = ["generate", "--checkpoint", str(path), "--prompt", "Hello", "--max-new-tokens", "16", "--seed", "5",
            "--top-k", "30", "--threads", "1"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert first.out.startswith("Hello") and "16 bytes in" in first.err
    assert main(args) == 0
    assert capsys.readouterr().out == first.out  # same seed, same text
    expected = "".join(generate_text(model, "Hello", 16, temperature=0.8, top_k=30, seed=5))
    assert first.out == "Hello" + expected + "\n"
    assert main([*args, "--no-echo"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "error" in capsys.readouterr().err


def test_lm_cache_type():
    model = _lm("taylorshift")
    cache = model.new_cache(3)
    assert isinstance(cache, LMCache) and cache.length == 0 and cache.batch_size == 3 and len(cache.layers) == 2


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_benchmark_script_runs(tmp_path, capsys):
    import json

    decode = _load_script("decode")
    threads = torch.get_num_threads()
    try:
        assert decode.main(["--lengths", "16", "48", "--steps", "2", "--warmup", "1", "--no-plot",
                            "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "decode.json").read_text())
    assert {(r["attention"], r["context"]) for r in doc["rows"]} == {
        (a, n) for a in ("taylorshift", "softmax") for n in (16, 48)}
    assert doc["meta"]["threads"] == 1 and doc["summary"]["analytic"]["features"] == 153
    ts = [r["cache_bytes"] for r in doc["rows"] if r["attention"] == "taylorshift"]
    assert ts[0] == ts[1] and (tmp_path / "decode.csv").read_text().startswith("# command:")
    assert "cache_bytes" in capsys.readouterr().out


def test_peer_script_explains_a_missing_peer(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the script sets it; restored after the test
    peer = _load_script("peer_taylor")
    threads = torch.get_num_threads()
    try:
        rc = peer.main(["--lengths", "32", "--repeats", "1", "--train-max", "32", "--context", "32", "--steps", "4",
                        "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert rc in (0, 2)  # 2: the peer (or its fast-transformers kernel) is not installed here

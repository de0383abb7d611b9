"""Models and their parts: a sweep over every registered preset × attention type, padding invariance, backend
equivalence, the registry's errors, the sinusoidal table, and the parts (blocks, embeddings, softmax)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_every_parameter_has_a_gradient, rel_err
from taylorshift.models import (
    CausalLMConfig,
    SequenceClassifierConfig,
    ViTConfig,
    build_model,
    create_model,
    list_models,
    model_config,
)
from taylorshift.nn import (
    ATTENTION_TYPES,
    Block,
    ConvStem,
    ConvTextEmbed,
    DropPath,
    LayerScale,
    PatchEmbed,
    SinusoidalPositionalEncoding,
    SoftmaxAttention,
    TaylorShiftAttention,
    TokenEmbedding,
    make_attention,
    sinusoidal_encoding,
)
from taylorshift.nn.baselines import BASELINES, PACKAGES

TINY = {"dim": 32, "depth": 2, "num_heads": 2, "head_dim": 16}


def _tiny_overrides(name: str, **extra) -> dict:
    """Small sizes for a preset: D = 32, 2 blocks, 2 heads of 16; short sequences, small images."""
    cfg = model_config(name)
    kw = dict(TINY)
    if isinstance(cfg, SequenceClassifierConfig):
        kw["max_len"] = 40
    elif cfg.img_size > 32:
        kw["img_size"] = 32  # paper ViTs: 32×32 with patch 16 → 4 tokens
    kw.update(extra)
    return kw


def _tiny(name: str, attention: str = "taylorshift", backend: str = "auto", seed: int = 0, **extra):
    torch.manual_seed(seed)
    return create_model(name, attention=attention, backend=backend, **_tiny_overrides(name, **extra))


def _inputs(model, B: int = 2, N: int = 13, seed: int = 1, one_hot: bool = True):
    """Model input (one-hot floats or ids for sequences, images for ViTs) and a padding mask or None."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    dtype = next(model.parameters()).dtype
    if isinstance(cfg, ViTConfig):
        size = cfg.input_size or cfg.img_size
        return torch.randn(B, cfg.in_chans, size, size, generator=g, dtype=dtype), None
    ids = torch.randint(0, cfg.input_dim, (B, N), generator=g)
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[0, N - 4 :] = True
    x = F.one_hot(ids, cfg.input_dim).to(dtype) if one_hot else ids
    return x, pad


def _call(model, x, pad):
    return model(x) if pad is None else model(x, key_padding_mask=pad)


MODELS = [m for m in list_models() if not isinstance(model_config(m), CausalLMConfig)]  # LMs: tests/test_lm.py


# --------------------------------------------------------------------------------------------- model sweep


@pytest.mark.parametrize("attention", ATTENTION_TYPES)
@pytest.mark.parametrize("name", MODELS)
def test_every_model_runs_forward_and_backward(name, attention):
    if attention in BASELINES:
        pytest.importorskip(PACKAGES[attention][1])  # taylorshift[baselines]
    model = _tiny(name, attention).train()
    x, pad = _inputs(model)
    torch.manual_seed(2)
    logits = _call(model, x, pad)
    assert logits.shape == (2, model.config.num_classes)
    assert torch.isfinite(logits).all()
    (logits * torch.randn_like(logits)).sum().backward()
    assert_every_parameter_has_a_gradient(model, f"{name}/{attention}")


@pytest.mark.parametrize("name", MODELS)
def test_presets_use_the_requested_attention_and_paper_defaults(name):
    for attention, cls in (("taylorshift", TaylorShiftAttention), ("softmax", SoftmaxAttention)):
        model = _tiny(name, attention)
        kinds = {type(b.attn) for b in model.blocks}
        assert kinds == {cls}
    cfg = model_config(name)
    assert cfg.drop_path == 0.05 and cfg.layer_scale_init == 1e-4
    assert cfg.attention == "taylorshift" and cfg.backend == "auto"


def test_cpu_presets_have_small_heads():
    for name in MODELS:
        cfg = model_config(name)
        if name.endswith("_cpu") or name == "vit_tiny_fmnist":
            assert cfg.head_dim == 16 and cfg.dim == 64, name


def test_preset_sizes_match_the_paper():
    lo = model_config("listops")
    assert (lo.dim, lo.depth, lo.num_heads, lo.head_dim, lo.mlp_ratio, lo.input_dim) == (512, 4, 8, 64, 2.0, 17)
    assert model_config("listops_conv").embed == "conv"
    tb = model_config("text_bytes")
    assert (tb.dim, tb.depth, tb.num_heads, tb.mlp_ratio, tb.max_len) == (256, 4, 4, 4.0, 4000)
    px = model_config("pixels")
    assert (px.dim, px.depth, px.num_heads, px.mlp_ratio, px.max_len) == (256, 1, 4, 1.0, 1024)
    vt, vs = model_config("vit_tiny"), model_config("vit_small")
    assert (vt.dim, vt.depth, vt.num_heads, vt.head_dim, vt.num_patches) == (192, 12, 3, 64, 196)
    assert (vs.dim, vs.depth, vs.num_heads, vs.head_dim) == (384, 12, 6, 64)


def test_paper_sized_model_builds_with_expected_parameter_count():
    model = create_model("listops")
    n = sum(p.numel() for p in model.parameters())
    # per block: qkv 512·1536+1536, proj 512²+512, mlp 2·512·1024+1024+512, 2 LN, 2 LayerScale
    block = 512 * 1536 + 1536 + 512 * 512 + 512 + 2 * 512 * 1024 + 1024 + 512 + 4 * 512 + 2 * 512 + 8
    assert n == 4 * block + (17 * 512 + 512) + 512 + 2 * 512 + (512 * 10 + 10)


# ----------------------------------------------------------------------------------- padding invariance


@pytest.mark.parametrize(
    "attention,backend", [("taylorshift", "direct"), ("taylorshift", "efficient"), ("softmax", "auto")]
)
@pytest.mark.parametrize("embed", ["linear", "conv"])
@pytest.mark.parametrize("one_hot", [True, False])
def test_padding_does_not_change_the_logits(attention, backend, embed, one_hot):
    """Two sequences (11 and 7 tokens), each alone vs. batched with junk padding up to 20 tokens."""
    model = _tiny("listops_cpu", attention, backend, embed=embed, layer_scale_init=1.0).double().eval()
    g = torch.Generator().manual_seed(3)
    lengths, N = (11, 7), 20
    ids = torch.randint(0, 17, (2, N), generator=g)
    pad = torch.arange(N)[None, :] >= torch.tensor(lengths)[:, None]  # (2, N)

    def encode(t):
        return F.one_hot(t, 17).double().requires_grad_(True) if one_hot else t

    x = encode(ids)
    batched = model(x, key_padding_mask=pad)
    (batched * torch.tensor([[1.0], [-2.0]], dtype=torch.float64)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    singles = []
    for i, n in enumerate(lengths):
        xi = encode(ids[i : i + 1, :n])
        out = model(xi)
        (out * (1.0 if i == 0 else -2.0)).sum().backward()
        singles.append(out.detach())
        if one_hot:
            assert rel_err(x.grad[i, :n], xi.grad[0]) < 1e-10
            assert x.grad[i, n:].abs().max() < 1e-12  # padding has no influence at all
    assert rel_err(batched.detach(), torch.cat(singles)) < 1e-10
    for n, p in model.named_parameters():
        assert rel_err(grads[n], p.grad) < 1e-9, n


def test_padding_mask_changes_the_logits():
    model = _tiny("listops_cpu", layer_scale_init=1.0).double().eval()
    x, pad = _inputs(model)
    assert rel_err(model(x, key_padding_mask=pad), model(x)) > 1e-4


def test_bad_padding_mask():
    model = _tiny("listops_cpu")
    x, pad = _inputs(model)
    with pytest.raises(TypeError, match="key_padding_mask"):
        model(x, key_padding_mask=pad.float())
    with pytest.raises(ValueError, match="key_padding_mask"):
        model(x, key_padding_mask=pad[:, 1:])


# ---------------------------------------------------------------------------------- backend equivalence


@pytest.mark.parametrize("name", MODELS)
def test_direct_and_efficient_backends_agree(name):
    """Same weights, float64, eval: logits and every parameter gradient agree (LayerScale 1 so that attention
    matters in the logits)."""
    results = {}
    for backend in ("direct", "efficient"):
        model = _tiny(name, "taylorshift", backend, layer_scale_init=1.0).double().eval()
        x, pad = _inputs(model, seed=4)
        logits = _call(model, x, pad)
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=torch.float64).view_as(logits)).sum().backward()
        results[backend] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    (ref, ref_grads), (out, grads) = results["direct"], results["efficient"]
    assert rel_err(out, ref) < 1e-10
    for n in ref_grads:
        assert rel_err(grads[n], ref_grads[n]) < 1e-8, n


# ------------------------------------------------------------------------------------------- registry


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown model 'listops_huge'.*listops_cpu"):
        create_model("listops_huge")
    with pytest.raises(ValueError, match="attention type 'longformer' is not available.*softmax"):
        create_model("listops_cpu", attention="longformer")
    with pytest.raises(ValueError, match="backend"):
        create_model("listops_cpu", backend="fastest")
    with pytest.raises(ValueError, match="unknown override.*'depht'.*valid fields"):
        create_model("listops_cpu", depht=2)
    with pytest.raises(ValueError, match="applies to TaylorShift only"):
        create_model("listops_cpu", attention="softmax", backend="efficient")
    with pytest.raises(ValueError, match="softmax attention does not take \\['coefficients'\\]"):
        create_model("listops_cpu", attention="softmax", attn_kwargs={"coefficients": (1.0, 0.0, 1.0)})
    with pytest.raises(ValueError, match="embed"):
        create_model("listops_cpu", embed="rnn")
    with pytest.raises(ValueError, match="stem"):
        create_model("vit_tiny_fmnist", stem="resnet")
    with pytest.raises(ValueError, match="pos_embed"):
        create_model("vit_tiny_fmnist", pos_embed="rotary")
    with pytest.raises(ValueError, match="depth"):
        create_model("listops_cpu", depth=0)
    with pytest.raises(ValueError, match="drop_path"):
        create_model("listops_cpu", drop_path=1.0)
    with pytest.raises(ValueError, match="divisible"):
        create_model("vit_tiny_fmnist", patch_size=5)
    with pytest.raises(TypeError, match="config"):
        build_model({"dim": 32})


def test_model_config_is_a_fresh_copy_and_builds_the_same_model():
    cfg = model_config("listops_cpu", attention="softmax", **TINY, max_len=40)
    cfg.attn_kwargs["attn_drop"] = 0.1
    assert model_config("listops_cpu").attn_kwargs == {}
    torch.manual_seed(0)
    a = build_model(cfg)
    torch.manual_seed(0)
    b = create_model("listops_cpu", attention="softmax", **TINY, max_len=40, attn_kwargs={"attn_drop": 0.1})
    assert a.config == b.config
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na


@pytest.mark.parametrize(
    "name,override",
    [
        ("listops_cpu", {"embed": "conv"}),
        ("listops_cpu", {"mlp_ratio": 1.0}),
        ("listops_cpu", {"head_dim": 8}),
        ("listops_cpu", {"layer_scale_init": 0.3}),
        ("listops_cpu", {"attn_kwargs": {"coefficients": (1.0, 0.0, 0.3)}}),
        ("vit_tiny_fmnist", {"stem": "conv"}),
        ("vit_tiny_fmnist", {"pos_embed": "sinusoidal"}),
        ("vit_tiny_fmnist", {"patch_size": 8}),
    ],
)
def test_every_config_field_has_an_effect(name, override):
    base = _tiny(name, layer_scale_init=1.0).double().eval()
    changed = _tiny(name, **{"layer_scale_init": 1.0, **override}).double().eval()
    x, pad = _inputs(base)
    assert rel_err(_call(changed, x, pad), _call(base, x, pad)) > 1e-6


def test_drop_path_is_active_in_training_only():
    model = _tiny("listops_cpu", drop_path=0.5, depth=4).double()
    x, pad = _inputs(model, B=8)
    assert torch.equal(model.eval()(x, key_padding_mask=pad), model.eval()(x, key_padding_mask=pad))
    model.train()
    torch.manual_seed(0)
    a = model(x, key_padding_mask=pad)
    torch.manual_seed(1)
    b = model(x, key_padding_mask=pad)
    assert rel_err(a, b) > 1e-6
    rates = [blk.drop_path1.p for blk in model.blocks]
    assert rates == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])


# ----------------------------------------------------------------------------------- inputs and embeddings


@pytest.mark.parametrize("embed", ["linear", "conv"])
def test_token_ids_and_one_hot_give_the_same_logits(embed):
    model = _tiny("text_bytes_cpu", embed=embed).double().eval()
    ids, pad = _inputs(model, one_hot=False)
    one_hot = F.one_hot(ids, 256).double()
    assert rel_err(model(ids, key_padding_mask=pad), model(one_hot, key_padding_mask=pad)) < 1e-14


def test_bad_sequence_inputs():
    model = _tiny("listops_cpu")
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 17\)"):
        model(torch.tensor([[0, 17]]))
    with pytest.raises(ValueError, match="input must be"):
        model(torch.zeros(2, 5, 16))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 41, dtype=torch.long))


def test_sinusoidal_encoding_matches_the_formula():
    for length, dim in ((50, 16), (9, 7)):
        pe = sinusoidal_encoding(length, dim)
        assert pe.shape == (length, dim) and pe.dtype == torch.float64
        for p in range(length):
            for c in range(dim):
                angle = p / 10000 ** ((c - c % 2) / dim)
                expected = math.sin(angle) if c % 2 == 0 else math.cos(angle)
                assert abs(pe[p, c].item() - expected) < 1e-12, (p, c)
    assert abs(sinusoidal_encoding(3, 4, base=100.0)[1, 2].item() - math.sin(1 / 10)) < 1e-15


def test_positional_encoding_module():
    enc = SinusoidalPositionalEncoding(8, max_len=12)
    assert "pe" not in enc.state_dict()  # recomputed, not stored in checkpoints
    x = torch.randn(2, 5, 8)
    assert torch.allclose(enc(x) - x, sinusoidal_encoding(5, 8).float()[None], atol=1e-6)
    with pytest.raises(ValueError, match="max_len"):
        enc(torch.randn(1, 13, 8))
    model = _tiny("pixels_cpu")
    assert model.pos.pe.shape == (40, 32) and not any(p is model.pos.pe for p in model.parameters())


def test_grid_positions_encode_row_and_column():
    from taylorshift.nn.embeddings import grid_sinusoidal_encoding

    W, length, dim = 5, 23, 10  # a 5-wide image with a partial last row
    pe = grid_sinusoidal_encoding(length, dim, W)
    assert pe.shape == (length, dim) and pe.dtype == torch.float64
    rows, cols = sinusoidal_encoding(5, 5), sinusoidal_encoding(W, 5)
    for p in range(length):
        assert torch.equal(pe[p, :5], rows[p // W]) and torch.equal(pe[p, 5:], cols[p % W]), p
    enc = SinusoidalPositionalEncoding(dim, length, grid_width=W)
    assert torch.equal(enc.pe, pe.float()) and "grid_width=5" in repr(enc)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="grid_width"):
            SinusoidalPositionalEncoding(dim, length, grid_width=bad)
        with pytest.raises(ValueError, match="grid_width"):
            grid_sinusoidal_encoding(length, dim, bad)
    model = _tiny("pathfinder_cpu", max_len=16, pos_grid_width=4)
    assert torch.equal(model.pos.pe, grid_sinusoidal_encoding(16, 32, 4).float())
    assert model(torch.randint(0, 256, (2, 16))).shape == (2, 2)


def test_token_embedding_is_a_linear_layer_on_one_hot():
    emb = TokenEmbedding(5, 3).double()
    ids = torch.tensor([[0, 4, 2]])
    assert torch.equal(emb(ids), emb.proj(F.one_hot(ids, 5).double()))


def test_conv_text_embed_structure_and_masked_norm():
    emb = ConvTextEmbed(17, 32).double()
    assert [c.out_channels for c in emb.convs] == [8, 16, 32]
    assert all(c.kernel_size == (3,) and c.padding == (1,) and c.bias is None for c in emb.convs)
    assert all(n.num_groups == 1 for n in emb.norms)
    x = torch.randn(2, 10, 17, dtype=torch.float64)
    none = torch.zeros(2, 10, dtype=torch.bool)
    assert rel_err(emb(x, none), emb(x)) < 1e-14  # the masked GroupNorm equals GroupNorm without padding
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvTextEmbed(17, 30)


@pytest.mark.parametrize("patch_size,widths", [(16, [4, 8, 16, 32]), (4, [16, 32]), (2, [32])])
def test_conv_stem(patch_size, widths):
    stem = ConvStem(patch_size, 1, 32)
    convs = [m for m in stem.proj if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths
    assert all(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in convs)
    out = stem(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, (32 // patch_size) ** 2, 32)
    with pytest.raises(ValueError, match="divisible"):
        stem(torch.randn(2, 1, 33, 33))


def test_conv_stem_and_patch_embed_errors():
    for bad in (1, 3, 12):
        with pytest.raises(ValueError, match="power of two"):
            ConvStem(bad, 3, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvStem(16, 3, 36)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PatchEmbed(4, 3, 8)(torch.randn(1, 1, 8, 8))


def test_patch_embed_is_row_major_patches():
    emb = PatchEmbed(4, 1, 8).double()
    img = torch.randn(1, 1, 8, 12, dtype=torch.float64)
    out = emb(img)  # (1, 6, 8)
    patch = img[:, :, 4:8, 8:12]  # row 1, column 2 → token 1·3 + 2
    expected = emb.proj.weight.flatten(1) @ patch.flatten() + emb.proj.bias
    assert rel_err(out[0, 5], expected) < 1e-14


# ------------------------------------------------------------------------------------------------- ViT


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_vit_on_28px_inputs_padded_to_32(stem):
    model = _tiny("vit_tiny_fmnist", stem=stem).double().eval()
    cfg = model.config
    assert (cfg.input_size, cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.num_patches) == (28, 32, 4, 1, 64)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    # the same weights on explicitly padded 32×32 images
    torch.manual_seed(0)
    full = create_model("vit_tiny_fmnist", **TINY, stem=stem, input_size=None).double().eval()
    full.load_state_dict(model.state_dict())
    assert rel_err(full(F.pad(x, (2, 2, 2, 2))), logits) < 1e-14
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.randn(3, 1, 32, 32, dtype=torch.float64))


def test_vit_sees_num_patches_plus_cls_tokens():
    model = _tiny("vit_tiny_fmnist").eval()
    seen = []
    model.blocks[0].attn.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    model(torch.randn(2, 1, 28, 28))
    assert seen == [torch.Size([2, 65, 32])]


# ---------------------------------------------------------------------------------------------- the parts


def test_init_truncated_normal_and_layer_scale():
    model = create_model("listops_cpu", attention="softmax")
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() == 2:
            assert p.abs().max() <= 0.04 + 1e-7 and 0.012 < p.std() < 0.025, name
        if name.endswith("bias") and "norm" not in name:
            assert torch.equal(p, torch.zeros_like(p)), name
        if name.endswith("gamma"):
            assert torch.equal(p, torch.full_like(p, 1e-4)), name


def test_softmax_attention_matches_the_formula():
    torch.manual_seed(0)
    m = SoftmaxAttention(16, 2, head_dim=4).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    q, k, v = m.qkv(x).view(2, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-1, -2)) / 2.0  # 1/√4
    logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
    expected = m.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 8))
    assert rel_err(m(x, key_padding_mask=pad), expected) < 1e-13


def test_softmax_attention_errors_and_dropout():
    with pytest.raises(ValueError, match="divisible"):
        SoftmaxAttention(30, 4)
    with pytest.raises(ValueError, match="attn_drop"):
        SoftmaxAttention(32, 4, attn_drop=1.0)
    m = SoftmaxAttention(32, 4, attn_drop=0.5)
    with pytest.raises(ValueError, match="x must"):
        m(torch.randn(2, 5, 31))
    x = torch.randn(2, 9, 32)
    assert torch.equal(m.eval()(x), m.eval()(x))
    assert rel_err(m.train()(x), m.eval()(x)) > 1e-3


def test_make_attention():
    ts = make_attention("taylorshift", 32, 4, 16, "efficient", coefficients=(1.0, 0.0, 0.5))
    assert isinstance(ts, TaylorShiftAttention) and ts.backend == "efficient" and ts.head_dim == 16
    assert ts.coefficients == (1.0, 0.0, 0.5)
    sm = make_attention("softmax", 32, 4, attn_drop=0.1)
    assert isinstance(sm, SoftmaxAttention) and sm.head_dim == 8 and sm.attn_drop == 0.1
    with pytest.raises(ValueError, match="attention type 'longformer' is not available"):
        make_attention("longformer", 32, 4)
    with pytest.raises(ValueError, match="taylorshift attention does not take \\['bucket_size'\\]"):
        make_attention("taylorshift", 32, 4, bucket_size=64)


def test_drop_path_and_layer_scale():
    dp = DropPath(0.25)
    x = torch.ones(4000, 3, dtype=torch.float64)
    assert dp.eval()(x) is x
    torch.manual_seed(0)
    y = dp.train()(x)
    rows = y[:, 0]
    assert set(rows.unique().tolist()) == {0.0, 4 / 3}
    assert (y == y[:, :1]).all()  # whole samples are dropped
    assert abs(rows.mean().item() - 1.0) < 0.05
    with pytest.raises(ValueError, match="drop_path"):
        DropPath(1.0)
    ls = LayerScale(3, 0.5)
    assert torch.equal(ls(torch.ones(2, 3)), torch.full((2, 3), 0.5))


def test_block_structure():
    attn = SoftmaxAttention(16, 2)
    blk = Block(16, attn, mlp_ratio=2.0, layer_scale_init=None)
    assert isinstance(blk.ls1, torch.nn.Identity) and blk.mlp.fc1.out_features == 32
    with pytest.raises(ValueError, match="width 16"):
        Block(32, attn)
    # pre-norm residual: x + attn(LN(x)) + mlp(LN(·)), checked by hand
    blk = Block(16, attn, layer_scale_init=0.5).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = x + 0.5 * blk.attn(blk.norm1(x))
    expected = h + 0.5 * blk.mlp(blk.norm2(h))
    assert rel_err(blk(x), expected) < 1e-14


def test_recipe_fields_temperature_init_and_embed_std():
    """``temperature_init`` reaches every TaylorShift block of each family (softmax ignores it); ``embed_std``
    sets the token embedding's init; bad values name the field."""
    torch.manual_seed(0)
    for name in ("listops_cpu", "vit_tiny_fmnist", "fortunes_lm"):
        model = create_model(name, temperature_init=4.0, **({"max_len": 64} if name == "fortunes_lm" else {}))
        temps = [m.temperature for m in model.modules() if isinstance(m, TaylorShiftAttention)]
        assert temps and all(torch.equal(t.detach(), torch.full_like(t, 4.0)) for t in temps), name
    create_model("listops_cpu", attention="softmax", temperature_init=4.0)  # accepted and unused
    emb = create_model("listops_cpu", embed_std=1.0).embed.proj.weight
    assert 0.7 < emb.std() < 1.0 and emb.abs().max() <= 2.0 + 1e-6  # truncated at ±2 std
    assert 0.012 < create_model("listops_cpu").embed.proj.weight.std() < 0.025  # the paper's 0.02 by default
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="embed_std"):
            create_model("listops_cpu", embed_std=bad)
    with pytest.raises(ValueError, match="temperature_init"):
        create_model("listops_cpu", temperature_init=-2.0)

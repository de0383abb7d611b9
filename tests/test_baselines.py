"""Attention baselines from their PyPI packages (taylorshift.nn.baselines): the call contract, gradients, what
key padding does for each (exactly, including where a package leaks), and the models built with them.

Every test that needs a package starts with ``pytest.importorskip``, so without ``taylorshift[baselines]`` it is
reported as skipped, never as passed."""

from __future__ import annotations

import copy
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_every_parameter_has_a_gradient
from taylorshift.models import create_model
from taylorshift.nn import ATTENTION_TYPES, make_attention
from taylorshift.nn.baselines import BASELINES, NEEDS_MAX_LEN, PACKAGES, baseline_available

KINDS = list(BASELINES)
C, H, D = 48, 4, 16  # head_dim · heads = 64 ≠ dim: the adapters must not assume d = C / H


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread is faster than two fighting for a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _require(kind: str) -> None:
    pytest.importorskip(PACKAGES[kind][1])


def _module(kind: str, seed: int = 0, max_len: int = 512, **kw):
    _require(kind)
    torch.manual_seed(seed)
    if kind in NEEDS_MAX_LEN:
        kw.setdefault("max_len", max_len)
    return make_attention(kind, C, H, D, **kw)


def _x(B: int, N: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed))


def _right_pad(B: int, N: int, valid: int) -> torch.Tensor:
    """(B, N) mask: sample 1 has only its first ``valid`` tokens; the others are full."""
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[1, valid:] = True
    return pad


def _seeded(module, *args, seed: int = 7, **kwargs):
    """Call with a fixed RNG (Reformer draws its hash rotations on every call)."""
    torch.manual_seed(seed)
    return module(*args, **kwargs)


# ------------------------------------------------------------------------------------------ registration


def test_baselines_are_registered_and_checked_without_their_packages():
    assert set(KINDS) == {"performer", "linformer", "nystrom", "reformer", "taylor_linear"}
    assert set(KINDS) <= set(ATTENTION_TYPES)
    for kind in KINDS:
        with pytest.raises(ValueError, match=f"{kind} attention takes 'auto'"):
            make_attention(kind, C, H, backend="efficient")
        with pytest.raises(ValueError, match=f"{kind} attention does not take \\['causal'\\]"):
            make_attention(kind, C, H, causal=True)
        with pytest.raises(ValueError, match="does not take \\['coefficients'\\]"):
            make_attention(kind, C, H, coefficients=(1.0, 0.0, 1.0))


@pytest.mark.parametrize("kind", KINDS)
def test_missing_package_gives_an_import_error_naming_the_extra(kind, monkeypatch):
    name = PACKAGES[kind][1]
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")] + [name]:
        monkeypatch.setitem(sys.modules, mod, None)  # import of a None entry raises ImportError
    assert not baseline_available(kind)
    with pytest.raises(ImportError, match=r"pip install taylorshift\[baselines\]") as err:
        make_attention(kind, C, H, **({"max_len": 16} if kind in NEEDS_MAX_LEN else {}))
    assert PACKAGES[kind][0] in str(err.value)


# ------------------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("N", [64, 300])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_shapes_and_every_parameter_gets_a_gradient(kind, N):
    module = _module(kind).train()
    assert baseline_available(kind)
    x = _x(2, N).requires_grad_()
    for pad in (None, _right_pad(2, N, N // 2)):
        module.zero_grad()
        x.grad = None
        out = _seeded(module, x, key_padding_mask=pad)
        assert out.shape == (2, N, C) and out.dtype == x.dtype
        assert torch.isfinite(out).all()
        (out * torch.randn_like(out)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert_every_parameter_has_a_gradient(module, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_copies_and_state_dicts_round_trip(kind):
    module = _module(kind).eval()
    x = _x(2, 40)
    twin, pickled = copy.deepcopy(module), pickle.loads(pickle.dumps(module))  # pickled: as torch.save(model)
    fresh = _module(kind, seed=3).eval()
    fresh.load_state_dict(pickle.loads(pickle.dumps(module.state_dict())))
    with torch.no_grad():
        ref = _seeded(module, x)
        torch.testing.assert_close(_seeded(twin, x), ref, rtol=0, atol=0)
        torch.testing.assert_close(_seeded(pickled, x), ref, rtol=0, atol=0)
        torch.testing.assert_close(_seeded(fresh, x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_checks_its_arguments(kind):
    module = _module(kind)
    with pytest.raises(ValueError, match="shape"):
        module(torch.randn(2, 8, C + 1))
    with pytest.raises(TypeError, match="bool"):
        module(_x(2, 8), key_padding_mask=torch.zeros(2, 8))


# ------------------------------------------------------------------------------------------ key padding
# Sample 1 keeps its first 37 of N tokens. "Exact" = valid outputs equal those of the unpadded sequence and do
# not change with the padded content.


@pytest.mark.parametrize("kind", ["performer", "linformer", "taylor_linear"])
def test_exact_padding_equals_the_unpadded_sequence(kind):
    N, valid = 100, 37
    module = _module(kind).eval()
    x, pad = _x(2, N), _right_pad(2, N, valid)
    with torch.no_grad():
        out = module(x, key_padding_mask=pad)
        alone = module(x[1:, :valid])
        x2 = x.clone()
        x2[1, valid:] = 5 * torch.randn(N - valid, C)
        out2 = module(x2, key_padding_mask=pad)
    torch.testing.assert_close(out[1, :valid], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out2[1, :valid], out[1, :valid], rtol=1e-5, atol=1e-6)


def test_linformer_padding_anywhere_does_not_leak():
    """Padded rows are zeroed before the bias-free K/V projections, wherever they are: padded keys and values
    add nothing to the projected ones (mid-sequence padding is not the same as removing the tokens, since the
    projection is position-wise)."""
    N = 100
    module = _module("linformer").eval()
    x = _x(2, N)
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[:, 10:30] = True
    pad[1, 70:] = True
    x2 = torch.where(pad[..., None], 5 * torch.randn_like(x), x)
    with torch.no_grad():
        out, out2 = module(x, key_padding_mask=pad), module(x2, key_padding_mask=pad)
    torch.testing.assert_close(out[~pad], out2[~pad], rtol=0, atol=0)


def test_linformer_needs_max_len_and_rejects_longer_inputs():
    _require("linformer")
    with pytest.raises(ValueError, match="needs max_len"):
        make_attention("linformer", C, H)
    module = _module("linformer", max_len=32)
    assert module.inner.seq_len == 32 and module.k == 32  # k = min(256, max_len)
    assert _module("linformer", max_len=1025).k == 256
    with pytest.raises(ValueError, match="max_len=32, got 33 tokens"):
        module(_x(1, 33))


def test_performer_package_mask_zeroes_only_the_padded_values():
    """Why the adapter does not use performer-pytorch's own ``mask``: it zeroes the padded *values* but leaves
    the padded keys in the normaliser, so the valid outputs change with the padded content and differ from the
    unpadded sequence. The package's masked output is exactly its unmasked output with padded values zeroed."""
    N, valid = 100, 37
    module = _module("performer").eval()
    inner = module.inner
    x, pad = _x(2, N), _right_pad(2, N, valid)
    keep = ~pad
    x2 = x.clone()
    x2[1, valid:] = 5 * torch.randn(N - valid, C)
    with torch.no_grad():
        pkg, pkg2, alone = inner(x, mask=keep), inner(x2, mask=keep), inner(x[1:, :valid])
        hook = inner.to_v.register_forward_hook(lambda mod, args, v: v * keep[..., None])
        try:
            zero_v = inner(x)
        finally:
            hook.remove()
        ours = module(x, key_padding_mask=pad)
    torch.testing.assert_close(pkg, zero_v, rtol=1e-6, atol=1e-7)
    assert (pkg2[1, :valid] - pkg[1, :valid]).abs().max() > 1e-3  # leaks the padded content
    assert (pkg[1, :valid] - alone[0]).abs().max() > 1e-3
    torch.testing.assert_close(ours[1, :valid], alone[0], rtol=1e-5, atol=1e-6)  # the adapter does not leak
    torch.testing.assert_close(ours[0], pkg[0], rtol=1e-5, atol=1e-6)  # and is the package's maths unpadded


def test_performer_redraws_features_like_the_package():
    module = _module("performer", feature_redraw_interval=2).train()
    x = _x(1, 16)
    first = module.inner.fast_attention.projection_matrix.clone()
    for _ in range(2):
        module(x)
    assert torch.equal(module.inner.fast_attention.projection_matrix, first)
    module(x)  # the 3rd training call redraws (the package's ProjectionUpdater rule)
    assert not torch.equal(module.inner.fast_attention.projection_matrix, first)
    fixed = _module("performer", feature_redraw_interval=None).train()
    before = fixed.inner.fast_attention.projection_matrix.clone()
    for _ in range(3):
        fixed(x)
    assert torch.equal(fixed.inner.fast_attention.projection_matrix, before)
    module.eval()
    frozen = module.inner.fast_attention.projection_matrix.clone()
    for _ in range(5):
        module(x)
    assert torch.equal(module.inner.fast_attention.projection_matrix, frozen)


def test_nystrom_padding_does_not_leak_but_samples_are_coupled_through_the_batch():
    """The package's mask removes the padded content exactly; but its pseudo-inverse starts from a scale taken
    over the whole batch, so a sample's output depends on the other samples (and the padded sequence differs
    from the unpadded one)."""
    N, valid = 100, 37
    module = _module("nystrom").eval()
    x, pad = _x(2, N), _right_pad(2, N, valid)
    x2 = x.clone()
    x2[1, valid:] = 5 * torch.randn(N - valid, C)
    with torch.no_grad():
        out, out2 = module(x, key_padding_mask=pad), module(x2, key_padding_mask=pad)
        singles = [module(x[b : b + 1], key_padding_mask=pad[b : b + 1]) for b in range(2)]
    torch.testing.assert_close(out2[1, :valid], out[1, :valid], rtol=0, atol=0)
    coupling = max((out[b] - singles[b][0]).abs().max().item() for b in range(2))
    assert coupling > 1e-5, "the batch-wide pinv scale no longer couples samples: update docs/baselines.md"


def test_reformer_full_attention_below_bucket_size_is_exact():
    N, valid = 60, 37  # N <= bucket_size (64): the package's full shared-QK attention
    module = _module("reformer").eval()
    x, pad = _x(2, N), _right_pad(2, N, valid)
    x2 = x.clone()
    x2[1, valid:] = 5 * torch.randn(N - valid, C)
    with torch.no_grad():
        out, out2, alone = module(x, key_padding_mask=pad), module(x2, key_padding_mask=pad), module(x[1:, :valid])
    torch.testing.assert_close(out[1, :valid], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out2[1, :valid], out[1, :valid], rtol=1e-5, atol=1e-6)


def test_reformer_lsh_gives_padded_keys_no_weight_but_hashes_them():
    """LSH path (N > bucket_size): every padded key (ours and the Autopadder's) gets attention weight exactly 0,
    yet the padded tokens are hashed and sorted with the valid ones, so the padded content changes which valid
    keys a query sees; and the rotations are redrawn on every call, in eval too."""
    N, valid = 300, 170
    module = _module("reformer").eval()
    lsh = module.inner.net
    x, pad = _x(2, N), _right_pad(2, N, valid)
    seen = {}
    lsh.lsh_attn._return_attn = True
    lsh.callback = lambda attn, buckets: seen.update(attn=attn)
    try:
        with torch.no_grad():
            out = _seeded(module, x, key_padding_mask=pad)
    finally:
        lsh.lsh_attn._return_attn, lsh.callback = False, None
    attn = seen["attn"]  # (B, H, T, T) over the Autopadder's length T = 384
    assert attn.shape == (2, H, 384, 384)
    assert attn[1, :, :valid, valid:].abs().max() == 0  # padded keys (ours and the Autopadder's)
    assert attn[0, :, :N, N:].abs().max() == 0  # the Autopadder's padding of the full sample
    torch.testing.assert_close(attn[1, :, :valid].sum(-1), torch.ones(H, valid), rtol=1e-5, atol=1e-5)
    x2 = x.clone()
    x2[1, valid:] = 5 * torch.randn(N - valid, C)
    with torch.no_grad():
        same = _seeded(module, x, key_padding_mask=pad)
        out2 = _seeded(module, x2, key_padding_mask=pad)
        other = _seeded(module, x, key_padding_mask=pad, seed=8)
    torch.testing.assert_close(same, out, rtol=0, atol=0)  # reproducible only under a fixed seed
    assert (other - out).abs().max() > 1e-3  # new rotations on every call
    assert (out2[1, :valid] - out[1, :valid]).abs().max() > 1e-4  # hashing sees the padded content
    torch.testing.assert_close(out2[0], out[0], rtol=0, atol=0)  # other samples are not affected


def test_dropout_and_hyper_parameters_reach_the_package():
    cases = {
        "performer": (
            {"proj_drop": 0.1, "nb_features": 32},
            lambda m: (m.inner.dropout.p, m.inner.fast_attention.nb_features),
        ),
        "linformer": ({"attn_drop": 0.1, "k": 8}, lambda m: (m.inner.dropout.p, m.inner.k)),
        "nystrom": ({"proj_drop": 0.1, "num_landmarks": 8}, lambda m: (m.inner.to_out[1].p, m.inner.num_landmarks)),
        "reformer": (
            {"attn_drop": 0.1, "proj_drop": 0.2, "bucket_size": 16, "n_hashes": 2},
            lambda m: (
                m.inner.net.lsh_attn.dropout.p,
                m.inner.net.post_attn_dropout.p,
                m.inner.net.bucket_size,
                m.inner.net.lsh_attn.n_hashes,
            ),
        ),
        "taylor_linear": ({"proj_drop": 0.1}, lambda m: (m.inner.to_out[1].p,)),
    }
    expected = {
        "performer": (0.1, 32),
        "linformer": (0.1, 8),
        "nystrom": (0.1, 8),
        "reformer": (0.1, 0.2, 16, 2),
        "taylor_linear": (0.1,),
    }
    ran = 0
    for kind, (kw, read) in cases.items():
        if not baseline_available(kind):
            continue
        assert read(_module(kind, **kw)) == expected[kind], kind
        ran += 1
    if not ran:
        pytest.skip("no baseline package installed")


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("kind", KINDS)
def test_model_registry_builds_and_trains_with_the_baseline(kind):
    _require(kind)
    torch.manual_seed(0)
    model = create_model("pixels_cpu", attention=kind).train()
    attn = model.blocks[0].attn
    assert type(attn) is BASELINES[kind]
    if kind in NEEDS_MAX_LEN:
        assert attn.max_len == model.config.max_len + 1  # CLS + pixels
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (2, 40), generator=g)
    pad = _right_pad(2, 40, 25)
    logits = _seeded(model, ids, key_padding_mask=pad)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    (logits * torch.randn_like(logits)).sum().backward()
    assert_every_parameter_has_a_gradient(model, kind, nonzero=False)


@pytest.mark.parametrize("kind", ["performer", "linformer", "taylor_linear", "reformer"])
def test_model_logits_ignore_padding_for_exact_baselines(kind):
    """41 tokens with the CLS: Reformer is on its exact full-attention path here (<= bucket_size)."""
    _require(kind)
    torch.manual_seed(0)
    model = create_model("pixels_cpu", attention=kind, drop_path=0.0).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (2, 40), generator=g)
    pad = _right_pad(2, 40, 25)
    ids2 = torch.where(pad, torch.randint(0, 256, (2, 40), generator=g), ids)
    with torch.no_grad():
        logits, logits2 = model(ids, key_padding_mask=pad), model(ids2, key_padding_mask=pad)
        alone = model(ids[1:, :25])
    torch.testing.assert_close(logits2, logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits[1:], alone, rtol=1e-5, atol=1e-6)


def test_linformer_gets_the_token_count_of_each_model():
    _require("linformer")
    vit = create_model("vit_tiny_fmnist", attention="linformer", depth=1)
    assert vit.blocks[0].attn.max_len == vit.config.num_patches + 1 == 65
    out = vit(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    seq = create_model("pixels_cpu", attention="linformer", attn_kwargs={"max_len": 50, "k": 16})
    assert (seq.blocks[0].attn.max_len, seq.blocks[0].attn.k) == (50, 16)  # an explicit max_len wins
    assert seq(F.one_hot(torch.randint(0, 256, (1, 49)), 256).float()).shape == (1, 10)
    with pytest.raises(ValueError, match="has no causal form"):
        create_model("fortunes_lm", attention="linformer", depth=1)

"""The streaming efficient path and the blocked direct path: every variant against the float64 oracle,
chunk/block sizes that do not divide N, masks, gradients, gradcheck, and bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import make_qkv, rel_err, tolerance
from taylorshift import taylor_shift_attention_reference
from taylorshift.ops.direct import default_block_size, direct_attention
from taylorshift.ops.efficient import default_chunk_size, efficient_attention
from taylorshift.ops.features import feature_dim, feature_weights, taylor_features, taylor_features_backward
from taylorshift.ops.inputs import check_inputs

DTYPES = [torch.float64, torch.float32, torch.bfloat16]


def _run(kind, q, k, v, mask=None, scale=None, coefficients=(0.5, 1.0, 1.0), **kw):
    inp = check_inputs(q, k, v, mask, scale, coefficients).cast()
    fn = efficient_attention if kind == "efficient" else direct_attention
    return fn(inp, **kw).to(q.dtype)


# ---------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("form", ["full", "symmetric"])
@pytest.mark.parametrize("d", [1, 2, 3, 8, 13])
def test_features_reproduce_the_polynomial(form, d):
    g = torch.Generator().manual_seed(d)
    q = torch.randn(2, 5, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, 7, d, generator=g, dtype=torch.float64)
    coeffs = (0.8, -0.6, 0.3)
    w = feature_weights(d, form, coeffs, dtype=torch.float64, device=q.device)
    fq, fk = taylor_features(q, form), taylor_features(k, form)
    assert fq.shape == (2, feature_dim(d, form), 5)
    s = q @ k.transpose(-1, -2)
    expected = 0.8 * s * s - 0.6 * s + 0.3
    assert rel_err(fq.transpose(-1, -2) @ (w[:, None] * fk), expected) < 1e-14


def test_feature_dims():
    assert feature_dim(16, "full") == 273 and feature_dim(16, "symmetric") == 153
    assert feature_dim(64, "full") == 4161 and feature_dim(64, "symmetric") == 2145


@pytest.mark.parametrize("form", ["full", "symmetric"])
@pytest.mark.parametrize("d", [1, 4, 9])
def test_feature_backward_matches_autograd(form, d):
    g = torch.Generator().manual_seed(10 + d)
    x = torch.randn(3, 6, d, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, feature_dim(d, form), 6, generator=g, dtype=torch.float64)
    if form == "full":
        second = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
    else:
        i, j = torch.triu_indices(d, d)
        second = x[..., i] * x[..., j]
    phi = torch.cat([second, x, torch.ones_like(x[..., :1])], -1).transpose(-1, -2)
    assert torch.equal(phi, taylor_features(x.detach(), form))
    (phi * grad).sum().backward()
    assert rel_err(taylor_features_backward(x.detach(), grad, form), x.grad) < 1e-14


# ------------------------------------------------------------------------------------- forward accuracy


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ["full", "symmetric"])
@pytest.mark.parametrize("chunk", [1, 7, 100, 4096])
@pytest.mark.parametrize("masked", [False, True])
def test_efficient_variants_against_oracle(dtype, form, chunk, masked):
    B, H, L, S, d = 2, 2, 203, 157, 8
    q, k, v = make_qkv(B, H, L, S, d, dv=5, dtype=dtype, seed=chunk)
    mask = (torch.rand(B, 1, 1, S, generator=torch.Generator().manual_seed(3)) > 0.3) if masked else None
    scale = torch.tensor([0.4, 1.9], dtype=dtype).view(H, 1, 1)
    out = _run("efficient", q, k, v, mask, scale, (0.3, 0.8, 1.0), form=form, chunk_size=chunk)
    ref = taylor_shift_attention_reference(q, k, v, mask, scale, (0.3, 0.8, 1.0))
    assert out.dtype == dtype and rel_err(out, ref) <= tolerance(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block", [1, 5, 64, 4096])
@pytest.mark.parametrize("mask_kind", [None, "key", "row", "full"])
def test_direct_blocks_against_oracle(dtype, block, mask_kind):
    B, H, L, S, d = 2, 2, 130, 77, 8
    q, k, v = make_qkv(B, H, L, S, d, dv=6, dtype=dtype, seed=block)
    g = torch.Generator().manual_seed(4)
    mask = {
        None: None,
        "key": torch.rand(B, 1, 1, S, generator=g) > 0.3,
        "row": torch.rand(L, S, generator=g) > 0.5,
        "full": torch.rand(B, H, L, S, generator=g) > 0.5,
    }[mask_kind]
    out = _run("direct", q, k, v, mask, 0.9, block_size=block)
    ref = taylor_shift_attention_reference(q, k, v, mask, 0.9)
    assert rel_err(out, ref) <= tolerance(dtype)


def test_default_sizes_are_sane():
    assert 128 <= default_chunk_size(8, feature_dim(64)) <= default_chunk_size(1, feature_dim(16)) <= 1024
    assert 16 <= default_block_size(8, 65536) <= default_block_size(1, 100) <= 4096


@pytest.mark.parametrize("kind,kw", [("efficient", {"chunk_size": 0}), ("direct", {"block_size": -1}),
                                     ("efficient", {"form": "half"}), ("direct", {"block_size": 2.5})])
def test_bad_sizes_rejected(kind, kw):
    q, k, v = make_qkv(1, 1, 4, 4, 2)
    with pytest.raises(ValueError):
        _run(kind, q, k, v, **kw)


# ---------------------------------------------------------------------------------------------- gradients


def _grads(kind, q, k, v, mask, scale, up, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    s = scale.detach().clone().requires_grad_(True)
    if kind == "oracle":
        out = taylor_shift_attention_reference(*leaves, mask, s, (0.5, 1.0, 1.0))
    else:
        out = _run(kind, *leaves, mask, s, **kw)
    out.backward(up)
    return [t.grad for t in leaves] + [s.grad]


@pytest.mark.parametrize(
    "kind,kw",
    [("efficient", {"form": "symmetric", "chunk_size": 13}), ("efficient", {"form": "full", "chunk_size": 50}),
     ("direct", {"block_size": 9}), ("direct", {"block_size": 1000})],
)
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_against_oracle(kind, kw, masked):
    B, H, L, S, d = 2, 3, 45, 38, 6
    q, k, v = make_qkv(B, H, L, S, d, dv=4, dtype=torch.float64, seed=21)
    mask = (torch.rand(B, 1, 1, S, generator=torch.Generator().manual_seed(2)) > 0.4) if masked else None
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(H, 1, 1)
    up = torch.randn(B, H, L, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    got = _grads(kind, q, k, v, mask, scale, up, **kw)
    ref = _grads("oracle", q, k, v, mask, scale, up)
    for name, a, b in zip(["dq", "dk", "dv", "dscale"], got, ref, strict=True):
        assert rel_err(a, b) < 1e-11, name


def test_only_requested_gradients_are_computed():
    q, k, v = make_qkv(1, 1, 20, 30, 4, dtype=torch.float64)
    k.requires_grad_(True)
    for kind in ("efficient", "direct"):
        k.grad = None
        _run(kind, q, k, v).sum().backward()
        assert k.grad is not None and q.grad is None and v.grad is None


@pytest.mark.parametrize("kind,kw", [("efficient", {"form": "symmetric", "chunk_size": 3}),
                                     ("efficient", {"form": "full", "chunk_size": 2}),
                                     ("direct", {"block_size": 2})])
def test_gradcheck_custom_backward(kind, kw):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 7, 2, dtype=torch.float64, generator=g, requires_grad=True)
    scale = torch.tensor([0.7, 1.4], dtype=torch.float64).view(2, 1, 1).requires_grad_(True)
    mask = torch.tensor([True, True, False, True, True, False, True])
    assert torch.autograd.gradcheck(lambda q, k, v, s: _run(kind, q, k, v, mask, s, **kw), (q, k, v, scale))


# ------------------------------------------------------------------------------------------------- memory

_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    from taylorshift.ops.efficient import efficient_attention
    from taylorshift.ops.inputs import check_inputs
    torch.set_num_threads(1)
    N, H, d = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    def peak(step):
        step()  # warm-up: allocator and thread pools
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
        step()
        return status("VmHWM") - before
    q, k, v = (torch.randn(1, H, N, d, requires_grad=True) for _ in range(3))
    def streaming():
        efficient_attention(check_inputs(q, k, v).cast()).sum().backward()
    def materialised():  # the paper's form with autograd: saves N x d^2 features
        qq = (q.unsqueeze(-1) * q.unsqueeze(-2)).flatten(-2)
        kk = (k.unsqueeze(-1) * k.unsqueeze(-2)).flatten(-2)
        vp = torch.cat([v, torch.ones_like(v[..., :1])], -1) / N
        y = 0.5 * qq @ (kk.transpose(-1, -2) @ vp) + q @ (k.transpose(-1, -2) @ vp) + vp.sum(-2, keepdim=True)
        (y[..., :-1] / y[..., -1:]).sum().backward()
    print(json.dumps({"streaming": peak(streaming), "materialised": peak(materialised),
                      "qkvo": 4 * q.numel() * 4}))
    """
)


def test_streaming_memory_stays_bounded():
    """fwd+bwd peak of the streaming path at N = 32,768 stays within a few times the size of q, k, v and
    the output, while the materialised form (autograd over N × d² features) needs many times more."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, "32768", "2", "16"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    bound = 3 * m["qkvo"] + 16 * 2**20  # the 3x target plus the fixed chunk buffers
    assert m["streaming"] <= bound, m
    assert m["materialised"] > 3 * bound, m

"""The fast-path targets, measured side by side in one run (fp32, B = 1, H = 8).

1. forward at N = 16,384: streaming efficient vs the paper's materialised full-d² form
   (``paper_efficient``) and vs PyTorch SDPA, d = 16, 32, 64; forward+backward at d = 32;
2. achieved FLOP rate of efficient (d = 32) against plain fp32 matmuls measured in the same run: a square
   2048³ product and one with the shape of efficient's dominant product ``(H, N, F) @ (H, F, dv+1)``;
3. a per-stage breakdown of efficient (d = 32): feature construction, key pass, query pass;
4. peak extra memory (separate processes): efficient forward+backward at N = 65,536, d = 32 against the size
   of q, k, v and the output; direct forward at N = 16,384, d = 64;
5. direct (blocked) against PyTorch FlexAttention with ``score_mod = log p(s)`` (compiled) at N = 4096.

    python benchmarks/fast_paths.py [--repeats 5] [--threads 2] [--skip-flex] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from taylorshift import taylor_shift_attention
from taylorshift.analysis import matmul_flops
from taylorshift.bench.backends import paper_efficient_attention
from taylorshift.bench.io import cpu_model
from taylorshift.bench.timing import time_call
from taylorshift.ops.efficient import DEFAULT_FORM, augment_values
from taylorshift.ops.features import feature_dim, feature_weights, taylor_features

H, B = 8, 1


def _qkv(n, d, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, d, generator=g).requires_grad_(grad) for _ in range(3)]


def _ms(fn, repeats):
    return time_call(fn, repeats=repeats, warmup=1).median * 1e3


def _forward(fn):
    def step():
        with torch.inference_mode():
            fn()

    return step


def _train(fn, q, k, v):
    def step():
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v).sum().backward()

    return step


def speed_table(repeats: int) -> list[dict]:
    rows = []
    n = 16_384
    for d, mode in ((16, "forward"), (32, "forward"), (64, "forward"), (32, "train")):
        q, k, v = _qkv(n, d, grad=mode == "train")
        fns = {
            "efficient": lambda q, k, v: taylor_shift_attention(q, k, v, backend="efficient"),
            "paper_efficient": paper_efficient_attention,
            "sdpa": F.scaled_dot_product_attention,
        }
        t = {}
        for name, fn in fns.items():
            step = _forward(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v)) if mode == "forward" else _train(fn, q, k, v)
            t[name] = _ms(step, repeats)
        rows.append({"d": d, "mode": mode, "n": n, **{f"{k_}_ms": v_ for k_, v_ in t.items()},
                     "speedup_vs_paper": t["paper_efficient"] / t["efficient"],
                     "speedup_vs_sdpa": t["sdpa"] / t["efficient"]})
        print(f"  d={d:2d} {mode:7s}: efficient {t['efficient']:8.1f} ms | paper form {t['paper_efficient']:8.1f} ms "
              f"({rows[-1]['speedup_vs_paper']:.2f}x) | SDPA {t['sdpa']:8.1f} ms ({rows[-1]['speedup_vs_sdpa']:.1f}x)",
              flush=True)
    return rows


def flop_rate(repeats: int) -> dict:
    n, d = 16_384, 32
    q, k, v = _qkv(n, d)
    t_eff = _ms(_forward(lambda: taylor_shift_attention(q, k, v, backend="efficient")), repeats) / 1e3
    flops = B * H * matmul_flops("efficient", n, n, d, form=DEFAULT_FORM)
    a, b = torch.randn(H, 2048, 2048), torch.randn(H, 2048, 2048)
    t_sq = _ms(lambda: a @ b, repeats) / 1e3
    f_dim = feature_dim(d, DEFAULT_FORM)
    x, y = torch.randn(H, n, f_dim), torch.randn(H, f_dim, d + 1)
    t_shape = _ms(lambda: x @ y, repeats) / 1e3
    res = {
        "efficient_gflops": flops / t_eff / 1e9,
        "square_matmul_gflops": 2 * 2048**3 * H / t_sq / 1e9,
        "same_shape_matmul_gflops": 2 * n * f_dim * (d + 1) * H / t_shape / 1e9,
    }
    res["fraction_of_square"] = res["efficient_gflops"] / res["square_matmul_gflops"]
    res["fraction_of_same_shape"] = res["efficient_gflops"] / res["same_shape_matmul_gflops"]
    print(f"  efficient d=32 N=16384: {res['efficient_gflops']:.1f} GFLOP/s (matmul FLOPs of the symmetric form); "
          f"square 2048^3 matmul {res['square_matmul_gflops']:.1f} ({res['fraction_of_square']:.0%}); "
          f"same-shape (H,N,{f_dim})@(H,{f_dim},{d + 1}) matmul {res['same_shape_matmul_gflops']:.1f} "
          f"({res['fraction_of_same_shape']:.0%})", flush=True)
    return res


def breakdown(repeats: int) -> dict:
    """Stages of the efficient forward at d = 32, N = 16,384, with the library's chunk size."""
    from taylorshift.ops.efficient import default_chunk_size

    n, d = 16_384, 32
    q, k, v = (t[0] for t in _qkv(n, d))  # (H, N, d)
    form = DEFAULT_FORM
    f_dim = feature_dim(d, form)
    chunk = default_chunk_size(H, f_dim)
    vp = augment_values(v, None, float(n))
    state = torch.zeros(H, f_dim, d + 1)
    w = feature_weights(d, form, (0.5, 1.0, 1.0), dtype=q.dtype, device=q.device).unsqueeze(-1)
    buf = torch.empty(H, f_dim, chunk)
    spans = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    phis = [taylor_features(k[:, a:b], form) for a, b in spans]

    def features():
        for a, b in spans:
            taylor_features(k[:, a:b], form, out=buf[..., : b - a])

    def key_gemms():
        s = torch.zeros_like(state)
        for (a, b), phi in zip(spans, phis, strict=True):
            s += phi @ vp[:, a:b]

    sw = state * w

    def query_gemms():
        for phi in phis:
            phi.transpose(-1, -2) @ sw

    with torch.inference_mode():
        t = {"features_one_side": _ms(features, repeats), "key_gemms": _ms(key_gemms, repeats),
             "query_gemms": _ms(query_gemms, repeats)}
        t["total"] = _ms(lambda: taylor_shift_attention(q[None], k[None], v[None], backend="efficient"), repeats)
    t["chunk"] = chunk
    print(f"  stages (chunk {chunk}): features {t['features_one_side']:.1f} ms per side, key GEMMs "
          f"{t['key_gemms']:.1f} ms, query GEMMs {t['query_gemms']:.1f} ms; whole forward {t['total']:.1f} ms",
          flush=True)
    return t


_PROBE = """
import json, sys, torch
from taylorshift import taylor_shift_attention
from taylorshift.bench.memory import peak_cpu_bytes
kind, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
grad = kind == "efficient_train"
q, k, v = (torch.randn(1, 8, n, d, requires_grad=grad) for _ in range(3))
def step():
    if grad:
        for t in (q, k, v):
            t.grad = None
        taylor_shift_attention(q, k, v, backend="efficient").sum().backward()
    else:
        with torch.inference_mode():
            taylor_shift_attention(q, k, v, backend="direct")
print(json.dumps({"peak": peak_cpu_bytes(step), "qkvo": 4 * q.numel() * 4}))
"""


def memory(threads: int) -> list[dict]:
    rows = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    for kind, n, d in (("efficient_train", 65_536, 32), ("direct_forward", 16_384, 64)):
        proc = subprocess.run([sys.executable, "-c", _PROBE, kind, str(n), str(d), str(threads)],
                              capture_output=True, text=True, env=env, timeout=1200)
        if proc.returncode != 0:
            print(f"  {kind}: failed: {proc.stderr[-300:]}")
            continue
        m = json.loads(proc.stdout)
        rows.append({"kind": kind, "n": n, "d": d, "peak_mib": m["peak"] / 2**20, "qkvo_mib": m["qkvo"] / 2**20,
                     "ratio_to_qkvo": m["peak"] / m["qkvo"]})
        naive = 4 * H * n * n * 4 / 2**30 if kind == "direct_forward" else None
        extra = f" (an unblocked direct form holds ~4·H·N² floats = {naive:.0f} GiB)" if naive else ""
        print(f"  {kind} N={n} d={d}: peak extra {m['peak'] / 2**20:.0f} MiB = {rows[-1]['ratio_to_qkvo']:.2f} x "
              f"the {m['qkvo'] / 2**20:.0f} MiB of q, k, v, out{extra}", flush=True)
    return rows


def flex(repeats: int) -> list[dict]:
    from torch.nn.attention.flex_attention import flex_attention

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.log(0.5 * score * score + score + 1.0)  # softmax(log p) = p / Σp

    compiled = torch.compile(flex_attention, dynamic=False)
    rows = []
    for d in (16, 64):
        q, k, v = _qkv(4096, d)
        with torch.no_grad():
            out = compiled(q, k, v, score_mod=score_mod)
            ref = taylor_shift_attention(q, k, v, backend="direct")
        err = ((out - ref).norm() / ref.norm()).item()
        t_flex = _ms(_forward(lambda q=q, k=k, v=v: compiled(q, k, v, score_mod=score_mod)), repeats)
        t_dir = _ms(_forward(lambda q=q, k=k, v=v: taylor_shift_attention(q, k, v, backend="direct")), repeats)
        rows.append({"d": d, "n": 4096, "direct_ms": t_dir, "flex_ms": t_flex, "rel_err": err})
        print(f"  N=4096 d={d}: direct {t_dir:.1f} ms, FlexAttention(log p) {t_flex:.1f} ms "
              f"(rel. diff {err:.1e})", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--skip-flex", action="store_true", help="skip the FlexAttention comparison (compiles)")
    p.add_argument("--skip-memory", action="store_true", help="skip the memory probes")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    header = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_average": os.getloadavg()[0], "repeats": args.repeats}
    print("# " + ", ".join(f"{k}: {v}" for k, v in header.items()), flush=True)
    res = {"header": header}
    print("speed (fp32, B=1, H=8, median):")
    res["speed"] = speed_table(args.repeats)
    print("FLOP rate:")
    res["flop_rate"] = flop_rate(args.repeats)
    print("breakdown:")
    res["breakdown"] = breakdown(args.repeats)
    if not args.skip_memory:
        print("memory:")
        res["memory"] = memory(args.threads)
    if not args.skip_flex:
        print("FlexAttention:")
        res["flex"] = flex(args.repeats)
    res["header"]["load_average_end"] = os.getloadavg()[0]
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x)


if __name__ == "__main__":
    main()

"""Causal TaylorShift against lucidrains' ``taylor-series-linear-attention`` (``TaylorSeriesLinearAttn``, causal=True).

Both compute causal attention with the weights ``1 + s + s²/2`` of ``s = q·k/√d`` through a second-order
feature map; the script matches the conventions, copies the peer's projection weights into ours, and compares
agreement (relative Frobenius error against our float64 direct form) and speed (median of interleaved repeats)
on CPU at the same shapes (``B = 1``, width ``--dim``, ``--heads`` heads of ``--head-dim``):

* ``prefill``: one causal forward over ``N`` tokens, inference;
* ``train``: forward + backward of the same;
* ``step``: one decoding step after a prefill of ``--context`` tokens (the peer's ``cache=`` path, our
  ``prefill``/``step``).

Matched conventions: ours is ``TaylorShiftAttention(causal=True, normalize_qk=False, output_scale=False,
qkv_bias=False)`` (logit scale ``1/√d``, no per-head temperature, no ``√(n/d)`` output factor), the peer's
defaults otherwise (no rotary, no token shift, no pre-norm, no value gates). The peer runs in two variants:
its default full feature map (``1 + d + d²`` features) and ``remove_even_power_dups=True`` (symmetric,
``1 + d + d(d+1)/2``, as ours).

The peer's causal path needs ``pytorch-fast-transformers`` (``CausalDotProduct``), whose ``setup.py`` always
builds a CUDA extension and so cannot be installed next to a CPU-only torch; without it the peer's constructor
prints a message and calls ``exit()``. Set up a throwaway environment with its CPU kernel compiled by hand::

    python3 -m venv /tmp/tsla && /tmp/tsla/bin/pip install torch==2.13.0 numpy taylor-series-linear-attention
    # fetch the pytorch-fast-transformers 0.4.0 sdist with pip download, then build only its CPU kernel:
    /tmp/tsla/bin/python -c "from torch.utils.cpp_extension import load; load(name='causal_product_cpu', \\
        sources=['fast_transformers/causal_product/causal_product_cpu.cpp'], extra_cflags=['-O3', '-fopenmp'], \\
        extra_ldflags=['-fopenmp'], build_directory='build')"
    # install fast_transformers/__init__.py (empty), causal_product/__init__.py and the .so into site-packages
    PYTHONPATH=src /tmp/tsla/bin/python benchmarks/peer_taylor.py

Writes ``peer_taylor.json`` and ``peer_taylor.csv`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384], help="sequence lengths")
    p.add_argument("--dim", type=int, default=128, help="model width")
    p.add_argument("--heads", type=int, default=8, help="heads")
    p.add_argument("--head-dim", type=int, default=16, help="head size d")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--train-max", type=int, default=4096, help="time forward+backward up to this N")
    p.add_argument("--context", type=int, default=4096, help="prefilled context before the timed decoding steps")
    p.add_argument("--steps", type=int, default=50, help="timed decoding steps")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/bench/peer", help="output folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the peer's compiled kernel has its own OpenMP loop
    import torch

    torch.set_num_threads(args.threads)
    try:
        from importlib.metadata import version

        import fast_transformers.causal_product  # noqa: F401  (the peer exits without it)
        from taylor_series_linear_attention import TaylorSeriesLinearAttn
    except ImportError as err:
        print(f"peer_taylor: {err}. See the set-up steps in this script's docstring (--help).", file=sys.stderr)
        return 2
    from taylorshift.bench.io import collect_metadata, write_csv
    from taylorshift.nn import TaylorShiftAttention

    H, d, D = args.heads, args.head_dim, args.dim

    def peer(symmetric: bool):
        torch.manual_seed(args.seed)
        return TaylorSeriesLinearAttn(D, dim_head=d, heads=H, causal=True, remove_even_power_dups=symmetric).eval()

    def ours_from(peer_module, backend: str = "efficient", dtype=torch.float32):
        m = TaylorShiftAttention(D, H, head_dim=d, qkv_bias=False, normalize_qk=False, output_scale=False,
                                 causal=True, backend=backend)
        with torch.no_grad():  # peer: to_q 'b n (h d)', to_kv 'b n (kv h d)' = our qkv rows [q | k | v]
            m.qkv.weight.copy_(torch.cat([peer_module.to_q[0].weight, peer_module.to_kv[0].weight], 0))
            m.proj.weight.copy_(peer_module.to_out[0].weight)
            m.proj.bias.zero_()
        return m.to(dtype).eval()

    def rel(a, b) -> float:
        a, b = a.double(), b.double()
        return ((a - b).norm() / b.norm()).item()

    peers = {"peer_full": peer(False), "peer_sym": peer(True)}
    ours = ours_from(peers["peer_full"])
    oracle = ours_from(peers["peer_full"], backend="direct", dtype=torch.float64)
    assert torch.equal(peers["peer_full"].to_q[0].weight, peers["peer_sym"].to_q[0].weight)  # same seed, weights
    impls = {"ours": lambda x: ours(x), **{k: (lambda x, m=m: m(x)) for k, m in peers.items()}}

    def timed(fn, x, train: bool) -> float:
        if train:
            x = x.detach().requires_grad_(True)
            t0 = time.perf_counter()
            fn(x).square().mean().backward()
            return time.perf_counter() - t0
        with torch.inference_mode():
            t0 = time.perf_counter()
            fn(x)
            return time.perf_counter() - t0

    rows = []
    for N in args.lengths:
        x = torch.randn(1, N, D, generator=torch.Generator().manual_seed(N))
        with torch.no_grad():
            ref = oracle(x.double())
            outs = {k: f(x) for k, f in impls.items()}
        row = {"N": N}
        for k, out in outs.items():
            row[f"err_{k}"] = rel(out, ref)
        row["err_peer_vs_ours"] = rel(outs["peer_full"], outs["ours"])
        for mode in ("prefill", "train"):
            if mode == "train" and N > args.train_max:
                continue
            times = {k: [] for k in impls}
            for fn in impls.values():
                timed(fn, x, mode == "train")  # warm-up
            for _ in range(args.repeats):  # interleaved: every implementation sees the same machine load
                for k, fn in impls.items():
                    times[k].append(timed(fn, x, mode == "train"))
            for k in impls:
                row[f"{mode}_ms_{k}"] = 1e3 * statistics.median(times[k])
        rows.append(row)
        print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    # decoding: prefill `context` tokens, then `steps` single tokens; agreement against the oracle on all positions
    T, S = args.context, args.steps
    x = torch.randn(1, T + S, D, generator=torch.Generator().manual_seed(7))
    decode = {"context": T, "steps": S}
    with torch.inference_mode():
        ref = oracle(x.double())[:, T:]
        cache = ours.new_cache(1)
        ours.prefill(x[:, :T], cache)
        outs, times = [], []
        for t in range(T, T + S):
            t0 = time.perf_counter()
            outs.append(ours.step(x[:, t: t + 1], cache))
            times.append(time.perf_counter() - t0)
        decode["err_ours"] = rel(torch.cat(outs, 1), ref)
        decode["step_ms_ours"] = 1e3 * statistics.median(times[3:])
        for k, m in peers.items():
            _, pc = m(x[:, :T], return_cache=True)
            outs, times = [], []
            for t in range(T, T + S):
                t0 = time.perf_counter()
                y, pc = m(x[:, t: t + 1], cache=pc, return_cache=True)
                times.append(time.perf_counter() - t0)
                outs.append(y)
            decode[f"err_{k}"] = rel(torch.cat(outs, 1), ref)
            decode[f"step_ms_{k}"] = 1e3 * statistics.median(times[3:])
            state = pc.kv_cumsum.numel() + pc.k_cumsum.numel()
            decode[f"state_numbers_{k}"] = state
        decode["state_numbers_ours"] = cache.state.state.numel()
    print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in decode.items()), flush=True)

    meta = collect_metadata("cpu", "float32", command=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    meta.update(peer="taylor-series-linear-attention " + version("taylor-series-linear-attention"),
                shapes=f"B=1 dim={D} heads={H} head_dim={d}", repeats=args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(out / "peer_taylor.csv", meta, columns, rows)
    with open(out / "peer_taylor.json", "w") as f:
        json.dump({"meta": meta, "config": vars(args), "rows": rows, "decode": decode}, f, indent=1)
        f.write("\n")
    print(f"wrote {out / 'peer_taylor.csv'}, {out / 'peer_taylor.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

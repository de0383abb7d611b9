"""Accuracy of TaylorShift in low precision at long sequence lengths, against the float64 oracle.

Unit-norm q and k (the paper's setting), per-head temperature scale, N up to 65,536. The oracle sees the
same rounded inputs (upcast) and evaluates a random subset of query rows exactly against all keys.

    python benchmarks/stability.py [--n 65536] [--d 16 32] [--rows 512]
"""

from __future__ import annotations

import argparse
import platform

import torch

from taylorshift import taylor_shift_attention, taylor_shift_attention_reference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[16_384, 65_536], help="sequence lengths")
    p.add_argument("--d", type=int, nargs="+", default=[16, 32], help="head sizes")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0], help="temperatures (one head each)")
    p.add_argument("--rows", type=int, default=512, help="query rows checked against the oracle")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print("| N | d | dtype | backend | max rel. error (Frobenius, over heads) | finite |")
    print("|--:|--:|---|---|--:|---|")
    H = len(args.scales)
    for n in args.n:
        for d in args.d:
            g = torch.Generator().manual_seed(args.seed)
            q, k, v = (torch.randn(1, H, n, d, generator=g, dtype=torch.float64) for _ in range(3))
            q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
            rows = torch.randperm(n, generator=g)[: args.rows]
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
                scale = torch.tensor(args.scales, dtype=dtype).view(1, H, 1, 1)
                ref = taylor_shift_attention_reference(qc, kc, vc, scale=scale, rows=rows)
                backends = ["efficient"] + (["direct"] if n <= 16_384 else [])
                for backend in backends:
                    out = taylor_shift_attention(qc, kc, vc, scale=scale, backend=backend)[..., rows, :].double()
                    errs = [((out[:, h] - ref[:, h]).norm() / ref[:, h].norm()).item() for h in range(H)]
                    finite = bool(torch.isfinite(out).all())
                    name = str(dtype).removeprefix("torch.")
                    print(f"| {n} | {d} | {name} | {backend} | {max(errs):.2e} | {finite} |")


if __name__ == "__main__":
    main()

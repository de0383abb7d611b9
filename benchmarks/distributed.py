"""Sequence parallelism: communication per layer and measured step time with 1 vs W gloo processes.

Three parts, written to ``--out`` (JSON with machine, versions and threads; CSV; PNG):

1. **Bytes per layer per step** (forward + backward, bytes each rank sends, float32) from the communication model
   of :mod:`taylorshift.analysis.communication`, for the attention sizes of ``--preset`` (heads, head size) or
   ``--heads/--head-dim``: TaylorShift's state all-reduce (non-causal) and state all-gather (causal) against ring
   attention and an all-gather of K/V for softmax, at each length of ``--model-lengths``. No timing: this part is
   arithmetic, and ``--model-only`` stops after it.
2. **Measured**: one ``TaylorShiftAttention`` layer (forward + backward, batch 1, float32, ``--threads`` per
   process) on the whole sequence in one process, and split across ``--world`` gloo processes with
   :func:`taylorshift.distributed.set_sequence_parallel`; warm-up, then the median of ``--repeats``. The payload
   of every collective the layer issues is counted (``payload_bytes``: the tensors handed to all-reduce /
   all-gather per rank). Softmax attention (SDPA, forward + backward) is timed in one process too, for its
   compute rate.
3. **Projection** for 2-64 ranks: ``compute + α·messages + bytes/β``, with the compute rates measured in part 2
   (TaylorShift: seconds per token at the longest measured length; softmax: seconds per token pair), ``α`` =
   ``--latency`` and ``β`` = ``--bandwidth`` (defaults: 5 µs, 10 GB/s per rank, an ordinary cluster network).

    python benchmarks/distributed.py                                  # ~5 min on 2 quiet cores
    python benchmarks/distributed.py --lengths 256 --repeats 2 --out /tmp/dist   # a smoke run, ~30 s
    python benchmarks/distributed.py --model-only                      # the bytes table and plot only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from taylorshift.analysis.communication import (
    SCHEMES,
    break_even_tokens,
    comm_bytes,
    project_step,
    state_bytes,
)
from taylorshift.bench.io import collect_metadata, write_csv

LABELS = {
    "taylorshift": "TaylorShift SP (all-reduce)",
    "taylorshift_causal": "TaylorShift SP causal (all-gather)",
    "ring": "ring attention (softmax)",
    "allgather_kv": "all-gather K/V (softmax)",
}
PROJECTED_WORLDS = (2, 4, 8, 16, 32, 64)


def bytes_table(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in args.model_lengths:
        for world in (2, 64):
            row = {"n": n, "world": world}
            for s in SCHEMES:
                row[s] = comm_bytes(s, n, world, args.batch, args.heads, args.head_dim)
            rows.append(row)
    return rows


def markdown_bytes(rows: list[dict], args: argparse.Namespace) -> str:
    m = state_bytes(args.batch, args.heads, args.head_dim)
    lines = [
        f"B = {args.batch}, H = {args.heads}, d = dv = {args.head_dim}, float32; state M = {m:,} B per layer",
        "",
        "| N | ranks | " + " | ".join(LABELS[s] for s in SCHEMES) + " |",
        "|---|---|" + "---|" * len(SCHEMES),
    ]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['world']} | " + " | ".join(f"{r[s]:,.0f}" for s in SCHEMES) + " |")
    return "\n".join(lines)


class _Counter:
    """Counts the payload of the collectives this process issues (wraps the torch.distributed functions)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._orig = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

        def all_reduce(tensor, *a, **k):
            self.bytes += tensor.numel() * tensor.element_size()
            return self._orig["all_reduce"](tensor, *a, **k)

        def all_gather(parts, tensor, *a, **k):
            self.bytes += tensor.numel() * tensor.element_size()
            return self._orig["all_gather"](parts, tensor, *a, **k)

        dist.all_reduce, dist.all_gather = all_reduce, all_gather


def _time_layer(layer, x: torch.Tensor, repeats: int, barrier: bool) -> list[float]:
    times = []
    for i in range(repeats + 1):  # the first is the warm-up
        if barrier:
            dist.barrier()
        t0 = time.perf_counter()
        layer(x).sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def _layer(args: argparse.Namespace, causal: bool):
    from taylorshift.nn import TaylorShiftAttention

    torch.manual_seed(0)
    return TaylorShiftAttention(
        args.heads * args.head_dim, args.heads, head_dim=args.head_dim, causal=causal, backend="efficient"
    )


def _worker(rank: int, world: int, rendezvous: str, out: str, args: argparse.Namespace) -> None:
    from taylorshift.distributed import set_sequence_parallel, split_sequence

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    counter = _Counter()
    rows = []
    for n in args.lengths:
        for causal in (False, True):
            layer = set_sequence_parallel(_layer(args, causal))
            x = torch.randn(1, n, args.heads * args.head_dim, generator=torch.Generator().manual_seed(1))
            part = split_sequence(x, rank, world)
            counter.bytes = 0
            times = _time_layer(layer, part, args.repeats, barrier=True)
            t = torch.tensor([statistics.median(times)], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # a step ends when the slowest rank is done
            rows.append(
                {
                    "n": n,
                    "causal": causal,
                    "processes": world,
                    "step_ms": 1e3 * float(t),
                    "payload_bytes": counter.bytes // (args.repeats + 1),
                }
            )
    if rank == 0:
        Path(out, "sp.json").write_text(json.dumps(rows))
    dist.destroy_process_group()


def measure(args: argparse.Namespace) -> list[dict]:
    from taylorshift.nn import SoftmaxAttention

    torch.set_num_threads(args.threads)
    rows = []
    for n in args.lengths:
        x = torch.randn(1, n, args.heads * args.head_dim, generator=torch.Generator().manual_seed(1))
        for causal in (False, True):
            times = _time_layer(_layer(args, causal), x, args.repeats, barrier=False)
            rows.append(
                {
                    "n": n,
                    "causal": causal,
                    "processes": 1,
                    "step_ms": 1e3 * statistics.median(times),
                    "payload_bytes": 0,
                }
            )
        softmax = SoftmaxAttention(args.heads * args.head_dim, args.heads, head_dim=args.head_dim)
        times = _time_layer(softmax, x, args.repeats, barrier=False)
        rows.append(
            {
                "n": n,
                "causal": False,
                "processes": 1,
                "step_ms": 1e3 * statistics.median(times),
                "payload_bytes": 0,
                "attention": "softmax",
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(args.world, str(Path(tmp, "rdv")), tmp, args), nprocs=args.world, join=True)
        rows += json.loads(Path(tmp, "sp.json").read_text())
    for r in rows:
        r.setdefault("attention", "taylorshift")
    return rows


def project(args: argparse.Namespace, measured: list[dict]) -> list[dict]:
    n_max = max(args.lengths)

    def one(attention: str, causal: bool) -> float:
        r = next(
            r
            for r in measured
            if r["attention"] == attention and r["processes"] == 1 and r["n"] == n_max and r["causal"] == causal
        )
        return r["step_ms"] / 1e3

    rate = {
        "taylorshift": one("taylorshift", False) / n_max,
        "taylorshift_causal": one("taylorshift", True) / n_max,
        "ring": one("softmax", False) / n_max**2,
    }
    rate["allgather_kv"] = rate["ring"]
    rows = []
    for n in args.model_lengths:
        for world in PROJECTED_WORLDS:
            for scheme in SCHEMES:
                unit = rate[scheme]
                e = project_step(
                    scheme,
                    n,
                    world,
                    args.batch,
                    args.heads,
                    args.head_dim,
                    seconds_per_unit=unit,
                    latency=args.latency,
                    bandwidth=args.bandwidth,
                )
                rows.append(
                    {
                        "n": n,
                        "world": world,
                        "scheme": scheme,
                        "compute_s": e.compute,
                        "comm_s": e.comm,
                        "total_s": e.total,
                    }
                )
    return rows


def plot(projected: list[dict] | None, args: argparse.Namespace, path: Path) -> None:
    """Bytes per rank against N (8 ranks); with ``projected``, also the projected step time against the ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 if projected is None else 2, figsize=(5.5 if projected is None else 11, 4.2))
    a = axes if projected is None else axes[0]
    ns = [2**k for k in range(10, 18)]
    for s in SCHEMES:
        a.plot(
            ns, [comm_bytes(s, n, 8, args.batch, args.heads, args.head_dim) for n in ns], marker="o", label=LABELS[s]
        )
    a.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length N",
        ylabel="bytes sent per rank, layer, step",
        title=f"communication, 8 ranks (H={args.heads}, d={args.head_dim}, fp32)",
    )
    a.legend(fontsize=8)
    if projected is None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    b = axes[1]
    n = max(args.model_lengths)
    for i, scheme in enumerate(SCHEMES):
        pts = [r for r in projected if r["n"] == n and r["scheme"] == scheme]
        worlds = [r["world"] for r in pts]
        b.plot(worlds, [r["total_s"] for r in pts], marker="o", color=f"C{i}", label=LABELS[scheme])
        b.plot(worlds, [r["comm_s"] for r in pts], ls="--", color=f"C{i}")
    b.set_xscale("log", base=2)
    b.set_xticks(PROJECTED_WORLDS, [str(w) for w in PROJECTED_WORLDS])
    b.set(
        yscale="log",
        xlabel="ranks",
        ylabel="projected seconds per layer step",
        title=f"N = {n:,}: compute + comm (dashed: comm alone)",
    )
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=int, default=8, help="attention heads (default 8)")
    p.add_argument("--head-dim", type=int, default=32, help="head size d = dv (default 32)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step in the bytes model (default 1)")
    p.add_argument(
        "--model-lengths",
        type=int,
        nargs="+",
        default=[16384, 65536],
        help="sequence lengths of the bytes table and the projection (default 16384 65536)",
    )
    p.add_argument("--model-only", action="store_true", help="print and write the bytes table, measure nothing")
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[1024, 2048, 4096, 8192],
        help="measured sequence lengths (default 1024 2048 4096 8192)",
    )
    p.add_argument("--world", type=int, default=2, help="gloo processes of the sequence-parallel run (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per point after one warm-up (default 5)")
    p.add_argument("--latency", type=float, default=5e-6, help="α of the projection, seconds (default 5e-6)")
    p.add_argument("--bandwidth", type=float, default=10e9, help="β of the projection, bytes/s (default 1e10)")
    p.add_argument("--out", default="bench_results/distributed", help="output folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = bytes_table(args)
    md = markdown_bytes(table, args)
    print(md)
    print(
        f"\nbreak-even N (TaylorShift sends less than ring attention): non-causal "
        f"{break_even_tokens('taylorshift', 2, args.batch, args.heads, args.head_dim):,.0f}, causal on W ranks "
        f"{break_even_tokens('taylorshift_causal', 1, args.batch, args.heads, args.head_dim):,.0f}·W"
    )
    (out / "bytes.md").write_text(md + "\n")
    if args.model_only:
        plot(None, args, out / "bytes.png")
        return 0
    meta = collect_metadata("cpu", "float32", command=sys.argv)
    meta.update(threads_per_process=args.threads, world=args.world)
    measured = measure(args)
    projected = project(args, measured)
    write_csv(
        out / "measured.csv", meta, ("attention", "n", "causal", "processes", "step_ms", "payload_bytes"), measured
    )
    write_csv(out / "projected.csv", meta, ("n", "world", "scheme", "compute_s", "comm_s", "total_s"), projected)
    (out / "distributed.json").write_text(
        json.dumps(
            {"meta": meta, "args": vars(args), "bytes": table, "measured": measured, "projected": projected}, indent=1
        )
    )
    plot(projected, args, out / "distributed.png")
    print("\n| attention | N | causal | processes | ms/step | payload B/step |\n|---|---|---|---|---|---|")
    for r in measured:
        print(
            f"| {r['attention']} | {r['n']} | {r['causal']} | {r['processes']} | {r['step_ms']:.1f} | "
            f"{r['payload_bytes']:,} |"
        )
    print(f"wrote {out}/measured.csv, projected.csv, distributed.json, distributed.png, bytes.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed under contention: each backend alone, and with a second identical process at the same time.

Two parts, both at ``B = 1, H = 8`` (fp32 unless ``--dtype``):

1. ``--count`` (deterministic, no timing): the tensor operations one forward call launches, from the torch
   profiler: every outermost ``aten::`` operation that computes (views such as ``slice``/``transpose`` are not
   counted: they launch no parallel region), with the efficient kernel's chunk size and feature blocks. Each
   computing operation above ``at::internal::GRAIN_SIZE`` elements is one OpenMP parallel region; under
   contention each region waits for its slowest (descheduled) thread, so this count is what the contention
   slowdown scales with.
2. The slowdown: each ``(backend, d)`` is timed in a fresh process alone (median of ``--repeats`` forward
   calls after a warm-up), then in two identical processes started together; the table gives both medians and
   their ratio (the fair share of two processes on the same cores is 2×).

    python benchmarks/contention.py [--n 16384] [--dims 16 32 64] [--backends efficient direct sdpa]
        [--repeats 5] [--threads 0] [--count] [--omp-wait-policy inherit passive] [--rounds 3]
        [--env GOMP_SPINCOUNT=10000] [--chunk-size 1024] [--json out.json] [--markdown out.md]

``--threads 0`` keeps torch's default (all cores). ``--omp-wait-policy`` sets ``OMP_WAIT_POLICY`` in the timed
processes (``passive``: threads waiting at a barrier sleep instead of spinning, which leaves the core to the
competing process); the library cannot change it after torch is loaded. Given several policies, each round
measures all of them back to back, so a machine whose speed drifts (shared hosts do) affects them alike;
``--rounds`` repeats that and the medians are reported. ``--env`` sets further variables of the timed processes
(``GOMP_SPINCOUNT``: how long libgomp's threads spin before they sleep), ``--chunk-size`` the efficient
kernel's rows per chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from taylorshift import taylor_shift_attention
from taylorshift.bench.io import cpu_model, load_average

H, B = 8, 1
BACKENDS = ("efficient", "direct", "sdpa")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# operations that only make views or metadata: no parallel region
_VIEWS = {
    "aten::slice",
    "aten::select",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::transpose",
    "aten::t",
    "aten::view",
    "aten::unflatten",
    "aten::flatten",
    "aten::as_strided",
    "aten::expand",
    "aten::alias",
    "aten::narrow",
    "aten::permute",
    "aten::lift_fresh",
    "aten::detach",
    "aten::empty",
    "aten::new_empty",
    "aten::empty_like",
    "aten::resize_",
    "aten::_unsafe_view",
    "aten::reshape",
    "aten::contiguous",
    "aten::to",
    "aten::_to_copy",
    "aten::result_type",
    "aten::empty_strided",
    "aten::split",
    "aten::chunk",
    "aten::unbind",
    "aten::mT",
}


def attention(backend: str):
    if backend == "sdpa":
        return F.scaled_dot_product_attention
    return lambda q, k, v: taylor_shift_attention(q, k, v, backend=backend)


def inputs(n: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, d, generator=g).to(dtype) for _ in range(3)]


def use_chunk_rows(chunk_rows: int | None) -> None:
    """Make the efficient kernel use ``chunk_rows`` rows per chunk in this process (None or 0: its default)."""
    if chunk_rows:
        import taylorshift.ops.efficient as eff

        eff.default_chunk_size = lambda batch, F: chunk_rows


def count_launches(backend: str, n: int, d: int, dtype: torch.dtype, chunk_rows: int | None = None) -> dict:
    """Computing operations launched by one forward call (see the module docstring), by name; ``chunk_rows``
    as in :func:`use_chunk_rows` (the override stays for the rest of this process: a run counts with one chunk
    size)."""
    from torch.profiler import ProfilerActivity, profile

    use_chunk_rows(chunk_rows)
    fn, (q, k, v) = attention(backend), inputs(n, d, dtype)
    with torch.inference_mode():
        fn(q, k, v)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(q, k, v)
    names: dict[str, int] = {}
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is not None:
            continue
        # a contiguous() or to() that copies shows up as its copy_ child; count that, not the wrapper
        if e.name in _VIEWS:
            copies = sum(1 for c in e.cpu_children if c.name in ("aten::copy_", "aten::clone"))
            if copies:
                names["aten::copy_"] = names.get("aten::copy_", 0) + copies
            continue
        names[e.name] = names.get(e.name, 0) + 1
    row = {
        "backend": backend,
        "n": n,
        "d": d,
        "launches": sum(names.values()),
        "top": sorted(names.items(), key=lambda kv: -kv[1])[:6],
    }
    if backend == "efficient":
        from taylorshift.analysis.auto import default_chunk_size

        try:
            from taylorshift.ops.efficient import kernel_blocks
            from taylorshift.ops.features import blocked_feature_dim

            blocks = kernel_blocks(d, "symmetric")
            F_ = blocked_feature_dim(d, blocks)
        except ImportError:  # a version before row blocks (for comparisons): the triangle row by row
            from taylorshift.ops.features import feature_dim

            blocks, F_ = range(d), feature_dim(d, "symmetric")
        chunk = chunk_rows or default_chunk_size(B * H, F_)
        row.update(features=F_, row_blocks=len(blocks), chunk=chunk, chunks_per_pass=-(-n // chunk))
    if backend == "direct":
        from taylorshift.ops.direct import default_block_size

        block = default_block_size(B * H, n)
        row.update(block=block, blocks=-(-n // block))
    return row


def worker(backend: str, n: int, d: int, dtype: str, repeats: int, threads: int, start_at: float,
           chunk_rows: int = 0) -> None:
    """Time ``repeats`` forward calls after a warm-up, starting at ``start_at`` (wall clock); print JSON.
    ``chunk_rows`` > 0 replaces the efficient kernel's default chunk size (rows per chunk)."""
    if threads:
        torch.set_num_threads(threads)
    use_chunk_rows(chunk_rows)
    fn, (q, k, v) = attention(backend), inputs(n, d, DTYPES[dtype])
    with torch.inference_mode():
        fn(q, k, v)
        while time.time() < start_at:
            time.sleep(0.005)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(q, k, v)
            times.append(time.perf_counter() - t)
    print(json.dumps({"median": statistics.median(times), "times": times}))


def _run(args, backend: str, d: int, copies: int, env: dict) -> list[float]:
    start_at = time.time() + 3.0 + 0.5 * args.n / 16384  # after the imports and the input set-up of both
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        backend,
        str(args.n),
        str(d),
        args.dtype,
        str(args.repeats),
        str(args.threads),
        repr(start_at),
        str(args.chunk_size or 0),
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(copies)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"worker {backend} d={d} failed with exit code {p.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1])["median"])
    return out


def _policies(args) -> list[str | None]:
    """The wait policies to compare (``args.omp_wait_policy``: None or a list of names): ``None`` = inherited."""
    return [None if x == "inherit" else x for x in (args.omp_wait_policy or ["inherit"])]


def slowdown_table(args) -> list[dict]:
    """One row per ``(d, backend, wait policy)``: the median over ``args.rounds`` rounds of the call alone and of
    the mean of two concurrent processes, and their ratio. Within a round the policies run back to back, so
    that drift of the machine's speed between rounds affects them alike."""
    base = dict(os.environ)
    for item in args.env:
        key, _, value = item.partition("=")
        base[key] = value
    policies, rounds = _policies(args), args.rounds
    rows = []
    for d in args.dims:
        for backend in args.backends:
            samples = {p: ([], []) for p in policies}
            for _ in range(rounds):
                for pol in policies:
                    env = dict(base)
                    if pol:
                        env["OMP_WAIT_POLICY"] = pol.upper()
                    samples[pol][0].append(_run(args, backend, d, 1, env)[0])
                    samples[pol][1].append(_run(args, backend, d, 2, env))
            for pol in policies:
                alone_runs, pairs = samples[pol]
                alone = statistics.median(alone_runs)
                together = [statistics.median(p[i] for p in pairs) for i in range(2)]
                rows.append(
                    {
                        "backend": backend,
                        "d": d,
                        "n": args.n,
                        "omp_wait_policy": pol or "inherited",
                        "alone_ms": alone * 1e3,
                        "concurrent_ms": [t * 1e3 for t in together],
                        "slowdown": statistics.median(
                            statistics.mean(p) / a for p, a in zip(pairs, alone_runs, strict=True)
                        ),
                        "rounds": [{"alone_ms": a * 1e3, "concurrent_ms": [t * 1e3 for t in p]}
                                   for a, p in zip(alone_runs, pairs, strict=True)],
                    }
                )
                print(
                    f"d={d} {backend} ({pol or 'inherited'} wait): alone {alone * 1e3:.1f} ms, two processes "
                    f"{' / '.join(f'{t * 1e3:.1f}' for t in together)} ms, slowdown {rows[-1]['slowdown']:.2f}x",
                    flush=True,
                )
    return rows


def markdown(meta: dict, counts: list[dict], rows: list[dict]) -> str:
    lines = [
        f"Machine: {meta['cpu']}; torch {meta['torch']}; threads {meta['threads']}; dtype {meta['dtype']}; "
        f"N = {meta['n']}, B = {B}, H = {H}; OMP_WAIT_POLICY = {meta['omp_wait_policy'] or 'inherited'}; "
        f"extra environment {' '.join(meta.get('env') or []) or 'none'}; rounds {meta.get('rounds', 1)}; "
        f"load before the run {meta['load']}.",
        "",
    ]
    if counts:
        lines += [
            "| backend | d | operations per forward call | chunk / block rows | chunks or blocks |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in counts:
            size = c.get("chunk", c.get("block", "-"))
            num = c.get("chunks_per_pass", c.get("blocks", "-"))
            lines.append(f"| {c['backend']} | {c['d']} | {c['launches']} | {size} | {num} |")
        lines.append("")
    if rows:
        lines += ["| backend | d | wait policy | alone (ms) | two processes (ms) | slowdown |",
                  "|---|---:|---|---:|---:|---:|"]
        for r in rows:
            lines.append(
                f"| {r['backend']} | {r['d']} | {r.get('omp_wait_policy', 'inherited')} | {r['alone_ms']:.1f} | "
                f"{' / '.join(f'{t:.1f}' for t in r['concurrent_ms'])} | {r['slowdown']:.2f}× |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        b, n, d, dtype, reps, threads, start, chunk = sys.argv[2:10]
        worker(b, int(n), int(d), dtype, int(reps), int(threads), float(start), int(chunk))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16384, help="sequence length N (L = S)")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64], help="head sizes d")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=5, help="timed forward calls per process")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    p.add_argument("--count", action="store_true", help="also count the operations per call (profiler)")
    p.add_argument("--count-only", action="store_true", help="only count, no timing")
    p.add_argument(
        "--omp-wait-policy",
        choices=["inherit", "active", "passive"],
        nargs="+",
        default=None,
        help="OMP_WAIT_POLICY for the timed processes (default: inherited); several are compared side by side, "
        "interleaved within each round",
    )
    p.add_argument("--rounds", type=int, default=1,
                   help="alone / two-process measurements per case (medians are reported; rounds interleave the "
                   "wait policies)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the timed processes, e.g. GOMP_SPINCOUNT=10000 (repeatable)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="efficient backend: rows per chunk instead of the library default (to measure the trade-off "
                   "between launches and cache)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", help="write the tables here")
    args = p.parse_args(argv)
    bad = [e for e in args.env if "=" not in e or not e.partition("=")[0]]
    if bad:
        p.error(f"--env takes KEY=VALUE, got {bad}")
    if args.repeats < 1 or args.n < 1 or args.rounds < 1:
        p.error("--repeats, --rounds and --n must be positive")
    meta = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "n": args.n,
        "threads": args.threads or torch.get_num_threads(),
        "dtype": args.dtype,
        "load": load_average(),
        "omp_wait_policy": args.omp_wait_policy,
        "chunk_size": args.chunk_size,
        "rounds": args.rounds,
        "env": args.env,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    counts = []
    if args.count or args.count_only:
        for d in args.dims:
            for backend in args.backends:
                counts.append(count_launches(backend, args.n, d, DTYPES[args.dtype], args.chunk_size))
                print(json.dumps(counts[-1]), flush=True)
    rows = [] if args.count_only else slowdown_table(args)
    table = markdown(meta, counts, rows)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "counts": counts, "rows": rows}, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()

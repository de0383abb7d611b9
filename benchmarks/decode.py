"""Decoding cost as the context grows: TaylorShift's recurrent state against softmax's key/value cache.

For each attention kind, one causal LM (the ``fortunes_lm`` preset by default: D = 128, 4 blocks, 8 heads of
d = 16; random weights, batch 1, fp32, one thread) is prefilled to each context length ``n`` (softmax: SDPA's
causal flash kernel; TaylorShift: the chunked efficient form), then single-token steps are timed one by one,
the models' steps interleaved so that both see the same machine load (warm-up, then the median of ``--steps``).
Measured per length:

* ``step_ms``: one whole-model decoding step (embedding, 4 blocks, head) at context ``n``;
* ``attn_step_ms``: the attention module of block 0 alone (its ``step`` on the same cache);
* ``cache_bytes``: bytes the decoding state holds after the prefill (the allocated tensors: TaylorShift's
  ``(H, F, d + 1)`` state per block, softmax's K and V buffers, which grow in 256-token chunks);
* ``prefill_s``: the prefill itself.

The crossover is the context length above which a TaylorShift step is faster (log-log interpolation between
measured lengths); the ratio is softmax / TaylorShift at the longest context. Writes ``decode.csv``,
``decode.json`` (with machine, versions, threads) and ``decode.png`` into ``--out``.

    python benchmarks/decode.py                       # 256 … 65,536 tokens, about 5 minutes on one core
    python benchmarks/decode.py --lengths 1024 4096 --steps 10 --out /tmp/decode
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from taylorshift.bench.crossover import find_crossover
from taylorshift.bench.io import collect_metadata, write_csv
from taylorshift.models import create_model, model_config
from taylorshift.ops import feature_dim

COLUMNS = ("attention", "context", "step_ms", "step_p10_ms", "step_p90_ms", "attn_step_ms", "cache_bytes",
           "cache_bytes_per_token", "prefill_s")
DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def measure(context: int, args: argparse.Namespace, max_len: int) -> list[dict]:
    """Prefill one fresh model per attention kind to ``context`` tokens, then time decoding steps of the models
    interleaved (one step of each in turn), so that all of them see the same machine load."""
    ids = torch.randint(0, 256, (1, context), generator=torch.Generator().manual_seed(1))
    runs = {}
    with torch.inference_mode():
        for attention in args.attention:
            torch.manual_seed(args.seed)
            model = create_model(args.preset, attention=attention, max_len=max_len).eval()
            cache = model.new_cache(1)
            t0 = time.perf_counter()
            logits = model.prefill(ids, cache)
            prefill_s = time.perf_counter() - t0
            runs[attention] = {"model": model, "cache": cache, "prefill_s": prefill_s, "bytes": cache.nbytes,
                               "token": logits[:, -1].argmax(-1, keepdim=True), "steps": [], "attn": []}
        x = torch.randn(1, 1, next(iter(runs.values()))["model"].config.dim,
                        generator=torch.Generator().manual_seed(2))
        for i in range(args.warmup + args.steps):  # greedy decoding: each step feeds the previous step's token
            for run in runs.values():
                t0 = time.perf_counter()
                run["token"] = run["model"].step(run["token"], run["cache"])[:, -1].argmax(-1, keepdim=True)
                if i >= args.warmup:
                    run["steps"].append(time.perf_counter() - t0)
        for i in range(args.warmup + args.steps):  # block 0's attention alone, on its own cache
            for run in runs.values():
                attn, layer_cache = run["model"].blocks[0].attn, run["cache"].layers[0]
                t0 = time.perf_counter()
                attn.step(x, layer_cache)
                if i >= args.warmup:
                    run["attn"].append(time.perf_counter() - t0)
    return [{
        "attention": attention, "context": context,
        "step_ms": 1e3 * statistics.median(run["steps"]),
        "step_p10_ms": 1e3 * _quantile(run["steps"], 0.1), "step_p90_ms": 1e3 * _quantile(run["steps"], 0.9),
        "attn_step_ms": 1e3 * statistics.median(run["attn"]),
        "cache_bytes": run["bytes"], "cache_bytes_per_token": run["bytes"] / context, "prefill_s": run["prefill_s"],
    } for attention, run in runs.items()]


def summarize(rows: list[dict], cfg) -> dict:
    """Crossovers (TaylorShift below softmax from there on) and softmax / TaylorShift ratios at the longest
    context, for the whole step, the attention step and the cache size."""
    by = {a: sorted((r for r in rows if r["attention"] == a), key=lambda r: r["context"])
          for a in ("taylorshift", "softmax")}
    if not by["taylorshift"] or not by["softmax"]:
        return {}
    ns = [r["context"] for r in by["taylorshift"]]
    out = {}
    for key in ("step_ms", "attn_step_ms", "cache_bytes"):
        ts, sm = [r[key] for r in by["taylorshift"]], [r[key] for r in by["softmax"]]
        cross = find_crossover(ns, ts, sm)
        out[key] = {"crossover": cross.describe(), "crossover_n": cross.n, "relation": cross.relation,
                    "crossings": [c.n for c in cross.crossings],
                    "ratio_softmax_over_taylorshift": {str(n): s / t for n, s, t in zip(ns, sm, ts, strict=True)}}
    d = cfg.head_dim or cfg.dim // cfg.num_heads
    F = feature_dim(d)
    out["analytic"] = {
        "head_dim": d, "features": F,
        "taylorshift_state_bytes": 4 * cfg.depth * cfg.num_heads * F * (d + 1),
        "softmax_kv_bytes_per_token": 4 * cfg.depth * 2 * cfg.num_heads * d,
        "memory_crossover_tokens": F * (d + 1) / (2 * d),
    }
    return out


def _leading_digit(v: float) -> int:
    return round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0


def plot(rows: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    panels = (("step_ms", "ms per token (whole model)"), ("attn_step_ms", "ms per token (attention, block 0)"),
              ("cache_bytes", "decoding state (MiB)"))
    styles = {"taylorshift": ("C0", "o", "TaylorShift (recurrent state)"), "softmax": ("C3", "s", "softmax (KV cache)")}
    for ax, (key, label) in zip(axes, panels, strict=True):
        for attention, (color, marker, name) in styles.items():
            pts = sorted((r["context"], r[key]) for r in rows if r["attention"] == attention)
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ys = [y / 2**20 for y in ys] if key == "cache_bytes" else ys
            ax.plot(xs, ys, marker=marker, color=color, label=name)
            if key == "step_ms":
                lo = [r["step_p10_ms"] for r in sorted(rows, key=lambda r: r["context"]) if r["attention"] == attention]
                hi = [r["step_p90_ms"] for r in sorted(rows, key=lambda r: r["context"]) if r["attention"] == attention]
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
        n = summary.get(key, {}).get("crossover_n")
        if n:
            ax.axvline(n, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"crossover ≈ {n:,.0f}", (n, 0.92), xycoords=("data", "axes fraction"), xytext=(4, 0),
                        textcoords="offset points", fontsize=8, color="grey")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1024:g}k" if v >= 1024 else f"{v:g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if _leading_digit(v) in (2, 5) else ""))
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fortunes_lm", help="causal LM preset (default fortunes_lm)")
    p.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS), help="context lengths")
    p.add_argument("--attention", nargs="+", default=["taylorshift", "softmax"], choices=["taylorshift", "softmax"])
    p.add_argument("--steps", type=int, default=25, help="timed steps per length (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--out", default="docs/bench/decode", help="output folder")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="only redraw decode.png (into --out) from a decode.json written before; measures nothing")
    args = p.parse_args(argv)
    if args.replot:
        doc = json.loads(Path(args.replot).read_text())
        meta = doc["meta"]
        title = (f"Decoding, {meta['preset']} ({meta['model']}), batch 1, fp32, {meta['threads']} thread(s), "
                 f"{meta['cpu_model']}, torch {meta['torch_version']}")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        plot(doc["rows"], doc["summary"], Path(args.out) / "decode.png", title)
        return 0
    if min(args.lengths) < 1 or args.steps < 1 or args.warmup < 0:
        p.error("lengths and --steps must be positive, --warmup non-negative")
    torch.set_num_threads(args.threads)
    cfg = model_config(args.preset)
    lengths = sorted(set(args.lengths))
    max_len = max(lengths) + 2 * (args.warmup + args.steps) + 1  # the attention-only steps also extend the cache
    meta = collect_metadata("cpu", "float32", command=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
                            memory_method="bytes of the cache tensors after prefill")
    meta.update(preset=args.preset, model=f"D={cfg.dim} depth={cfg.depth} heads={cfg.num_heads} d={cfg.head_dim}",
                batch=1, steps=args.steps, warmup=args.warmup)
    rows = []
    print(f"# {meta['cpu_model']}, torch {meta['torch_version']}, {args.threads} thread(s), "
          f"load {meta['load_average']}")
    print(f"{'attention':<12} {'context':>8} {'step ms':>9} {'attn ms':>9} {'cache MiB':>10} {'prefill s':>10}")
    for context in lengths:
        for row in measure(context, args, max_len):
            rows.append(row)
            print(f"{row['attention']:<12} {context:>8} {row['step_ms']:>9.3f} {row['attn_step_ms']:>9.3f} "
                  f"{row['cache_bytes'] / 2**20:>10.2f} {row['prefill_s']:>10.2f}", flush=True)
        gc.collect()  # free these models' caches before the next length
    summary = summarize(rows, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "decode.csv", meta, COLUMNS, rows)
    with open(out / "decode.json", "w") as f:
        json.dump({"meta": meta, "config": vars(args), "rows": rows, "summary": summary}, f, indent=1)
        f.write("\n")
    if summary:
        longest = str(lengths[-1])
        for key in ("step_ms", "attn_step_ms", "cache_bytes"):
            s = summary[key]
            print(f"{key}: TaylorShift below softmax from {s['crossover']} tokens; softmax / TaylorShift at "
                  f"{longest}: {s['ratio_softmax_over_taylorshift'][longest]:.2f}x")
    if not args.no_plot:
        title = (f"Decoding, {args.preset} ({meta['model']}), batch 1, fp32, {args.threads} thread(s), "
                 f"{meta['cpu_model']}, torch {meta['torch_version']}")
        plot(rows, summary, out / "decode.png", title)
    print(f"wrote {out / 'decode.csv'}, {out / 'decode.json'}" + ("" if args.no_plot else f", {out / 'decode.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-token latency of ``model.generate`` in Hugging Face transformers: the native TaylorShift model (recurrent
state) against the same-size Llama with SDPA (key/value cache), at long contexts.

Both models have the same width, depth, heads and MLP width (``--preset``; Llama's MLP is gated, so it has 1.5x
the MLP weights), random weights, a byte vocabulary, batch 1, fp32. For each context length ``n`` a random prompt
of ``n`` tokens is generated from greedily with ``generate(max_new_tokens=--new-tokens)``; a streamer stamps the
time of every token, so the per-token latency is measured inside ``generate`` itself, all of its per-step
overhead included. The first token (which includes the prefill) is reported separately; the steps after it give
the median per-token latency. The models alternate (``--repeats`` rounds), so both see the same machine load, and
the ratio Llama / TaylorShift is taken within each round.

Writes ``hf_generate.csv`` and ``hf_generate.json`` (machine, versions, threads) into ``--out``::

    python benchmarks/hf_generate.py                              # 1k and 16k context, the fortunes_lm size
    python benchmarks/hf_generate.py --preset tiny --lengths 128 256 --new-tokens 8 --repeats 1 --out /tmp/hfg
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from taylorshift.bench.io import collect_metadata, write_csv

COLUMNS = ("model", "context", "token_ms", "token_p10_ms", "token_p90_ms", "first_token_s", "cache_bytes", "round")
PRESETS = {  # hidden, layers, heads, intermediate
    "fortunes_lm": (128, 4, 8, 512),
    "tiny": (32, 2, 4, 64),
}


class _Stamps:
    """A generate streamer that records when each token arrives (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def build_models(preset: str, max_len: int, seed: int) -> dict[str, torch.nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from taylorshift.integrations.hf_model import TaylorShiftConfig, TaylorShiftForCausalLM

    hidden, layers, heads, inter = PRESETS[preset]
    torch.manual_seed(seed)
    ours = TaylorShiftForCausalLM(TaylorShiftConfig(
        vocab_size=256, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, max_position_embeddings=max_len,
    ))  # fmt: skip
    llama_cfg = LlamaConfig(
        vocab_size=256, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=max_len,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    llama = LlamaForCausalLM._from_config(llama_cfg, attn_implementation="sdpa")
    return {"taylorshift": ours.eval(), "llama_sdpa": llama.eval()}


def _cache_bytes(cache: object) -> int:
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes)
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def run_one(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> dict:
    stamps = _Stamps()
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, streamer=stamps,
                             return_dict_in_generate=True)  # fmt: skip
    tokens = stamps.times[1:]  # after the prompt
    steps = [b - a for a, b in zip(tokens, tokens[1:], strict=False)]
    steps.sort()
    q = lambda p: steps[min(len(steps) - 1, round(p * (len(steps) - 1)))]  # noqa: E731
    return {
        "token_ms": 1e3 * statistics.median(steps), "token_p10_ms": 1e3 * q(0.1), "token_p90_ms": 1e3 * q(0.9),
        "first_token_s": tokens[0] - start, "cache_bytes": _cache_bytes(out.cache),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="fortunes_lm", help="model size (default fortunes_lm)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 16384], help="context lengths (default 1k 16k)")
    p.add_argument("--new-tokens", type=int, default=33, help="tokens generated per run (default 33: 32 steps)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per length, models alternating (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--out", default="docs/bench/hf_generate", help="output folder")
    args = p.parse_args(argv)
    if min(args.lengths) < 1 or args.new_tokens < 3 or args.repeats < 1:
        p.error("lengths must be positive, --new-tokens at least 3, --repeats at least 1")
    torch.set_num_threads(args.threads)
    import transformers

    max_len = max(args.lengths) + args.new_tokens + 1
    models = build_models(args.preset, max_len, args.seed)
    meta = collect_metadata("cpu", "float32", command=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
                            memory_method="bytes of the generation cache after generate")  # fmt: skip
    hidden, layers, heads, inter = PRESETS[args.preset]
    meta.update(preset=args.preset, model=f"D={hidden} layers={layers} heads={heads} d={hidden // heads} "
                f"intermediate={inter}", transformers_version=transformers.__version__, batch=1,
                new_tokens=args.new_tokens, repeats=args.repeats)  # fmt: skip
    print(
        f"# {meta['cpu_model']}, torch {meta['torch_version']}, transformers {transformers.__version__}, "
        f"{args.threads} thread(s), load {meta['load_average']}"
    )
    print(f"{'model':<12} {'context':>8} {'ms/token':>9} {'first s':>8} {'cache MiB':>10}")
    rows, ratios = [], {}
    for context in sorted(set(args.lengths)):
        prompt = torch.randint(1, 256, (1, context), generator=torch.Generator().manual_seed(context))
        for r in range(args.repeats):
            round_rows = {}
            for name, model in models.items():
                row = {"model": name, "context": context, "round": r, **run_one(model, prompt, args.new_tokens)}
                rows.append(row)
                round_rows[name] = row
                print(f"{name:<12} {context:>8} {row['token_ms']:>9.3f} {row['first_token_s']:>8.2f} "
                      f"{row['cache_bytes'] / 2**20:>10.2f}")  # fmt: skip
            ratios.setdefault(context, []).append(
                round_rows["llama_sdpa"]["token_ms"] / round_rows["taylorshift"]["token_ms"]
            )
    summary = {
        str(c): {
            "taylorshift_token_ms": statistics.median(r["token_ms"] for r in rows if r["context"] == c
                                                      and r["model"] == "taylorshift"),
            "llama_sdpa_token_ms": statistics.median(r["token_ms"] for r in rows if r["context"] == c
                                                     and r["model"] == "llama_sdpa"),
            "ratio_llama_over_taylorshift": statistics.median(v),
        }
        for c, v in ratios.items()
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "hf_generate.csv", meta, COLUMNS, rows)
    (out / "hf_generate.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=1))
    for c, s in summary.items():
        print(
            f"context {c}: TaylorShift {s['taylorshift_token_ms']:.3f} ms/token, Llama+SDPA "
            f"{s['llama_sdpa_token_ms']:.3f} ms/token, ratio {s['ratio_llama_over_taylorshift']:.2f}"
        )
    print(f"wrote {out / 'hf_generate.csv'} and {out / 'hf_generate.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

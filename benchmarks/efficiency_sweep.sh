#!/usr/bin/env bash
# The efficiency sweeps published in docs/bench/: time and peak memory of direct and efficient
# TaylorShift, PyTorch SDPA and naive softmax attention against N, and the measured crossovers beside
# the paper's N0 (bench_points.csv, bench_crossovers.csv, bench.json, bench_d{d}_{mode}.png).
#
#   docs/bench/         d = 16, 32, 64, H = 4, N = 64..16384, forward and train (about 20 minutes)
#   docs/bench/d64_h1/  d = 64, H = 1, N = 1024..16384: the d = 64 crossovers lie beyond what H = 4
#                       reaches within the time budget (about 15 minutes)
#
# On the project's 2-core CPU, run from the repository root after scripts/setup.sh. One thread: the
# published runs shared the machine with other jobs, and two OpenMP threads on a busy 2-core machine
# wait on each other (small calls slow down 10-100x); on a quiet machine pass --threads 2 (or more).
#
#   benchmarks/efficiency_sweep.sh            # both published sweeps
#   benchmarks/efficiency_sweep.sh quick      # the two-minute profile, into bench_results/
set -euo pipefail
cd "$(dirname "$0")/.."
bin=".venv/bin/taylorshift"
if [ "${1:-}" = "quick" ]; then
  exec "$bin" bench --quick --out bench_results
fi
"$bin" bench --head-dims 16 32 64 --heads 4 --batch 1 --dtype float32 --mode forward train \
  --n-min 64 --n-max 16384 --points-per-octave 3 --dense 4 --repeats 3 --warmup 1 \
  --budget-seconds 3 --budget-memory 6GiB --threads 1 --out docs/bench
"$bin" bench --head-dims 64 --heads 1 --batch 1 --dtype float32 --mode forward train \
  --n-min 1024 --n-max 16384 --points-per-octave 4 --dense 4 --repeats 3 --warmup 1 \
  --budget-seconds 8 --budget-memory 6GiB --threads 1 --out docs/bench/d64_h1

#!/usr/bin/env bash
# Kernel durations (Nsight Compute, caches flushed between kernels) of the working set's device-pipeline
# resolve kernel against the plain zero-copy gather of the same rows, on a small synthetic V4.1 store:
# the transfer section's decode steps (B=64 first, then B=256).
#
#   bench/profile_working_set.sh [--scale 0.005] [--dir /tmp/engram-ws-prof] [--skip 4] [--count 8] [--warm]
# --warm: no cache flush between kernels (ncu --cache-control none), as in a run that re-reads rows.
# Environment: BUILD (default build), NCU (default ncu on PATH, else /usr/local/cuda/bin/ncu).
set -euo pipefail
cd "$(dirname "$0")/.."
scale=0.005 dir=/tmp/engram-ws-prof skip=4 count=8 cache=all
while [ $# -gt 0 ]; do
  case $1 in
    --scale) scale=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --warm) cache=none; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
build=${BUILD:-build}
ncu=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
rm -rf "$dir" && mkdir -p "$dir"
"$build/tools/engram" synth --layout deepseek-v4.1-flash --scale "$scale" --out "$dir/ck" --quiet
"$build/tools/engram" ingest --layout "$dir/ck/layout.json" --checkpoint "$dir/ck" --store "$dir/store" --quiet
for k in ResolveKernel GatherKernel; do
  echo "== $k"
  "$ncu" --cache-control "$cache" --kernel-name "regex:$k" --launch-skip "$skip" --launch-count "$count" \
    --metrics gpu__time_duration.sum,launch__grid_size,sm__warps_active.avg.pct_of_peak_sustained_active \
    "$build/bench/bench_working_set" --store "$dir/store" --sections transfer --seconds 0.2 --threads 16 2>&1 |
    grep -E "gpu__time_duration|grid_size|warps_active|^  [A-Za-z]"
done

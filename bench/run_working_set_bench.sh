#!/usr/bin/env bash
# The GPU working set benchmark with its raw baselines, all in one run on one machine:
#   1. synthetic checkpoints and stores: V4.1 (264 B rows) at --scale and the demo layout (256 B rows) at
#      --demo-scale (skipped with --reuse when DIR/v41 and DIR/demo exist)
#   2. bench_working_set on the V4.1 store: transfer (host tier -> device vs CPU gather + copy and a
#      zero-copy kernel), hit (HBM cache vs a plain device gather), loop (decode and prefill steps with
#      their time split), with the host tier resident and then as a bounded cache over the disk
#   3. bench_working_set transfer on the demo store (256 B rows)
#
#   bench/run_working_set_bench.sh [--scale 0.02] [--demo-scale 0.3] [--dir /tmp/engram-ws-bench] [--seconds 1]
#                                  [--threads 16] [--sections transfer,hit,loop] [--reuse]
# Environment: BUILD (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
scale=0.02 demo_scale=0.3 dir=/tmp/engram-ws-bench seconds=1 threads=16 sections=transfer,hit,loop reuse=0
while [ $# -gt 0 ]; do
  case $1 in
    --scale) scale=$2; shift 2 ;;
    --demo-scale) demo_scale=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --sections) sections=$2; shift 2 ;;
    --reuse) reuse=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
build=${BUILD:-build}
E=$build/tools/engram
B=$build/bench/bench_working_set
echo "== machine: $(nproc) cores, $(free -g | awk 'NR==2 {print $2}') GiB RAM, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
make_store() {  # preset scale name
  if [ "$reuse" = 1 ] && [ -d "$dir/$3" ]; then echo "(reusing $dir/$3)"; return; fi
  rm -rf "$dir/$3" "$dir/ck-$3" && mkdir -p "$dir"
  local t0=$SECONDS
  $E synth --layout "$1" --scale "$2" --out "$dir/ck-$3" --quiet
  $E ingest --layout "$dir/ck-$3/layout.json" --checkpoint "$dir/ck-$3" --store "$dir/$3" --quiet
  rm -rf "$dir/ck-$3"
  echo "($3: $1 at scale $2, $(du -sh "$dir/$3" | cut -f1), built in $((SECONDS - t0)) s)"
}
make_store deepseek-v4.1-flash "$scale" v41
make_store engram-demo "$demo_scale" demo
echo "== V4.1 store, host tier resident"
$B --store "$dir/v41" --threads "$threads" --seconds "$seconds" --sections "$sections" --loop-host resident
if [[ $sections == *loop* ]]; then
  echo "== V4.1 store, host tier a 1 GiB cache over the disk"
  $B --store "$dir/v41" --threads "$threads" --seconds "$seconds" --sections loop --loop-host cache --host-cache $((1 << 30))
fi
if [[ $sections == *transfer* ]]; then
  echo "== demo store (256 B rows), transfer"
  $B --store "$dir/demo" --threads "$threads" --seconds "$seconds" --sections transfer
fi

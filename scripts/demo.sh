#!/usr/bin/env bash
# The main job: installs what is missing, builds engram, then on the bundled slice of the real Brown trace
# (data/), with nothing to download:
#   1. hashes it for the DeepSeek-V4.1 layout (tokens, row lookups, distinct rows per region, hash rate);
#   2. sizes a host cache for it (distinct rows, reuse, hit rates of LRU, engram's policy and the optimum);
#   3. with a GPU (nvidia-smi sees one and the build has the GPU module): the model-shaped benchmark
#      (bench/bench_model) on a small synthetic V4.1 store: a transformer-shaped backbone with Engram
#      modules fed by engram, tables in HBM, in pinned host memory, on disk behind host and HBM caches,
#      and on an emulated small GPU; this machine calibrated (`engram calibrate`) and the planner's
#      prediction set beside the measurement (`engram plan --compare`).
#      Without a GPU: the whole pipeline on the CPU backend: the same small store, prefill and decode
#      steps through the prefetcher with a host row cache (share of rows per tier, tokens/s, rows/s,
#      per-layer waits); then the capacity planner for V4.1 on a machine calibrated like the lent H100
#      (docs/calibration-h100.json).
#   It says which of the two it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target engram_cli
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 &&
  cmake --build build --target help | grep -q '^bench_model:'; then
  gpu=1
  cmake --build build -j "$(nproc)" --target bench_model
fi
E=build/tools/engram
trace=(--tokens data/brown-1m.deepseek-v3.i32 --token-map data/deepseek-v3.token-map.i32)

echo "== 1. addressing: hash the trace"
$E trace summary --layout deepseek-v4.1-flash "${trace[@]}" --seq-len 4096

echo
echo "== 2. what a cache could serve"
$E trace analyze --layout deepseek-v4.1-flash "${trace[@]}" --seq-len 4096

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
$E synth --layout deepseek-v4.1-flash --scale 0.001 --out "$dir/ck" --quiet
$E ingest --layout "$dir/ck/layout.json" --checkpoint "$dir/ck" --store "$dir/store" --quiet
rm -rf "$dir/ck"

if [ "$gpu" = 1 ]; then
  echo
  echo "== 3. GPU present ($(nvidia-smi -L | head -1)): the model-shaped benchmark, and the planner beside it"
  $E calibrate --store "$dir/store" --disk-file "$dir/disk.bin" --disk-file-bytes 268435456 --seconds 0.25 \
    --out "$dir/cal.json"
  ENGRAM_SHARED_DATA_DIR="$PWD/data" build/bench/bench_model --store "$dir/store" --model dense-4b --layers 16 \
    --prefill 1,4096 --prefill-steps 3 --warmup-prefill 1 --decode 32 --decode-steps 16 --warmup-decode 32 \
    --ctx 1024 --hbm-cache 16M --host-cache 48M --json "$dir/run.json"
  $E plan --store "$dir/store" "${trace[@]}" --calibration "$dir/cal.json" --compare "$dir/run.json"
  echo
  echo "ran: the model-shaped benchmark on the GPU (bench_model, configurations none and a-d; docs/capacity-planning.md)"
else
  echo
  echo "== 3. no GPU: the pipeline on the CPU backend: store on disk -> host cache -> staged rows, per layer"
  $E prefetch --store "$dir/store" "${trace[@]}" --batch 32 --prefill 256 --decode 64 --host-cache 64M
  echo
  echo "== 4. the capacity planner: V4.1 on a machine calibrated like the lent H100 (docs/calibration-h100.json)"
  $E plan --layout deepseek-v4.1-flash "${trace[@]}" --calibration docs/calibration-h100.json \
    --layer-ms-decode 2.32 --layer-ms-prefill 52.4 --decode 64 --prefill 1,16384 --gpu-mem 16G --host-mem 192G \
    --plot "$dir/plan.svg"
  echo
  echo "ran: the CPU-backend pipeline (no GPU here) and the planner with a GPU machine's calibration"
fi

#!/usr/bin/env bash
# The main job: installs what is missing, builds engram, then on the bundled slice of the real Brown trace
# (data/), with nothing to download and no GPU:
#   1. hashes it for the DeepSeek-V4.1 layout (tokens, row lookups, distinct rows per region, hash rate);
#   2. sizes a host cache for it (distinct rows, reuse, hit rates of LRU, engram's policy and the optimum);
#   3. runs the whole pipeline: a small synthetic V4.1 store (0.1% of the rows) in a temporary directory,
#      then prefill and decode steps through the prefetcher with a host row cache, and reports the share
#      of rows each tier served, tokens/s, rows/s and per-layer waits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target engram_cli
E=build/tools/engram
trace=(--tokens data/brown-1m.deepseek-v3.i32 --token-map data/deepseek-v3.token-map.i32)

echo "== 1. addressing: hash the trace"
$E trace summary --layout deepseek-v4.1-flash "${trace[@]}" --seq-len 4096

echo
echo "== 2. what a cache could serve"
$E trace analyze --layout deepseek-v4.1-flash "${trace[@]}" --seq-len 4096

echo
echo "== 3. the pipeline: store on disk -> host cache -> staged rows, per layer"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
$E synth --layout deepseek-v4.1-flash --scale 0.001 --out "$dir/ck" --quiet
$E ingest --layout "$dir/ck/layout.json" --checkpoint "$dir/ck" --store "$dir/store" --quiet
$E prefetch --store "$dir/store" "${trace[@]}" --batch 32 --prefill 256 --decode 64 --host-cache 64M

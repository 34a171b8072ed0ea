#!/usr/bin/env bash
# The main job: installs what is missing, builds engram, then hashes the bundled slice of the real
# Brown trace (data/) for both built-in layouts and prints tokens, row lookups, distinct rows per
# region and the hashing rate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target engram_cli
for layout in deepseek-v4.1-flash engram-demo; do
  echo
  build/tools/engram trace summary --layout "$layout" --tokens data/brown-1m.deepseek-v3.i32 \
    --token-map data/deepseek-v3.token-map.i32 --seq-len 4096
done

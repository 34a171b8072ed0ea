#!/usr/bin/env bash
# The test command: installs what is missing, then builds and passes every check engram has.
#   1. clang-format: every C++ file is formatted (.clang-format)
#   2. Release build (with the GPU module when nvcc is present), warnings as errors, all tests
#      (GPU tests skip with a message where there is no GPU)
#   3. ASan + UBSan build of the host code, all tests
#   4. clang-tidy over every project source file (.clang-tidy), warnings as errors
# Exits non-zero on the first failure. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
step() { printf '\n==> %s\n' "$*"; }

step "clang-format"
git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror

step "release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
(cd build && ctest -j "$jobs" --output-on-failure)

step "Python package (python/engram) over libengram.so"
ENGRAM_LIBRARY="$PWD/build/capi/libengram.so.0" ENGRAM_CLI="$PWD/build/tools/engram" PYTHONPATH="$PWD/python" \
  python3 -m unittest discover -s python/tests

step "install, and build examples/ against the installed package (CMake config and pkg-config)"
inst="$PWD/build/install" ex="$PWD/build/examples"
rm -rf "$inst" "$ex"
cmake --install build --prefix "$inst" >/dev/null
cmake -S examples -B "$ex" -G Ninja -DCMAKE_PREFIX_PATH="$inst" >/dev/null
cmake --build "$ex"
pc_dir=$(dirname "$(find "$inst" -name engram.pc | head -1)")
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror examples/c/main.c $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs engram) \
  -o "$ex/engram_c_example_pkgconfig"
"$inst/bin/engram" synth --layout deepseek-v4.1-flash --scale 0.0001 --out "$ex/ck" --quiet
"$inst/bin/engram" ingest --layout "$ex/ck/layout.json" --checkpoint "$ex/ck" --store "$ex/store" --quiet
"$ex/engram_c_example" "$ex/store" >"$ex/c.txt"
LD_LIBRARY_PATH="$inst/lib" "$ex/engram_c_example_pkgconfig" "$ex/store" >"$ex/c-pkgconfig.txt"
"$ex/engram_cpp_example" "$ex/store" >"$ex/cpp.txt"
# Both C builds served the same rows; the C++ one served every layer.
diff <(grep '^step' "$ex/c.txt") <(grep '^step' "$ex/c-pkgconfig.txt")
grep -c '^step' "$ex/c.txt" | grep -qx 6 && grep -q '^engram_steps 3$' "$ex/c.txt" && grep -c '^layer' "$ex/cpp.txt" | grep -qx 2
echo "examples: built against $inst and run"

step "ASan + UBSan build and tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DENGRAM_SANITIZE=address,undefined \
  -DENGRAM_ENABLE_CUDA=OFF -DENGRAM_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j "$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest -j "$jobs" --output-on-failure)

step "clang-tidy"
run-clang-tidy-14 -p build -quiet -j "$jobs" "$(pwd)/(core|addressing|tools|tests|bench|memory|engram_store|prefetch|capi)/.*\.cpp$" \
  >build/clang-tidy.log 2>&1 || { grep -E 'warning:|error:' build/clang-tidy.log | sort -u; echo "clang-tidy failed"; exit 1; }
echo "clang-tidy: clean"

step "all checks passed"

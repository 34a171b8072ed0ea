#!/usr/bin/env bash
# Installs the Debian 12 packages engram builds against. Idempotent: it installs only what is
# missing and prints nothing when everything is already present. Run as root (or with sudo).
#
#   scripts/install-deps.sh            # build, test and tooling dependencies
#
# The CUDA Toolkit is not a Debian package here; when nvcc is found (PATH or /usr/local/cuda) the GPU
# module is built, otherwise the build is host-only and says so.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git file
  librocksdb-dev liburing-dev libxxhash-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev
  clang clang-tidy clang-format fio python3
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"

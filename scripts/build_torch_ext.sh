#!/usr/bin/env bash
# Builds the PyTorch extension (bindings/) against the torch of $PYTHON and places it next to the
# package, as python/flashsdpa/_flashsdpa_ops.so, where `import flashsdpa` finds it.
#
#   scripts/build_torch_ext.sh              # build dir build-torch/, all cores
#   PYTHON=/usr/bin/python3 JOBS=2 BUILD_DIR=/tmp/b scripts/build_torch_ext.sh
#
# FLASHSDPA_CUDA (AUTO/ON/OFF) defaults to OFF for a CPU-only torch and AUTO otherwise: a torch
# without CUDA cannot hand the extension CUDA tensors.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ -z "${PYTHON:-}" ]]; then
  # The first interpreter that has torch: python3 on PATH, else the system one.
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
if [[ -z "${PYTHON:-}" ]]; then
  echo "build_torch_ext: no python3 with torch found; set PYTHON" >&2
  exit 1
fi

build_dir=${BUILD_DIR:-$root/build-torch}
jobs=${JOBS:-$(nproc)}
# torch's CMake config directory, and torch's own prefix so that its libraries (torch/lib) are
# found before any other libtorch on the system (Debian's, say).
prefix=$("$PYTHON" -c 'import os, torch.utils; print(torch.utils.cmake_prefix_path + ";" + os.path.dirname(torch.__file__))')
torch_cuda=$("$PYTHON" -c 'import torch; print("ON" if torch.version.cuda else "OFF")')
cuda=${FLASHSDPA_CUDA:-$([[ $torch_cuda == ON ]] && echo AUTO || echo OFF)}

generator=()
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null; then
  generator=(-G Ninja)
fi

cmake -S "$root/bindings" -B "$build_dir" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DCMAKE_PREFIX_PATH="$prefix" \
  -DFLASHSDPA_CUDA="$cuda" \
  -DFLASHSDPA_TORCH_CUDA="$torch_cuda"
cmake --build "$build_dir" --target flashsdpa_torch -j "$jobs"

module=$build_dir/_flashsdpa_ops.so
if [[ ! -f "$module" ]]; then
  echo "build_torch_ext: the build produced no _flashsdpa_ops.so under $build_dir" >&2
  exit 1
fi
# Replace, never overwrite in place: a running interpreter may have the old file mapped.
install -m 0755 "$module" "$root/python/flashsdpa/_flashsdpa_ops.so.tmp"
mv -f "$root/python/flashsdpa/_flashsdpa_ops.so.tmp" "$root/python/flashsdpa/_flashsdpa_ops.so"
echo "build_torch_ext: installed $root/python/flashsdpa/_flashsdpa_ops.so (torch from $PYTHON)"

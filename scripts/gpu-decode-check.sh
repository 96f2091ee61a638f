#!/usr/bin/env bash
# One pass over cuda-decode on a GPU machine: build the decode tests and benchmark, every Decode*
# test, compute-sanitizer (memcheck and racecheck) on the small Decode*.Sanitize* subset, and the
# decode bandwidth benchmark against torch SDPA (flash, cuDNN) and a device-to-device copy.
# Everything lands in the output folder given as $1 (at most eight files):
#   build.log  tests.log  sanitizer.log  bench.log  decode.{json,md,png}
#
#   scripts/gpu-decode-check.sh OUT_DIR
# Environment:
#   BUILD_DIR               build folder (default build-decode-gpu)
#   FLASHSDPA_CUDA_GENCODE  nvcc -gencode flags (default: sm_90a only)
#   DECODE_CHECK_TESTS      gtest filter for the test step (default: Decode*)
#   DECODE_CHECK_BENCH      1 (default) runs the benchmark; 0 skips it
#   RESULTS_NAME            basename of the benchmark results (default: decode)
# Exit status: non-zero when the build, a test or the sanitizer failed.
set -u -o pipefail

out=${1:?usage: scripts/gpu-decode-check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-decode-gpu}
gencode=${FLASHSDPA_CUDA_GENCODE:--gencode=arch=compute_90a,code=sm_90a}
status=0

echo "== build"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv || true
  nvcc --version | tail -2
  start=$(date +%s)
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHSDPA_CUDA=ON \
    -DFLASHSDPA_CUDA_GENCODE="$gencode" &&
    cmake --build "$build" -j"$(nproc)" --target flashsdpa_cuda_tests flashsdpa_decode_bench &&
    echo "build time: $(($(date +%s) - start)) s"
} > "$out/build.log" 2>&1 || { echo "BUILD FAILED (see build.log)"; tail -30 "$out/build.log"; exit 1; }
grep -E "build time|decode.*spill" "$out/build.log" | sort -u | head

echo "== tests"
"$build/flashsdpa_cuda_tests" --gtest_filter="${DECODE_CHECK_TESTS:-Decode*}" > "$out/tests.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[       OK|tests ran|Failure" "$out/tests.log" | head -60

echo "== compute-sanitizer (Decode*.Sanitize*)"
{
  for tool in memcheck racecheck; do
    echo "---- $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$build/flashsdpa_cuda_tests" \
      --gtest_filter='Decode*.Sanitize*' 2>&1 || echo "SANITIZER $tool FAILED (exit $?)"
  done
} > "$out/sanitizer.log" 2>&1
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|FAILED|PASSED" "$out/sanitizer.log"
grep -q "SANITIZER .* FAILED" "$out/sanitizer.log" && status=1

if [ "${DECODE_CHECK_BENCH:-1}" = 1 ]; then
  echo "== benchmark"
  PYTHONUNBUFFERED=1 python3 "$root/bench/gpu/bench_decode.py" --bench "$build/flashsdpa_decode_bench" \
    --out "$out/${RESULTS_NAME:-decode}" > "$out/bench.log" 2>&1 || { echo "BENCHMARK FAILED"; status=1; }
  # The split heuristic against forced split counts at batch 1 (the shape where splits matter).
  for splits in 8 16 32 64 128; do
    "$build/flashsdpa_decode_bench" --splits $splits 1,32768,32,8,128,dense,0 1,8192,64,8,128,dense,0
  done >> "$out/bench.log" 2>&1
  # Timelines of one call per shape: when CTAs start, get their first chunk, finish; the combine.
  "$build/flashsdpa_decode_bench" --trace 1,32768,32,8,128,dense,0 8,8192,32,8,128,dense,0 32,4096,32,8,128,dense,0 \
    64,16384,32,8,128,dense,0 1,8192,64,8,128,dense,0 1,32768,32,8,128,paged,16 >> "$out/bench.log" 2>&1
  # Kernel durations and DRAM read rate of one batch-1 call at the clocks of the timed runs (the per-call time above includes
  # launches and the combine).
  if command -v ncu > /dev/null; then
    echo "---- ncu, batch 1 x 32k dense" >> "$out/bench.log"
    timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_read.sum.per_second \
      -k regex:"split_kv|combine" -s 6 -c 4 "$build/flashsdpa_decode_bench" 1,32768,32,8,128,dense,0 \
      >> "$out/bench.log" 2>&1 || echo "ncu failed" >> "$out/bench.log"
  fi
  tail -75 "$out/bench.log"
fi
exit $status

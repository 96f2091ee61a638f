#!/usr/bin/env bash
# One pass over the CUDA backend on a GPU machine: build, every GPU test, compute-sanitizer
# (memcheck and racecheck) on the small CudaForward.Sanitize* subset, and the prefill benchmark.
# Everything lands in the output folder given as $1 (at most eight files):
#   build.log  tests.log  sanitizer.log  flashsdpa.jsonl  bench.log  prefill.{json,md,png}
#
#   scripts/gpu-check.sh OUT_DIR
# Environment:
#   BUILD_DIR               build folder (default build-gpu)
#   FLASHSDPA_CUDA_GENCODE  nvcc -gencode flags (default: the project's, sm_80 + sm_90a + PTX)
#   GPU_CHECK_BENCH         full (default: flashsdpa and torch's backends) | flashsdpa | none
#   GPU_CHECK_FLEX          1 (default) times compiled FlexAttention too; 0 skips it
#   GPU_CHECK_TESTS         gtest filter for the test step (default: all)
# Exit status: non-zero when the build, a test or the sanitizer failed.
set -u -o pipefail

out=${1:?usage: scripts/gpu-check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-gpu}
jobs=$(nproc)
bench_mode=${GPU_CHECK_BENCH:-full}
status=0

gencode_arg=()
if [ -n "${FLASHSDPA_CUDA_GENCODE:-}" ]; then gencode_arg=(-DFLASHSDPA_CUDA_GENCODE="$FLASHSDPA_CUDA_GENCODE"); fi

echo "== build ($jobs jobs)"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
  nvcc --version | tail -2
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHSDPA_CUDA=ON "${gencode_arg[@]}" &&
    start=$(date +%s) &&
    cmake --build "$build" -j"$jobs" --target flashsdpa &&
    lib_done=$(date +%s) &&
    cmake --build "$build" -j"$jobs" --target flashsdpa_cuda_tests flashsdpa_gpu_bench &&
    echo "build time: library $((lib_done - start)) s, with tests and benchmark $(($(date +%s) - start)) s"
} > "$out/build.log" 2>&1 || { echo "BUILD FAILED (see build.log)"; tail -30 "$out/build.log"; exit 1; }
grep -E "build time|spill" "$out/build.log" | sort -u | head -20

echo "== GPU tests"
"$build/flashsdpa_cuda_tests" --gtest_filter="${GPU_CHECK_TESTS:-*}" > "$out/tests.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests ran|Failure|error" "$out/tests.log" | head -40

echo "== compute-sanitizer (CudaForward.Sanitize*)"
{
  for tool in memcheck racecheck; do
    echo "---- $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$build/flashsdpa_cuda_tests" \
      --gtest_filter='CudaForward.Sanitize*' 2>&1 || echo "SANITIZER $tool FAILED (exit $?)"
  done
} > "$out/sanitizer.log" 2>&1
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|FAILED|PASSED" "$out/sanitizer.log"
grep -q "SANITIZER .* FAILED" "$out/sanitizer.log" && status=1

if [ "$bench_mode" != none ]; then
  echo "== benchmark"
  {
    "$build/flashsdpa_gpu_bench" && "$build/flashsdpa_gpu_bench" --memory
  } > "$out/flashsdpa.jsonl" 2> "$out/bench.log" || status=1
  cat "$out/flashsdpa.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r.get("memory"): print("memory:", line.strip()); continue
    print(f"{r[\"dtype\"]} hd{r[\"hd\"]:>3} S{r[\"seqlen\"]:>6} {\"causal\" if r[\"causal\"] else \"      \"} {r[\"tflops\"]:7.1f} TFLOP/s  {r[\"ms\"]:.3f} ms")'
  if [ "$bench_mode" = full ]; then
    flex=()
    [ "${GPU_CHECK_FLEX:-1}" = 0 ] && flex=(--no-flex)
    PYTHONUNBUFFERED=1 python3 "$root/bench/gpu/bench_prefill.py" --flashsdpa-jsonl "$out/flashsdpa.jsonl" \
      --prefix "$out/prefill" "${flex[@]}" >> "$out/bench.log" 2>&1 || status=1
    [ -f "$out/prefill.md" ] && cat "$out/prefill.md"
  fi
fi
echo "== gpu-check status $status"
exit $status

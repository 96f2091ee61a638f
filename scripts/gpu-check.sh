#!/usr/bin/env bash
# One pass over the CUDA backend on a GPU machine: build, every GPU test, compute-sanitizer
# (memcheck and racecheck) on the small CudaForward.Sanitize* and CudaBackward.Sanitize* subsets,
# beside the tests, then the prefill and backward benchmarks.
# The forward tests and the sanitizer run twice: as selected, and forced onto the other prefill
# tier of each dtype (cuda-mma-sm80 for fp16/bf16, cuda-fp32 for fp32).
# Everything lands in the output folder given as $1:
#   build.log  tests.log  sanitizer.log  flashsdpa.jsonl  bench.log  prefill.{json,md,png}
#   backward.{json,md}
#
#   scripts/gpu-check.sh OUT_DIR
# Environment:
#   BUILD_DIR               build folder (default build-gpu)
#   FLASHSDPA_CUDA_GENCODE  nvcc -gencode flags (default: the project's, sm_80 + sm_90a + PTX)
#   GPU_CHECK_BENCH         full (default: flashsdpa and torch's backends) | flashsdpa | none
#   GPU_CHECK_FLEX          1 (default) times compiled FlexAttention too; 0 skips it
#   GPU_CHECK_FLEX_BUDGET   seconds of the torch benchmark after which FlexAttention is skipped
#   GPU_CHECK_SHARDS        parallel test processes (default: half the cores)
#   GPU_CHECK_TESTS         gtest filter for the test step (default: all, then CudaForward* again
#                           with FLASHSDPA_CUDA_FORWARD_TIER=cuda-mma-sm80,cuda-fp32; "-" skips the tests)
#   GPU_CHECK_SANITIZER     0 skips compute-sanitizer
#   GPU_CHECK_SWEEP         1 also times candidate tile shapes (sweep.jsonl)
#   GPU_CHECK_NCU           1 also profiles the hd128 16k bf16 forward with Nsight Compute (ncu.txt)
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

# The prefill has two tiers per dtype on Hopper (three for fp32): the CudaForward tests run once
# as selected (cuda-wgmma-sm90, and cuda-3xtf32-sm90 or cuda-dmma-sm90 by head dim, on compute
# capability 9.0) and once forced onto cuda-mma-sm80 and cuda-fp32, so all five stay tested. The forced pass also keeps cuda-fp32 on its
# plain grid (FLASHSDPA_FP32_KEY_SPLIT=0): the selected pass runs the batched hd 256 calls on the
# persistent kernel (splitting keys where the waves are uneven), the forced one on the plain grid.
mma_pass=(env FLASHSDPA_CUDA_FORWARD_TIER=cuda-mma-sm80,cuda-fp32 FLASHSDPA_FP32_KEY_SPLIT=0)

# The GPU tests spend most of their time in the float64 reference on the CPU, so they run as
# parallel gtest shards (one process each, sharing the GPU); in one process the suite took over
# 4 minutes on the H100 machine.
shards=${GPU_CHECK_SHARDS:-$(( jobs / 2 > 1 ? jobs / 2 : 1 ))}
run_sharded() {  # label, then the command; logs concatenated in shard order on stdout
  local label=$1 dir i failed=0
  shift
  dir=$(mktemp -d)
  local pids=()
  for ((i = 0; i < shards; i++)); do
    GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i "$@" > "$dir/$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed=1; done
  for ((i = 0; i < shards; i++)); do echo "==== shard $i of $shards ($label)"; cat "$dir/$i.log"; done
  rm -rf "$dir"
  [ $failed = 0 ] || echo "TESTS FAILED ($label)"
}

# compute-sanitizer runs beside the tests: four runs (memcheck and racecheck, as selected and
# forced onto cuda-mma-sm80 and cuda-fp32) on the small Sanitize* subsets, none of it timed.
san_dir=$(mktemp -d)
if [ "${GPU_CHECK_SANITIZER:-1}" != 0 ]; then
  for pass in selected mma; do
    runner=()
    [ "$pass" = mma ] && runner=("${mma_pass[@]}")
    for tool in memcheck racecheck; do
      {
        echo "---- $tool ($pass)"
        "${runner[@]}" compute-sanitizer --tool "$tool" --error-exitcode 3 "$build/flashsdpa_cuda_tests" \
          --gtest_filter='CudaForward.Sanitize*:CudaBackward.Sanitize*' 2>&1 || echo "SANITIZER $tool ($pass) FAILED (exit $?)"
      } > "$san_dir/$pass.$tool.log" 2>&1 &
    done
  done
fi

if [ "${GPU_CHECK_TESTS:-*}" != - ]; then
  echo "== GPU tests ($shards shards)"
  {
    run_sharded "as selected" "$build/flashsdpa_cuda_tests" --gtest_filter="${GPU_CHECK_TESTS:-*}"
    mma_filter=${GPU_CHECK_TESTS:-CudaForward*}
    [ "$mma_filter" = "*" ] && mma_filter='CudaForward*'
    run_sharded "cuda-mma-sm80,cuda-fp32" "${mma_pass[@]}" "$build/flashsdpa_cuda_tests" --gtest_filter="$mma_filter"
  } > "$out/tests.log" 2>&1
  grep -q "TESTS FAILED" "$out/tests.log" && status=1
  echo "  passed: $(grep -c '^\[       OK \]' "$out/tests.log"), failed: $(grep -c '^\[  FAILED  \] .*(' "$out/tests.log")"
  grep -E "^\[  FAILED  \] .*\(|Failure|TESTS FAILED" "$out/tests.log" | head -40
fi

if [ "${GPU_CHECK_SANITIZER:-1}" != 0 ]; then
  echo "== compute-sanitizer (CudaForward.Sanitize*, CudaBackward.Sanitize*, as selected and forced onto cuda-mma-sm80,cuda-fp32)"
  wait
  cat "$san_dir"/*.log > "$out/sanitizer.log"
  grep -E "^---- |ERROR SUMMARY|RACECHECK SUMMARY|FAILED|PASSED" "$out/sanitizer.log"
  grep -q "SANITIZER .* FAILED" "$out/sanitizer.log" && status=1
fi
rm -rf "$san_dir"

if [ "$bench_mode" != none ]; then
  echo "== benchmark"
  {
    "$build/flashsdpa_gpu_bench" && "$build/flashsdpa_gpu_bench" --memory
  } > "$out/flashsdpa.jsonl" 2> "$out/bench.log" || status=1
  # The fp32 grid once more on the FFMA tier, for the ratio of the two fp32 tiers in one job.
  FLASHSDPA_CUDA_FORWARD_TIER=cuda-fp32 "$build/flashsdpa_gpu_bench" --grid fp32 > "$out/fp32-ffma.jsonl" \
    2>> "$out/bench.log" || status=1
  python3 -c '
import json, sys
for line in [l for f in sys.argv[1:] for l in open(f)]:
    r = json.loads(line)
    if r.get("memory"):
        print("memory:", line.strip())
        continue
    print("%s hd%-3d S%-6d %-6s %7.1f TFLOP/s %8.3f ms %s" % (r["dtype"], r["hd"], r["seqlen"], "causal" if r["causal"] else "", r["tflops"], r["ms"], r.get("tier", "")))' "$out/flashsdpa.jsonl" "$out/fp32-ffma.jsonl"
  if [ "$bench_mode" = full ]; then
    flex=()
    [ "${GPU_CHECK_FLEX:-1}" = 0 ] && flex=(--no-flex)
    [ -n "${GPU_CHECK_FLEX_BUDGET:-}" ] && flex+=(--flex-budget "$GPU_CHECK_FLEX_BUDGET")
    PYTHONUNBUFFERED=1 python3 "$root/bench/gpu/bench_prefill.py" --flashsdpa-jsonl "$out/flashsdpa.jsonl" \
      --prefix "$out/prefill" "${flex[@]}" >> "$out/bench.log" 2>&1 || status=1
    [ -f "$out/prefill.md" ] && cat "$out/prefill.md"
    echo "== backward benchmark"
    PYTHONUNBUFFERED=1 python3 "$root/bench/gpu/bench_backward.py" --flashsdpa-bin "$build/flashsdpa_gpu_bench" \
      --prefix "$out/backward" >> "$out/bench.log" 2>&1 || status=1
    [ -f "$out/backward.md" ] && cat "$out/backward.md"
  fi
fi
if [ "${GPU_CHECK_SWEEP:-0}" = 1 ]; then
  echo "== tile sweep"
  "$build/flashsdpa_gpu_bench" --sweep > "$out/sweep.jsonl" 2>&1 || status=1
  python3 -c '
import json, sys
for line in [l for f in sys.argv[1:] for l in open(f)]:
    if line.startswith("{"):
        r = json.loads(line)
        print("hd%-3d S%-6d %-6s %-34s %7.1f TFLOP/s" % (r["hd"], r["seqlen"], "causal" if r["causal"] else "", r["sweep"], r["tflops"]))
    else:
        print(line.rstrip())' "$out/sweep.jsonl"
fi
if [ "${GPU_CHECK_NCU:-0}" = 1 ]; then
  echo "== ncu"
  ncu --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
    --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section InstructionStats \
    -k regex:mma_forward_kernel -c 1 "$build/flashsdpa_gpu_bench" --one bf16 128 16384 1 16 0 > "$out/ncu.txt" 2>&1
  grep -E "Duration|Throughput|Registers|Achieved Occupancy|Issue Slots|No Eligible|Warp Cycles Per Issued|Executed Ipc|Block Limit" "$out/ncu.txt" | head -40
fi
echo "== gpu-check status $status"
exit $status

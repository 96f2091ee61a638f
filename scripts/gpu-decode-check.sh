#!/usr/bin/env bash
# One pass over cuda-decode on a GPU machine, for every kernel variant under measurement: build
# the decode tests and benchmark, every Decode* test (the attention tests are parameterised over
# the variants: Decode/<Suite>.<Test>/<variant>), the decode bandwidth benchmark of the benchmarked
# variants against torch SDPA (flash, cuDNN) and a device-to-device copy, compute-sanitizer
# (memcheck and racecheck) on the small Decode*.Sanitize* subset (every variant), then per
# benchmarked variant per-CTA timelines, forced split counts at B 1 x 32k and B 8 x 8k, and Nsight
# Compute kernel times.
# Everything lands in the output folder given as $1 (at most eight files):
#   build.log  tests.log  sanitizer.log  bench.log  decode.{json,md,png}  [source.csv.gz]
# The steps run in order of importance; past DECODE_CHECK_BUDGET seconds the optional ones
# (sweeps, timelines, ncu) are skipped, so a run under a wall-clock limit still returns the tests
# and the benchmark.
#
#   scripts/gpu-decode-check.sh OUT_DIR
# Environment:
#   BUILD_DIR               build folder (default build-decode-gpu)
#   FLASHSDPA_CUDA_GENCODE  nvcc -gencode flags (default: sm_90a only)
#   DECODE_CHECK_TESTS      gtest filter for the test step (default: Decode*)
#   DECODE_CHECK_BENCH      1 (default) runs the benchmark; 0 skips it
#   DECODE_CHECK_VARIANTS   kernel variants whose tests run, comma-separated (default: all of
#                           them, auto,copy,tma,pair,wide; auto is the shipped choice, copy the
#                           only one that runs dense hd 128 / 256 on cp.async)
#   DECODE_CHECK_BENCH_VARIANTS  variants benchmarked, timed and swept, the first one the main
#                           table's (default: auto,copy)
#   DECODE_CHECK_BUDGET     seconds after which optional steps are skipped (default 330)
#   RESULTS_NAME            basename of the benchmark results (default: decode)
#   DECODE_CHECK_SOURCE     1: also source.csv.gz, per-SASS-instruction warp-stall samples of the
#                           first variant's attention kernel at B 1 x 32k (ncu)
#   DECODE_CHECK_FP32       1: also the fp32 benchmark (bench_decode_fp32.py: cuda-decode's fp32
#                           kernel, cuda-fp32, torch's fp32 backends), decode-fp32.{json,md}
# Exit status: non-zero when the build, a test or the sanitizer failed.
set -u -o pipefail

out=${1:?usage: scripts/gpu-decode-check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-decode-gpu}
gencode=${FLASHSDPA_CUDA_GENCODE:--gencode=arch=compute_90a,code=sm_90a}
variants=${DECODE_CHECK_VARIANTS:-auto,copy,tma,pair,wide}
bench_variants=${DECODE_CHECK_BENCH_VARIANTS:-auto,copy}
budget=${DECODE_CHECK_BUDGET:-330}
bench="$build/flashsdpa_decode_bench"
status=0
SECONDS=0
parts=$(mktemp -d)  # per-process logs, merged into $out (which takes at most eight files)

# True while there is time left for an optional step.
in_budget() {
  if [ "$SECONDS" -lt "$budget" ]; then return 0; fi
  echo "skipped (budget of $budget s spent): $1" | tee -a "$out/bench.log"
  return 1
}

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

echo "== tests (variants: $variants) at ${SECONDS} s"
# The variants' tests run as parallel processes (their float64 references are CPU work; the GPU
# calls are small), then the rest of Decode*; DECODE_CHECK_TESTS runs one filter instead.
tests="$build/flashsdpa_cuda_tests"
if [ -n "${DECODE_CHECK_TESTS:-}" ]; then
  "$tests" --gtest_filter="$DECODE_CHECK_TESTS" > "$out/tests.log" 2>&1 || status=1
else
  pids=()
  for v in ${variants//,/ }; do
    "$tests" --gtest_filter="Decode*/$v" > "$parts/tests.$v.log" 2>&1 &
    pids+=($!)
  done
  "$tests" --gtest_filter="Decode*-Decode/*" > "$parts/tests.~other.log" 2>&1 &
  pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  cat "$parts"/tests.*.log > "$out/tests.log"
fi
grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests ran|Failure" "$out/tests.log" | head -40
# Per variant: tests passed and failed (the parameter is the test name's last part).
for v in ${variants//,/ }; do
  echo "  $v: $(grep -cE "^\[       OK \].*/$v " "$out/tests.log") ok, $(grep -cE "^\[  FAILED  \].*/$v " "$out/tests.log") failed"
done

if [ "${DECODE_CHECK_BENCH:-1}" = 1 ]; then
  echo "== benchmark (variants: $bench_variants) at ${SECONDS} s"
  PYTHONUNBUFFERED=1 python3 "$root/bench/gpu/bench_decode.py" --bench "$bench" --variants "$bench_variants" \
    --out "$out/${RESULTS_NAME:-decode}" > "$out/bench.log" 2>&1 || { echo "BENCHMARK FAILED"; status=1; }
fi

if [ "${DECODE_CHECK_FP32:-0}" = 1 ]; then
  echo "== fp32 benchmark at ${SECONDS} s"
  PYTHONUNBUFFERED=1 python3 "$root/bench/gpu/bench_decode_fp32.py" --bench "$bench" --out "$out/decode-fp32" \
    >> "$out/bench.log" 2>&1 || { echo "FP32 BENCHMARK FAILED"; status=1; }
  tail -20 "$out/bench.log"
fi

echo "== compute-sanitizer (Decode*.Sanitize*, every variant) at ${SECONDS} s"
# memcheck and racecheck side by side (each serialises its own kernels; neither is timed).
for tool in memcheck racecheck; do
  {
    echo "---- $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$build/flashsdpa_cuda_tests" \
      --gtest_filter='Decode*.Sanitize*' 2>&1 || echo "SANITIZER $tool FAILED (exit $?)"
  } > "$parts/sanitizer.$tool.log" 2>&1 &
done
wait
cat "$parts/sanitizer.memcheck.log" "$parts/sanitizer.racecheck.log" > "$out/sanitizer.log"
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|FAILED|PASSED" "$out/sanitizer.log"
grep -q "SANITIZER .* FAILED" "$out/sanitizer.log" && status=1

if [ "${DECODE_CHECK_BENCH:-1}" = 1 ]; then
  # Timelines of one call per shape: when CTAs start, get their first chunk, finish; the combine.
  for v in ${bench_variants//,/ }; do
    in_budget "timelines $v" || break
    echo "---- timelines, $v" >> "$out/bench.log"
    "$bench" --variant "$v" --trace 1,32768,32,8,128,dense,0 8,8192,32,8,128,dense,0 32,4096,32,8,128,dense,0 \
      64,16384,32,8,128,dense,0 1,8192,64,8,128,dense,0 1,32768,32,8,128,paged,16 >> "$out/bench.log" 2>&1
  done
  # The split heuristic against forced split counts (auto's 8-warp CTA of split calls halves the
  # resident CTAs the heuristic sees: 16 splits at B 1 x 32k, 2 at B 8 x 8k).
  for v in ${bench_variants//,/ }; do
    in_budget "split sweep $v" || break
    echo "---- forced splits, $v" >> "$out/bench.log"
    for splits in 4 8 16 32 33 64; do
      "$bench" --variant "$v" --splits $splits 1,32768,32,8,128,dense,0 8,8192,32,8,128,dense,0
    done >> "$out/bench.log" 2>&1
  done
  # Kernel durations and DRAM read rate of one batch-1 call at the clocks of the timed runs (the
  # per-call time above includes launches and the combine).
  if command -v ncu > /dev/null; then
    for v in ${bench_variants//,/ }; do
      in_budget "ncu $v" || break
      echo "---- ncu, batch 1 x 32k dense, $v" >> "$out/bench.log"
      timeout 60 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_read.sum.per_second \
        -k regex:"split_kv|combine" -s 6 -c 4 "$bench" --variant "$v" 1,32768,32,8,128,dense,0 \
        >> "$out/bench.log" 2>&1 || echo "ncu failed ($v)" >> "$out/bench.log"
    done
  fi
  # Per-instruction warp-stall samples of the attention kernel at B 1 x 32k (SASS with stall
  # reasons; how run 9 of docs/perf-log.md found the serial query loads).
  if [ "${DECODE_CHECK_SOURCE:-0}" = 1 ] && command -v ncu > /dev/null && in_budget "source profile"; then
    timeout 120 ncu --clock-control none --cache-control none --import-source no --section SourceCounters \
      --section WarpStateStats --warp-sampling-interval 0 -k regex:split_kv -s 6 -c 1 -f -o "$parts/prof" \
      "$bench" --variant "${bench_variants%%,*}" 1,32768,32,8,128,dense,0 > "$parts/ncu.log" 2>&1 &&
      ncu -i "$parts/prof.ncu-rep" --page source --csv --print-source sass | gzip > "$out/source.csv.gz" ||
      { echo "source profile failed"; tail -5 "$parts/ncu.log"; } >> "$out/bench.log"
  fi
  # The short summary last: the variant comparison table, then timelines and split sweeps.
  sed -n '/^Every kernel variant/,$p' "$out/${RESULTS_NAME:-decode}.md" 2>/dev/null
  python3 - "$out/bench.log" <<'PY'
import json, sys
sweeps = {}
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if "trace" in r:
        print("%-40s ctas %4d work %4.1f rows %4.1f issued %4.1f loaded %4.1f query %4.1f first %5.1f "
              "loop p10/p50/max %6.1f %6.1f %6.1f end %6.1f combine %6.1f-%6.1f" % (
            r["trace"], r["ctas"], r["work_p50"], r["rows_p50"], r["issued_p50"], r["loaded_p50"], r["query_p50"],
            r["first_chunk_p50"], r["loop_end_p10"], r["loop_end_p50"], r["loop_end_max"], r["end_max"],
            r["combine_start"], r["combine_end"]))
        print("%-40s by rank on the SM (%s CTAs): issued %s first %s" % (
            "", "/".join(str(c) for c in r["ctas_by_rank"]), r["issued_by_rank"], r["first_by_rank"]))
    elif r.get("num_splits", 0) > 0:
        key = (r["variant"], r["batch"], r["seqlen_k"])
        sweeps.setdefault(key, []).append("%d:%.1f" % (r["num_splits"], r["graph_us"]))
for (v, b, s), cells in sweeps.items():
    print("splits (graph us) %-10s B %2d x %5d: %s" % (v, b, s, " ".join(cells)))
PY
fi
echo "total: ${SECONDS} s"
exit $status

#!/usr/bin/env bash
# Everything a GPU machine checks, in two parts that each fit a 10-minute window:
#   bash scripts/gpu-all.sh native OUT   build (all cores), every GPU test, compute-sanitizer
#                                        memcheck + racecheck on the forward and decode subsets,
#                                        the CPU backend against torch's CPU SDPA on all cores
#   bash scripts/gpu-all.sh torch OUT    the PyTorch suite on CPU and CUDA, torch.compile and
#                                        CUDA graphs, tiny transformers models (scripts/torch-check.sh)
#   bash scripts/gpu-all.sh release OUT  one pass before a release, within 10 minutes: build, every
#                                        GPU test (forward on both tensor-core tiers), compute-
#                                        sanitizer memcheck + racecheck on the forward, backward and
#                                        decode subsets, the prefill benchmark against torch's
#                                        backends and FlexAttention, the PyTorch suite on CUDA with
#                                        transformers and torch.compile, fp32 accuracy of every fp32
#                                        backend under SPEC 6 (each step time-boxed)
# The GPU benchmarks themselves are scripts/gpu-check.sh (prefill) and scripts/gpu-decode-check.sh
# (decode). Logs go to OUT as one archive plus the result files, so OUT holds few files.
# Debian's googletest packages may be unpacked from .deb/ first (the GPU machine has no gtest).
set -u -o pipefail
part=${1:?usage: scripts/gpu-all.sh native|torch|release OUT}
out=${2:?usage: scripts/gpu-all.sh native|torch|release OUT}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
status=0

if [ -d "$root/.deb" ] && ! ls /usr/include/gtest/gtest.h >/dev/null 2>&1; then
  for f in "$root"/.deb/*.deb; do dpkg -x "$f" /; done
fi

case "$part" in
  native)
    BUILD_DIR="$root/build-gpu" GPU_CHECK_BENCH=none bash "$root/scripts/gpu-check.sh" "$work/forward" || status=1
    echo "== compute-sanitizer (Decode*.Sanitize*)"
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 3 "$root/build-gpu/flashsdpa_cuda_tests" \
        --gtest_filter='Decode*.Sanitize*' > "$work/decode-$tool.log" 2>&1 || status=1
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$work/decode-$tool.log"
    done
    echo "== CPU backend against torch's CPU SDPA ($(nproc) threads)"
    cmake --build "$root/build-gpu" -j"$(nproc)" --target flashsdpa_cli > "$work/cli-build.log" 2>&1 || status=1
    lscpu > "$work/lscpu.txt" 2>&1
    PYTHONUNBUFFERED=1 python3 "$root/bench/cpu_vs_torch.py" --flashsdpa "$root/build-gpu/flashsdpa" \
      --threads "$(nproc)" --out-dir "$out" 2>&1 | tee "$work/cpu-bench.log" || status=1
    ;;
  torch)
    bash "$root/scripts/torch-check.sh" "$work/torch" || status=1
    cat "$work/torch/summary.txt" 2>/dev/null
    ;;
  release)
    # gpu-check: build, the GPU tests in parallel shards (both tensor-core tiers), compute-sanitizer
    # on the forward and backward subsets (four runs side by side), the prefill benchmark with
    # every peer (FlexAttention skipped past 150 s of the torch side). The logs are archived after
    # every step, so a step cut off by its time box still leaves the earlier ones.
    GPU_CHECK_FLEX_BUDGET=150 BUILD_DIR="$root/build-gpu" \
      timeout 400 bash "$root/scripts/gpu-check.sh" "$work/forward" || status=1
    cp "$work"/forward/prefill.* "$work"/forward/backward.* "$out"/ 2>/dev/null
    tar -C "$work" -czf "$out/$part-logs.tgz" .
    STEPS="build suite-cuda transformers-cuda compile-cuda" timeout 170 bash "$root/scripts/torch-check.sh" \
      "$work/torch" > "$work/torch-check.log" 2>&1 || status=1
    cat "$work/torch/summary.txt" 2>/dev/null
    tar -C "$work" -czf "$out/$part-logs.tgz" .
    echo "== compute-sanitizer (Decode*.Sanitize*), beside it fp32 accuracy under SPEC 6 (bench/gpu/fp32_accuracy.py)"
    for tool in memcheck racecheck; do
      timeout 45 compute-sanitizer --tool "$tool" --error-exitcode 3 "$root/build-gpu/flashsdpa_cuda_tests" \
        --gtest_filter='Decode*.Sanitize*' > "$work/sanitizer-decode-$tool.log" 2>&1 &
    done
    PYTHONPATH="$root/python" timeout 60 python3 "$root/bench/gpu/fp32_accuracy.py" --json "$out/fp32-accuracy.json" \
      > "$work/fp32-accuracy.log" 2>&1 &
    wait || status=1
    cat "$work/fp32-accuracy.log"
    for tool in memcheck racecheck; do
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$work/sanitizer-decode-$tool.log"
      grep -qE "ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards" "$work/sanitizer-decode-$tool.log" || status=1
    done
    ;;
  *)
    echo "unknown part: $part (native, torch or release)"; exit 2 ;;
esac

tar -C "$work" -czf "$out/$part-logs.tgz" . && rm -rf "$work"
echo "== gpu-all $part status $status"
exit $status

#!/usr/bin/env bash
# Installs the dependencies, builds everything with every core and runs the whole test suite:
# the C++ tests through ctest, then the Python tests when tests/python exists.
#   sudo bash scripts/test.sh
# The build directory is ./build (override with FLASHSDPA_BUILD_DIR). Exit status is non-zero when
# anything fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build_dir=${FLASHSDPA_BUILD_DIR:-build}
jobs=$(nproc)

bash scripts/setup.sh

as_user=()
if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
  as_user=(sudo -u "$SUDO_USER" --preserve-env=PATH,FLASHSDPA_BUILD_DIR)
fi

start=$SECONDS
"${as_user[@]}" cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DFLASHSDPA_TESTS=ON -DFLASHSDPA_BENCH=ON
"${as_user[@]}" cmake --build "$build_dir" -j"$jobs"
echo "test: build took $((SECONDS - start)) s"

start=$SECONDS
(cd "$build_dir" && "${as_user[@]}" ctest --output-on-failure -j"$jobs")
echo "test: C++ tests took $((SECONDS - start)) s"

if [ -d tests/python ]; then
  start=$SECONDS
  export FLASHSDPA_BUILD_DIR=$build_dir
  status=0
  if [ -f scripts/test-python.sh ]; then
    "${as_user[@]}" bash scripts/test-python.sh || status=$?
  else
    "${as_user[@]}" /usr/bin/python3 -m pytest tests/python || status=$?
  fi
  # pytest's 5 means "no tests collected": an empty suite is not a failure.
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
    echo "test: Python tests failed (exit status $status)" >&2
    exit "$status"
  fi
  echo "test: Python tests took $((SECONDS - start)) s"
fi
echo "test: all tests passed"

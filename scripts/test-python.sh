#!/usr/bin/env bash
# Builds the PyTorch extension and runs the Python tests on the CPU, with Debian's python3-torch on
# /usr/bin/python3 (override with PYTHON). Extra arguments go to pytest.
#   bash scripts/test-python.sh [pytest args]
# The only things it installs are the Debian packages python3-torch, python3-pytest and
# python3-numpy, and only when they are missing and it runs as root. The extension builds in
# build-torch/ (override with BUILD_DIR). Exit status: pytest's, with 5 ("no tests collected")
# counted as success.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-/usr/bin/python3}

if ! "$python" -c 'import torch, pytest, numpy' 2>/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "test-python: installing python3-torch python3-pytest python3-numpy"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-torch python3-pytest python3-numpy >/dev/null
  else
    echo "test-python: $python lacks torch, pytest or numpy;" \
         "install them with: sudo apt-get install -y python3-torch python3-pytest python3-numpy" >&2
    exit 1
  fi
fi

start=$SECONDS
PYTHON=$python BUILD_DIR=${BUILD_DIR:-$root/build-torch} JOBS=${JOBS:-$(nproc)} \
  bash "$root/scripts/build_torch_ext.sh"
echo "test-python: extension build took $((SECONDS - start)) s"

cd "$root"
status=0
PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest tests/python -q -rs "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test-python: no tests collected"
  status=0
fi
exit "$status"

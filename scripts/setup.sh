#!/usr/bin/env bash
# Installs the Debian packages flashsdpa's build and tests need. Idempotent: when everything is
# already installed it touches nothing (no apt at all). Run as root to install; run as another
# user it only reports what is missing and fails. The CUDA toolkit is never required: the CUDA
# backend is built when nvcc happens to be present.
set -euo pipefail

# Needed to build and run the C++ tests.
required=(build-essential cmake libgtest-dev)
# Wanted but not essential: without them the benchmarks or the Python tests are skipped.
# libtorch-dev holds TorchConfig.cmake, which the torch binding's build finds (python3-torch alone
# has the Python side only).
optional=(libbenchmark-dev python3 python3-pytest python3-numpy python3-torch libtorch-dev)

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in "${required[@]}" "${optional[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all build and test dependencies are installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing Debian packages: ${missing[*]}" >&2
  echo "setup: install them with:  sudo apt-get install -y ${missing[*]}" >&2
  echo "setup: (or run this script with sudo)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "setup: installing ${missing[*]}"
apt-get update -qq || echo "setup: apt-get update failed; going on with the package lists already here" >&2

# A package without an install candidate (a distribution that lacks python3-torch, say) is
# fatal only when it is required.
installable=()
for pkg in "${missing[@]}"; do
  candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2 }')
  if [ -n "$candidate" ] && [ "$candidate" != "(none)" ]; then
    installable+=("$pkg")
  elif [[ " ${required[*]} " == *" $pkg "* ]]; then
    echo "setup: required package $pkg has no install candidate in the configured apt sources" >&2
    exit 1
  else
    echo "setup: optional package $pkg is not available here; the parts that need it will be skipped" >&2
  fi
done

if [ ${#installable[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${installable[@]}"
fi
echo "setup: done"

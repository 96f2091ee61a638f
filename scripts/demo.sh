#!/usr/bin/env bash
# From a fresh Debian machine to a checked demo: installs the dependencies, configures and builds
# the flashsdpa tool with every core, and runs `flashsdpa demo`.
#   sudo bash scripts/demo.sh [demo flags, e.g. --threads 4]
# The build directory is ./build (override with FLASHSDPA_BUILD_DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build_dir=${FLASHSDPA_BUILD_DIR:-build}

bash scripts/setup.sh

# Under sudo, build as the invoking user so the checkout does not fill with root-owned files.
as_user=()
if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
  as_user=(sudo -u "$SUDO_USER" --preserve-env=PATH)
fi

"${as_user[@]}" cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
"${as_user[@]}" cmake --build "$build_dir" -j"$(nproc)" --target flashsdpa_cli
"${as_user[@]}" "$build_dir/flashsdpa" demo "$@"

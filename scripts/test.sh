#!/usr/bin/env bash
# Builds lpd (installing what is missing on Debian 12) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
./scripts/install-s3rver.sh
build_dir=${LPD_BUILD_DIR:-build}
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" --timeout 900

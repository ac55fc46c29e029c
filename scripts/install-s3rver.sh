#!/usr/bin/env bash
# Installs s3rver (an S3 server over a folder, for the storage tests) into
# .tools/ (ignored by git). Safe to run again: skips a matching install.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.7.1
installed=.tools/node_modules/s3rver/package.json
if [ -f "$installed" ] && grep -q "\"version\": \"$version\"" "$installed"; then
  exit 0
fi
npm install --prefix .tools --no-audit --no-fund --save-exact \
  "s3rver@$version" >/dev/null

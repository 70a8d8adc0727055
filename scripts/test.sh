#!/usr/bin/env bash
# One command: install dependencies, build, run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
# The suite runs with a private TMPDIR that must be empty afterwards: every test removes what it
# makes, pass or fail, so repeated runs do not fill the disk.
export TMPDIR="$PWD/build/test-tmp"
rm -rf "$TMPDIR" && mkdir -p "$TMPDIR"
rc=0
(cd build && ctest --output-on-failure -j 2 --timeout 900) || rc=$?
left=$(ls -A "$TMPDIR")
if [ -n "$left" ]; then
  echo "[test] error: the suite left files in TMPDIR ($TMPDIR):" >&2
  echo "$left" | head -20 >&2
  rc=1
fi
exit "$rc"

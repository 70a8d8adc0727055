#!/usr/bin/env bash
# The unit tests remove their temporary directories when they pass and when they fail: run the
# temp-dir tests (one fails on purpose) with a private TMPDIR and check nothing is left in it.
set -euo pipefail
ECDLM="$1"
TESTS="$(dirname "$ECDLM")/ecdlm_tests"
[ -x "$TESTS" ] || { echo "FAIL: $TESTS not built" >&2; exit 1; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
source "$2/tests/e2e/lib.bash"

mkdir "$TMP/t"
TMPDIR="$TMP/t" "$TESTS" --gtest_filter='TestTempDirs.MadeFreshAndWritable' > "$TMP/pass.txt" 2>&1 \
  || { cat "$TMP/pass.txt"; fail "the passing temp-dir test failed"; }
left=$(ls -A "$TMP/t")
[ -z "$left" ] || fail "a passing test left in TMPDIR: $left"

if TMPDIR="$TMP/t" "$TESTS" --gtest_also_run_disabled_tests \
     --gtest_filter='TestTempDirs.DISABLED_FailsAfterMakingADir' > "$TMP/fail.txt" 2>&1; then
  fail "the deliberately failing test passed"
fi
grep -q "deliberate failure" "$TMP/fail.txt" || { cat "$TMP/fail.txt"; fail "the failing test did not run"; }
left=$(ls -A "$TMP/t")
[ -z "$left" ] || fail "a failing test left in TMPDIR: $left"

# ECDLM_KEEP_TEST_TMP=1 keeps them for a post-mortem.
ECDLM_KEEP_TEST_TMP=1 TMPDIR="$TMP/t" "$TESTS" --gtest_filter='TestTempDirs.MadeFreshAndWritable' > /dev/null 2>&1
[ "$(ls -A "$TMP/t" | wc -l)" -eq 2 ] || fail "ECDLM_KEEP_TEST_TMP=1 did not keep the two directories"
echo "temp-dir hygiene: ok"

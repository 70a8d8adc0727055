# Shared helpers of the e2e scripts, sourced after TMP is set (.bash: the e2e glob only registers *.sh).
fail() { echo "FAIL: $*" >&2; exit 1; }

# Runs the rest of the command line expecting exit code $1 (a signal gives 128+N, never 2);
# stdout goes to $TMP/out.txt, stderr to $TMP/err.txt.
expect_rc() {
  local want="$1"; shift
  set +e
  "$@" > "$TMP/out.txt" 2> "$TMP/err.txt"
  local rc=$?
  set -e
  [ "$rc" -eq "$want" ] || { cat "$TMP/err.txt" >&2; fail "exit $rc (want $want): $*"; }
}

# Runs the rest of the command line expecting it to fail with $1 (fixed text) in its stderr,
# which stays in $TMP/bad.txt.
expect_fail() {
  local want="$1"; shift
  if "$@" > /dev/null 2> "$TMP/bad.txt"; then fail "accepted: $*"; fi
  grep -qF -- "$want" "$TMP/bad.txt" || { cat "$TMP/bad.txt"; fail "error for '$*' does not mention $want"; }
}

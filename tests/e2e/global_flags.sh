#!/usr/bin/env bash
# End-to-end: the global flags. A thread count above the CPUs this process may use is capped with
# a warning before any pool starts (--threads 100000 used to hang), and --threads / -q / -v are
# accepted after the subcommand too (they used to be "arguments not expected").
# Usage: bash global_flags.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
TINY="$ROOT/../shared/golden/tiny"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
[ -f "$TINY/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($TINY)"; exit 0; }
CPUS=$(nproc)
IDS=(--prompt-ids 182,199,120,239 -n 8 --diffusion-block-length 8 --diffusion-steps 8 --eos-id 298 --mask-id 299)

# --- a thread count above the machine: capped, with a warning, in seconds ------------------------
for args in "--threads 100000 info -m $TINY" "info -m $TINY --threads 100000" "-q --threads 2147483647 info -m $TINY"; do
  # shellcheck disable=SC2086
  expect_rc 0 timeout 60 "$ECDLM" $args
  grep -qF "exceeds the $CPUS CPUs this process may run on; using $CPUS" "$TMP/err.txt" \
    || { cat "$TMP/err.txt"; fail "no cap warning: $args"; }
done
expect_rc 0 timeout 60 "$ECDLM" -v --threads 100000 info -m "$TINY"
grep -qF "threads $CPUS" "$TMP/err.txt" || { cat "$TMP/err.txt"; fail "torch did not get $CPUS threads"; }
expect_rc 0 timeout 60 "$ECDLM" -v --threads 1 info -m "$TINY"
grep -qF "exceeds" "$TMP/err.txt" && fail "warned about --threads 1"
grep -qF "threads 1" "$TMP/err.txt" || { cat "$TMP/err.txt"; fail "--threads 1 not applied"; }
expect_fail "--threads" "$ECDLM" --threads -2 info -m "$TINY"
expect_fail "--threads" "$ECDLM" info -m "$TINY" --threads abc

# --- global flags after the subcommand ------------------------------------------------------------
expect_rc 0 "$ECDLM" generate -m "$TINY" "${IDS[@]}" --threads 2 --json
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$TMP/out.txt" || fail "generate --threads 2: no JSON"
expect_rc 0 "$ECDLM" info -m "$TINY" -v --threads 2
grep -qF "threads 2" "$TMP/err.txt" || { cat "$TMP/err.txt"; fail "-v --threads 2 after info not applied"; }
expect_rc 0 "$ECDLM" info -m "$TINY" --threads 2 -q
[ -s "$TMP/err.txt" ] && fail "-q after info: stderr not quiet: $(cat "$TMP/err.txt")"
expect_rc 0 "$ECDLM" info -m "$TINY" --huge-pages false --json
# Flags before the subcommand still work, and an unknown flag is still refused.
expect_rc 0 "$ECDLM" --threads 2 -q info -m "$TINY"
expect_fail "--no-such-flag" "$ECDLM" info -m "$TINY" --no-such-flag
echo "global_flags e2e: OK"

#!/usr/bin/env bash
# End-to-end: checkpoints under faults. A run killed while writing leaves `step-N.tmp.PID` (and
# `best.tmp.PID`); the next start and --resume remove them and say so, and restore an orphaned
# `.old.PID`. A full disk (a small tmpfs) while writing a checkpoint: exit 2 naming the path and
# "No space left on device", no temp dir left, the previous checkpoint intact.
# Usage: bash checkpoint_faults.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
TMP=$(mktemp -d)
MNT="$TMP/mnt"
cleanup() { if mountpoint -q "$MNT" 2> /dev/null; then umount "$MNT"; fi; rm -rf "$TMP"; }
trap cleanup EXIT
source "$ROOT/tests/e2e/lib.bash"
cd "$TMP"
python3 "$ROOT/tests/e2e/toy_corpus.py" 3 40 corpus.jsonl
"$ECDLM" -q prepare-data --source jsonl --input corpus.jsonl --out data --vocab-size 300 --val-fraction 0.1
TRAIN=(--threads 1 train --config "$ROOT/configs/tiny.json" --data data --samples 0 --train-eval-every 3)

# --- stale temporaries: a dead writer's pid (a finished child's) -----------------------------------
DEAD=$(sh -c 'echo $$')
"$ECDLM" -q "${TRAIN[@]}" --out run --train-halt-at 3
CK=run/checkpoints
test -d "$CK/step-00000003" || fail "no step-3 checkpoint"
cp -r "$CK/step-00000003" "$CK/step-00000006.tmp.$DEAD"        # killed mid-write
head -c 100 "$CK/step-00000003/model.safetensors" > "$CK/step-00000006.tmp.$DEAD/model.safetensors"
mkdir "run/best.tmp.$DEAD"; echo x > "run/best.tmp.$DEAD/config.json"
mv run/best "run/best.old.$DEAD"                                 # killed between the two renames
echo mine > "$CK/step-notes.tmp.txt"                # not ours: left alone
expect_rc 0 "$ECDLM" "${TRAIN[@]}" --out run --resume
for s in "removed stale temporary run/checkpoints/step-00000006.tmp.$DEAD" \
         "removed stale temporary run/best.tmp.$DEAD" "restored run/best from best.old.$DEAD"; do
  grep -qF "$s" err.txt || { cat err.txt; fail "log lacks: $s"; }
done
ls run "$CK" | grep -q '\.tmp\.[0-9]\|\.old\.[0-9]' && fail "temporaries left: $(ls run "$CK")"
test -f "$CK/step-notes.tmp.txt" || fail "a file that is not ecdlm's temporary was removed"
test -f run/best/best.json -a -f "$CK/step-00000006/model.safetensors" || fail "resume did not finish"
# A fresh start (no --resume) cleans up too.
mkdir "$CK/step-00000009.tmp.$DEAD"
expect_rc 0 "$ECDLM" "${TRAIN[@]}" --out run --train-steps 3
grep -qF "removed stale temporary run/checkpoints/step-00000009.tmp.$DEAD" err.txt || { cat err.txt; fail "start"; }
test ! -e "$CK/step-00000009.tmp.$DEAD" || fail "start left the stale temp dir"

# --- full disk while writing a checkpoint --------------------------------------------------------
mkdir "$MNT"
if ! mount -t tmpfs -o size=4m tmpfs "$MNT" 2> /dev/null; then
  [ "${CI:-}" = true ] && fail "cannot mount a tmpfs for the full-disk case (CI must run it)"
  echo "SKIP: cannot mount a tmpfs (needs root)"; exit 77
fi
"$ECDLM" -q "${TRAIN[@]}" --out "$MNT/run" --train-halt-at 3
(cd "$MNT/run/checkpoints/step-00000003" && sha256sum * > "$TMP/step3.sha")
# Leave 16 KiB free: less than one checkpoint's weights.
avail=$(df -B1 --output=avail "$MNT" | tail -1)
head -c $((avail - 16384)) /dev/zero > "$MNT/filler" 2> /dev/null || true
expect_rc 2 "$ECDLM" "${TRAIN[@]}" --out "$MNT/run" --resume
grep -qF "$MNT/run/" err.txt || { cat err.txt; fail "the error does not name the checkpoint path"; }
grep -qi "no space left" err.txt || { cat err.txt; fail "the error does not say 'no space left'"; }
find "$MNT/run" -name '*.tmp.*' | grep -q . && fail "temporaries left: $(find "$MNT/run" -name '*.tmp.*')"
(cd "$MNT/run/checkpoints/step-00000003" && sha256sum -c --quiet "$TMP/step3.sha") || fail "step 3 changed"
rm "$MNT/filler"
echo "checkpoint_faults e2e: OK"

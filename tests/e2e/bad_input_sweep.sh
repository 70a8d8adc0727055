#!/usr/bin/env bash
# End-to-end sweep of bad input over the subcommands' flags and files: huge, zero and negative
# numbers, empty files, directories where files are expected, files where directories are
# expected, unreadable files. Every case: exit 2 (never a signal, never 0 or 3), a message naming
# the flag or file, and nothing written. Cases marked "was:" failed before (exit 0 or bad_alloc).
# Usage: bash bad_input_sweep.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
TINY="$ROOT/../shared/golden/tiny"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
[ -f "$TINY/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($TINY)"; exit 0; }
cd "$TMP"
python3 "$ROOT/tests/e2e/toy_corpus.py" 3 40 corpus.jsonl
"$ECDLM" -q --threads 1 prepare-data --source jsonl --input corpus.jsonl --out data --vocab-size 300 --val-fraction 0.1
mkdir emptydir; : > empty.txt; : > out.txt; : > err.txt  # (out/err.txt: expect_rc's)
echo '{"model": {"num_experts": 1000000000, "hidden_size": 100000}, "train": {"max_steps": 1}}' > huge.json
T="$ROOT/configs/tiny.json"
IDS=(--prompt-ids 182,199,120,239 -n 8 --eos-id 298 --mask-id 299)

# bad WANT ARGS...: exit 2 with WANT (fixed string) in stderr, no bad_alloc or JSON-library
# internals, and no new entry in the working directory.
bad() {
  local want="$1"; shift
  local before; before=$(ls -A)
  expect_rc 2 timeout 120 "$ECDLM" --threads 1 "$@"
  grep -qF -- "$want" "$TMP/err.txt" || fail "stderr of '$*' lacks '$want': $(cat "$TMP/err.txt")"
  grep -q "bad_alloc\|json.exception" "$TMP/err.txt" && fail "'$*' leaks internals: $(cat "$TMP/err.txt")"
  [ "$(ls -A)" = "$before" ] || fail "'$*' left: $(comm -13 <(echo "$before") <(ls -A))"
}

# --- numbers ------------------------------------------------------------------------------------
bad "--diffusion-steps" generate -m "$TINY" "${IDS[@]}" --diffusion-steps -3                # was: exit 0
bad "--diffusion-block-length" generate -m "$TINY" "${IDS[@]}" --diffusion-block-length -1  # was: exit 0
bad "out of memory" generate -m "$TINY" "${IDS[@]}" --num-samples 1000000000000             # was: bad_alloc
bad "--gen-length" generate -m "$TINY" --prompt-ids 1,2 -n 0 --eos-id 298 --mask-id 299
bad "--gen-length" generate -m "$TINY" --prompt-ids 1,2 -n 1000000000000 --eos-id 298 --mask-id 299
bad "--top-p" generate -m "$TINY" "${IDS[@]}" --top-p 0
bad "--temperature" generate -m "$TINY" "${IDS[@]}" --temperature -1
bad "--threads" info -m "$TINY" --threads -1
bad "--max-shard-size" convert -m "$TINY" -o out --max-shard-size 0
bad "--max-shard-size" convert -m "$TINY" -o out --max-shard-size -1
bad "--vocab-size" prepare-data --source jsonl --input corpus.jsonl --out d --vocab-size 0
bad "--vocab-size" prepare-data --source jsonl --input corpus.jsonl --out d --vocab-size 1000000000000
bad "--train-batch-size" train --config "$T" --data data --out run --train-batch-size 0
bad "--train-steps" train --config "$T" --data data --out run --train-steps -5
bad "--train-lr" train --config "$T" --data data --out run --train-lr -1
bad "--eval-windows" eval -m "$TINY" --data data --eval-windows 0
# NaN passes CLI11's range checks (every comparison with it is false): float flags refuse it.
bad "--init-popularity-bias: must be a finite number, got nan" init -c "$TINY/config.json" -o out \
  --init-routing calibrated --init-popularity-bias nan
bad "--moe-capacity-gaussian-sigma: must be a finite number, got inf" schedule --moe-capacity-gaussian-sigma inf
bad "--val-fraction: must be a finite number, got nan" prepare-data --source jsonl --input corpus.jsonl --out d \
  --val-fraction nan
bad "--temperature: must be a finite number, got nan" bench serve --temperature nan
bad "--temperature: must be a finite number >= 0" generate -m "$TINY" "${IDS[@]}" --temperature inf
bad "moe_aux_loss_coeff: must be a finite number >= 0" train --config "$T" --data data --out run --moe-aux-loss-coeff nan
# A model far beyond this machine: refused before anything is allocated or written.
bad "model config: the model has" train --config huge.json --data data --out run   # was: bad_alloc
bad "out: the model has" init -c huge.json -o out                                  # was: bad_alloc

# --- empty files --------------------------------------------------------------------------------
bad "empty.txt: the file is empty" train --config empty.txt --data data --out run
bad "empty.txt: the file is empty" init -c empty.txt -o out
bad "empty.txt: the file is empty" info -m empty.txt
bad "no non-empty documents" prepare-data --source jsonl --input empty.txt --out d
bad "empty.txt: header" logits -m "$TINY" --input empty.txt --out o.safetensors
bad "not a valid SentencePiece model" tokenize --tokenizer empty.txt --text hi

# --- directories where files are expected -------------------------------------------------------
bad "emptydir: is a directory, not a file" tokenize -m data --input emptydir               # was: exit 0
bad "emptydir: is a directory, not a file" init -c emptydir -o out
bad "emptydir" logits -m "$TINY" --input emptydir --out o.safetensors
bad "emptydir" prepare-data --source jsonl --input emptydir --out d
bad "emptydir" train --config emptydir --data data --out run

# --- files where directories are expected -------------------------------------------------------
cp empty.txt afile
bad "afile: exists and is not a directory" convert -m "$TINY" -o afile                       # was: exit 0
[ -f afile ] && [ ! -s afile ] || fail "convert replaced the file afile"
bad "afile" train --config "$T" --data data --out afile
bad "afile" prepare-data --source jsonl --input corpus.jsonl --out afile
bad "afile" train --config "$T" --data afile --out run
bad "afile" analyze afile
bad "afile/x" info -m afile/x
bad "emptydir" logits -m "$TINY" --input "$TINY/golden.safetensors" --out emptydir
bad "emptydir" tokenize -m data --text hi --output emptydir
rm afile

# --- unreadable files (as nobody when run as root: root reads everything) -----------------------
as_user() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; else "$@"; fi; }
if [ "$(id -u)" != 0 ] || command -v setpriv > /dev/null; then
  chmod 755 "$TMP"
  mkdir ro w && cp "$TINY/config.json" "$TINY/model.safetensors" ro/ && cp "$T" ro/run.json && cp corpus.jsonl ro/
  chmod 777 w && chmod 000 ro/config.json ro/run.json ro/corpus.jsonl
  before=$(ls -A)
  for args in "info -m ro" "train --config ro/run.json --data data --out w/run" \
              "prepare-data --source jsonl --input ro/corpus.jsonl --out w/d --vocab-size 300"; do
    # shellcheck disable=SC2086
    expect_rc 2 as_user "$ECDLM" --threads 1 $args
    grep -qi "permission denied\|cannot open" "$TMP/err.txt" || fail "'$args': $(cat "$TMP/err.txt")"
  done
  chmod 644 ro/config.json && chmod 000 ro/model.safetensors
  expect_rc 2 as_user "$ECDLM" --threads 1 logits -m ro --input "$TINY/golden.safetensors" --out w/x.safetensors
  grep -qi "permission denied" "$TMP/err.txt" || fail "unreadable weights: $(cat "$TMP/err.txt")"
  [ "$(ls -A)" = "$before" ] && [ -z "$(ls -A w)" ] || fail "unreadable cases wrote files: $(ls -A w)"
  rm -rf ro w
fi
# --- flags the chosen mode would ignore: refused by name (session 17's audit; each was: exit 0) ----
bad "--diffusion-minimal-topk" generate -m "$TINY" "${IDS[@]}" --decoder fast-dllm --diffusion-minimal-topk 4
bad "--eos-id" generate -m "$TINY" "${IDS[@]}" --decoder llada2 --ignore-eos
bad "--diffusion-eos-early-stop" generate -m "$TINY" --prompt-ids 1,2 -n 8 --mask-id 299 --decoder llada2 --ignore-eos \
  --diffusion-eos-early-stop
bad "--block-length" logits -m "$TINY" --input "$TINY/golden.safetensors" --out x.safetensors --block-length 16
bad "--quantize-group" convert -m "$TINY" -o conv --quantize-group 64
bad "--rerun" experiment "$ROOT/configs/experiments/schedules.json" --rerun --report-only
bad "--eval-cloze-positions" eval -m "$TINY" --data data --eval-cloze-positions 2
bad "--add-special-tokens" tokenize --tokenizer "$TINY" --decode --add-special-tokens false --text '[1, 2]'
bad "--synth-moe-layers" bench serve --no-synthetic -m "$TINY" --synth-moe-layers 2
bad "--temperature" bench serve --temperature 3                 # was: each request failed with a 400
bad "--steps" bench serve --steps 64                            # was: each request failed with a 400
bad "--train-lr" retrofit --from "$TINY" --out rf --train-lr 1e-3   # conversion only: nothing trains
bad "--vocab-size" bench train --config "$T" --data data --vocab-size 100   # the data's vocabulary rules
echo "bad_input_sweep e2e: OK"

# Shared set-up of the distributed e2e tests (sourced by dist_train.sh and dist_faults.sh, which take
# <path-to-ecdlm-binary> <repo-root>): a temporary dir removed on exit with every rank we started
# (PIDS), a toy corpus prepared in it, and the fp32 training command both tests run.
ECDLM="$1"; ROOT="$2"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2> /dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
source "$ROOT/tests/e2e/lib.bash"
cd "$TMP"
python3 "$ROOT/tests/e2e/toy_corpus.py" 3 80 corpus.jsonl
"$ECDLM" -q prepare-data --source jsonl --input corpus.jsonl --out data --vocab-size 300 --val-fraction 0.1
BASE=(train --config "$ROOT/configs/tiny.json" --samples 0 --train-bf16 false --train-log-every 1
      --train-eval-every 2 --train-save-every 2 --train-steps 4 --dist-timeout 30)
TRAIN=("${BASE[@]}" --data data)

# Shared set-up of the distributed e2e tests (sourced by dist_train.sh and dist_faults.sh, which take
# <path-to-ecdlm-binary> <repo-root>): a temporary dir removed on exit with every rank we started
# (PIDS), a toy corpus prepared in it, the fp32 training command the tests run, and same_curve.
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

# Per-step loss and grad norm of two runs agree within float reordering (fp32 sums in another order,
# which AdamW's first steps amplify to ~1e-4 relative; a wrong batch slice or noise is off by >1e-2).
same_curve() {  # same_curve RUN_A RUN_B
  python3 - "$1" "$2" <<'PY'
import json, sys
def load(d):
    m = [json.loads(l) for l in open(d + "/metrics.jsonl")]
    return {l["step"]: l for l in m if "loss" in l}, [l["val_loss"] for l in m if "val_loss" in l]
(a, va), (b, vb) = load(sys.argv[1]), load(sys.argv[2])
assert sorted(a) == sorted(b) and len(a) >= 4, (sorted(a), sorted(b))
for s in sorted(a):
    for k in ("loss", "grad_norm", "lr"):
        x, y = a[s][k], b[s][k]
        assert abs(x - y) <= 1e-3 * max(1.0, abs(x)), f"step {s} {k}: {x} vs {y}"
assert len(va) == len(vb) and all(abs(x - y) <= 1e-3 * max(1.0, abs(x)) for x, y in zip(va, vb)), (va, vb)
print("same curve:", sys.argv[1], sys.argv[2], [round(a[s]["loss"], 5) for s in sorted(a)])
PY
}

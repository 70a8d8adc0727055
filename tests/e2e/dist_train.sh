#!/usr/bin/env bash
# Distributed training end to end, 2 ranks on loopback with Gloo:
#  - data parallel equals one process with the same global batch (fp32; EC, and dropless TC with
#    the loss-free bias update on global counts): loss and gradient norm at every step, val loss;
#  - `ecdlm launch` and the real torchrun (python3 -m torch.distributed.run) both start it;
#  - a checkpoint written at world size 2 resumes at world size 1 and the reverse;
#  - kill -9 of one rank: the other exits non-zero naming it within --dist-timeout, the last
#    checkpoint is intact and --resume continues;
#  - bad configurations fail before training with a clear error.
# Usage: bash dist_train.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
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
TC=(--moe-router tc --moe-capacity-factor 0 --moe-aux-loss-coeff 0 --moe-loss-free-bias-rate 0.01 --train-grad-accum 2)

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

# --- data parallel == one process (EC; then dropless TC with global-count bias updates and gradient
# accumulation over 2 micro-batches, only the last one all-reduced) --------------------------------
"$ECDLM" -q --threads 1 "${TRAIN[@]}" --out ec1
expect_rc 0 "$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${TRAIN[@]}" --out ec2
grep -q '^\[rank 0\] steps 4' out.txt || { cat out.txt err.txt; fail "launch did not prefix rank lines"; }
same_curve ec1 ec2
test -f ec2/checkpoints/step-00000004/model.safetensors || fail "rank 0 wrote no checkpoint"
"$ECDLM" -q --threads 1 "${TRAIN[@]}" "${TC[@]}" --out tc1
"$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${TRAIN[@]}" "${TC[@]}" --out tc2 > /dev/null 2>&1 \
  || fail "2-rank TC run failed"
same_curve tc1 tc2
# The loss-free bias moved, identically (the checkpoints hold the same expert_bias).
python3 - <<'PY'
import json, struct
def tensors(path):
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n])
    return {k: struct.unpack("<%df" % ((v["data_offsets"][1] - v["data_offsets"][0]) // 4),
                             b[8+n+v["data_offsets"][0]:8+n+v["data_offsets"][1]])
            for k, v in h.items() if k.endswith("expert_bias")}
a = tensors("tc1/checkpoints/step-00000004/model.safetensors"); b = tensors("tc2/checkpoints/step-00000004/model.safetensors")
assert a and a.keys() == b.keys() and any(any(x != 0 for x in v) for v in a.values()), a
assert all(max(abs(x - y) for x, y in zip(a[k], b[k])) < 1e-6 for k in a), (a, b)
PY

# --- the real torchrun --------------------------------------------------------------------------
if /usr/bin/python3 -c 'import torch.distributed.run' 2> /dev/null; then
  # --redirects/--tee: torchrun 1.13 under Python 3.11 (Debian 12) fails on their default "0" (Std.NONE is
  # no longer iterated), so stdout is teed through a log dir instead. TMPDIR: it leaves torchelastic_* dirs.
  expect_rc 0 env TMPDIR="$TMP" /usr/bin/python3 -m torch.distributed.run --standalone --nproc_per_node 2 --redirects 1 --tee 1 \
    --log_dir "$TMP/torchrun-logs" --no_python \
    "$ECDLM" -q --threads 1 "${TRAIN[@]}" --out ecrun
  same_curve ec1 ecrun
else
  echo "SKIP torchrun part: python3-torch is not installed (scripts/setup.sh installs it)" >&2
fi

# --- resume across world sizes: 2 -> 1 and 1 -> 2 ------------------------------------------------
"$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${TRAIN[@]}" --out r21 --train-halt-at 2 > /dev/null 2>&1 || fail "halt at 2"
"$ECDLM" -q --threads 1 "${TRAIN[@]}" --out r21 --resume
same_curve ec1 r21
"$ECDLM" -q --threads 1 "${TRAIN[@]}" --out r12 --train-halt-at 2
"$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${TRAIN[@]}" --out r12 --resume > /dev/null 2>&1 || fail "resume at 2"
same_curve ec1 r12

# --- kill -9 of one rank ------------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LONG=(train --config "$ROOT/configs/tiny.json" --data data --samples 0 --train-steps 100000 --train-save-every 3
      --train-eval-every 0 --dist-timeout 20)
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
    "$ECDLM" -q --threads 1 "${LONG[@]}" --out killed > "rank$r.out" 2> "rank$r.err" &
  PIDS+=($!)
done
for _ in $(seq 300); do [ -f killed/checkpoints/step-00000006/trainer_state.json ] && break; sleep 0.2; done
test -f killed/checkpoints/step-00000006/trainer_state.json || { cat rank0.err rank1.err; fail "no checkpoint before the kill"; }
kill -9 "${PIDS[1]}"
start=$(date +%s)
set +e; wait "${PIDS[0]}"; rc=$?; set -e
took=$(( $(date +%s) - start ))
[ "$rc" -ne 0 ] || fail "rank 0 exited 0 after rank 1 was killed"
[ "$took" -le 40 ] || fail "rank 0 took ${took}s to notice (timeout 20s)"
grep -q "Rank 1 has died" rank0.err || { cat rank0.err; fail "rank 0's error does not name rank 1"; }
CK=$(ls -d killed/checkpoints/step-* | tail -1)
test -f "$CK/model.safetensors" -a -f "$CK/trainer_state.json" || fail "last checkpoint incomplete: $CK"
STEP=$(python3 -c "import json; print(json.load(open('$CK/trainer_state.json'))['step'])")
"$ECDLM" -q --threads 1 "${LONG[@]}" --out killed --resume --train-halt-at $((STEP + 2)) \
  || fail "resume after the kill"
test -f "killed/checkpoints/$(printf 'step-%08d' $((STEP + 2)))/model.safetensors" || fail "resume wrote no checkpoint"
echo "killed rank: rank 0 exited $rc after ${took}s naming rank 1; resumed from step $STEP"

# --- bad configurations: clear errors before training -------------------------------------------
two_ranks() {  # two_ranks OUT ARGS_RANK0 -- ARGS_RANK1 : both ranks' exit codes in rc0/rc1
  local out="$1"; shift; local a0=() a1=(); while [ "$1" != "--" ]; do a0+=("$1"); shift; done; shift; a1=("$@")
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  set +e
  RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$ECDLM" -q --threads 1 "${a0[@]}" --out "$out" > /dev/null 2> bad0.txt & local p0=$!
  RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$ECDLM" -q --threads 1 "${a1[@]}" --out "$out" > /dev/null 2> bad1.txt & local p1=$!
  wait $p0; rc0=$?; wait $p1; rc1=$?
  set -e
}
two_ranks badseed "${TRAIN[@]}" --train-seed 1 -- "${TRAIN[@]}" --train-seed 2
[ "$rc0" -eq 2 ] && [ "$rc1" -eq 2 ] || { cat bad0.txt bad1.txt; fail "seed mismatch: exit $rc0/$rc1"; }
grep -qF -- "--train-seed: differs across ranks: rank 0 has 1, rank 1 has 2" bad0.txt || { cat bad0.txt; fail "seed msg"; }
[ ! -e badseed ] || fail "a mismatched run wrote its output dir"
two_ranks badcfg "${TRAIN[@]}" -- "${TRAIN[@]}" --moe-experts 4
grep -qF "model config: differs across ranks" bad1.txt || { cat bad1.txt; fail "config msg"; }
python3 "$ROOT/tests/e2e/toy_corpus.py" 4 80 corpus2.jsonl
"$ECDLM" -q prepare-data --source jsonl --input corpus2.jsonl --out data2 --vocab-size 300 --val-fraction 0.1
two_ranks baddata "${BASE[@]}" --data data -- "${BASE[@]}" --data data2
grep -qF -- "--data: differs across ranks" bad0.txt || { cat bad0.txt; fail "data msg"; }
two_ranks badbatch "${TRAIN[@]}" --train-batch-size 3 -- "${TRAIN[@]}" --train-batch-size 3
grep -qF "does not divide by WORLD_SIZE 2" bad0.txt || { cat bad0.txt; fail "batch msg"; }
# A port in use.
python3 -c 'import socket,time; s=socket.socket(); s.bind(("0.0.0.0",0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)' > port.txt &
PIDS+=($!)
for _ in $(seq 50); do [ -s port.txt ] && break; sleep 0.1; done
expect_rc 2 env RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT="$(cat port.txt)" "$ECDLM" -q "${TRAIN[@]}" --out badport
grep -qF "is in use" err.txt || { cat err.txt; fail "port msg"; }
expect_fail "MASTER_ADDR: not set" env RANK=0 WORLD_SIZE=2 "$ECDLM" -q "${TRAIN[@]}" --out badenv
expect_fail "RANK: '5' is not an integer in [0, 1]" env RANK=5 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 "$ECDLM" -q "${TRAIN[@]}" --out badenv
expect_fail "--node-rank: 2 is outside [0, 1)" "$ECDLM" launch --nproc-per-node 2 --node-rank 2 -- train
expect_fail "--master-port: several machines" "$ECDLM" launch --nproc-per-node 1 --nnodes 2 -- train
# A failing rank makes launch fail and says which.
expect_rc 2 "$ECDLM" launch --nproc-per-node 2 -- -q "${TRAIN[@]}" --out badlaunch --data nowhere
grep -qF "[launch] failed: rank" err.txt || { cat err.txt; fail "launch failure msg"; }
# SIGINT to launch reaches the ranks: all stop, launch exits 130.
"$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${LONG[@]}" --out sigint > sig.out 2> sig.err &
LPID=$!
PIDS+=($LPID)
for _ in $(seq 300); do [ -s sigint/metrics.jsonl ] && break; sleep 0.2; done
RANKPIDS=$(pgrep -P "$LPID" | tr '\n' ' ')
[ -n "$RANKPIDS" ] || fail "launch started no ranks"
kill -INT "$LPID"
set +e; wait "$LPID"; rc=$?; set -e
[ "$rc" -eq 130 ] || { cat sig.err; fail "launch exit $rc after SIGINT (want 130)"; }
for p in $RANKPIDS; do ! kill -0 "$p" 2> /dev/null || fail "rank process $p still running after SIGINT"; done
grep -qF "[launch] got signal 2, forwarding it to the ranks" sig.err || { cat sig.err; fail "no forwarding message"; }
echo "dist_train: all passed"

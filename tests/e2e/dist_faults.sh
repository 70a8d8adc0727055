#!/usr/bin/env bash
# Distributed training under faults, 2 ranks on loopback with Gloo:
#  - kill -9 of one rank: the other exits non-zero naming it within --dist-timeout, the last
#    checkpoint is intact and --resume continues;
#  - bad configurations fail before training with a clear error (config, seed, data, batch, port,
#    environment, launch flags); a failing rank makes launch fail naming it;
#  - SIGINT to launch reaches every rank.
# Usage: bash dist_faults.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
source "$2/tests/e2e/dist_common.bash" "$@"

# --- kill -9 of one rank ------------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LONG=(train --config "$ROOT/configs/tiny.json" --data data --samples 0 --train-steps 100000 --train-save-every 3
      --train-eval-every 0 --dist-timeout 20)
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
    "$ECDLM" -q --threads 1 "${LONG[@]}" --out killed > "rank$r.out" 2> "rank$r.err" &
  PIDS+=($!)
done
# Older checkpoints are pruned as new ones land, so wait for the second save of any step, not one name.
saved() { ls killed/checkpoints/step-*/trainer_state.json 2> /dev/null | grep -v step-00000003 | head -1; }
for _ in $(seq 600); do [ -n "$(saved)" ] && break; sleep 0.2; done
[ -n "$(saved)" ] || { cat rank0.err rank1.err; fail "no checkpoint before the kill"; }
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
echo "dist_faults: all passed"

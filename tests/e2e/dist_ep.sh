#!/usr/bin/env bash
# Expert-parallel training end to end (`train --dist-ep 2`), 2 ranks on loopback with Gloo:
#  - each rank holds 4 of the 8 experts of every MoE layer and trains its own rows of the global
#    batch; loss, gradient norm and val loss equal one process with the same global batch at every
#    step (fp32), for expert choice, dropless token choice (loss-free bias on global loads,
#    2 accumulated micro-batches) and token choice with capacity 1.25 (fixed split sizes); metrics
#    carry the all_to_all bytes and seconds;
#  - bf16 autocast: the dispatched rows travel as bf16 (2/3 of the f32-payload bytes, reported in
#    metrics), and --dist-ep-f32-payload sends f32 rows; the two runs' losses agree closely;
#  - checkpoints have the single-process layout (expert shards and their AdamW moments gathered to
#    rank 0): EP 2 -> 1 process and 1 process -> EP 2 resume exactly;
#  - evaluation split over the ranks (DP and EP) gives the one-process val loss and per-bin table;
#  - bad --dist-ep (WORLD_SIZE or the expert count not divisible) exits 2 before writing anything;
#  - retrofit (with fine-tuning) runs data parallel under `ecdlm launch`; conversion alone and
#    experiment refuse with exit 2.
# Usage: bash dist_ep.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
source "$2/tests/e2e/dist_common.bash" "$@"
TC=(--moe-router tc --moe-capacity-factor 0 --moe-aux-loss-coeff 0 --moe-loss-free-bias-rate 0.01 --train-grad-accum 2)
launch_ep() {  # launch_ep OUT ARGS... : 2 ranks (NPROC, default 2) with --dist-ep 2
  local out="$1"; shift
  "$ECDLM" launch --nproc-per-node "${NPROC:-2}" -- --threads 1 "${TRAIN[@]}" --dist-ep 2 --out "$out" "$@" \
    > "$out.log" 2>&1 || { cat "$out.log"; fail "${NPROC:-2}-rank --dist-ep 2 run $out failed"; }
}

# --- expert parallel == one process ---------------------------------------------------------------
"$ECDLM" -q --threads 1 "${TRAIN[@]}" --out ec1
launch_ep ecep
grep -q 'holds experts \[4, 8) of 8' ecep.log || { cat ecep.log; fail "rank 1 does not hold experts 4..7"; }
same_curve ec1 ecep
python3 - <<'PY'
import json
m = [json.loads(l) for l in open("ecep/metrics.jsonl")]
d = [l["dist"] for l in m if "dist" in l]
assert d and all(x["expert_parallel"] == 2 and x["alltoall_bytes"] > 0 and x["alltoall_wait_s"] >= 0 for x in d), d
print("alltoall per step:", d[-1]["alltoall_bytes"], "bytes,", round(d[-1]["alltoall_wait_s"], 4), "s")
PY
# DP 2 x EP 2 (4 ranks, one row each): expert shards reduced over their replica pairs.
NPROC=4 launch_ep ec4
same_curve ec1 ec4
"$ECDLM" -q --threads 1 "${TRAIN[@]}" "${TC[@]}" --out tc1
launch_ep tcep "${TC[@]}"
same_curve tc1 tcep
# Token choice with capacity: every expert has C slots (padded), fixed split sizes. C comes from
# each rank's tokens (as in data parallel), one process's from the whole batch, so the dropped
# pairs differ a little: still within 1e-3 here (this tiny model drops ~30% of the pairs).
TCC=(--moe-router tc --moe-capacity-factor 1.25 --moe-aux-loss-coeff 0)
"$ECDLM" -q --threads 1 "${TRAIN[@]}" "${TCC[@]}" --out tcc1
launch_ep tccep "${TCC[@]}"
same_curve tcc1 tccep

# --- bf16 autocast: bf16 dispatch rows (the experts' GEMMs round them to bf16 anyway) -------------
BF16=("${TRAIN[@]/#false/true}")  # --train-bf16 true
SAVED=("${TRAIN[@]}"); TRAIN=("${BF16[@]}")
launch_ep bfep
launch_ep bff32 --dist-ep-f32-payload
TRAIN=("${SAVED[@]}")
python3 - <<'PY'
import json
def steps(d):
    return [l for l in map(json.loads, open(d + "/metrics.jsonl")) if "loss" in l]
a, b = steps("bfep"), steps("bff32")
assert len(a) == len(b) == 4, (len(a), len(b))
assert a[0]["loss"] == b[0]["loss"], (a[0]["loss"], b[0]["loss"])  # step 1: the same forward, bit for bit
for x, y in zip(a, b):
    # EC's fixed splits: dispatch and return, forward and backward, all bf16 (2+2+2+2 bytes per
    # value) against f32 dispatch rows (4+4+2+2).
    assert 3 * x["dist"]["alltoall_bytes"] == 2 * y["dist"]["alltoall_bytes"], (x["dist"], y["dist"])
    # The forward is the same; only the rows' gradients are rounded to bf16 once more.
    assert abs(x["loss"] - y["loss"]) <= 1e-3 * abs(y["loss"]), (x["step"], x["loss"], y["loss"])
print("bf16 payload: all_to_all bytes", a[-1]["dist"]["alltoall_bytes"], "vs f32 rows", b[-1]["dist"]["alltoall_bytes"],
      "; max loss diff", max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)))
PY

# --- evaluation split over the ranks: one window per batch, 2 mask samples -> 8 batches shared out;
# the all-reduced val loss, per-bin losses and counts equal one process (DP 2 and EP 2) -------------
python3 - "$ROOT/configs/tiny.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["train"].update(eval_batch_size=1, eval_mask_samples=2)
json.dump(c, open("tiny-evalsplit.json", "w"))
PY
SAVED=("${TRAIN[@]}")
TRAIN=("${TRAIN[@]/#$ROOT\/configs\/tiny.json/tiny-evalsplit.json}")
"$ECDLM" -q --threads 1 "${TRAIN[@]}" --out ev1
"$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${TRAIN[@]}" --out ev2 > ev2.log 2>&1 \
  || { cat ev2.log; fail "2-rank eval split run"; }
launch_ep evep
TRAIN=("${SAVED[@]}")
for r in ev2 evep; do same_curve ev1 $r; done
python3 - <<'PY'
import json
def evals(d):
    return [(l["val_loss"], l["val_per_bin"]["4"]) for l in map(json.loads, open(d + "/metrics.jsonl")) if "val_loss" in l]
a = evals("ev1")
for other in ("ev2", "evep"):
    b = evals(other)
    assert len(a) == len(b) == 2, (a, b)
    for (la, ba), (lb, bb) in zip(a, b):
        assert abs(la - lb) <= 1e-4 * abs(la), (other, la, lb)
        assert [x["count"] for x in ba] == [x["count"] for x in bb], (ba, bb)
        assert all(abs(x["loss"] - y["loss"]) <= 1e-4 * max(1, abs(x["loss"])) for x, y in zip(ba, bb)), (ba, bb)
print("eval split: val loss and per-bin losses/counts as one process:", [round(x[0], 5) for x in a])
PY

# --- checkpoints: the single-process layout, the same weights -----------------------------------
python3 - <<'PY'
import json, struct
def tensors(path):
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n])
    return {k: (v["shape"], struct.unpack("<%df" % ((v["data_offsets"][1] - v["data_offsets"][0]) // 4),
                                          b[8+n+v["data_offsets"][0]:8+n+v["data_offsets"][1]]))
            for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32"}
for run in ("ec", "tc"):
    a = tensors(f"{run}1/checkpoints/step-00000004/model.safetensors")
    b = tensors(f"{run}ep/checkpoints/step-00000004/model.safetensors")
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for k in a:
        assert a[k][0] == b[k][0], (k, a[k][0], b[k][0])
        # AdamW turns float-reordering noise of near-zero gradients into O(lr) steps of those
        # entries (data parallel alone differs from one process by up to ~7% on a tiny expert's
        # matrix after 4 steps); a wrong or swapped shard is off by ~100%. The resumes below
        # check weights and moments exactly through the loss.
        d = sum((x - y) ** 2 for x, y in zip(a[k][1], b[k][1])) ** 0.5
        n = sum(x * x for x in a[k][1]) ** 0.5
        assert d <= 0.2 * n + 1e-6, (run, k, d, n)
    experts = {k.split("mlp.experts.")[1].split(".")[0] for k in b if "mlp.experts." in k}
    assert len(experts) == 8, sorted(experts)  # all 8 experts, gathered from both ranks
print("checkpoints: same tensors and shapes as one process")
PY

# --- resume across EP: 2 -> 1 and 1 -> 2 (optimizer moments gathered and re-sliced) ---------------
launch_ep r21 --train-halt-at 2
"$ECDLM" -q --threads 1 "${TRAIN[@]}" --out r21 --resume
same_curve ec1 r21
"$ECDLM" -q --threads 1 "${TRAIN[@]}" --out r12 --train-halt-at 2
launch_ep r12 --resume
same_curve ec1 r12

# --- bad --dist-ep: exit 2 before anything is written ---------------------------------------------
expect_rc 2 "$ECDLM" -q --threads 1 "${TRAIN[@]}" --dist-ep 2 --out bad1
grep -qF -- "--dist-ep: WORLD_SIZE 1 does not divide by --dist-ep 2" err.txt || { cat err.txt; fail "world msg"; }
expect_rc 2 "$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${TRAIN[@]}" --dist-ep 3 --out bad2
grep -qF -- "--dist-ep: WORLD_SIZE 2 does not divide by --dist-ep 3" out.txt err.txt || { cat out.txt err.txt; fail "world msg 2"; }
expect_rc 2 "$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${TRAIN[@]}" --dist-ep 2 --moe-experts 5 --out bad3
grep -qF "num_experts: 5 routed experts do not divide over --dist-ep 2" out.txt err.txt || { cat out.txt err.txt; fail "experts msg"; }
for d in bad1 bad2 bad3; do [ ! -e "$d" ] || fail "a refused run wrote $d"; done

# --- retrofit and experiment under `ecdlm launch` ---------------------------------------------------
# retrofit with fine-tuning trains data parallel (rank 0 writes and reports); conversion alone and
# experiment refuse (exit 2) before writing anything.
RF=(retrofit --from tc1/checkpoints/step-00000004 --data data --train-steps 2 --train-batch-size 4
    --train-seq-len 32 --train-eval-every 2 --train-warmup 1)
"$ECDLM" -q --threads 1 "${RF[@]}" --out rf1 > /dev/null
expect_rc 0 "$ECDLM" launch --nproc-per-node 2 -- -q --threads 1 "${RF[@]}" --out rf2
[ "$(grep -c 'expert-choice model:' out.txt)" -eq 1 ] || { cat out.txt; fail "retrofit: not one report (rank 0's)"; }
python3 - <<'PY'
import json
v = [[json.loads(l)["val_loss"] for l in open(d + "/metrics.jsonl") if "val_loss" in l] for d in ("rf1", "rf2")]
assert len(v[0]) == len(v[1]) == 1 and abs(v[0][0] - v[1][0]) <= 2e-2 * abs(v[0][0]), v  # bf16 autocast
print("retrofit, 1 process vs 2 ranks: val loss", v)
PY
expect_rc 2 "$ECDLM" launch --nproc-per-node 2 -- -q retrofit --from tc1/checkpoints/step-00000004 --out rf3
grep -qF "retrofit without fine-tuning only converts a checkpoint" out.txt err.txt || { cat out.txt err.txt; fail "retrofit msg"; }
expect_rc 2 "$ECDLM" launch --nproc-per-node 2 -- -q experiment "$ROOT/configs/experiments/retrofit.json" --quick \
  --data data --runs-dir ex-runs --results-dir ex-results
grep -qF "experiment does not run distributed" out.txt err.txt || { cat out.txt err.txt; fail "experiment msg"; }
for d in rf3 ex-runs ex-results; do [ ! -e "$d" ] || fail "a refused run wrote $d"; done
echo "dist_ep: all passed"

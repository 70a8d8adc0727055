#!/usr/bin/env bash
# Distributed training end to end, 2 ranks on loopback with Gloo:
#  - data parallel equals one process with the same global batch (fp32; EC, and dropless TC with
#    the loss-free bias update on global counts and gradient accumulation): loss and gradient norm
#    at every step, val loss;
#  - `ecdlm launch` and the real torchrun (python3 -m torch.distributed.run) both start it;
#  - a checkpoint written at world size 2 resumes at world size 1 and the reverse.
# Faults and bad input: dist_faults.sh.
# Usage: bash dist_train.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
source "$2/tests/e2e/dist_common.bash" "$@"
TC=(--moe-router tc --moe-capacity-factor 0 --moe-aux-loss-coeff 0 --moe-loss-free-bias-rate 0.01 --train-grad-accum 2)

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
echo "dist_train: all passed"

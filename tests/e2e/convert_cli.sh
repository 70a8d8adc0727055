#!/usr/bin/env bash
# End-to-end: `ecdlm init`, `convert` (stacked layout, bf16), `export` (LLaDA2 layout), the
# mapped loader behind `logits --dtype --json`, and `info`'s memory section.
# Usage: bash convert_cli.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"
ROOT="$2"
GOLDEN="$ROOT/../shared/golden"
TINY="$GOLDEN/tiny-dmoe"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
[ -f "$TINY/golden.safetensors" ] || { echo "SKIP: golden fixtures missing ($TINY)"; exit 0; }
cp "$ROOT/tests/e2e/st.py" "$TMP/st.py"
jq_py() { python3 -c "import json,sys; j=json.load(open('$1')); $2"; }

# --- convert: stacked + bf16, logits through the mapped loader ------------------------------------
"$ECDLM" convert -m "$TINY" -o "$TMP/stacked" --layout stacked --dtype bf16 --json > "$TMP/conv.json" \
  || fail "convert stacked"
jq_py "$TMP/conv.json" "assert j['expert_groups'] == 6 and j['tensors_out'] < j['tensors_in'], j"
grep -q '"torch_dtype": "bfloat16"' "$TMP/stacked/config.json" || fail "config torch_dtype not updated"
"$ECDLM" logits -m "$TMP/stacked" --input "$TINY/golden.safetensors" --attention block-causal \
  --block-length 32 --moe-routing token --dtype bf16 --mmap on --out "$TMP/bf16.safetensors" --json > "$TMP/l.json" \
  || fail "logits on the stacked bf16 checkpoint"
jq_py "$TMP/l.json" "w=j['weights']; assert w['stacked_experts'] and w['copied_bytes'] <= 2*64*4 and w['mapped_bytes'] > 0, w"
# bf16 weights: close to the f32 golden logits, not equal.
python3 - "$TMP/bf16.safetensors" "$TINY/golden.safetensors" <<'PY' || fail "bf16 logits vs golden"
import sys, os
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import st
got, want = st.read(sys.argv[1])["logits"][1], st.read(sys.argv[2])["logits"][1]
rel = sum(abs(x - y) for x, y in zip(got, want)) / sum(abs(y) for y in want)
print(f"bf16 vs f32 golden: mean |diff| / mean |logit| = {rel:.3f}")
assert 0 < rel < 0.25, rel  # routing margins of this random model are ~2e-4: bf16 flips a few
PY
# Block routing reads fewer experts than token routing (expert-sparse execution).
"$ECDLM" logits -m "$TMP/stacked" --input "$TINY/golden.safetensors" --moe-routing block --dtype bf16 \
  --out "$TMP/b.safetensors" --json > "$TMP/lb.json" || fail "logits block"
python3 - "$TMP/l.json" "$TMP/lb.json" <<'PY' || fail "block routing did not read fewer experts"
import json, sys
t, b = (json.load(open(p))["weights"] for p in sys.argv[1:])
print("experts read: token", t["experts_used"], "block", b["experts_used"], "of", t["experts_total"])
assert b["experts_used"] < t["experts_used"] <= t["experts_total"] and b["touched_bytes"] < t["touched_bytes"]
PY

# --- init + info memory ------------------------------------------------------------------------------
"$ECDLM" init -c "$TINY/config.json" -o "$TMP/init" --dtype bf16 --seed 3 --max-shard-size 100KB \
  || fail "init"
[ -f "$TMP/init/model.safetensors.index.json" ] || fail "init did not shard"
"$ECDLM" info -m "$TMP/init" --json > "$TMP/info.json" || fail "info on init"
jq_py "$TMP/info.json" "m=j['memory']; p=m['per_policy']; assert m['bytes_per_weight']==2 and p['block']['bytes_per_forward_min'] < p['token']['bytes_per_forward_max'] <= p['ec']['bytes_per_forward_max'], m"
"$ECDLM" info -m "$TMP/init" | grep -q -- "--moe-routing block" || fail "info table lacks the memory rows"
# --init-routing calibrated: a popularity ladder in expert_bias, the other weights as the plain init.
"$ECDLM" init -c "$TINY/config.json" -o "$TMP/cal" --seed 3 --init-routing calibrated --init-popularity-bias 0.1 \
  > /dev/null || fail "init calibrated"
python3 - "$TMP" <<'PY' || fail "calibrated init"
import glob, math, sys
sys.path.insert(0, sys.argv[1])
import st
def load(d):  # F32 tensors only (st.py skips bf16: the plain init's expert_bias stays f32)
    out = {}
    for f in glob.glob(f"{sys.argv[1]}/{d}/*.safetensors"):
        out.update(st.read(f))
    return out
plain, cal = load("init"), load("cal")
bias = sorted(cal["model.layers.1.mlp.gate.expert_bias"][1], reverse=True)
assert all(abs(b + 0.1 * math.log1p(r)) < 1e-6 for r, b in enumerate(bias)), bias[:4]
assert not any(plain["model.layers.1.mlp.gate.expert_bias"][1])
emb = cal["model.word_embeddings.weight"][1]
sd = math.sqrt(sum(x * x for x in emb) / len(emb))
assert 0.9 < sd < 1.1, sd
PY
expect_fail "applies only with --init-routing calibrated" \
  "$ECDLM" init -c "$TINY/config.json" -o "$TMP/bad-init" --init-popularity-bias 0.1
expect_fail "moe_router_enable_expert_bias" \
  "$ECDLM" init -c "$GOLDEN/tiny-lladamoe/config.json" -o "$TMP/bad-init" --init-routing calibrated
[ ! -e "$TMP/bad-init" ] || fail "a refused init left a directory"
"$ECDLM" init -c "$GOLDEN/tiny-lladamoe/config.json" -o "$TMP/cal-moe" --init-routing calibrated \
  --init-popularity-bias 0 > /dev/null || fail "init calibrated without expert_bias"

# --- export: our TC model -> LLaDA2 layout ------------------------------------------------------------
python3 - "$TMP" <<'PY'
import json, sys
cfg = {"model": {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 8, "num_experts": 8, "num_experts_per_tok": 2,
       "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16, "score_function": "softmax",
       "mask_token_id": 63, "eos_token_id": 62}}
json.dump(cfg, open(sys.argv[1] + "/soft.json", "w"))
cfg["model"]["score_function"] = "sigmoid"
json.dump(cfg, open(sys.argv[1] + "/sig.json", "w"))
PY
"$ECDLM" init -c "$TMP/soft.json" -o "$TMP/soft" > /dev/null || fail "init soft"
"$ECDLM" init -c "$TMP/sig.json" -o "$TMP/sig" > /dev/null || fail "init sig"
expect_rc 2 "$ECDLM" export -m "$TMP/soft" -o "$TMP/soft-hf"
grep -q "sigmoid" "$TMP/err.txt" || fail "export refusal does not explain the mismatch"
[ ! -e "$TMP/soft-hf" ] || fail "a refused export left a directory"
"$ECDLM" export -m "$TMP/sig" -o "$TMP/sig-hf" --dtype bf16 > /dev/null || fail "export sigmoid model"
jq_py "$TMP/sig-hf/config.json" "assert j['model_type']=='llada2_moe' and j['score_function']=='sigmoid' and 'moe_router_type' not in j and j['torch_dtype']=='bfloat16', j"
"$ECDLM" info -m "$TMP/sig-hf" > /dev/null || fail "info on the export"

# --- bad input ------------------------------------------------------------------------------------------
expect_rc 2 "$ECDLM" convert -m "$TINY" -o "$TMP/x" --max-shard-size lots
grep -q -- "--max-shard-size" "$TMP/err.txt" || fail "bad size: flag not named"
expect_rc 2 "$ECDLM" convert -m "$TMP/nope" -o "$TMP/x"
expect_rc 2 "$ECDLM" convert -m "$TINY" -o "$TINY"
expect_rc 2 "$ECDLM" logits -m "$TINY" --input "$TINY/golden.safetensors" --out "$TMP/x.safetensors" --dtype f64
echo "PASS convert_cli"

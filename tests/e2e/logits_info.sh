#!/usr/bin/env bash
# End-to-end: `ecdlm info`, `ecdlm logits` (numerically against the golden logits) and their
# error paths; `generate --help`. Needs only python3's standard library.
# Usage: bash logits_info.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"
ROOT="$2"
GOLDEN="$ROOT/../shared/golden"
TINY="$GOLDEN/tiny"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"


[ -f "$TINY/golden.safetensors" ] || { echo "SKIP: golden fixtures missing ($TINY)"; exit 0; }


# --- info ---------------------------------------------------------------------------------------
"$ECDLM" info -m "$TINY" --json > "$TMP/info.json" || fail "info --json failed"
python3 - "$TMP/info.json" <<'EOF' || fail "info --json content"
import json, sys
j = json.load(open(sys.argv[1]))
a, p = j["architecture"], j["parameters"]
assert a["num_experts"] == 16 and a["num_experts_per_tok"] == 4 and a["vocab_size"] == 300, a
assert a["dense_layers"] == 1 and a["moe_layers"] == 2 and a["rotary_dim"] == 8, a
assert 0 < p["active_per_token"] < p["total"], p
assert j["checkpoint"]["present"] and j["checkpoint"]["tensor_bytes"] > 0, j["checkpoint"]
assert j["experts"]["params_per_expert"] == 3 * 32 * 64, j["experts"]
EOF
"$ECDLM" info -m "$TINY" > "$TMP/info.txt" || fail "info (table) failed"
grep -q "active per token" "$TMP/info.txt" || fail "info table lacks the active parameter count"
expect_rc 2 "$ECDLM" info -m "$TMP/no-such-model"
grep -q "$TMP/no-such-model" "$TMP/err.txt" || fail "info error does not name the path"

# --- logits vs golden -----------------------------------------------------------------------------
cp "$ROOT/tests/e2e/st.py" "$TMP/st.py"

"$ECDLM" logits -m "$TINY" --input "$TINY/golden.safetensors" --attention block-causal \
  --block-length 16 --out "$TMP/out.safetensors" 2> "$TMP/err.txt" \
  || { cat "$TMP/err.txt" >&2; fail "logits failed"; }
[ -s "$TMP/out.safetensors" ] || fail "logits wrote no file"
python3 "$TMP/st.py" "$TMP/out.safetensors" "$TINY/golden.safetensors" 1e-4 \
  || fail "tiny logits differ from golden"
# LLaDA-MoE golden: bidirectional attention.
if [ -f "$GOLDEN/tiny-lladamoe/golden.safetensors" ]; then
  "$ECDLM" logits -m "$GOLDEN/tiny-lladamoe" --input "$GOLDEN/tiny-lladamoe/golden.safetensors" \
    --out "$TMP/out2.safetensors" 2> "$TMP/err.txt" \
    || { cat "$TMP/err.txt" >&2; fail "logits (lladamoe)"; }
  python3 "$TMP/st.py" "$TMP/out2.safetensors" "$GOLDEN/tiny-lladamoe/golden.safetensors" 1e-4 \
    || fail "tiny-lladamoe logits differ from golden"
fi

# --- --routing-out: every MoE layer's routing, comparable across runs -------------------------------
DMOE="$GOLDEN/tiny-dmoe"
for p in 0.6 0.3; do
  "$ECDLM" -q logits -m "$DMOE" --input "$DMOE/golden.safetensors" --moe-routing block --block-top-p $p \
    --block-min-experts 4 --routing-out "$TMP/route-$p.safetensors" || fail "logits --routing-out"
done
python3 "$ROOT/scripts/routing_agreement.py" "$TMP/route-0.6.safetensors" "$TMP/route-0.6.safetensors" > "$TMP/same.json"
python3 "$ROOT/scripts/routing_agreement.py" "$TMP/route-0.6.safetensors" "$TMP/route-0.3.safetensors" > "$TMP/diff.json"
python3 - "$TMP/same.json" "$TMP/diff.json" <<'PY' || fail "routing agreement"
import json, sys
same, diff = (json.load(open(p))["mean"] for p in sys.argv[1:])
assert same["coreset_jaccard"] == 1.0 and same["token_set_equal"] == 1.0, same
assert diff["coreset_jaccard"] < 1.0 and diff["coreset_size_b"] < diff["coreset_size_a"], diff
PY

# --- logits error paths (exit 2, message names the file / tensor) ---------------------------------
expect_rc 2 "$ECDLM" logits -m "$TINY" --input "$TMP/missing.safetensors" --out "$TMP/x.safetensors"
grep -q "$TMP/missing.safetensors" "$TMP/err.txt" || fail "missing --input: path not in stderr"
expect_rc 2 "$ECDLM" logits -m "$TINY" --out "$TMP/x.safetensors"
grep -q -- "--input" "$TMP/err.txt" || fail "neither --text nor --input: message"
expect_rc 2 "$ECDLM" logits -m "$TINY" --text hi --input "$TINY/golden.safetensors" \
  --out "$TMP/x.safetensors"
python3 - "$TMP" <<EOF
import sys
sys.path.insert(0, "$TMP")
import st
d = sys.argv[1]
st.write(d + "/f32ids.safetensors", {"input_ids": ("F32", [1, 4], [1, 2, 3, 4])})
st.write(d + "/rank1.safetensors", {"input_ids": ("I64", [4], [1, 2, 3, 4])})
st.write(d + "/oov.safetensors", {"input_ids": ("I64", [1, 4], [1, 2, 3, 300])})
st.write(d + "/noids.safetensors", {"tokens": ("I64", [1, 4], [1, 2, 3, 4])})
st.write(d + "/badratio.safetensors", {"input_ids": ("I64", [2, 2], [1, 2, 3, 4]),
                                       "mask_ratio": ("F32", [1], [0.5])})
st.write(d + "/ok.safetensors", {"input_ids": ("I64", [2, 3], [1, 2, 3, 4, 5, 299]),
                                 "mask_ratio": ("F32", [2], [0.0, 0.33])})
EOF
for case in f32ids rank1 noids badratio; do
  expect_rc 2 "$ECDLM" logits -m "$TINY" --input "$TMP/$case.safetensors" --out "$TMP/x.safetensors"
  grep -q "$case.safetensors" "$TMP/err.txt" \
    || fail "$case: file not named in: $(cat "$TMP/err.txt")"
done
grep -q "mask_ratio" "$TMP/err.txt" || fail "badratio: tensor not named"
expect_rc 2 "$ECDLM" logits -m "$TINY" --input "$TMP/oov.safetensors" --out "$TMP/x.safetensors"
grep -q "300" "$TMP/err.txt" || fail "out-of-vocab id not reported"
expect_rc 0 "$ECDLM" logits -m "$TINY" --input "$TMP/ok.safetensors" --out "$TMP/ok_out.safetensors"
python3 - "$TMP" <<EOF || fail "ok.safetensors output shape"
import sys
sys.path.insert(0, "$TMP")
import st
t = st.read(sys.argv[1] + "/ok_out.safetensors")
assert t["logits"][0] == [2, 3, 300], t["logits"][0]
EOF

# --- help ----------------------------------------------------------------------------------------
"$ECDLM" generate --help > /dev/null || fail "generate --help"
"$ECDLM" logits --help > /dev/null || fail "logits --help"
"$ECDLM" info --help > /dev/null || fail "info --help"
expect_rc 2 "$ECDLM" generate -m "$TINY" --decoder llada -n 30 --diffusion-block-length 8
grep -q -- "--gen-length" "$TMP/err.txt" || fail "generate flag validation does not name the flag"

echo "PASS logits_info"

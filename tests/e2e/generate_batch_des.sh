#!/usr/bin/env bash
# `ecdlm generate --num-samples` (batched threshold decoding) reproduces the official dMoE tokens
# in every row; DES-S / DES-V routing (our interpretation) through generate and logits, with the
# --moe-des-* flags' errors and warnings.
set -euo pipefail
ECDLM="$1"; ROOT="$2"
G="$ROOT/../shared/golden/tiny-dmoe"
[ -f "$G/golden.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
ids() {  # tensor name -> comma list
  python3 - "$G/golden.safetensors" "$1" <<'PY'
import json, struct, sys
from array import array
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
t = h[sys.argv[2]]; a = array("q"); b, e = t["data_offsets"]; a.frombytes(data[b:e]); print(",".join(map(str, a)))
PY
}
PROMPT=$(ids gen.dmoe_p0.6.prompt)
WANT=$(ids gen.dmoe_p0.6.output)
COMMON=(-m "$G" --prompt-ids "$PROMPT" -n 56 --diffusion-block-length 32 --diffusion-steps 8 --eos-id 298 --mask-id 299)

# Three samples decoded as one batch: each row gives the official dMoE tokens.
"$ECDLM" generate "${COMMON[@]}" --diffusion-threshold 0.288067 --moe-routing block --block-top-p 0.6 \
  --block-min-experts 16 --num-samples 3 --json 2> "$TMP/err.txt" > "$TMP/batch.json" || { cat "$TMP/err.txt"; fail "batch"; }
python3 - "$TMP/batch.json" "$WANT" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); want = [int(x) for x in sys.argv[2].split(",")]
assert len(d["samples"]) == 3
for s in d["samples"]:
    assert s["tokens"] == want, (s["tokens"], want)
    assert abs(s["avg_unique_experts_per_layer"] - 13.6) < 1e-9 and s["cache_forwards"] == 1 and s["ride_along_appends"] == 1
PY

# DES-S / DES-V: named in the output, fewer distinct experts per block than token routing.
for r in token des-s des-v; do
  "$ECDLM" generate "${COMMON[@]}" --diffusion-threshold 0.345199 --moe-routing $r --json \
    2> "$TMP/err_$r.txt" > "$TMP/$r.json" || { cat "$TMP/err_$r.txt"; fail "generate $r"; }
done
python3 - "$TMP" <<'PY'
import json, sys
u = {}
for r in ["token", "des-s", "des-v"]:
    d = json.load(open(f"{sys.argv[1]}/{r}.json")); assert d["routing"] == r, d["routing"]
    u[r] = d["samples"][0]["avg_unique_experts_per_layer"]
assert u["des-s"] < u["token"] and u["des-v"] < u["token"], u
print("unique experts per block", u)
PY
"$ECDLM" generate "${COMMON[@]}" --moe-routing des-s --moe-des-s-ratio 0.2 --moe-des-min-experts 8 --json \
  2>/dev/null > "$TMP/des_small.json"
python3 - "$TMP" <<'PY'
import json, sys
a = json.load(open(f"{sys.argv[1]}/des-s.json"))["samples"][0]["avg_unique_experts_per_layer"]
b = json.load(open(f"{sys.argv[1]}/des_small.json"))["samples"][0]["avg_unique_experts_per_layer"]
assert b < a, (a, b)  # a smaller pair budget shares more
PY
"$ECDLM" -q logits -m "$G" --input "$G/golden.safetensors" --attention block-causal --block-length 32 \
  --moe-routing des-v --out "$TMP/l.safetensors" || fail "logits --moe-routing des-v"
[ -s "$TMP/l.safetensors" ] || fail "no logits written"

# A DES flag without a DES policy warns; bad values name the flag.
"$ECDLM" generate "${COMMON[@]}" --moe-des-s-ratio 0.3 > /dev/null 2> "$TMP/warn.txt"
grep -q -- "--moe-des-s-ratio has no effect" "$TMP/warn.txt" || { cat "$TMP/warn.txt"; fail "no warning"; }
bad() { expect_fail "$1" "$ECDLM" -q generate "${COMMON[@]}" "${@:2}"; }  # expected-text, args...
bad "moe-des-v-threshold" --moe-routing des-v --moe-des-v-threshold 1.5
bad "moe-des-s-ratio" --moe-routing des-s --moe-des-s-ratio 0
bad "moe-des-min-experts" --moe-routing des-s --moe-des-min-experts 65
bad "moe-des-chunk" --moe-routing des-v --moe-des-chunk 24
echo "generate_batch_des e2e OK"

#!/usr/bin/env bash
# `ecdlm generate` (LLaDA2 threshold decoder, KV cache, dMoE block routing) and `ecdlm logits
# --moe-routing block` on the official golden checkpoints, plus every documented bad-input error
# (issue 4: empty prompt, prompt past the context, block length that does not divide, unknown policy,
# p outside (0, 1], G > E, threshold/steps conflicts).
set -euo pipefail
ECDLM="$1"; ROOT="$2"
G="$ROOT/../shared/golden/tiny-dmoe"
[ -f "$G/golden.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"

cat > "$TMP/golden.py" <<'PY'
import json, struct, sys
from array import array
def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
    out = {}
    for k, t in h.items():
        if k == "__metadata__": continue
        a = array({"F32": "f", "I64": "q"}[t["dtype"]]); b, e = t["data_offsets"]; a.frombytes(data[b:e])
        out[k] = (t["shape"], a)
    return out
if __name__ == "__main__":
    g = read(sys.argv[1])
    what = sys.argv[2]
    print(",".join(str(v) for v in g[what][1]))
PY
PROMPT=$(python3 "$TMP/golden.py" "$G/golden.safetensors" gen.dmoe_p0.6.prompt)
WANT=$(python3 "$TMP/golden.py" "$G/golden.safetensors" gen.dmoe_p0.6.output)

# dMoE block routing p = 0.6, KV cache (the official dMoE generate): same tokens, 13.6 unique experts.
"$ECDLM" generate -m "$G" --prompt-ids "$PROMPT" -n 56 --diffusion-block-length 32 --diffusion-steps 8 \
  --diffusion-threshold 0.288067 --moe-routing block --block-top-p 0.6 --block-min-experts 16 \
  --eos-id 298 --mask-id 299 --json 2> "$TMP/err.txt" > "$TMP/gen.json" || { cat "$TMP/err.txt"; fail "generate"; }
python3 - "$TMP/gen.json" "$WANT" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); want = [int(x) for x in sys.argv[2].split(",")]
s = d["samples"][0]
assert s["tokens"] == want, (s["tokens"], want)
assert d["kv_cache"] is True and d["routing"] == "block" and d["decoder"] == "llada2"
assert abs(s["avg_unique_experts_per_layer"] - 13.6) < 1e-9, s["avg_unique_experts_per_layer"]
# The prompt's block goes in alone; the first generated block rides along with the second's first forward.
assert s["forwards"] == len(s["per_forward"]) and s["cache_forwards"] == 1 and s["ride_along_appends"] == 1
assert s["per_forward"][0]["tokens_in"] == 32 and max(f["tokens_in"] for f in s["per_forward"]) == 64
assert all(f["expert_bytes"] > 0 for f in s["per_forward"]) and d["peak_rss_mb"] > 0
# Each forward's split: its parts are timed inside it (the LM head, attention and experts run every forward).
parts = ("attention_ms", "router_ms", "experts_ms", "dense_ms", "head_ms")
for f in s["per_forward"]:
    assert all(f[k] >= 0 for k in parts), f
    assert f["head_ms"] > 0 and f["attention_ms"] > 0 and f["experts_ms"] > 0, f
    assert sum(f[k] for k in parts) <= f["ms"] * 1.01 + 0.05, f
PY
grep -q "routing block (p 0.6" "$TMP/err.txt" || fail "effective settings not logged"

# Token routing: the KV cache changes nothing (exact prefix cache for block-causal models).
for kv in true false; do
  "$ECDLM" -q generate -m "$G" --prompt-ids "$PROMPT" -n 56 --diffusion-block-length 32 --diffusion-steps 8 \
    --diffusion-threshold 0.345199 --eos-id 298 --mask-id 299 --kv-cache $kv > "$TMP/tok_$kv.txt"
done
cmp -s "$TMP/tok_true.txt" "$TMP/tok_false.txt" || fail "KV cache changed the greedy tokens"

# logits with block routing = the dMoE forward.
"$ECDLM" -q logits -m "$G" --input "$G/golden.safetensors" --attention block-causal --block-length 32 \
  --moe-routing block --block-top-p 0.6 --out "$TMP/l.safetensors"
python3 - "$TMP" "$G" <<'PY'
import sys; sys.path.insert(0, sys.argv[1]); from golden import read
got = read(sys.argv[1] + "/l.safetensors")["logits"][1]; want = read(sys.argv[2] + "/golden.safetensors")["logits_dmoe_p0.6"][1]
d = max(abs(a - b) for a, b in zip(got, want)); assert d < 1e-4, d; print("dmoe logits max diff", d)
PY

# Bad input (issue 4): non-zero exit, an error that names the flag and says the fix.
bad() {  # expected-text, args...
  expect_fail "$1" "$ECDLM" -q generate -m "$G" --mask-id 299 "${@:2}"
  grep -q -- "fix:\|not in {" "$TMP/bad.txt" || { cat "$TMP/bad.txt"; fail "error for '$*' gives no fix"; }
}
# 1. an empty prompt
bad "--prompt" --decoder llada2 --prompt-ids "" -n 8
# 2. a prompt (+ generation) longer than the context (max_position_embeddings 16384)
bad "context" --decoder llada2 --prompt-ids "$PROMPT" -n 100000
# 3. a block length that does not divide: the vote chunk (block routing), the gen length (llada)
bad "block-chunk" --decoder llada2 --prompt-ids "$PROMPT" -n 8 --diffusion-block-length 24 --moe-routing block
bad "--gen-length" --decoder llada --prompt-ids "$PROMPT" -n 30 --diffusion-block-length 8
# 4. an unknown routing policy
bad "moe-routing" --decoder llada2 --prompt-ids "$PROMPT" -n 8 --moe-routing blocky
# 5. p outside (0, 1]
bad "block-top-p" --decoder llada2 --prompt-ids "$PROMPT" -n 8 --moe-routing block --block-top-p 1.5
bad "block-top-p" --decoder llada2 --prompt-ids "$PROMPT" -n 8 --moe-routing block --block-top-p 0
# 6. G > E (64 experts)
bad "block-min-experts" --decoder llada2 --prompt-ids "$PROMPT" -n 8 --moe-routing block --block-min-experts 65
# 7. threshold / steps conflicts
bad "diffusion-steps" --decoder fast-dllm --prompt-ids "$PROMPT" -n 8 --diffusion-steps 4
bad "diffusion-steps" --decoder llada2 --prompt-ids "$PROMPT" -n 8 --diffusion-steps 64
bad "diffusion-factor" --decoder fast-dllm --prompt-ids "$PROMPT" -n 8 --diffusion-factor 1 --diffusion-threshold 0.9
bad "diffusion-threshold" --decoder llada --prompt-ids "$PROMPT" -n 32 --diffusion-threshold 0.9
bad "kv-cache" --decoder llada --prompt-ids "$PROMPT" -n 32 --kv-cache false
bad "cfg-scale" --decoder llada2 --prompt-ids "$PROMPT" -n 8 --cfg-scale 1
bad "diffusion-steps" --decoder llada --prompt-ids "$PROMPT" -n 32 --diffusion-block-length 16 --diffusion-steps 3
bad "diffusion-steps" --decoder llada --prompt-ids "$PROMPT" -n 16 --diffusion-steps 32
bad "prompt-ids" --decoder llada2 --prompt-ids "1,x" -n 8
bad "--kernel" --decoder llada2 --prompt-ids "$PROMPT" -n 8 --kernel tensor-cores

# bf16 weights take the small-M kernels (kernels/small_m.h): the effective backend is logged, and
# torch's path and the kernel decode the same prompt (bf16 rounding differs, so tokens may too).
for k in torch auto; do
  "$ECDLM" generate -m "$G" --prompt-ids "$PROMPT" -n 32 --eos-id 298 --mask-id 299 --dtype bf16 --kernel $k \
    --json > "$TMP/k_$k.json" 2> "$TMP/k_$k.err" || { cat "$TMP/k_$k.err"; fail "generate --kernel $k"; }
  grep -q "small-M kernel: $k -> " "$TMP/k_$k.err" || { cat "$TMP/k_$k.err"; fail "kernel choice not logged"; }
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d['samples'][0]['tokens']) > 0" "$TMP/k_$k.json"
done
# --huge-pages takes a boolean; bench generate refuses a synthetic model that cannot be built in
# the free memory, before building it (20 layers and the EC copy need about 70 GiB; only where 90 are
# not free, so the check cannot start it).
expect_fail "--huge-pages" "$ECDLM" --huge-pages maybe info -m "$G"
"$ECDLM" -q --huge-pages false info -m "$G" > /dev/null || fail "--huge-pages false"
avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
if [ "${avail_kb:-0}" -gt 0 ] && [ "$avail_kb" -lt $((90 * 1024 * 1024)) ]; then
  expect_fail "--bench-synth-layers" "$ECDLM" -q bench generate --bench-brown-model "" --bench-synth-layers 20 \
    --bench-synth-vocab 200000
  grep -q "GiB are available" "$TMP/bad.txt" || { cat "$TMP/bad.txt"; fail "memory check message"; }
fi
# --bench-kv-cache keeps only the variants with the KV cache on / off; none left is an error.
expect_fail "--bench-kv-cache" "$ECDLM" -q bench generate --bench-brown-model "" --bench-policies topk --bench-kv-cache off
grep -q "uncached runs exist for token and block" "$TMP/bad.txt" || { cat "$TMP/bad.txt"; fail "--bench-kv-cache message"; }
expect_rc 2 "$ECDLM" -q bench generate --bench-kv-cache maybe
echo "generate_threshold e2e OK"

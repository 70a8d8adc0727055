#!/usr/bin/env bash
# End-to-end: `ecdlm convert --quantize` (q8 / q4, both layouts, LLaDA2 and LLaDA-MoE), then the
# quantized dirs through logits (mapped, quality vs bf16, --quant-repack), generate (KV cache, block
# routing), serve (a completion over HTTP),
# info, and the clear refusals (train / retrofit / export / re-convert, flag errors).
# Usage: bash quantize_cli.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"
ROOT="$2"
GOLDEN="$ROOT/../shared/golden"
TINY="$GOLDEN/tiny-dmoe"
LLADA="$GOLDEN/tiny-lladamoe"
TMP="$(mktemp -d)"
SPID=""
trap '[ -n "$SPID" ] && kill -9 "$SPID" 2>/dev/null; rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
[ -f "$TINY/golden.safetensors" ] || { echo "SKIP: golden fixtures missing ($TINY)"; exit 0; }
cp "$ROOT/tests/e2e/st.py" "$TMP/st.py"
jq_py() { python3 -c "import json,sys; j=json.load(open('$1')); $2"; }

# --- convert: bf16 reference, q8 stacked, q4 per-expert ------------------------------------------------
"$ECDLM" -q convert -m "$TINY" -o "$TMP/bf16" --dtype bf16 > /dev/null || fail "convert bf16"
"$ECDLM" convert -m "$TINY" -o "$TMP/q8" --dtype bf16 --layout stacked --quantize q8 --json > "$TMP/c8.json" \
  || fail "convert q8"
# 2 MoE layers x (3 stacked expert tensors + 3 shared) + 1 dense layer x 3 + 3 layers x 2 attention = 21
jq_py "$TMP/c8.json" "assert j['quantized'] == 21 and j['not_quantized'] == [], j"
jq_py "$TMP/q8/config.json" "q=j['quantization']; assert q['format']=='q8_g32' and q['bits']==8 and q['group_size']==32 and q['quantized']==['experts','shared_experts','dense_mlp','attention'] and not q['lm_head'], q"
"$ECDLM" convert -m "$TINY" -o "$TMP/q4" --dtype bf16 --quantize q4 \
  --quantize-exclude '^model\.layers\.0\.' --json > "$TMP/c4.json" || fail "convert q4"
jq_py "$TMP/q4/config.json" "q=j['quantization']; assert q['format']=='q4_g32' and q['zero_point'] and q['exclude']==['^model\\\\.layers\\\\.0\\\\.'], q"
# Group 64: the down projections (K = 32, dense 96) do not fit and stay bf16, listed, with one
# warning; routed experts are packed all three or none (down's K is gate's N).
"$ECDLM" convert -m "$TINY" -o "$TMP/q8g64" --dtype bf16 --quantize q8 --quantize-group 64 --json \
  > "$TMP/c64.json" 2> "$TMP/err.txt" || fail "convert q8 g64"
[ "$(grep -c 'stay unquantized' "$TMP/err.txt")" = 1 ] || fail "one warning for the weights that do not fit"
jq_py "$TMP/c64.json" "n=j['not_quantized']; assert len(n) == 2 * 64 * 3 + 2 + 1 and 'model.layers.1.mlp.experts.0.gate_proj.weight' in n and 'model.layers.1.mlp.shared_experts.gate_proj.weight' not in n, n[:3]"
python3 - "$TMP" <<'PY' || fail "packed tensors"
import sys, json, struct
def header(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]; return json.loads(f.read(n))
h8 = header(sys.argv[1] + "/q8/model.safetensors"); h4 = header(sys.argv[1] + "/q4/model.safetensors")
assert h8["model.layers.1.mlp.experts.gate_proj.qweight"]["dtype"] == "I8", h8["model.layers.1.mlp.experts.gate_proj.qweight"]
assert h8["model.layers.1.mlp.experts.gate_proj.qweight"]["shape"] == [64, 32, 64]
assert h8["model.layers.1.mlp.experts.gate_proj.scales"]["dtype"] == "F16"
assert "lm_head.weight" in h8 and "model.word_embeddings.weight" in h8 and "model.layers.1.mlp.gate.weight" in h8
assert h4["model.layers.1.mlp.experts.5.down_proj.qweight"]["dtype"] == "U8"
assert h4["model.layers.1.mlp.experts.5.down_proj.qweight"]["shape"] == [64, 16]
assert h4["model.layers.1.mlp.experts.5.down_proj.mins"]["shape"] == [64, 1]
assert "model.layers.0.mlp.gate_proj.weight" in h4  # excluded by the regex
PY

# --- logits: mapped, quantized bytes, close to bf16 ------------------------------------------------------
for m in bf16 q8 q4; do
  "$ECDLM" logits -m "$TMP/$m" --input "$TINY/golden.safetensors" --attention block-causal --block-length 32 \
    --moe-routing token --out "$TMP/l_$m.safetensors" --json > "$TMP/l_$m.json" 2> "$TMP/err.txt" \
    || { cat "$TMP/err.txt"; fail "logits $m"; }
done
jq_py "$TMP/l_q8.json" "w=j['weights']; assert w['quantized'] and w['stacked_experts'] and j['dtype']=='bf16', j"
python3 - "$TMP" <<'PY' || fail "quantized logits vs bf16"
import sys, os, json
sys.path.insert(0, sys.argv[1])
import st
ref = st.read(sys.argv[1] + "/l_bf16.safetensors")["logits"][1]
tb = json.load(open(sys.argv[1] + "/l_bf16.json"))["weights"]["touched_bytes"]
# This random model's routing margins are ~2e-4 (convert_cli.sh): bf16 weights alone move the
# logits 0.165 (mean |d| / mean |logit|) from f32 by flipping experts, and q8 about as much again.
for m, tol in (("q8", 0.3), ("q4", 0.6)):
    got = st.read(sys.argv[1] + f"/l_{m}.safetensors")["logits"][1]
    rel = sum(abs(x - y) for x, y in zip(got, ref)) / sum(abs(y) for y in ref)
    t = json.load(open(sys.argv[1] + f"/l_{m}.json"))["weights"]["touched_bytes"]
    print(f"{m}: mean |d| / mean |logit| vs bf16 = {rel:.4f}, bytes read {t} vs bf16 {tb}")
    assert rel < tol, (m, rel)
    assert t < tb, (m, t, tb)
PY

# --- --quant-repack: every product on the output-lane copies (auto takes them with the vnni kernel) -------
if grep -q avx512_vnni /proc/cpuinfo; then
  for r in auto on off; do
    "$ECDLM" logits -m "$TMP/q8" --input "$TINY/golden.safetensors" --attention block-causal --block-length 32 \
      --moe-routing token --quant-repack "$r" --out "$TMP/l_q8_$r.safetensors" 2> "$TMP/err_$r.txt" \
      || { cat "$TMP/err_$r.txt"; fail "logits q8 --quant-repack $r"; }
  done
  for r in auto on; do
    grep -qE "output-lane copies on \(--quant-repack $r\): [0-9]+ weights, .* [0-9.]+ [kMG]?B of the row layout handed back" \
      "$TMP/err_$r.txt" || { cat "$TMP/err_$r.txt"; fail "repack $r log"; }
  done
  grep -q "output-lane copies off (--quant-repack off)" "$TMP/err_off.txt" || fail "repack off log"
  python3 - "$TMP" <<'PY' || fail "repacked logits vs the row layout"
import sys
sys.path.insert(0, sys.argv[1])
import st
on = st.read(sys.argv[1] + "/l_q8_on.safetensors")["logits"]
auto = st.read(sys.argv[1] + "/l_q8_auto.safetensors")["logits"]
off = st.read(sys.argv[1] + "/l_q8_off.safetensors")["logits"]
assert on == auto, "auto took another path than on"
# The 128-row forward: on the copies every product quantizes its activations to int8 per group
# (as the few-row kernels always did); off, products above 64 rows dequantize the weight and
# multiply in bf16. This random model's routing margins are ~2e-4 (above): any rounding flips
# experts, so the bound is the one q8's own weights get against bf16 (0.3). The quality check is
# on a trained model (Brown TC eval, q8: ELBO perplexity 1244.09 on the copies, 1243.80 off, f32
# 1243.62; docs/quantization.md).
num = sum(abs(x - y) for x, y in zip(on[1], off[1]))
den = sum(abs(y) for y in off[1])
print(f"repack on vs off: mean |d| / mean |logit| = {num / den:.4f}")
assert num / den < 0.3, num / den
PY
fi
# auto without the vnni kernel keeps the rows and says why.
"$ECDLM" logits -m "$TMP/q8" --input "$TINY/golden.safetensors" --quant-kernel torch --out "$TMP/x.safetensors" \
  2> "$TMP/err.txt" || { cat "$TMP/err.txt"; fail "logits q8 --quant-kernel torch"; }
grep -q "output-lane copies off (--quant-repack auto: the torch kernel reads the rows)" "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "repack auto off log"; }
expect_rc 2 "$ECDLM" logits -m "$TMP/q8" --input "$TINY/golden.safetensors" --quant-repack on --quant-kernel torch \
  --out "$TMP/x.safetensors"
grep -q "quant-repack: repacked weights run on the AVX512-VNNI kernel" "$TMP/err.txt" || fail "repack refusal message"

# --quant-kernel amx: vnni's results on AMX-INT8 tiles where the CPU has them, else refused (exit 2).
if grep -qw amx_int8 /proc/cpuinfo; then
  for k in vnni amx; do
    "$ECDLM" logits -m "$TMP/q8" --input "$TINY/golden.safetensors" --quant-kernel $k --quant-repack on \
      --out "$TMP/k_$k.safetensors" 2> "$TMP/err.txt" || { cat "$TMP/err.txt"; fail "logits q8 --quant-kernel $k"; }
  done
  cmp -s "$TMP/k_vnni.safetensors" "$TMP/k_amx.safetensors" || fail "--quant-kernel amx logits differ from vnni's"
else
  expect_fail "this CPU has no AMX-INT8" "$ECDLM" logits -m "$TMP/q8" --input "$TINY/golden.safetensors" \
    --quant-kernel amx --out "$TMP/x.safetensors"
fi

# --- generate: KV cache + block routing on q4 --------------------------------------------------------------
"$ECDLM" generate -m "$TMP/q4" --prompt-ids 5,17,42,7 -n 32 --diffusion-block-length 32 --diffusion-steps 8 \
  --moe-routing block --block-top-p 0.6 --eos-id 298 --mask-id 299 --json > "$TMP/gen.json" 2> "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "generate q4"; }
jq_py "$TMP/gen.json" "s=j['samples'][0]; assert len(s['tokens']) > 0 and j['kv_cache'] is True, s"

# --- serve: a quantized checkpoint behind the HTTP API (with the fixture tokenizer), repacked ---------------
python3 "$ROOT/tests/e2e/llada2_fixture.py" write "$TMP/q8"
REPACK=off; grep -q avx512_vnni /proc/cpuinfo && REPACK=on
serve_start serve "$TMP/q8" --quant-repack "$REPACK"
curl -sf "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "q8", "prompt": "hello", "max_tokens": 16, "seed": 3, "ecdlm": {"ignore_eos": true}}' \
  > "$TMP/serve.json" || { kill -9 "$SPID"; cat "$TMP/serve.err"; fail "serve q8 completion"; }
serve_stop serve
jq_py "$TMP/serve.json" "c=j['choices'][0]; assert j['usage']['completion_tokens'] == 16 and c['finish_reason'] == 'length', j"
grep -q "output-lane copies $REPACK" "$TMP/serve.err" || { cat "$TMP/serve.err"; fail "serve q8: repack log"; }
grep -q "may differ between running alone" "$TMP/serve.err" && fail "serve q8 (auto kernels) warned of batch variance"
# torch's GEMMs are not batch-invariant: serve says so
serve_start serve-torch "$TMP/q8" --quant-kernel torch --quant-repack off
serve_stop serve-torch
grep -q "may differ between running alone" "$TMP/serve-torch.err" || { cat "$TMP/serve-torch.err"; fail "no batch-variance warning"; }

# --- LLaDA-MoE (separate q/k/v in the file) --------------------------------------------------------------
"$ECDLM" -q convert -m "$LLADA" -o "$TMP/lq8" --quantize q8 --layout stacked || fail "convert llada q8"
"$ECDLM" -q convert -m "$LLADA" -o "$TMP/lbf" --dtype bf16 || fail "convert llada bf16"
for m in lbf lq8; do
  "$ECDLM" -q logits -m "$TMP/$m" --input "$LLADA/golden.safetensors" --dtype bf16 --out "$TMP/l_$m.safetensors" \
    || fail "logits $m"
done
python3 - "$TMP" <<'PY' || fail "llada q8 logits"
import sys
sys.path.insert(0, sys.argv[1])
import st
ref = st.read(sys.argv[1] + "/l_lbf.safetensors")["logits"][1]
got = st.read(sys.argv[1] + "/l_lq8.safetensors")["logits"][1]
rel = sum(abs(x - y) for x, y in zip(got, ref)) / sum(abs(y) for y in ref)
print(f"llada q8 vs bf16: {rel:.4f}"); assert rel < 0.3, rel
PY

# --- info ------------------------------------------------------------------------------------------------
"$ECDLM" info -m "$TMP/q4" --json > "$TMP/info.json" || fail "info q4"
jq_py "$TMP/info.json" "q=j['checkpoint']['quantization']; assert q['format']=='q4_g32' and q['packed_tensors'] > 0, q"
"$ECDLM" info -m "$TMP/q4" | grep -q "q4_g32" || fail "info table lacks the quantization row"
# The memory estimate counts the bytes as stored, not bf16's: the whole file, and a routed expert at
# the experts' mean (layer 0's left bf16 by the exclude, the others q4_g32: 20/32 bytes per weight).
"$ECDLM" info -m "$TMP/bf16" --json > "$TMP/info_bf16.json" || fail "info bf16"
python3 - "$TMP/info.json" "$TMP/info_bf16.json" <<'PY' || fail "info memory of a quantized directory"
import json, sys
q, b = (json.load(open(p)) for p in sys.argv[1:3])
mq, mb = q["memory"], b["memory"]
assert mq["weights"].startswith("q4_g32") and mb["weights"] == "bf16", (mq["weights"], mb["weights"])
assert mq["weights_total_bytes"] == q["checkpoint"]["tensor_bytes"], mq
ratio = mq["bytes_per_expert"] / mb["bytes_per_expert"]
assert 20 / 64 - 1e-9 <= ratio < 1, (mq["bytes_per_expert"], mb["bytes_per_expert"])
assert mq["per_policy"]["ec"]["bytes_per_forward_max"] < mb["per_policy"]["ec"]["bytes_per_forward_max"], (mq, mb)
print("info memory: q4", mq["weights_total_bytes"], "bytes against bf16", mb["weights_total_bytes"])
PY
"$ECDLM" info -m "$TMP/q4" | grep -q "memory (q4_g32 packed, bf16 rest weights" || fail "info memory header"

# --- refusals -----------------------------------------------------------------------------------------------
expect_rc 2 "$ECDLM" convert -m "$TMP/q8" -o "$TMP/again" --quantize q4
grep -q "already quantized" "$TMP/err.txt" || fail "re-convert message"
expect_rc 2 "$ECDLM" export -m "$TMP/q8" -o "$TMP/exp"
grep -q "quantized" "$TMP/err.txt" || fail "export message"
expect_rc 2 "$ECDLM" retrofit --from "$TMP/q8" --out "$TMP/ec"
grep -q "inference only" "$TMP/err.txt" || fail "retrofit message"
expect_rc 2 "$ECDLM" convert -m "$TINY" -o "$TMP/x" --quantize-include experts
grep -q "without --quantize" "$TMP/err.txt" || fail "include without quantize"
expect_rc 2 "$ECDLM" convert -m "$TINY" -o "$TMP/x" --quantize q8 --quantize-include '('
grep -q -- "--quantize-include" "$TMP/err.txt" || fail "bad regex message"
expect_rc 2 "$ECDLM" convert -m "$TINY" -o "$TMP/x" --quantize q8 --quantize-include nothing_matches_this
grep -q "no tensor matches" "$TMP/err.txt" || fail "empty selection message"
[ ! -e "$TMP/x" ] || fail "a failed convert left output"
# bench generate --bench-quant: '+rows' (row layout) or '+repack' (copies) comes last, after '+head'.
expect_rc 2 "$ECDLM" bench generate --bench-quant q8+rows+head
grep -q "optionally with +head and then +rows or +repack" "$TMP/err.txt" || fail "bench-quant suffix order message"
expect_rc 2 "$ECDLM" bench generate --bench-quant q8+repack+head
expect_rc 2 "$ECDLM" bench generate --bench-quant bf16+rows
"$ECDLM" bench generate --help > "$TMP/help.txt"
grep -q "q4+head+rows" "$TMP/help.txt" || fail "bench-quant help names +rows"
echo "quantize_cli: OK"

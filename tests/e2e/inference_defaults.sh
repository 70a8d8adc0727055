#!/usr/bin/env bash
# What the inference commands decide without being told, and that they say so (issue 19): the dtype
# (the checkpoint's stored one; conversions logged with their size), the routing policy and its source
# (flag, config key, built-in default) in logs, --json and `info`, the approximation warning of the
# threshold decoders on a bidirectional model, the model directory's tokenizer and generation_config.json
# mask id, `info`'s file facts, and `logits` timing one forward without --out.
# Usage: bash inference_defaults.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
GOLDEN="$ROOT/../shared/golden"
TINY="$GOLDEN/tiny"; DMOE="$GOLDEN/tiny-dmoe"; LMOE="$GOLDEN/tiny-lladamoe"
[ -f "$LMOE/model.safetensors" ] && [ -f "$DMOE/golden.safetensors" ] || { echo "SKIP: golden fixtures missing"; exit 0; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
E=("$ECDLM" --threads 1)
jq_py() { python3 -c "import json,sys; j=json.load(open('$1')); $2" || fail "$3"; }
has() { grep -qF -- "$1" "$2" || { cat "$2" >&2; fail "$3"; }; }
hasnt() { ! grep -qF -- "$1" "$2" || { cat "$2" >&2; fail "$3"; }; }

# --- dtype: the stored one by default, conversions logged with their size ---------------------------
"${E[@]}" convert -m "$TINY" -o "$TMP/bf16" --dtype bf16 > /dev/null || fail "convert to bf16"
LOGITS=(logits --input "$TINY/golden.safetensors" --attention block-causal --block-length 16 --json)
"${E[@]}" "${LOGITS[@]}" -m "$TMP/bf16" --mmap on --out "$TMP/mm-on.st" > "$TMP/l.json" 2> "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "logits bf16"; }
jq_py "$TMP/l.json" "w=j['weights']; assert j['dtype'] == 'bf16' and w['mapped_bytes'] > 50 * w['copied_bytes'], j" \
  "a bf16 checkpoint did not load as bf16 in place"
has "weights: bf16, the checkpoint's stored dtype" "$TMP/err.txt" "the stored dtype is not logged"
has "used in place from the mapping (--mmap on)" "$TMP/err.txt" "--mmap on is not logged"
# --mmap auto (the default) copies a model this small into memory; off always does; same logits.
for M in auto off; do
  "${E[@]}" "${LOGITS[@]}" -m "$TMP/bf16" --mmap $M --out "$TMP/mm-$M.st" > "$TMP/l.json" 2> "$TMP/err.txt" \
    || { cat "$TMP/err.txt"; fail "logits --mmap $M"; }
  jq_py "$TMP/l.json" "w=j['weights']; assert w['mapped_bytes'] == 0 and w['copied_bytes'] > 500000, w" "--mmap $M did not copy"
  has "copied into memory at load (--mmap $M" "$TMP/err.txt" "--mmap $M is not logged"
  cmp -s "$TMP/mm-on.st" "$TMP/mm-$M.st" || fail "--mmap $M changed the logits"
done
expect_rc 2 "${E[@]}" "${LOGITS[@]}" -m "$TMP/bf16" --mmap maybe
"${E[@]}" "${LOGITS[@]}" -m "$TMP/bf16" --dtype f32 > "$TMP/l32.json" 2> "$TMP/err.txt" || fail "logits --dtype f32"
jq_py "$TMP/l32.json" "assert j['dtype'] == 'f32' and j['weights']['copied_bytes'] > 1000000, j" "--dtype f32 not applied"
grep -qE "converting 0\.[0-9]{2} MB of bf16 weights to f32 \(--dtype f32\)" "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "the bf16 -> f32 conversion is not logged with its size"; }
# The f32 golden checkpoint still loads as f32, converting nothing (the golden comparisons run in f32).
"${E[@]}" "${LOGITS[@]}" -m "$TINY" > "$TMP/lg.json" 2> "$TMP/err.txt" || fail "logits f32 golden"
jq_py "$TMP/lg.json" "assert j['dtype'] == 'f32', j" "an f32 checkpoint did not load as f32"
hasnt "converting" "$TMP/err.txt" "a conversion was logged for an f32 checkpoint"
"$ECDLM" generate --help | tr -s ' \n' ' ' | grep -qF "default: the checkpoint's stored dtype" \
  || fail "generate --help does not give the --dtype default"

# --- logits: time one forward without writing the logits ---------------------------------------------
(cd "$TMP" && "${E[@]}" logits -m "$TINY" --input "$TINY/golden.safetensors" --reps 2 --json > "$TMP/t.json" 2> "$TMP/err.txt") \
  || { cat "$TMP/err.txt"; fail "logits without --out"; }
jq_py "$TMP/t.json" "assert j['out'] is None and j['forward_ms'] > 0 and len(j['forward_ms_all']) == 2 and j['tokens_per_s'] > 0, j" \
  "logits --json lacks the forward time"
[ -z "$(find "$TMP" -maxdepth 1 -name '*.safetensors')" ] || fail "logits without --out wrote a file"
"${E[@]}" logits -m "$TINY" --input "$TINY/golden.safetensors" > "$TMP/t.txt" 2>/dev/null || fail "logits (text) without --out"
has "forward" "$TMP/t.txt" "logits without --out prints no timing"
expect_fail "--reps" "${E[@]}" logits -m "$TINY" --input "$TINY/golden.safetensors" --reps 0

# --- routing policy and its source ---------------------------------------------------------------------
"${E[@]}" logits -m "$DMOE" --input "$DMOE/golden.safetensors" --json > "$TMP/r.json" 2> "$TMP/err.txt" || fail "logits dmoe"
jq_py "$TMP/r.json" "assert j['routing'] == 'block' and j['routing_source'] == 'config', j" "dMoE routing source in --json"
has "routing: block (p 0.6 from config.json core_threshold" "$TMP/err.txt" "dMoE routing not logged"
has "config.json has dMoE's mode \"aggregate\"" "$TMP/err.txt" "dMoE routing source not logged"
"${E[@]}" logits -m "$DMOE" --input "$DMOE/golden.safetensors" --moe-routing token --json > "$TMP/r.json" 2> "$TMP/err.txt"
jq_py "$TMP/r.json" "assert j['routing'] == 'token' and j['routing_source'] == 'flag', j" "flag routing source"
has "routing: token, from --moe-routing" "$TMP/err.txt" "flag routing not logged"
"${E[@]}" logits -m "$TINY" --input "$TINY/golden.safetensors" --json > "$TMP/r.json" 2> "$TMP/err.txt"
jq_py "$TMP/r.json" "assert j['routing'] == 'token' and j['routing_source'] == 'default', j" "default routing source"
has "routing: token, the built-in default" "$TMP/err.txt" "default routing not logged"
PROMPT=182,199,120,239
"${E[@]}" generate -m "$DMOE" --prompt-ids $PROMPT -n 32 --eos-id 298 --mask-id 299 --json > "$TMP/g.json" 2> "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "generate dmoe"; }
jq_py "$TMP/g.json" "assert j['routing'] == 'block' and j['routing_source'] == 'config' and j['approximate'] is False, j" \
  "generate --json: routing source / approximate"
has "routing: block" "$TMP/err.txt" "generate does not log the routing"
"${E[@]}" info -m "$DMOE" --json > "$TMP/i.json" || fail "info dmoe"
jq_py "$TMP/i.json" "r=j['inference']['routing']; assert r['policy'] == 'block' and r['source'] == 'config' and r['block_top_p'] == 0.6 and 'aggregate' in r['why'], r" \
  "info: default routing of a dMoE checkpoint"
"${E[@]}" info -m "$DMOE" > "$TMP/i.txt"
has "--moe-routing block *" "$TMP/i.txt" "info table does not mark the default policy"

# --- bidirectional models: the threshold decoders warn and --json says so -------------------------------
"${E[@]}" generate -m "$LMOE" --decoder llada2 --prompt-ids $PROMPT -n 32 --mask-id 299 --json > "$TMP/b.json" 2> "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "generate llada2 on LLaDA-MoE"; }
has "APPROXIMATE" "$TMP/err.txt" "no warning for the KV cache on a bidirectional model (LLaDA-MoE)"
jq_py "$TMP/b.json" "assert j['approximate'] is True and j['model_attention'] == 'bidirectional' and j['kv_cache'], j" \
  "generate --json does not mark the approximation"

# --- the directory's tokenizer and generation_config.json mask id ----------------------------------------
M="$TMP/lmoe"
fixture_model "$LMOE" "$M"
"${E[@]}" generate -m "$M" --decoder llada --prompt-ids 104,101 -n 8 --json > "$TMP/d.json" 2> "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "--decoder llada --prompt-ids did not use the directory's tokenizer.json"; }
jq_py "$TMP/d.json" "assert j['decoder'] == 'llada' and len(j['samples'][0]['tokens']) > 0, j" "llada --prompt-ids output"
# Without a tokenizer the error comes before the model load: the weights here are not even readable.
N="$TMP/notok"; mkdir "$N"
cp "$LMOE/config.json" "$N/"; echo garbage > "$N/model.safetensors"
expect_fail "--tokenizer" "${E[@]}" generate -m "$N" --decoder llada --prompt-ids 104,101 -n 8
hasnt "model.safetensors" "$TMP/bad.txt" "the tokenizer check came after loading the weights"
# LLaDA2.0-mini keeps mask_token_id in generation_config.json: info and the decoders use it.
G2="$TMP/genconf"; mkdir "$G2"
cp "$TINY/config.json" "$TINY/model.safetensors" "$G2/"
echo '{"mask_token_id": 299, "eos_token_id": 298}' > "$G2/generation_config.json"
"${E[@]}" generate -m "$G2" --prompt-ids $PROMPT -n 32 --json > "$TMP/m.json" 2> "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "generate did not take the mask id from generation_config.json"; }
has "mask id 299 (generation_config.json mask_token_id)" "$TMP/err.txt" "mask id source not logged"
python3 "$ROOT/tests/e2e/llada2_fixture.py" write "$G2"
"${E[@]}" info -m "$G2" --json > "$TMP/i.json" || fail "info genconf"
jq_py "$TMP/i.json" "i=j['inference']; c=j['checkpoint']
assert i['mask_id'] == {'id': 299, 'source': 'generation_config.json mask_token_id'}, i
assert i['eos_id']['id'] == 298 and i['decoder'] == 'llada2' and i['dtype'] == 'f32', i
assert c['tokenizer'][0] == 'tokenizer.json' and c['expert_layout'] == 'per-expert', c" "info: ids / tokenizer / layout"
"${E[@]}" info -m "$G2" > "$TMP/i.txt" || fail "info table genconf"
has "299 (generation_config.json mask_token_id)" "$TMP/i.txt" "info table: mask id"
has "tokenizer.json" "$TMP/i.txt" "info table: tokenizer.json"
hasnt "tokenizer.model" "$TMP/i.txt" "info table reports tokenizer.model"
has "per-expert (mlp.experts" "$TMP/i.txt" "info table: expert layout of the file"
"${E[@]}" info -m "$TMP/bf16" --json > "$TMP/i.json" || fail "info bf16"
jq_py "$TMP/i.json" "assert j['inference']['dtype'] == 'bf16', j['inference']" "info: default dtype of a bf16 checkpoint"

echo "PASS inference_defaults"

#!/usr/bin/env bash
# End-to-end: retrofit a LLaDA-MoE-layout checkpoint (the tiny golden one) to expert choice:
# prepare data with the model's own tokenizer.json, replace the router, fine-tune, evaluate.
# Usage: bash retrofit_lladamoe.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"
ROOT="$2"
SRC="$ROOT/../shared/golden/tiny-lladamoe"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
[ -f "$SRC/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($SRC)"; exit 0; }
E=("$ECDLM" --threads 1)

mkdir -p "$TMP/m"
cp "$SRC/config.json" "$SRC/model.safetensors" "$TMP/m/"
python3 "$ROOT/tests/e2e/llada2_fixture.py" write "$TMP/m"   # 300-token tokenizer: eos 298, <|mask|> 299
python3 "$ROOT/tests/e2e/toy_corpus.py" 1 300 "$TMP/c.jsonl"
"${E[@]}" prepare-data --source jsonl --input "$TMP/c.jsonl" --tokenizer "$TMP/m" --out "$TMP/data" \
  --val-fraction 0.1 --json > "$TMP/prep.json" 2> "$TMP/err.txt" || { cat "$TMP/err.txt"; fail "prepare-data"; }
python3 - "$TMP/data/meta.json" <<'PY' || fail "data meta"
import json, sys
m = json.load(open(sys.argv[1]))
assert m["vocab_size"] == 300 and m["mask_token_id"] == 299 and m["eos_token_id"] == 298, m
assert m["tokenizer"] == "tokenizer.json", m
PY

ppl() { "${E[@]}" eval -m "$1" --data "$TMP/data" --json 2> "$TMP/err.txt" \
          | python3 -c "import json,sys; print(json.load(sys.stdin)['ppl'])" || { cat "$TMP/err.txt"; fail "eval $1"; }; }
tc=$(ppl "$TMP/m")   # the config has no mask_token_id: it comes from the tokenizer's <|mask|>

# Router swap only, then router swap + 30 fine-tuning steps.
"${E[@]}" retrofit --from "$TMP/m" --out "$TMP/ec0" --json > /dev/null 2> "$TMP/err.txt" \
  || { cat "$TMP/err.txt"; fail "retrofit (convert only)"; }
"${E[@]}" retrofit --from "$TMP/m" --out "$TMP/ecft" --data "$TMP/data" --train-steps 30 --train-batch-size 8 \
  --train-seq-len 64 --train-eval-every 15 --train-lr 3e-3 --retrofit-train all --json > "$TMP/ft.json" \
  2> "$TMP/err.txt" || { cat "$TMP/err.txt"; fail "retrofit fine-tune"; }
ec0=$(ppl "$TMP/ec0")
ecft=$(ppl "$TMP/ecft/best")
echo "PPL: token choice $tc, expert choice (router swap) $ec0, after fine-tuning $ecft"

# The checkpoints stay in the LLaDA-MoE layout, with an expert-choice router.
python3 - "$TMP" <<'PY' || fail "retrofit output layout"
import json, struct, sys
d = sys.argv[1]
for run in ("ec0", "ecft/best"):
    c = json.load(open(f"{d}/{run}/config.json"))
    assert c["model_type"] == "llada" and c["moe_router_type"] == "expert_choice", c
    with open(f"{d}/{run}/model.safetensors", "rb") as f:
        names = set(json.loads(f.read(struct.unpack("<Q", f.read(8))[0])))
    for n in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
              "model.layers.2.mlp.experts.15.down_proj.weight", "model.layers.1.mlp.gate.weight"):
        assert n in names, (run, n)
PY
python3 -c "
tc, ec0, ecft = $tc, $ec0, $ecft
assert abs(ec0 - tc) / tc < 0.05, 'router swap changed a near-uniform model a lot'
assert ecft < 0.5 * ec0, 'fine-tuning the retrofitted model did not learn'
" || fail "perplexities"
echo "PASS retrofit_lladamoe"

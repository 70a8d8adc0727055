#!/usr/bin/env bash
# scripts/study_block_finetune.sh --quick end to end on a toy TC model (pipeline, not science):
# all three fine-tunes (block, token, block self-distilled from the token model), every eval arm, the report's fields, reuse of finished work, and the eval flags
# it relies on (semi-autoregressive ELBO, unique experts per block) with their errors.
set -euo pipefail
ECDLM="$1"; ROOT="$2"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
python3 "$ROOT/tests/e2e/toy_corpus.py" 7 160 corpus.jsonl
"$ECDLM" -q prepare-data --source jsonl --input corpus.jsonl --out data --vocab-size 300 --val-fraction 0.2 > /dev/null
"$ECDLM" -q train --config "$ROOT/configs/tiny.json" --data data --out tc --moe-router tc --samples 0 --json > tc.json
study() { ECDLM="$ECDLM" bash "$ROOT/scripts/study_block_finetune.sh" --quick --model tc/best --data data \
            --runs runs --results results --distill 3:3e-4; }
study > study.log 2>&1 || { cat study.log; exit 1; }
test -f results/README.md -a -f results/results.json
grep -q "Quality kept" results/README.md
python3 - <<'PY'
import json
r = json.load(open("results/results.json"))
assert r["quick"] and r["conditions"]["mask_mode"] == "semi-ar" and r["conditions"]["block_length"] == 16, r["conditions"]
arms = {a["name"]: a for a in r["arms"]}
assert set(arms) == {"token", "block-G4", "block-G2", "blockft-block-G2", "blockft-block-G4", "blockft-token",
                     "tokenft-token", "tokenft-block-G2", "distill-3s-lr3e-4-block-G2",
                     "distill-3s-lr3e-4-token"}, arms.keys()
for a in arms.values():
    assert a["ppl"] > 1 and 0 <= a["cloze_accuracy"] <= 1 and a["cloze_tokens"] > 0, a
    assert 0 < a["unique_experts_per_block"] <= 8, a
# The coreset holds experts the block's tokens voted for (top-k picks), so routing inside it uses
# no more experts per block than token routing does (one MoE layer: the same inputs).
assert arms["block-G2"]["unique_experts_per_block"] <= arms["token"]["unique_experts_per_block"] + 1e-9
assert len(r["ratios"]) == 7 and all(x["ppl_kept"] > 0 for x in r["ratios"])
assert set(r["acceptance"]) == {"criterion", "ppl_kept", "acc_kept", "met"}
assert r["finetune"]["g"] == 2 and len(r["finetune"]["runs"]) == 3 and r["finetune"]["mask_ratio"] == [0.3, 0.8]
assert any("--moe-routing block" in c and " train " in c for c in r["commands"])
assert any("--eval-mask-mode semi-ar" in c for c in r["commands"])
d = r["distill"][0]
assert d["steps"] == 3 and d["ratio"]["token_arm"] == "token" and d["ratio"]["ppl_kept"] > 0, d
assert any("--train-distill-from tc/best" in c for c in r["commands"])
PY
# The distilled run saved its effective teacher settings.
python3 - <<'PY'
import json
t = json.load(open("runs/distill-3s-lr3e-4/seed-1/train_config.json"))["train"]
assert t["distill_from"] == "tc/best" and t["distill_weight"] == 1 and t["distill_temperature"] == 1, t
PY
# Finished fine-tunes and evals are reused, not redone.
n=$(wc -l < results/commands.txt)
study > again.log 2>&1
test "$(wc -l < results/commands.txt)" = "$n"

# The eval flags: a block length that does not divide the window, an unknown mode.
if "$ECDLM" -q eval -m tc/best --data data --eval-seq-len 64 --eval-mask-mode semi-ar --diffusion-block-length 5 \
     2> err.txt > /dev/null; then echo "accepted a block length that does not divide the window"; exit 1; fi
grep -q -- "--diffusion-block-length" err.txt
if "$ECDLM" -q eval -m tc/best --data data --eval-mask-mode causal 2> err.txt > /dev/null; then
  echo "accepted --eval-mask-mode causal"; exit 1; fi
grep -q -- "--eval-mask-mode" err.txt

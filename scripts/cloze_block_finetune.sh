#!/usr/bin/env bash
# Large paired cloze set for the learnable-block study: 32 spans of 8 tokens per validation window
# (439 x 32 x 8 = 112k tokens), for the token model, untuned G = 4, the self-distilled G = 4 models
# and the CE fine-tunes; then scripts/cloze_paired.py -> docs/results/block-finetune-distill/cloze32.md.
# Run after scripts/study_block_finetune.sh (both study variants). Two evals at a time, one thread each.
set -euo pipefail
ECDLM=${ECDLM:-build/ecdlm}
D=${DISTILL_RUNS:-runs/experiments/block-finetune-distill}
L=${LONG_RUNS:-runs/experiments/block-finetune-long}
OUT=$D/evals-cloze32
MD=${MD:-docs/results/block-finetune-distill/cloze32.md}
mkdir -p "$OUT"
BLOCK=(--moe-routing block --block-top-p 0.6 --block-min-experts 4 --block-chunk 32)
ev() {
  local name=$1 dir=$2; shift 2
  [ -f "$OUT/$name.json" ] && return 0
  local cmd=("$ECDLM" --threads 1 eval -m "$dir" --data data/brown --eval-seq-len 256 --eval-windows 100000
             --eval-mask-samples 1 --eval-mask-mode semi-ar --diffusion-block-length 32 --eval-cloze-span 8
             --eval-cloze-positions 32 --json "$@")
  echo "${cmd[*]}" >> "$OUT/commands.txt"
  "${cmd[@]}" > "$OUT/$name.json.tmp" 2> "$OUT/$name.log"
  mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}
( ev base.token runs/brown-small-tc/best --moe-routing token
  ev distill-200.block-G4 "$D/distill-200s-lr3e-4/seed-1/checkpoints/step-00000200" "${BLOCK[@]}"
  ev block-ft.block-G4 "$L/block-ft/seed-1/checkpoints/step-00000200" "${BLOCK[@]}" ) &
( ev base.block-G4 runs/brown-small-tc/best "${BLOCK[@]}"
  ev distill-400.block-G4 "$D/distill-400s-lr3e-4/seed-1/checkpoints/step-00000400" "${BLOCK[@]}"
  ev token-ft.token "$L/token-ft/seed-1/checkpoints/step-00000200" --moe-routing token ) &
wait
python3 scripts/cloze_paired.py "$OUT/base.token.json" "untouched, block G=4=$OUT/base.block-G4.json" \
  "self-distilled 200 steps, block G=4=$OUT/distill-200.block-G4.json" \
  "self-distilled 400 steps, block G=4=$OUT/distill-400.block-G4.json" \
  "CE block fine-tune, block G=4=$OUT/block-ft.block-G4.json" \
  "CE token fine-tune (control), token=$OUT/token-ft.token.json" --md "$MD"

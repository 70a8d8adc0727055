#!/usr/bin/env bash
# Learnable block experts on a trained token-choice model (dmoe-llada2.md §1.4, issue 4 acceptance).
#
# From one TC checkpoint: fine-tune with block routing in the forward (t ~ U[0.3, 0.8), mean CE over
# masked tokens), and, as the control, with token routing under the same recipe and budget. Then
# evaluate every arm on the same held-out windows under block decoding conditions (see
# docs/results/block-finetune/README.md): semi-autoregressive ELBO perplexity (--eval-mask-mode
# semi-ar, blocks of 32 = the block-routing chunk), cloze accuracy, unique experts per block.
# Writes RESULTS/README.md and RESULTS/results.json. Finished runs and evals are reused.
#
# --distill "STEPS:LR ...": also the self-distillation arm(s) (the paper's learnable fine-tune): the
# block-routed fine-tune with the untouched token-routed model as a frozen teacher on the same noised
# input, loss = mean KL(teacher || student) over masked tokens (--distill-weight w mixes in (1-w) CE).
# One arm per STEPS:LR, $RUNS/distill-STEPSs-lrLR; its control is the untouched token model (a
# token-routed self-distillation has zero loss).
#
#   scripts/study_block_finetune.sh                   # Brown: runs/brown-small-tc/best, data/brown
#   scripts/study_block_finetune.sh --quick --model M --data D --runs R --results O   # pipeline check
# Options: --model DIR --data DIR --runs DIR --results DIR --seeds "1 2" --steps N --lr X
#          --block-g N (G of the block fine-tune) --distill "STEPS:LR ..." --distill-weight W --train-only;
#          ECDLM=path/to/ecdlm (default build/ecdlm).
set -euo pipefail
ECDLM=${ECDLM:-build/ecdlm}
MODEL=runs/brown-small-tc/best DATA=data/brown RUNS=runs/experiments/block-finetune
RESULTS=docs/results/block-finetune SEEDS="1 2" STEPS=80 LR=3e-4 G_FT=4 P=0.6 BLOCK=32
BATCH=16 SEQ=256 WINDOWS=100000 SAMPLES=2 SPAN=8 TRAIN_ONLY=0 QUICK=0 DISTILL="" DISTILL_W=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --model) MODEL=$2; shift ;;
    --data) DATA=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --seeds) SEEDS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --lr) LR=$2; shift ;;
    --block-g) G_FT=$2; shift ;;
    --distill) DISTILL=$2; shift ;;
    --distill-weight) DISTILL_W=$2; shift ;;
    --train-only) TRAIN_ONLY=1 ;;
    *) echo "study_block_finetune.sh: unknown option '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
# Quick: a toy model in seconds, one seed, G = 2 for the fine-tune (and E / 2 as the large G).
if [ "$QUICK" = 1 ]; then
  SEEDS=1 STEPS=3 BATCH=4 SEQ=64 WINDOWS=8 SAMPLES=1 BLOCK=16 G_FT=2
  [ -n "$DISTILL" ] && DISTILL="3:$LR"
fi
[ -f "$MODEL/config.json" ] || { echo "--model $MODEL: no config.json (train the TC model first)" >&2; exit 2; }
[ -d "$DATA" ] || { echo "--data $DATA: not a prepared data directory (ecdlm prepare-data)" >&2; exit 2; }
E=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['num_experts'])" "$MODEL/config.json")
G_BIG=$((E / 2))
mkdir -p "$RUNS" "$RESULTS"

# Fine-tune NAME with routing ROUTING (block|token), SEED, STEPS, LR, extra flags -> $RUNS/NAME/seed-SEED;
# train_result.json marks it done.
finetune() {
  local name=$1 routing=$2 seed=$3 steps=$4 lr=$5; shift 5
  local out="$RUNS/$name/seed-$seed"
  [ -f "$out/train_result.json" ] && return 0
  rm -rf "$out"
  local cmd=("$ECDLM" --threads 1 train --train-init-from "$MODEL" --data "$DATA" --out "$out" --moe-routing "$routing"
             --block-top-p "$P" --block-min-experts "$G_FT" --block-chunk "$BLOCK"
             --diffusion-mask-ratio-min 0.3 --diffusion-mask-ratio-max 0.8 --train-loss-norm masked
             --train-lr "$lr" --train-warmup $((steps / 8 + 1)) --train-steps "$steps" --train-batch-size "$BATCH"
             --train-seq-len "$SEQ" --train-seed "$seed" --train-eval-every 0 --train-save-every 0
             --train-keep-last 1 --eval-windows 16 --eval-mask-samples 1 --samples 0 --json "$@")
  echo "${cmd[*]}" >> "$RESULTS/commands.txt"
  mkdir -p "$(dirname "$out")"
  "${cmd[@]}" > "$out.json.tmp"
  mkdir -p "$out" && mv "$out.json.tmp" "$out/train_result.json"
}
distill_arm() { echo "distill-${1%%:*}s-lr${1#*:}"; }  # STEPS:LR -> arm name
for seed in $SEEDS; do
  finetune block-ft block "$seed" "$STEPS" "$LR"
  finetune token-ft token "$seed" "$STEPS" "$LR"
  for v in $DISTILL; do
    finetune "$(distill_arm "$v")" block "$seed" "${v%%:*}" "${v#*:}" --train-distill-from "$MODEL" \
      --train-distill-weight "$DISTILL_W"
  done
done
[ "$TRAIN_ONLY" = 1 ] && exit 0

# Evaluate NAME on model DIR with routing flags...; JSON -> $RUNS/evals/NAME.json.
evaluate() {
  local name=$1 dir=$2; shift 2
  local out="$RUNS/evals/$name.json"
  [ -f "$out" ] && return 0
  mkdir -p "$RUNS/evals"
  local cmd=("$ECDLM" --threads 1 eval -m "$dir" --data "$DATA" --eval-seq-len "$SEQ" --eval-windows "$WINDOWS"
             --eval-mask-samples "$SAMPLES" --eval-mask-mode semi-ar --diffusion-block-length "$BLOCK"
             --eval-cloze-span "$SPAN" --json "$@")
  echo "${cmd[*]}" >> "$RESULTS/commands.txt"
  "${cmd[@]}" > "$out.tmp"
  mv "$out.tmp" "$out"
}
last_ckpt() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['last_checkpoint'])" "$1/train_result.json"; }
TOKEN=(--moe-routing token)
block() { echo --moe-routing block --block-top-p "$P" --block-min-experts "$1" --block-chunk "$BLOCK"; }
evaluate base.token "$MODEL" "${TOKEN[@]}"
evaluate base.block-G$G_BIG "$MODEL" $(block $G_BIG)
evaluate base.block-G$G_FT "$MODEL" $(block $G_FT)
for seed in $SEEDS; do
  bft=$(last_ckpt "$RUNS/block-ft/seed-$seed") tft=$(last_ckpt "$RUNS/token-ft/seed-$seed")
  evaluate block-ft.s$seed.block-G$G_FT "$bft" $(block $G_FT)
  evaluate block-ft.s$seed.block-G$G_BIG "$bft" $(block $G_BIG)
  evaluate block-ft.s$seed.token "$bft" "${TOKEN[@]}"
  evaluate token-ft.s$seed.token "$tft" "${TOKEN[@]}"
  evaluate token-ft.s$seed.block-G$G_FT "$tft" $(block $G_FT)
  for v in $DISTILL; do
    arm=$(distill_arm "$v") dft=$(last_ckpt "$RUNS/$(distill_arm "$v")/seed-$seed")
    evaluate "$arm.s$seed.block-G$G_FT" "$dft" $(block $G_FT)
    evaluate "$arm.s$seed.token" "$dft" "${TOKEN[@]}"
  done
done

python3 "$(dirname "$0")/block_finetune_report.py" --runs "$RUNS" --results "$RESULTS" --seeds "$SEEDS" \
  --g-ft "$G_FT" --g-big "$G_BIG" --p "$P" --block "$BLOCK" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" \
  --lr "$LR" --model "$MODEL" --quick "$QUICK" --distill "$DISTILL" --distill-weight "$DISTILL_W"

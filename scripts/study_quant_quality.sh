#!/usr/bin/env bash
# Quality of quantized weights on the trained Brown models (issue 18): for each model, convert to bf16,
# q8, q4 and q4s (group 32, the default set; FORMATS="bf16 q8 q8_g64 q4 q4_g64" adds groups of 64,
# a "+head" suffix packs the LM head too), then
#  - ELBO perplexity and cloze accuracy on the whole validation split (paired: the same windows,
#    masks and spans for every format; scripts/cloze_paired.py),
#  - routing agreement with bf16 on 16 half-masked validation windows (`logits --routing-out`,
#    scripts/routing_agreement.py): the model's own routing and, for token-choice models, block
#    routing (dMoE coresets, p 0.6, G 4, 32-token chunks).
# Usage: [EVAL_WINDOWS=N] [FORMATS="bf16 ..."] [ECDLM="build/ecdlm --threads 1"] scripts/study_quant_quality.sh NAME=MODEL_DIR [...]
#   e.g. scripts/study_quant_quality.sh ec=runs/brown-ec/best tc=runs/brown-tc/best
# Writes runs/quant-quality/ (models, JSON) and docs/results/quantization/brown_quality.md.
set -euo pipefail
read -ra ECDLM <<< "${ECDLM:-build/ecdlm}"  # may carry global flags, e.g. "build/ecdlm --threads 1"
OUT=${OUT:-runs/quant-quality}
MD=${MD:-docs/results/quantization/brown_quality.md}
read -ra FORMATS <<< "${FORMATS:-bf16 q8 q4 q4s}"
[ "${FORMATS[0]}" = bf16 ] || { echo "study_quant_quality: FORMATS must start with bf16 (the reference)" >&2; exit 2; }
QUANT=("${FORMATS[@]:1}")
mkdir -p "$OUT"
python3 scripts/make_masked_windows.py data/brown "$OUT/windows.safetensors" 16 256 0.5 1
{
  echo "# Quantized weights on the trained Brown models"
  echo
  echo "\`scripts/study_quant_quality.sh $*\` on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) (CPU family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo "($(nproc) cores), $(date -u +%Y-%m-%d). Every format is converted from the same checkpoint"
  echo "(\`convert --dtype bf16 [--quantize FMT [--quantize-group 64]]\`, group 32 unless named _g64, default set (+head: and the LM head): routed and shared experts,"
  echo "dense MLPs, attention; embedding, norms, router and LM head bf16) and scored on the same windows,"
  echo "masks and cloze spans: ${EVAL_WINDOWS:-all} validation windows of 256, 2 mask draws per window (ELBO), 4 spans"
  echo "of 8 tokens per window (cloze). Ratios are against bf16, with paired bootstrap 95% intervals."
} > "$MD.tmp"
for spec in "$@"; do
  name=${spec%%=*}; src=${spec#*=}
  [ -f "$src/config.json" ] || { echo "study_quant_quality: $src/config.json: not found" >&2; exit 2; }
  router=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('moe_router_type', ''))" "$src/config.json")
  for f in "${FORMATS[@]}"; do
    dir="$OUT/$name-$f"
    q=()
    base=${f%+head}
    case "$base" in
      bf16) ;;
      *_g64) q=(--quantize "${base%_g64}" --quantize-group 64) ;;
      *) q=(--quantize "$base") ;;
    esac
    [ "$base" = "$f" ] || q+=(--quantize-lm-head)
    [ -f "$dir/config.json" ] || "${ECDLM[@]}" -q convert -m "$src" -o "$dir" --dtype bf16 "${q[@]}"
    [ -f "$OUT/$name-$f.eval.json" ] || {
      "${ECDLM[@]}" eval -m "$dir" --data data/brown --eval-seq-len 256 --eval-windows "${EVAL_WINDOWS:-100000}" --eval-mask-samples 2 \
        --eval-cloze-span 8 --eval-cloze-positions 4 --json > "$OUT/$name-$f.eval.json.tmp" 2> "$OUT/$name-$f.eval.log"
      mv "$OUT/$name-$f.eval.json.tmp" "$OUT/$name-$f.eval.json"; }
    "${ECDLM[@]}" -q logits -m "$dir" --input "$OUT/windows.safetensors" --routing-out "$OUT/$name-$f.route.safetensors"
    if [ "$router" != expert_choice ]; then
      "${ECDLM[@]}" -q logits -m "$dir" --input "$OUT/windows.safetensors" --moe-routing block --block-top-p 0.6 \
        --block-min-experts 4 --block-chunk 32 --routing-out "$OUT/$name-$f.block.safetensors"
    fi
  done
  {
    echo; echo "## $name ($src)"; echo
    python3 scripts/cloze_paired.py "$OUT/$name-bf16.eval.json" \
      $(for f in "${QUANT[@]}"; do echo "$f=$OUT/$name-$f.eval.json"; done)
    echo; echo "Routing against bf16 (16 validation windows of 256, half masked):"; echo
    echo "| format | routing | agreement | coreset size (bf16 → quant) |"; echo "|---|---|---|---|"
    for f in "${QUANT[@]}"; do
      python3 scripts/routing_agreement.py "$OUT/$name-bf16.route.safetensors" "$OUT/$name-$f.route.safetensors" |
        python3 -c "import json,sys; m=json.load(sys.stdin)['mean']; k='expert_jaccard' if 'expert_jaccard' in m else 'token_set_equal'; print('| $f | own (%s) | %.4f | - |' % ({'expert_jaccard':'EC: Jaccard of each expert\'s tokens','token_set_equal':'TC: tokens with the same expert set'}[k], m[k]))"
      [ -f "$OUT/$name-$f.block.safetensors" ] &&
        python3 scripts/routing_agreement.py "$OUT/$name-bf16.block.safetensors" "$OUT/$name-$f.block.safetensors" |
        python3 -c "import json,sys; m=json.load(sys.stdin)['mean']; print('| $f | block p 0.6 G 4: coreset Jaccard | %.4f | %.2f → %.2f |' % (m['coreset_jaccard'], m['coreset_size_a'], m['coreset_size_b']))"
    done
  } >> "$MD.tmp"
done
mv "$MD.tmp" "$MD"
echo "wrote $MD"

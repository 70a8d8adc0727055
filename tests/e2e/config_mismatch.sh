#!/usr/bin/env bash
# End-to-end: a config.json whose shapes disagree with the checkpoint (num_experts = 10^9 on a
# golden model) is refused before anything is allocated, by info as well as the loaders, with a
# message naming the key, the tensor and both shapes (it used to end in std::bad_alloc, and info
# exited 0). Covers the LLaDA2 (per-expert), dMoE and LLaDA-MoE goldens and a stacked copy.
# Usage: bash config_mismatch.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
GOLDEN="$ROOT/../shared/golden"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
[ -f "$GOLDEN/tiny/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($GOLDEN)"; exit 0; }

# edit DIR KEY VALUE: a copy of DIR's model with one config key changed, in $TMP/m.
edit() {
  rm -rf "$TMP/m"; mkdir "$TMP/m"; cp "$1"/config.json "$1"/model.safetensors "$TMP/m/"
  python3 - "$TMP/m/config.json" "$2" "$3" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c[sys.argv[2]] = json.loads(sys.argv[3])
json.dump(c, open(sys.argv[1], "w"), indent=2)
EOF
}
# every COMMAND: info, logits and generate all exit 2 with each of the remaining strings.
every() {
  local want=("$@")
  for cmd in info logits generate; do
    case $cmd in
      info) expect_rc 2 "$ECDLM" --threads 1 info -m "$TMP/m" ;;
      logits) expect_rc 2 "$ECDLM" --threads 1 logits -m "$TMP/m" --input "$GOLDEN/tiny/golden.safetensors" \
                --out "$TMP/o.safetensors" ;;
      generate) expect_rc 2 "$ECDLM" --threads 1 generate -m "$TMP/m" --decoder llada2 --prompt-ids 1,2,3 -n 8 --mask-id 2 ;;
    esac
    for s in "${want[@]}"; do
      grep -qF -- "$s" "$TMP/err.txt" || fail "$cmd: stderr lacks '$s': $(cat "$TMP/err.txt")"
    done
    grep -q "bad_alloc" "$TMP/err.txt" && fail "$cmd: bad_alloc"
    [ ! -e "$TMP/o.safetensors" ] || fail "$cmd wrote output"
  done
}

edit "$GOLDEN/tiny" num_experts 1000000000
every "$TMP/m/config.json: num_experts = 1000000000 disagrees with $TMP/m/model.safetensors" \
  "tensor 'model.layers.1.mlp.gate.weight' has shape [16, 64], the config implies [1000000000, 64]" "fix:"
edit "$GOLDEN/tiny-dmoe" num_experts 1000000000
every "num_experts = 1000000000 disagrees" "'model.layers.1.mlp.gate.weight' has shape [64, 64]"
if [ -f "$GOLDEN/tiny-lladamoe/model.safetensors" ]; then
  edit "$GOLDEN/tiny-lladamoe" num_experts 1000000000
  every "num_experts = 1000000000 disagrees" "'model.layers.0.mlp.gate.weight' has shape [16, 64]"
  # LLaDA-MoE stores q/k/v separately: the split tensor is named.
  edit "$GOLDEN/tiny-lladamoe" num_key_value_heads 1
  every "num_key_value_heads = 1, head_dim = 16 disagree" "self_attn.k_proj.weight' has shape [64, 64]"
fi
# Other keys, huge and small: always the key, the tensor and both shapes.
edit "$GOLDEN/tiny" hidden_size 1000000000
every "hidden_size = 1000000000 disagrees" "tensor 'model.word_embeddings.weight' has shape [300, 64]"
edit "$GOLDEN/tiny" num_hidden_layers 1000000000
every "num_hidden_layers = 1000000000 disagrees" "tensor 'model.layers.3.input_layernorm.weight' is missing"
edit "$GOLDEN/tiny" vocab_size 100000000000
every "vocab_size = 100000000000 disagrees" "[300, 64], the config implies [100000000000, 64]"
edit "$GOLDEN/tiny" moe_intermediate_size 8
every "moe_intermediate_size = 8 disagrees" "mlp.experts.0.gate_proj.weight' has shape [32, 64]"
edit "$GOLDEN/tiny" first_k_dense_replace 0
every "first_k_dense_replace = 0 disagrees" "'model.layers.0.mlp.gate.weight' is missing"

# Stacked experts (ecdlm convert --layout stacked) are checked as such.
"$ECDLM" -q --threads 1 convert -m "$GOLDEN/tiny" -o "$TMP/stacked" --layout stacked
edit "$TMP/stacked" moe_intermediate_size 8
every "moe_intermediate_size = 8 disagrees" "'model.layers.1.mlp.experts.gate_proj' has shape [16, 32, 64]"
# Control: the unedited copies load.
edit "$GOLDEN/tiny" num_experts 16
expect_rc 0 "$ECDLM" --threads 1 info -m "$TMP/m"
expect_rc 0 "$ECDLM" --threads 1 info -m "$TMP/stacked"
echo "config_mismatch e2e: OK"

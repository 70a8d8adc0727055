#!/usr/bin/env bash
# `ecdlm serve --dtype bf16` (the dtype a server runs LLaDA2 checkpoints in) gives a seeded request the same
# text alone and while 7 other requests run (tests/e2e/serve_client.cjs batch), on the golden tiny-dmoe LLaDA2
# checkpoint (copied, f32 weights converted at load) with the fixture tokenizer, under its default dMoE block
# routing (block 32) and under token routing (block 16); then the same checkpoint converted to q8, on the
# output-lane copies. A few seconds.
# Usage: bash serve_bf16_batch.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
G="$ROOT/../shared/golden/tiny-dmoe"
[ -f "$G/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
TMP=$(mktemp -d)
SPID=""
cleanup() { [ -n "$SPID" ] && kill -9 "$SPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
source "$ROOT/tests/e2e/lib.bash"
require_openai_client "$ROOT"
M="$TMP/tiny-llada2"
mkdir "$M"
cp "$G/config.json" "$G/model.safetensors" "$M/"
python3 "$ROOT/tests/e2e/llada2_fixture.py" write "$M"

# Block routing at the default block length 32; token routing at block 16, where a row alone is a
# 16-row product (the small-M kernels' limit) and rows in a batch are more.
for routing in block token; do
  block=32; [ "$routing" = token ] && block=16
  serve_start "$routing" "$M" --dtype bf16 --moe-routing "$routing" --diffusion-block-length "$block" --max-batch 8
  grep -q "weights: bf16, from --dtype" "$TMP/$routing.err" || { cat "$TMP/$routing.err"; fail "$routing: not served in bf16"; }
  node "$ROOT/tests/e2e/serve_client.cjs" batch "http://127.0.0.1:$PORT" tiny-llada2 \
    || { tail -20 "$TMP/$routing.err"; fail "$routing: bf16 rows alone vs in a batch"; }
  serve_stop "$routing"
done

# A quantized checkpoint on the output-lane copies (AVX512-VNNI): q8, token routing at block 16, so
# rows alone run the few-row kernel and rows in a batch the token-lane one (same bits by design).
if grep -q avx512_vnni /proc/cpuinfo; then
  "$ECDLM" -q convert -m "$M" -o "$TMP/q8" --quantize q8 || fail "convert q8"
  python3 "$ROOT/tests/e2e/llada2_fixture.py" write "$TMP/q8"
  serve_start q8 "$TMP/q8" --moe-routing token --diffusion-block-length 16 --max-batch 8
  grep -q "output-lane copies on (--quant-repack auto)" "$TMP/q8.err" || { cat "$TMP/q8.err"; fail "q8: copies not built"; }
  node "$ROOT/tests/e2e/serve_client.cjs" batch "http://127.0.0.1:$PORT" q8 \
    || { tail -20 "$TMP/q8.err"; fail "q8: rows alone vs in a batch"; }
  serve_stop q8
fi
echo "serve_bf16_batch: OK"

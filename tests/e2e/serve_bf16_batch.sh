#!/usr/bin/env bash
# `ecdlm serve --dtype bf16` (the dtype a server runs LLaDA2 checkpoints in) gives a seeded request the same
# text alone and while 7 other requests run (tests/e2e/serve_client.cjs batch), on the golden tiny-dmoe LLaDA2
# checkpoint (copied, f32 weights converted at load) with the fixture tokenizer, under its default dMoE block
# routing (block 32) and under token routing (block 16); then the same checkpoint converted to q8 and q4,
# on the output-lane copies, on the row layout, on the AVX2 kernel and (where the CPU has them) on
# AMX-INT8 tiles. Under a minute.
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
fixture_model "$G" "$M"

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

# Quantized checkpoints, token routing at block 16 (a row alone runs 16-row products, rows in a batch
# more): q8 and q4 on the output-lane copies (AVX512-VNNI: a row alone takes the few-row kernel, in a
# batch the token-lane one; the tiny model's K of 32 / 64 is all q4 K % 128 tail), q8 on its row
# layout (--quant-repack off) and q8 on the AVX2 kernel: the int8 kernels take any row count in the
# decoders, so rows beyond 64 never go to torch's GEMM.
if grep -q avx512_vnni /proc/cpuinfo; then
  for fmt in q8 q4; do
    "$ECDLM" -q convert -m "$M" -o "$TMP/$fmt" --quantize "$fmt" || fail "convert $fmt"
    python3 "$ROOT/tests/e2e/llada2_fixture.py" write "$TMP/$fmt"
  done
  run_quant() {  # NAME DIR EXPECT-IN-LOG FLAGS...
    local name="$1" dir="$2" expect="$3"; shift 3
    serve_start "$name" "$dir" --moe-routing token --diffusion-block-length 16 --max-batch 8 "$@"
    grep -q -- "$expect" "$TMP/$name.err" || { cat "$TMP/$name.err"; fail "$name: log lacks '$expect'"; }
    node "$ROOT/tests/e2e/serve_client.cjs" batch "http://127.0.0.1:$PORT" "$(basename "$dir")" \
      || { tail -20 "$TMP/$name.err"; fail "$name: rows alone vs in a batch"; }
    serve_stop "$name"
  }
  run_quant q8 "$TMP/q8" "output-lane copies on (--quant-repack auto)"
  run_quant q4 "$TMP/q4" "output-lane copies on (--quant-repack auto)"
  run_quant q8-rows "$TMP/q8" "copies off (--quant-repack off)" --quant-repack off
  run_quant q8-avx2 "$TMP/q8" "quantized kernel: avx2 -> avx2" --quant-kernel avx2
  # AMX-INT8 tiles (the tests run them on emulated tiles elsewhere: test_quant_amx.cpp)
  if grep -qw amx_int8 /proc/cpuinfo; then run_quant q8-amx "$TMP/q8" "quantized kernel: amx -> amx" --quant-kernel amx; fi
fi
echo "serve_bf16_batch: OK"

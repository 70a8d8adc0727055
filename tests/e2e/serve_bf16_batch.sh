#!/usr/bin/env bash
# `ecdlm serve --dtype bf16` (the dtype a server runs LLaDA2 checkpoints in) gives a seeded request the same
# text alone and while 7 other requests run (tests/e2e/serve_client.cjs batch), on the golden tiny-dmoe LLaDA2
# checkpoint (copied, f32 weights converted at load) with the fixture tokenizer, under its default dMoE block
# routing (block 32) and under token routing (block 16). A few seconds.
# Usage: bash serve_bf16_batch.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
G="$ROOT/../shared/golden/tiny-dmoe"
[ -f "$G/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
export ECDLM_NPM_SERVE="$ROOT/data/npm-serve"
if [ ! -d "$ECDLM_NPM_SERVE/node_modules/openai" ]; then
  [ "${CI:-}" = true ] && { echo "FAIL: $ECDLM_NPM_SERVE/node_modules/openai missing (scripts/setup.sh installs it)"; exit 1; }
  echo "SKIP: the openai npm client is not installed (scripts/setup.sh)"; exit 77
fi
TMP=$(mktemp -d)
SPID=""
cleanup() { [ -n "$SPID" ] && kill -9 "$SPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
source "$ROOT/tests/e2e/lib.bash"
M="$TMP/tiny-llada2"
mkdir "$M"
cp "$G/config.json" "$G/model.safetensors" "$M/"
python3 "$ROOT/tests/e2e/llada2_fixture.py" write "$M"

# Block routing at the default block length 32; token routing at block 16, where a row alone is a
# 16-row product (the small-M kernels' limit) and rows in a batch are more.
for routing in block token; do
  block=32; [ "$routing" = token ] && block=16
  "$ECDLM" --threads 1 serve -m "$M" --port 0 --dtype bf16 --moe-routing "$routing" --diffusion-block-length "$block" \
    --max-batch 8 > "$TMP/$routing.out" 2> "$TMP/$routing.err" &
  SPID=$!
  PORT=""
  for _ in $(seq 1 300); do
    PORT=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$TMP/$routing.out")
    [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && break
    kill -0 "$SPID" 2>/dev/null || { cat "$TMP/$routing.err"; fail "$routing: the server exited"; }
    sleep 0.1
  done
  grep -q "weights: bf16, from --dtype" "$TMP/$routing.err" || { cat "$TMP/$routing.err"; fail "$routing: not served in bf16"; }
  node "$ROOT/tests/e2e/serve_client.cjs" batch "http://127.0.0.1:$PORT" tiny-llada2 \
    || { tail -20 "$TMP/$routing.err"; fail "$routing: bf16 rows alone vs in a batch"; }
  kill -TERM "$SPID"
  set +e; wait "$SPID"; rc=$?; set -e
  SPID=""
  [ "$rc" -eq 0 ] || { cat "$TMP/$routing.err"; fail "$routing: exit $rc after SIGTERM"; }
done
echo "serve_bf16_batch: OK"

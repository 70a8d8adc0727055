#!/usr/bin/env bash
# `ecdlm serve` end to end with the official OpenAI Node client (tests/e2e/serve_client.cjs) on the golden
# tiny-dmoe LLaDA2 checkpoint (copied) with the fixture LLaDA2 tokenizer: chat and completions, streamed or
# not, n > 1, stop, usage, errors as the client's types, the same text as `ecdlm generate`, every bad input,
# 32 concurrent clients (metrics show a batch of several rows), a disconnect mid-stream or mid-request (row
# cancelled, KV freed), 429 + Retry-After on a full queue, 401 with --api-key, SIGTERM during a request (exit 0).
# Usage: bash serve_openai.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
G="$ROOT/../shared/golden/tiny-dmoe"
[ -f "$G/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
source "$ROOT/tests/e2e/lib.bash"
require_openai_client "$ROOT"
CLIENT="$ROOT/tests/e2e/serve_client.cjs"
M="$TMP/tiny-llada2"
fixture_model "$G" "$M"

# The references: `ecdlm generate` with the server's defaults (llada2, block 32, threshold 0.95, seed 0).
"$ECDLM" -q --threads 1 generate -m "$M" --chat -p hello -n 64 --decoder llada2 --json > "$TMP/generate_chat.json"
"$ECDLM" -q --threads 1 generate -m "$M" -p The -n 40 -s 3 --decoder llada2 --json > "$TMP/generate_plain.json"

# start_server NAME ARGS... / stop_server NAME: lib.bash's serve_start / serve_stop on the fixture model,
# each server also in PIDS for the cleanup.
start_server() {
  local name=$1; shift
  serve_start "$name" "$M" "$@"
  PIDS+=("$SPID")
}
stop_server() { serve_stop "$1"; }

start_server main --max-batch 16 --max-queue 64
grep -q "serve: host 127.0.0.1, port 0 (any free), max batch 16 rows, max queue 64 rows" "$TMP/main.err" \
  || fail "the effective settings are not logged"
grep -q "serve: defaults: decoder llada2, max_tokens 128, block 32, steps 32, threshold 0.95" "$TMP/main.err" \
  || fail "the decoding defaults are not logged"
node "$CLIENT" api "http://127.0.0.1:$PORT" tiny-llada2 "$TMP" || { tail -20 "$TMP/main.err"; fail "api checks"; }
grep -q "cancelled (client gone)" "$TMP/main.err" || fail "the log does not show the cancelled row"
grep -q "the client of a non-streamed request closed its connection" "$TMP/main.err" \
  || fail "the log does not show the non-streamed disconnect"
stop_server main

# A full queue (one row running, one waiting) answers 429; --api-key guards /v1.
start_server queue --max-batch 1 --max-queue 1 --max-n 1 --api-key sekret
node "$CLIENT" queue "http://127.0.0.1:$PORT" tiny-llada2 sekret || { tail -20 "$TMP/queue.err"; fail "queue checks"; }
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] || fail "/health needs no key"
stop_server queue

# SIGTERM during a request: the running stream finishes, the server exits 0.
start_server term --shutdown-timeout 60
node "$CLIENT" long "http://127.0.0.1:$PORT" tiny-llada2 > "$TMP/long.out" 2>&1 &
NODE_PID=$!
for _ in $(seq 1 300); do grep -q first "$TMP/long.out" && break; sleep 0.1; done
grep -q first "$TMP/long.out" || { cat "$TMP/long.out"; fail "the long request did not start"; }
stop_server term
wait "$NODE_PID" || { cat "$TMP/long.out"; fail "the request running at SIGTERM did not finish"; }
grep -q "SIGTERM: no new requests" "$TMP/term.err" || fail "SIGTERM not logged"

# Flags are checked before anything binds.
expect_fail "--max-batch" "$ECDLM" serve -m "$M" --max-batch 0
expect_fail "--port" "$ECDLM" serve -m "$M" --port 70000
expect_fail "--max-n" "$ECDLM" serve -m "$M" --max-n 20 --max-batch 16
expect_fail "nonexistent" "$ECDLM" serve -m "$TMP/nonexistent" --port 0
# Decoding flags are checked against the model once it is read: still exit 2 with the flag named.
expect_fail "--diffusion-threshold" "$ECDLM" -q serve -m "$M" --port 0 --diffusion-threshold 2
expect_fail "--block-chunk" "$ECDLM" -q serve -m "$M" --port 0 --diffusion-block-length 48
echo "serve_openai: OK"

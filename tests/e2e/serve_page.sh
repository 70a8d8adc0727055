#!/usr/bin/env bash
# The live page of `ecdlm serve` in a real browser: Debian's headless Chromium (driven over the DevTools
# protocol by tests/e2e/serve_page.cjs) loads GET / against a server with the golden tiny-dmoe LLaDA2 model
# and the fixture tokenizer, sends "hello", and the rendered answer must equal the API's answer for the same
# request; the stats line shows tokens/s and unique experts per block, and the canvas was drawn. The
# screenshot stays next to the binary (build/serve-page.png) as the test's artefact.
# Usage: bash serve_page.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
G="$ROOT/../shared/golden/tiny-dmoe"
[ -f "$G/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  [ "${CI:-}" = true ] && { echo "FAIL: chromium missing (scripts/setup.sh installs it)"; exit 1; }
  echo "SKIP: chromium is not installed"; exit 77
fi
TMP=$(mktemp -d)
SPID=""
cleanup() { [ -n "$SPID" ] && kill -9 "$SPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
source "$ROOT/tests/e2e/lib.bash"
SHOT="$(cd "$(dirname "$ECDLM")" && pwd)/serve-page.png"
M="$TMP/tiny-llada2"
fixture_model "$G" "$M"

serve_start page "$M"
BASE="http://127.0.0.1:$PORT"
# The page's own files are embedded: HTML, CSS and JS come from the binary.
curl -sf "$BASE/" | grep -q '<script src="/app.js">' || fail "GET / is not the page"
curl -sfI "$BASE/app.js" | grep -qi 'content-type: text/javascript' || fail "app.js content type"
curl -sfI "$BASE/style.css" | grep -qi 'content-type: text/css' || fail "style.css content type"
# What the page's request (the defaults it sends) answers through the API.
curl -sf "$BASE/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"tiny-llada2","messages":[{"role":"user","content":"hello"}],"max_tokens":128,"temperature":0}' \
  > "$TMP/api.json" || fail "API request"

TMPDIR="$TMP" node --no-warnings --experimental-websocket "$ROOT/tests/e2e/serve_page.cjs" "$CHROMIUM" "$BASE/?q=hello" "$SHOT" \
  "$TMP/profile" > "$TMP/page.json" || fail "the browser run failed"
python3 - "$TMP/api.json" "$TMP/page.json" <<'PY'
import json, sys
api, page = (json.load(open(f)) for f in sys.argv[1:3])
want = api["choices"][0]["message"]["content"]
assert page["ready"] and page["model"] == "tiny-llada2", page
assert page["done"] and not page["error"], page
assert page["answer"] == want, (page["answer"], want)
assert "tokens/s" in page["stats"] and "unique experts per block: " in page["stats"] and "n/a" not in page["stats"], page["stats"]
assert page["canvasSeen"] > 0, "the denoising canvas was never drawn"
print("page answer == API answer:", repr(want)[:80], "|", page["stats"])
PY
[ -s "$SHOT" ] || fail "no screenshot"
serve_stop page
echo "serve_page: OK (screenshot $SHOT)"

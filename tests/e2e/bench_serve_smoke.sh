#!/usr/bin/env bash
# `ecdlm bench serve` smoke on the golden tiny-dmoe LLaDA2 checkpoint (copied) with the fixture tokenizer:
# 1 and 2 concurrent streaming clients, the markdown table on stdout, --out-json / --json that parse with
# the fields the README table needs, and its bad-flag errors. Seconds, not a measurement.
# Usage: bash bench_serve_smoke.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
G="$ROOT/../shared/golden/tiny-dmoe"
[ -f "$G/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
M="$TMP/tiny-llada2"
fixture_model "$G" "$M"

ARGS=(bench serve -m "$M" --no-synthetic --clients 1,2 --requests 2 --max-tokens 32)
"$ECDLM" -q --threads 1 "${ARGS[@]}" --out-json "$TMP/rows.json" > "$TMP/table.md"
grep -q "^| model | routing | clients | tokens/s | speed-up |" "$TMP/table.md" || { cat "$TMP/table.md"; fail "no table header"; }
grep -q "temperature 1, request i with seed i" "$TMP/table.md" || { cat "$TMP/table.md"; fail "sampling not stated"; }
[ "$(grep -c "^| $M (f32) | token | [12] | [0-9.]* | [0-9.]*x |" "$TMP/table.md")" = 2 ] || { cat "$TMP/table.md"; fail "want a row for 1 and 2 clients"; }
# Where a step's time goes: the forward's parts per step, one row per level.
grep -q "^| model | routing | clients | rows per step | ms per step | attention | router | experts |" "$TMP/table.md" \
  || { cat "$TMP/table.md"; fail "no step split table"; }
grep -q "^| $M (f32) | token | 1 | [0-9.]* | 1.00x |" "$TMP/table.md" || { cat "$TMP/table.md"; fail "the 1-client row is not the 1.00x baseline"; }
check_json() {
  python3 - "$1" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
assert [r["clients"] for r in rows] == [1, 2], rows
for r in rows:
    # 2 requests of 32 tokens each (EOS ignored), all served.
    assert r["routing"] == "token" and r["dtype"] == "f32" and r["requests"] == 2 and r["tokens"] == 64, r
    assert r["tokens_per_s"] > 0 and r["seconds"] > 0 and r["latency_p50_ms"] > 0 and r["step_ms"] > 0, r
    assert 0 < r["ttfb_p50_ms"] <= r["latency_p99_ms"], r
    assert r["batch_rows_mean"] >= 1.0, r
    split = r["step_split_ms"]
    assert set(split) == {"attention", "router", "experts", "shared", "dense", "head"}, split
    assert split["experts"] > 0 and split["attention"] > 0, split
assert abs(rows[0]["speedup"] - 1.0) < 1e-9, rows[0]
PY
}
check_json "$TMP/rows.json" || fail "--out-json rows"
"$ECDLM" -q --threads 1 "${ARGS[@]}" --temperature 0 --json > "$TMP/stdout.json"  # greedy requests
check_json "$TMP/stdout.json" || fail "--json rows"

# --dtype f32,bf16: the model once in each dtype (f32 as stored, bf16 as `serve --dtype bf16` loads it).
"$ECDLM" -q --threads 1 bench serve -m "$M" --no-synthetic --clients 1 --requests 2 --max-tokens 32 --dtype f32,bf16 \
  --json > "$TMP/dtypes.json"
python3 - "$TMP/dtypes.json" "$M" <<'PY' || fail "--dtype f32,bf16 rows"
import json, sys
rows = json.load(open(sys.argv[1]))
assert [(r["dtype"], r["model"]) for r in rows] == [("f32", sys.argv[2] + " (f32)"), ("bf16", sys.argv[2] + " (bf16)")], rows
assert all(r["tokens"] == 64 and r["tokens_per_s"] > 0 for r in rows), rows
PY

# A quantized checkpoint is served on the output-lane copies, as `ecdlm serve` serves it (--quant-repack
# auto), where the CPU has AVX512-VNNI (until 2026-12-06 bench serve ran its products on the row layout).
"$ECDLM" --threads 1 convert -m "$M" -o "$TMP/q8" --quantize q8 > /dev/null 2>&1
cp "$M/tokenizer.json" "$M/tokenizer_config.json" "$TMP/q8/"
"$ECDLM" --threads 1 bench serve -m "$TMP/q8" --no-synthetic --clients 1 --requests 2 --max-tokens 32 \
  > "$TMP/q8.md" 2> "$TMP/q8.err"
grep -q "^| $TMP/q8 (f32 + quantized weights) | token | 1 |" "$TMP/q8.md" || { cat "$TMP/q8.md"; fail "no quantized row"; }
if grep -q avx512_vnni /proc/cpuinfo; then
  grep -q "output-lane copies on (--quant-repack auto)" "$TMP/q8.err" || { cat "$TMP/q8.err"; fail "q8 not on the copies"; }
fi

# --routing applies to the -m model too when given (token alone otherwise).
"$ECDLM" -q --threads 1 bench serve -m "$M" --no-synthetic --clients 1 --requests 2 --max-tokens 32 --routing block \
  --json > "$TMP/block.json"
python3 - "$TMP/block.json" <<'PY' || fail "--routing block on the -m model"
import json, sys
rows = json.load(open(sys.argv[1]))
assert [r["routing"] for r in rows] == ["block"] and rows[0]["tokens"] == 64, rows
PY
expect_fail "--routing" "$ECDLM" -q bench serve -m "$M" --no-synthetic --routing nope

expect_fail "--dtype" "$ECDLM" -q bench serve -m "$M" --no-synthetic --dtype f16
expect_fail "--dtype" "$ECDLM" -q bench serve --dtype bf16
expect_fail "--no-synthetic" "$ECDLM" -q bench serve --no-synthetic
expect_fail "--temperature" "$ECDLM" -q bench serve -m "$M" --no-synthetic --temperature -1
expect_fail "--clients" "$ECDLM" -q bench serve -m "$M" --no-synthetic --clients 2,4
expect_fail "--synth-weights" "$ECDLM" -q bench serve --synth-weights q5
expect_fail "--synth-weights" "$ECDLM" -q bench serve -m "$M" --no-synthetic --synth-weights q8
echo "bench_serve_smoke: OK"

#!/usr/bin/env bash
# `ecdlm bench dist --bench-ec-model/--bench-tc-model` (the EP scaling model) on the golden tiny checkpoint
# as token choice and, with its config switched, as expert choice, on a toy corpus: the loopback probe
# runs (2 ranks), expert choice is exactly balanced at every EP, a capacity of 1.25 costs exactly 1.25x
# the balanced rows and sends 1.25x EC's bytes, dropless TC drops nothing, EP > E replicates; the
# table, JSON and plot; and the bad-input errors. Seconds.
# Usage: bash bench_dist_model.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$(realpath "$1")"; ROOT="$(realpath "$2")"
G="$ROOT/../shared/golden/tiny"
[ -f "$G/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
cd "$TMP"
python3 "$ROOT/tests/e2e/toy_corpus.py" 1 200 c.jsonl
"$ECDLM" -q --threads 1 prepare-data --source jsonl --input c.jsonl --out data --vocab-size 300 --val-fraction 0.2 > /dev/null
mkdir tc ec
cp "$G/model.safetensors" tc/
cp "$G/model.safetensors" ec/
# The data's mask id (2); the same weights routed by expert choice (static capacity: k = 4 per token).
python3 - "$G/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["mask_token_id"] = 2
json.dump(c, open("tc/config.json", "w"))
c.update(moe_router_type="expert_choice", moe_capacity_schedule="static")
json.dump(c, open("ec/config.json", "w"))
PY
ARGS=(--data data --bench-ec-model ec --bench-tc-model tc --bench-ep 4,16,32 --train-batch-size 2 --train-seq-len 32
      --bench-ep-batches 32 --bench-ep-steps 2)
"$ECDLM" -q --threads 1 bench dist "${ARGS[@]}" --json --plot ep.png > out.json
python3 - <<'PY'
import json
r = json.load(open("out.json"))
links = [l["name"] for l in r["links"]]
assert links[0] == "loopback (measured)" and r["links"][0]["gbps"] > 0, r["links"]
assert links[1].startswith("inter-node (assumed 100 Gb/s)"), links
rows = r["rows"]
assert len(rows) == 2 * 3 * 3, len(rows)
by = {(x["link"], x["ep"], x["routing"]): x for x in rows}
for l in links:
    for ep in (4, 16, 32):
        ec, tc, cap = by[(l, ep, "EC")], by[(l, ep, "TC, dropless")], by[(l, ep, "TC, capacity 1.25")]
        assert ec["straggler"] == 1.0 and ec["straggler_worst_layer"] == 1.0 and ec["vs_ec"] == 1.0, ec
        assert ec["dropped"] == 0 and tc["dropped"] == 0, (ec, tc)
        assert tc["straggler"] >= 1.0 and tc["straggler_worst_layer"] >= tc["straggler"], tc
        # 2 x 32 tokens x 4 experts over 16 experts: 16 rows each; capacity ceil(1.25 * 16) = 20 slots.
        assert abs(cap["straggler"] - 1.25) < 1e-12, cap
        assert abs(cap["a2a_mb_per_rank_step"] / ec["a2a_mb_per_rank_step"] - 1.25) < 1e-9, (cap, ec)
        assert 0 <= cap["dropped"] < 1, cap
        for x in (ec, tc, cap):
            assert x["step_ms"] > 0 and x["a2a_ms"] > 0 and x["expert_ms"] > 0, x
        assert ec["experts_per_rank"] == 16 / ep, ec
assert r["ec"]["experts_per_token"] == 4.0 and r["tc"]["experts_per_token"] == 4.0, (r["ec"], r["tc"])
PY
if command -v gnuplot > /dev/null; then [ -s ep.png ] || fail "no plot"; fi
# The table, with a given loopback rate (no probe).
"$ECDLM" -q --threads 1 bench dist "${ARGS[@]}" --bench-loopback-gbps 10 --bench-loopback-latency-us 50 --out-md ep.md > table.md
grep -q "^| loopback (measured) | 4 | EC | " table.md || { cat table.md; fail "no EC row in the table"; }
grep -q "0.00 Gb/s\|10.00 Gb/s, 50 us per call" table.md || { cat table.md; fail "the given loopback link is not used"; }
cmp -s ep.md table.md || fail "--out-md differs from stdout"

expect_fail "--bench-tc-model" "$ECDLM" -q bench dist --data data --bench-ec-model ec
expect_fail "moe_router_type" "$ECDLM" -q bench dist --data data --bench-ec-model tc --bench-tc-model tc --bench-loopback-gbps 1
expect_fail "--bench-ep" "$ECDLM" -q bench dist "${ARGS[@]}" --bench-ep 3 --bench-loopback-gbps 1
expect_fail "--bench-ep-batches" "$ECDLM" -q bench dist "${ARGS[@]}" --bench-ep 64 --bench-loopback-gbps 1
expect_fail "no config.json" "$ECDLM" -q bench dist --data data --bench-ec-model nothere --bench-tc-model tc --bench-loopback-gbps 1
expect_fail "no --dist-ep is given" "$ECDLM" -q bench dist --data data --bench-ep-f32-payload
# Each mode's flags are refused in the other (they did nothing there).
expect_fail "--bench-ranks" "$ECDLM" -q bench dist "${ARGS[@]}" --bench-ranks 4 --bench-loopback-gbps 1
expect_fail "--bench-ep-steps" "$ECDLM" -q bench dist --data data --bench-ep-steps 4
expect_fail "--bench-loopback-latency-us" "$ECDLM" -q bench dist "${ARGS[@]}" --bench-loopback-latency-us 5
echo "bench_dist_model: OK"

#!/usr/bin/env bash
# End-to-end: `ecdlm prepare-data` on a small JSONL corpus, plus its error paths.
# Usage: bash prepare_data.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"
ROOT="$2"
cd "$ROOT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

source "$ROOT/tests/e2e/lib.bash"

# ~200 varied documents so a 500-piece BPE vocab can be filled.
python3 - "$TMP/corpus.jsonl" <<'EOF'
import json, random, sys
rng = random.Random(7)
words = ("the a river mountain city quiet bright engine model token diffusion expert router "
         "mask learn predict signal noise train evaluate slowly quickly under over between "
         "morning evening light shadow green blue cold warm paper stone water fire").split()
with open(sys.argv[1], "w") as f:
    for i in range(200):
        sents = []
        for _ in range(rng.randint(3, 8)):
            s = " ".join(rng.choice(words) for _ in range(rng.randint(5, 12)))
            sents.append(s.capitalize() + rng.choice([".", "!", "?", ","]) )
        f.write(json.dumps({"text": " ".join(sents), "id": f"doc{i}"}) + "\n")
EOF

OUT="$TMP/out"
"$ECDLM" prepare-data --source jsonl --input "$TMP/corpus.jsonl" --out "$OUT" \
  --vocab-size 500 --val-fraction 0.1 --seed 3 --json > "$TMP/summary.json" 2> "$TMP/log.txt" \
  || { cat "$TMP/log.txt" >&2; fail "prepare-data failed"; }

python3 -c 'import json,sys; json.load(sys.stdin)' < "$TMP/summary.json" || fail "--json output does not parse"
for f in tokenizer.model train.bin train.json val.bin val.json meta.json; do
  [ -s "$OUT/$f" ] || fail "missing or empty output $f"
done
python3 - "$TMP/summary.json" "$OUT" <<'EOF'
import json, os, sys
s = json.load(open(sys.argv[1]))
meta = json.load(open(os.path.join(sys.argv[2], "meta.json")))
assert s["documents"]["train"] + s["documents"]["val"] == 200, s["documents"]
assert s["documents"]["val"] >= 1
assert s["vocab_size"] == 500 == meta["vocab_size"]
for k in ("mask_token_id", "eos_token_id", "pad_token_id"):
    assert meta[k] == s[k], k
assert len({meta["mask_token_id"], meta["eos_token_id"], meta["pad_token_id"]}) == 3
for split in ("train", "val"):
    sm = json.load(open(os.path.join(sys.argv[2], split + ".json")))
    assert sm["dtype"] == "uint16"
    assert sm["num_tokens"] == s["tokens"][split] > 0
    assert os.path.getsize(os.path.join(sys.argv[2], split + ".bin")) == 2 * sm["num_tokens"]
EOF
grep -q "vocab_size=500" "$TMP/log.txt" || fail "effective settings not logged"

# Reusing the trained tokenizer gives the same token counts.
"$ECDLM" prepare-data --source jsonl --input "$TMP/corpus.jsonl" --out "$TMP/out2" \
  --tokenizer "$OUT/tokenizer.model" --val-fraction 0.1 --seed 3 --json > "$TMP/summary2.json" 2>/dev/null
python3 - "$TMP/summary.json" "$TMP/summary2.json" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["tokens"] == b["tokens"], (a["tokens"], b["tokens"])
assert b["tokenizer_trained"] is False
EOF

# Human-readable summary mode.
"$ECDLM" prepare-data --source jsonl --input "$TMP/corpus.jsonl" --out "$TMP/out3" \
  --tokenizer "$OUT" 2>/dev/null | grep -q "documents:" || fail "text summary missing"

# Missing input: exit code 2 and the path in the message.
set +e
"$ECDLM" prepare-data --source jsonl --input "$TMP/nope.jsonl" --out "$TMP/out4" 2> "$TMP/err.txt"
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "missing input: expected exit 2, got $rc"
grep -q "nope.jsonl" "$TMP/err.txt" || fail "missing input: error does not name the path"

# Unknown flag: non-zero.
if "$ECDLM" prepare-data --no-such-flag > /dev/null 2>&1; then fail "unknown flag accepted"; fi
"$ECDLM" prepare-data --help | grep -q -- "--vocab-size" || fail "--help lacks --vocab-size"

echo "prepare_data e2e: OK"

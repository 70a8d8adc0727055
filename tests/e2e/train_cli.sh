#!/usr/bin/env bash
# CLI end-to-end: prepare-data -> train -> resume -> eval -> generate -> info, plus bad input.
set -euo pipefail
ECDLM="$1"; ROOT="$2"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
python3 "$ROOT/tests/e2e/toy_corpus.py" 3 80 corpus.jsonl
"$ECDLM" -q prepare-data --source jsonl --input corpus.jsonl --out data --vocab-size 300 --val-fraction 0.1
test -f data/meta.json

# Train, interrupted at step 3 and resumed, must equal an uninterrupted run.
"$ECDLM" -q train --config "$ROOT/configs/tiny.json" --data data --out full --train-eval-every 2 --eval-windows 32 --eval-mask-samples 2 --samples 1 --sample-length 16 --json > full.json
"$ECDLM" -q train --config "$ROOT/configs/tiny.json" --data data --out part --train-eval-every 2 --eval-windows 32 --eval-mask-samples 2 --train-halt-at 3 --samples 0 --json > part1.json
"$ECDLM" -q train --config "$ROOT/configs/tiny.json" --data data --out part --train-eval-every 2 --eval-windows 32 --eval-mask-samples 2 --resume --samples 0 --json > part2.json
python3 - <<'PY'
import json
full = json.load(open("full.json")); part = json.load(open("part2.json"))
assert full["steps"] == 6 and part["steps"] == 6, (full["steps"], part["steps"])
assert abs(full["final_val_loss"] - part["final_val_loss"]) == 0.0, (full["final_val_loss"], part["final_val_loss"])
assert len(full["samples"]) == 1
assert full["final_val_ppl"] > 1.0
lines = [json.loads(l) for l in open("full/metrics.jsonl")]
assert any("val_loss" in l for l in lines) and any("loss" in l for l in lines)
PY
MODEL=full/checkpoints/step-00000006
test -f "$MODEL/config.json" -a -f "$MODEL/model.safetensors" -a -f "$MODEL/tokenizer.model"

"$ECDLM" -q eval -m "$MODEL" --data data --eval-seq-len 32 --eval-windows 4 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["ppl"] > 1 and "per_bin" in d'
"$ECDLM" -q generate -m "$MODEL" -p "The cat" -n 16 --diffusion-block-length 16 --diffusion-steps 16 --json \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); assert len(d["samples"][0]["tokens"]) > 0'
"$ECDLM" -q info -m "$MODEL" --json | python3 -c 'import json,sys; json.load(sys.stdin)'

"$ECDLM" -q analyze full part --json | python3 -c 'import json,sys; json.load(sys.stdin)'

# Retrofit: a TC model -> EC (conversion only, then router-only fine-tuning).
"$ECDLM" -q train --config "$ROOT/configs/tiny.json" --data data --out tc --moe-router tc --samples 0 --json > tc.json
"$ECDLM" -q retrofit --from tc/checkpoints/step-00000006 --out ec-conv --moe-capacity-schedule linear-reverse \
  --moe-capacity-k-min 1 --moe-capacity-k-max 3
"$ECDLM" -q eval -m ec-conv --data data --eval-seq-len 32 --eval-windows 4 --json > /dev/null
"$ECDLM" -q retrofit --from tc/checkpoints/step-00000006 --out ec-ft --data data --train-steps 3 \
  --train-batch-size 4 --train-seq-len 32 --train-eval-every 3 --retrofit-train router --json \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["train"]["steps"] == 3'
python3 - <<'PY'
import json, struct
def tensors(path):
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n])
    return {k: b[8+n+v["data_offsets"][0]:8+n+v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
a = tensors("tc/checkpoints/step-00000006/model.safetensors"); b = tensors("ec-ft/checkpoints/step-00000003/model.safetensors")
changed = sorted(k for k in a if a[k] != b[k])
assert changed and all(k.endswith("mlp.gate.weight") for k in changed), changed
PY

for s in linear linear-reverse cosine cosine-reverse; do
  "$ECDLM" -q schedule --moe-capacity-schedule "$s" --json \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); assert abs(d["expected_k"] - 20.0) < 1e-3, d["expected_k"]'
done

# Bad input: clear message, non-zero exit, nothing written.
expect_fail() {  # expect_fail WORD CMD...
  local word="$1"; shift
  if "$@" > out.txt 2> err.txt; then echo "expected failure: $*"; exit 1; fi
  grep -q -- "$word" err.txt || { echo "error for '$*' lacks '$word':"; cat err.txt; exit 1; }
}
expect_fail "--no-such-flag" "$ECDLM" train --no-such-flag
expect_fail "prepare-data" "$ECDLM" train --config "$ROOT/configs/tiny.json" --data missing-dir --out x
echo '{"model": {"hidden_size": 30, "num_attention_heads": 4, "head_dim": 8, "num_key_value_heads": 3}}' > bad.json
expect_fail "num_key_value_heads" "$ECDLM" train --config bad.json --data data --out y
echo '{"model": {"num_experts": 4, "num_experts_per_tok": 8}}' > badk.json
expect_fail "num_experts_per_tok" "$ECDLM" train --config badk.json --data data --out y
echo '{"model": ' > broken.json
expect_fail "invalid JSON" "$ECDLM" train --config broken.json --data data --out y
mkdir ro && chmod 555 ro
if [ "$(id -u)" != 0 ]; then expect_fail "writable" "$ECDLM" train --config "$ROOT/configs/tiny.json" --data data --out ro/run; fi
expect_fail "/dev/null/run" "$ECDLM" train --config "$ROOT/configs/tiny.json" --data data --out /dev/null/run
head -c 100 "$MODEL/model.safetensors" > trunc.safetensors
mkdir -p trunc && cp "$MODEL/config.json" trunc/ && mv trunc.safetensors trunc/model.safetensors
expect_fail "model.safetensors" "$ECDLM" info -m trunc
echo "train_cli e2e: OK"

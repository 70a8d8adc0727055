#!/usr/bin/env bash
# Peak RSS against the weight bytes a forward actually reads, for random checkpoints with the
# per-layer shapes of LLaDA2.0-mini (3 layers: dense + 2 MoE of 256 experts) and LLaDA-MoE-7B-A1B
# (2 MoE layers of 64 experts), bf16, loaded through the mmap'd expert-sparse path.
# Usage: scripts/bench_load_rss.sh [WORKDIR] [THREADS]   (writes about 9 GB of checkpoints there)
# Prints a markdown table; "touched" counts non-expert weights, the embedding rows looked up and
# the routed experts computed. The runtime baseline is the same command on the tiny golden model.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/ecdlm
W=${1:-/tmp/ecdlm-rss}
T=${2:-2}
mkdir -p "$W"
[ -d "$W/mini" ] || $BIN --threads "$T" init -c configs/models/llada2-mini-shaped-3l.json -o "$W/mini" --dtype bf16
[ -d "$W/mini-stacked" ] || $BIN --threads "$T" convert -m "$W/mini" -o "$W/mini-stacked" --layout stacked
[ -d "$W/lladamoe" ] || $BIN --threads "$T" init -c configs/models/llada-moe-7b-shaped-2l.json -o "$W/lladamoe" --dtype bf16

# 32 random ids (one decoding block) as IN.safetensors for `ecdlm logits --input`.
python3 - "$W/in.safetensors" <<'PY'
import json, random, struct, sys
random.seed(7)
ids = [random.randrange(0, 150000) for _ in range(32)]
hdr = json.dumps({"input_ids": {"dtype": "I64", "shape": [1, len(ids)], "data_offsets": [0, 8 * len(ids)]}})
hdr += " " * ((8 - len(hdr) % 8) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(hdr)) + hdr.encode() + struct.pack("<%dq" % len(ids), *ids))
PY
python3 - "$W/in-tiny.safetensors" <<'PY'
import json, struct, sys
ids = list(range(32))
hdr = json.dumps({"input_ids": {"dtype": "I64", "shape": [1, 32], "data_offsets": [0, 256]}})
hdr += " " * ((8 - len(hdr) % 8) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(hdr)) + hdr.encode() + struct.pack("<32q", *ids))
PY

run() {  # model_dir input routing -> "peak_rss_bytes touched_bytes experts_used experts_total"
  /usr/bin/time -v "$BIN" --threads "$T" logits --mmap on -m "$1" --input "$2" --out "$W/out.safetensors" \
    --dtype bf16 --moe-routing "$3" --json > "$W/run.json" 2> "$W/time.txt"
  local rss_kb
  rss_kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$W/time.txt")
  python3 - "$W/run.json" "$rss_kb" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); w = j["weights"]
print(int(sys.argv[2]) * 1024, w["touched_bytes"], w["experts_used"], w["experts_total"])
PY
}

read -r base_rss _ _ _ < <(run ../shared/golden/tiny "$W/in-tiny.safetensors" token)
file_gb() { du -sb "$1" | awk '{printf "%.2f", $1 / 1e9}'; }
echo "| model | layout | routing | file GB | experts read | touched GB | peak RSS GB | RSS / touched | (RSS - runtime) / touched |"
echo "|---|---|---|---|---|---|---|---|---|"
for spec in "mini per-expert token" "mini per-expert block" "mini-stacked stacked block" "mini per-expert ec" \
            "lladamoe per-expert token" "lladamoe per-expert topk"; do
  set -- $spec
  read -r rss touched used total < <(run "$W/$1" "$W/in.safetensors" "$3")
  python3 -c "
rss, t, b = $rss, $touched, $base_rss
print('| $1 | $2 | $3 | $(file_gb "$W/$1") | $used / $total | %.3f | %.3f | %.3f | %.3f |' % (t / 1e9, rss / 1e9, rss / t, (rss - b) / t))"
done
echo
echo "runtime baseline (tiny golden model, same command): $(python3 -c "print('%.3f GB' % ($base_rss / 1e9))")"

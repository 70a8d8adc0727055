#!/usr/bin/env bash
# The 20-layer LLaDA2.0-mini shape (16.3B random parameters) in bf16 / q8 / q4: 256 tokens after a
# 64-token prompt, llada2 threshold decoder (block 32, 32 steps per block, threshold 0.95, KV cache),
# cold page cache before each run (needs root for drop_caches). Needs ~62 GB of disk.
# N: tokens to generate (default 256); B: the binary (a copy keeps a long run safe from rebuilds);
# FLAGS: more generate flags (e.g. "--quant-repack off"), TAG: a suffix for the result files and rows.
# Random weights route like the real model only with care (spec dmoe-llada2.md, gotcha 17): the
# model is initialized with `--init-routing calibrated` and the output sampled at temperature 1
# (greedy decoding of random weights repeats one token), so a block touches ~69 experts per layer
# and forward, LLaDA2.0-mini's 69.5. INIT=plain TEMP=0 reproduce the runs before 2026-12-06.
# Usage: [N=256] [B=build/ecdlm] scripts/gen_llada2_mini_20l.sh WORKDIR [ROUTING] [THREADS] [FORMATS]
set -euo pipefail
cd "$(dirname "$0")/.."
W=$1 R=${2:-token} T=${3:-2} FORMATS=${4:-"q4 q8 bf16"} N=${N:-256}
B=${B:-build/ecdlm} FLAGS=${FLAGS:-} TAG=${TAG:-} INIT=${INIT:-calibrated} TEMP=${TEMP:-1}
[ -d "$W/bf16" ] || $B --threads "$T" init -c configs/models/llada2-mini-shaped-20l.json -o "$W/bf16" --dtype bf16 \
  --init-routing "$INIT"
# Only the formats asked for are converted: q4 / q8, _gN for groups of N, _head for a packed LM head
# (q4_g64_head: `convert --quantize q4 --quantize-group 64 --quantize-lm-head`).
for F in $FORMATS; do
  [[ $F =~ ^(q4|q8)(_g([0-9]+))?(_head)?$ ]] || continue
  Q=(--quantize "${BASH_REMATCH[1]}")
  [ -n "${BASH_REMATCH[3]}" ] && Q+=(--quantize-group "${BASH_REMATCH[3]}")
  [ -n "${BASH_REMATCH[4]}" ] && Q+=(--quantize-lm-head)
  [ -d "$W/$F" ] || $B --threads "$T" convert -m "$W/bf16" -o "$W/$F" "${Q[@]}"
done
IDS=$(python3 -c "import random; random.seed(64); print(','.join(str(random.randrange(1000, 150000)) for _ in range(64)))")
for F in $FORMATS; do
  sync; echo 1 > /proc/sys/vm/drop_caches || echo "(page cache not dropped: not root)"
  /usr/bin/time -v $B --threads "$T" generate -m "$W/$F" --prompt-ids "$IDS" -n "$N" --diffusion-block-length 32 \
    --diffusion-threshold 0.95 --ignore-eos --mask-id 156895 --eos-id 156892 --moe-routing "$R" --temperature "$TEMP" \
    --json $FLAGS \
    > "$W/gen-$F-$R$TAG.json" 2> "$W/gen-$F-$R$TAG.time"
  python3 - "$W/gen-$F-$R$TAG.json" "$W/gen-$F-$R$TAG.time" "$F$TAG" <<'PY'
import json, re, statistics, sys
s = json.load(open(sys.argv[1]))["samples"][0]; t = open(sys.argv[2]).read()
rss = int(re.search(r"Maximum resident set size .kbytes.: (\d+)", t).group(1)) / 1e6
flt = re.search(r"Major .*: (\d+)", t).group(1)
ms = statistics.median(p["ms"] for p in s["per_forward"])
print(f"| {sys.argv[3]} | {s['tokens_per_s']:.2f} | {ms:.0f} | {s['avg_unique_experts_per_layer']:.1f} | {rss:.2f} | {flt} |")
# The median forward's split (generate --json), over the block steps (32 tokens in)
steps = [p for p in s["per_forward"] if p["tokens_in"] == 32 and "experts_ms" in p]
if steps:
    print("  split (median ms): " + ", ".join(f"{k[:-3]} {statistics.median(p[k] for p in steps):.1f}"
                                             for k in ("attention_ms", "router_ms", "experts_ms", "dense_ms", "head_ms")))
PY
done

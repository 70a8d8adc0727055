#!/usr/bin/env bash
# Training and validation loss of several runs on one plot (docs/results/dist/val_loss_dp_main.png).
# Usage: scripts/plot_dp_curve.sh OUT.png MAX_STEP "LABEL=RUN_DIR" ...
set -euo pipefail
out=$1 max=$2; shift 2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
plot="" i=0
colors=("#08519c" "#d94801" "#238b45" "#6a51a3")
for spec in "$@"; do
  label=${spec%%=*} run=${spec#*=}
  python3 - "$run/metrics.jsonl" "$max" "$tmp/$i" <<'PY'
import json, sys
src, top, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(dst + ".train", "w") as tr, open(dst + ".val", "w") as va:
    for line in open(src):
        j = json.loads(line)
        if j.get("step", 0) > top:
            continue
        if "val_loss" in j:
            va.write(f"{j['step']} {j['val_loss']}\n")
        elif "loss" in j:
            tr.write(f"{j['step']} {j['loss']}\n")
PY
  c=${colors[$((i % 4))]}
  plot+="'$tmp/$i.train' w l lw 1 lc rgb '$c' dt 3 t 'train, $label', '$tmp/$i.val' w lp lw 2 pt $((5 + 2 * i)) lc rgb '$c' t 'val, $label', "
  i=$((i + 1))
done
gnuplot <<GP
set terminal pngcairo size 900,520 font ",11"
set output '$out'
set xlabel "step"; set ylabel "loss"; set grid; set key top right
plot ${plot%, }
GP
echo "$out"

#!/usr/bin/env bash
# Usage: scripts/check_layering.sh UNIT   (a directory under src/ecdlm: dist, moe, nn, kernels or util; or core)
# Fails, naming each line, if a file of UNIT includes an ecdlm header from a unit above it.
# The layers: serve -> model and the rest of core -> dist -> moe -> nn -> kernels -> util (ctest layering.*).
# "core" checks that nothing below serve/ (the HTTP server) includes it.
set -euo pipefail
cd "$(dirname "$0")/../src/ecdlm"
unit=$1
if [ "$unit" = core ]; then
  bad=$(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]ecdlm/serve/' --exclude-dir=serve . || true)
  if [ -n "$bad" ]; then
    echo "layering: only src/ecdlm/serve/ (and apps/) may include ecdlm/serve/; these reach up:"
    printf '%s\n' "$bad"
    exit 1
  fi
  echo "layering: no unit below serve/ includes ecdlm/serve/"
  exit 0
fi
case "$unit" in
  dist) allowed="dist moe nn kernels util" ;;
  moe) allowed="moe nn kernels util" ;;
  nn) allowed="nn kernels util" ;;
  kernels) allowed="kernels util" ;;
  util) allowed="util" ;;
  *) echo "check_layering: unknown unit '$unit' (dist, moe, nn, kernels, util or core)" >&2; exit 2 ;;
esac
[ -d "$unit" ] || { echo "check_layering: no src/ecdlm/$unit" >&2; exit 2; }
pattern="[[:space:]]*#[[:space:]]*include[[:space:]]*[\"<]ecdlm/($(echo "$allowed" | tr ' ' '|'))/"
bad=$(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]ecdlm/' "$unit" | grep -vE ":[0-9]+:$pattern" || true)
# io/quant_format (the packed weight layouts) is built into the base library, below every unit.
bad=$(printf '%s\n' "$bad" | grep -vE ':[0-9]+:[[:space:]]*#[[:space:]]*include[[:space:]]*"ecdlm/io/quant_format\.h"' | sed '/^$/d' || true)
if [ -n "$bad" ]; then
  echo "layering: src/ecdlm/$unit/ may include only ecdlm/{$(echo "$allowed" | tr ' ' ',')}/; these reach up:"
  printf '%s\n' "$bad"
  exit 1
fi
echo "layering: src/ecdlm/$unit/ includes only ecdlm/{$(echo "$allowed" | tr ' ' ',')}/"

#!/usr/bin/env bash
# Usage: scripts/check_openmp.sh BUILD_DIR
# at::parallel_for / parallel_reduce are inline OpenMP regions: a file compiled without -fopenmp
# runs them on one thread, silently. Fails, naming each file, if a source under src/ecdlm calls
# them and its compile command (BUILD_DIR/compile_commands.json) lacks -fopenmp: re-run cmake
# (CMakeLists.txt gives every source the flags: OpenMP::OpenMP_CXX is public on ecdlm_base).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
db=$1/compile_commands.json
[ -f "$db" ] || { echo "check_openmp: no $db (configure with CMAKE_EXPORT_COMPILE_COMMANDS)" >&2; exit 2; }
files=$(grep -rlE 'at::parallel_(for|reduce)' "$root/src/ecdlm" --include='*.cpp' || true)
python3 - "$db" $files <<'PY'
import json, sys
db = {e["file"]: e.get("command", " ".join(e.get("arguments", []))) for e in json.load(open(sys.argv[1]))}
bad = [f for f in sys.argv[2:] if f not in db or "-fopenmp" not in db[f]]
for f in bad:
    print(f"openmp: {f} calls at::parallel_for / parallel_reduce but is compiled without -fopenmp (one thread); re-run cmake")
print(f"openmp: {len(sys.argv) - 2 - len(bad)} of {len(sys.argv) - 2} files calling at::parallel_* are compiled with -fopenmp")
sys.exit(1 if bad else 0)
PY

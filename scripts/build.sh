#!/usr/bin/env bash
# Configure and build everything into build/ (Release, Ninja, 2 jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > build-config.log 2>&1 || { cat build-config.log; exit 1; }
cmake --build build -j "${ECDLM_JOBS:-2}"

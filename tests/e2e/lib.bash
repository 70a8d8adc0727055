# Shared helpers of the e2e scripts, sourced after TMP is set (.bash: the e2e glob only registers *.sh).
fail() { echo "FAIL: $*" >&2; exit 1; }

# Runs the rest of the command line expecting exit code $1 (a signal gives 128+N, never 2);
# stdout goes to $TMP/out.txt, stderr to $TMP/err.txt.
expect_rc() {
  local want="$1"; shift
  set +e
  "$@" > "$TMP/out.txt" 2> "$TMP/err.txt"
  local rc=$?
  set -e
  [ "$rc" -eq "$want" ] || { cat "$TMP/err.txt" >&2; fail "exit $rc (want $want): $*"; }
}

# Runs the rest of the command line expecting it to fail with $1 (fixed text) in its stderr,
# which stays in $TMP/bad.txt.
expect_fail() {
  local want="$1"; shift
  if "$@" > /dev/null 2> "$TMP/bad.txt"; then fail "accepted: $*"; fi
  grep -qF -- "$want" "$TMP/bad.txt" || { cat "$TMP/bad.txt"; fail "error for '$*' does not mention $want"; }
}

# fixture_model SRC DIR: a copy of checkpoint SRC (config.json, model.safetensors) in DIR with the
# fixture LLaDA2 tokenizer (tests/e2e/llada2_fixture.py) written next to it. Needs ROOT.
fixture_model() {
  mkdir -p "$2"
  cp "$1/config.json" "$1/model.safetensors" "$2/"
  python3 "$ROOT/tests/e2e/llada2_fixture.py" write "$2"
}

# serve_start NAME MODEL_DIR ARGS...: starts `$ECDLM --threads 1 serve -m MODEL_DIR --port 0 ARGS...`
# (stdout $TMP/NAME.out, stderr $TMP/NAME.err) and waits for its port and /health; sets SPID and PORT.
# The caller's EXIT trap kills $SPID if the script fails before serve_stop.
serve_start() {
  local name=$1 model=$2; shift 2
  "$ECDLM" --threads 1 serve -m "$model" --port 0 "$@" > "$TMP/$name.out" 2> "$TMP/$name.err" &
  SPID=$!
  PORT=""
  for _ in $(seq 1 300); do
    PORT=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$TMP/$name.out")
    [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && return 0
    kill -0 "$SPID" 2>/dev/null || { cat "$TMP/$name.err"; fail "$name: the server exited"; }
    sleep 0.1
  done
  cat "$TMP/$name.err"; fail "$name: not ready after 30 s"
}

# serve_stop NAME: SIGTERM to $SPID, expecting exit 0; clears SPID.
serve_stop() {
  kill -TERM "$SPID"
  set +e; wait "$SPID"; local rc=$?; set -e
  SPID=""
  [ "$rc" -eq 0 ] || { cat "$TMP/$1.err"; fail "$1: exit $rc after SIGTERM (want 0)"; }
}

# require_openai_client ROOT: exports ECDLM_NPM_SERVE (where scripts/setup.sh installs the npm `openai`
# client); without it the test fails under CI and is skipped (exit 77) elsewhere.
require_openai_client() {
  export ECDLM_NPM_SERVE="$1/data/npm-serve"
  if [ ! -d "$ECDLM_NPM_SERVE/node_modules/openai" ]; then
    [ "${CI:-}" = true ] && { echo "FAIL: $ECDLM_NPM_SERVE/node_modules/openai missing (scripts/setup.sh installs it)"; exit 1; }
    echo "SKIP: the openai npm client is not installed (scripts/setup.sh)"; exit 77
  fi
}

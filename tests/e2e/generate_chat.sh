#!/usr/bin/env bash
# `ecdlm generate --chat` end to end on a LLaDA2 directory: the golden tiny-dmoe checkpoint (copied, never
# modified) plus the LLaDA2-style tokenizer written by llada2_fixture.py. Checks the chat prompt ids against an
# independent Python encoder, the stop at <|role_end|> / at an EOS from generation_config.json, KV cache on/off
# giving the same greedy tokens under block routing, the decoded answer, and the --chat errors.
# Usage: bash generate_chat.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"; ROOT="$2"
G="$ROOT/../shared/golden/tiny-dmoe"
[ -f "$G/model.safetensors" ] || { echo "SKIP: golden fixtures missing ($G)"; exit 0; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"
FIX="$ROOT/tests/e2e/llada2_fixture.py"
M="$TMP/llada2"
mkdir "$M"
cp "$G/config.json" "$G/model.safetensors" "$M/"
python3 "$FIX" write "$M"
GEN=(--threads 1 generate -m "$M" --chat -n 64 --decoder llada2 --moe-routing block)

# The tiny-golden command of the README, with and without the KV cache.
for kv in true false; do
  "$ECDLM" "${GEN[@]}" -p "hello" --kv-cache $kv --json > "$TMP/chat_$kv.json" 2> "$TMP/err.txt" \
    || { cat "$TMP/err.txt"; fail "generate --chat --kv-cache $kv"; }
done
grep -q "chat template, 8 prompt tokens" "$TMP/err.txt" || fail "chat settings not logged"
TEMPLATE='<role>HUMAN</role>hello<|role_end|><role>ASSISTANT</role>'
WANT_IDS=$(python3 "$FIX" encode "$M" "$TEMPLATE")
CLI_IDS=$("$ECDLM" -q tokenize --tokenizer "$M" --text "$TEMPLATE" --add-special-tokens=false)
python3 - "$TMP" "$TEMPLATE" "$WANT_IDS" "$CLI_IDS" <<'PY'
import json, sys
tmp, template, want, cli = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")], json.loads(sys.argv[4])
a, b = (json.load(open(f"{tmp}/chat_{kv}.json")) for kv in ("true", "false"))
assert a["chat"]["template"] == template, a["chat"]
assert a["prompt_tokens"] == want == cli["ids"], (a["prompt_tokens"], want, cli)
assert a["kv_cache"] is True and b["kv_cache"] is False and a["routing"] == "block" == b["routing"]
s, t = a["samples"][0], b["samples"][0]
assert s["tokens"] == t["tokens"], "the KV cache changed the greedy tokens"
stops = a["chat"]["stop_ids"]
assert stops == [270, 298], stops                      # <|role_end|>, then eos = pad from config.json
toks = s["tokens"]
assert toks[-1] == 270 and len(toks) < 64, toks        # stopped at <|role_end|>, before the end
assert not set(toks[:-1]) & set(stops), toks
# The answer is the byte-level decoding of the tokens before the stop.
assert all(x < 256 for x in toks[:-1]), "the reference decode below covers byte tokens only"
raw = bytes(toks[:-1])
assert s["text"] == raw.decode("utf-8", errors="replace"), (s["text"], raw)
open(f"{tmp}/want_text.txt", "w").write(s["text"] + "\n")
# A stand-in EOS for the next run (as the golden EOS case, eos_id 175): the first token that appears
# once it is 3 positions in, so the output must end right there.
j = next(i for i in range(3, len(toks) - 1) if toks[i] not in toks[:i])
open(f"{tmp}/eos.txt", "w").write(f"{toks[j]} {j}\n")
PY

# Plain output: only the assistant's text.
"$ECDLM" -q "${GEN[@]}" -p "hello" > "$TMP/plain.txt"
cmp -s "$TMP/plain.txt" "$TMP/want_text.txt" || fail "plain output is not the answer text"

# A system turn.
"$ECDLM" -q "${GEN[@]}" -p "hello" --system "Be brief." --json > "$TMP/sys.json"
TEMPLATE_SYS='<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>hello<|role_end|><role>ASSISTANT</role>'
python3 - "$TMP/sys.json" "$TEMPLATE_SYS" "$(python3 "$FIX" encode "$M" "$TEMPLATE_SYS")" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["chat"]["template"] == sys.argv[2], d["chat"]
assert d["prompt_tokens"] == [int(x) for x in sys.argv[3].split(",")], d["prompt_tokens"]
PY

# EOS ids from generation_config.json (an id list, as HF writes it) stop the answer too.
read -r EOS POS < "$TMP/eos.txt"
echo "{\"eos_token_id\": [298, $EOS], \"pad_token_id\": 298}" > "$M/generation_config.json"
"$ECDLM" -q "${GEN[@]}" -p "hello" --json > "$TMP/gc.json"
python3 - "$TMP" "$EOS" "$POS" <<'PY'
import json, sys
tmp, eos, pos = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
full = json.load(open(f"{tmp}/chat_true.json"))["samples"][0]["tokens"]
d = json.load(open(f"{tmp}/gc.json"))
assert d["chat"]["stop_ids"] == [270, 298, eos], d["chat"]["stop_ids"]
assert d["samples"][0]["tokens"] == full[:pos + 1], (d["samples"][0]["tokens"], full, pos)
PY
echo '{"eos_token_id": 300}' > "$M/generation_config.json"
if "$ECDLM" -q "${GEN[@]}" -p "hello" > /dev/null 2> "$TMP/bad.txt"; then fail "accepted an eos id outside the vocabulary"; fi
grep -q "generation_config.json: eos_token_id" "$TMP/bad.txt" || { cat "$TMP/bad.txt"; fail "bad generation_config error"; }
rm "$M/generation_config.json"

# --ignore-eos runs to the end; the chat answer is its prefix up to the stop.
"$ECDLM" -q "${GEN[@]}" -p "hello" --ignore-eos --json > "$TMP/all.json"
python3 - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
cut = json.load(open(f"{tmp}/chat_true.json"))["samples"][0]["tokens"]
full = json.load(open(f"{tmp}/all.json"))["samples"][0]["tokens"]
assert len(full) == 64 and full[:len(cut)] == cut, (full, cut)
PY

# Errors: no tokenizer, a tokenizer without the role tokens, --chat with ids, no message, --system alone.
bad() { expect_fail "$1" "$ECDLM" -q generate "${@:2}"; }  # expected-text, args...
bad "--chat" -m "$G" --chat -p "hello"
mkdir "$TMP/plain_tok"
python3 - "$M/tokenizer.json" "$TMP/plain_tok/tokenizer.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
t["added_tokens"] = [a for a in t["added_tokens"] if "role" not in a["content"]]
json.dump(t, open(sys.argv[2], "w"))
PY
bad "<|role_end|>" -m "$M" --tokenizer "$TMP/plain_tok" --chat -p "hello"
bad "--prompt-ids" -m "$M" --chat --prompt-ids 1,2
bad "--prompt" -m "$M" --chat -p ""
bad "--system" -m "$M" -p "hello" --system "Be brief."
bad "context" -m "$M" --decoder llada -p "hello" -n 16384
echo "generate_chat e2e OK"

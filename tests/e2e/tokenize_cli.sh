#!/usr/bin/env bash
# End-to-end: `ecdlm tokenize` on a hand-built byte-level tokenizer.json: JSONL in/out, --text,
# --show-tokens, --add-special-tokens, --decode, and errors that name the line (invalid JSON,
# invalid UTF-8 in JSONL and --text, ids outside the vocabulary). Needs only python3's standard library.
# Usage: bash tokenize_cli.sh <path-to-ecdlm-binary> <repo-root>
set -euo pipefail
ECDLM="$1"
ROOT="$2"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
source "$ROOT/tests/e2e/lib.bash"

# Byte-level alphabet (ids 0..255 in byte order), merges h+e, Ġ+t, Ġt+he, t+he, a BOS/EOS template.
python3 - "$TMP/tokenizer.json" <<'PY'
import json, sys
bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
cs, n = {}, 0
for b in range(256):
    if b in bs: cs[b] = chr(b)
    else: cs[b] = chr(256 + n); n += 1
vocab = {cs[b]: b for b in range(256)}
vocab.update({"he": 256, "\u0120t": 257, "\u0120the": 258, "the": 259})
added = [{"id": 260 + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
          "normalized": False, "special": True} for i, c in enumerate(["<s>", "</s>", "<|mask|>"])]
bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
tpl = {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "</s>", "type_id": 0}}],
       "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [260], "tokens": ["<s>"]},
                                      "</s>": {"id": "</s>", "ids": [261], "tokens": ["</s>"]}}}
json.dump({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
           "pre_tokenizer": bl, "post_processor": tpl, "decoder": bl,
           "model": {"type": "BPE", "vocab": vocab, "merges": ["h e", "\u0120 t", "\u0120t he", "t he"]}},
          open(sys.argv[1], "w"))
PY
TOK=(--tokenizer "$TMP/tokenizer.json")

expect_err() { grep -qF -- "$1" "$TMP/err.txt" || { cat "$TMP/err.txt" >&2; fail "stderr lacks: $1"; }; }

# --text, default add_special_tokens=true, --show-tokens
out="$("$ECDLM" -q tokenize "${TOK[@]}" --text "the the<|mask|>")"
[ "$out" = '{"ids":[260,259,258,262,261]}' ] || fail "--text: $out"
out="$("$ECDLM" -q tokenize "${TOK[@]}" --text "the the" --add-special-tokens=false --show-tokens)"
[ "$out" = '{"ids":[259,258],"tokens":["the","Ġthe"]}' ] || fail "--show-tokens: $out"

# JSONL in/out keeps order; blank lines are skipped; stdin works too
printf '{"text": "the"}\n\n{"text": " the"}\n{"text": ""}\n' > "$TMP/in.jsonl"
"$ECDLM" -q tokenize "${TOK[@]}" --input "$TMP/in.jsonl" --output "$TMP/ids.jsonl" --add-special-tokens=false
printf '{"ids":[259]}\n{"ids":[258]}\n{"ids":[]}\n' | cmp - "$TMP/ids.jsonl" || fail "JSONL output"
"$ECDLM" -q tokenize "${TOK[@]}" < "$TMP/in.jsonl" --add-special-tokens=false | cmp - "$TMP/ids.jsonl" || fail "stdin"

# --decode keeps special tokens
printf '{"ids": [260, 259, 258, 262, 261]}\n' | "$ECDLM" -q tokenize "${TOK[@]}" --decode > "$TMP/dec.jsonl"
[ "$(cat "$TMP/dec.jsonl")" = '{"text":"<s>the the<|mask|></s>"}' ] || fail "--decode: $(cat "$TMP/dec.jsonl")"

# Errors name the input and the line
printf '{"text": "ok"}\n{"text": oops}\n' > "$TMP/bad.jsonl"
expect_rc 2 "$ECDLM" tokenize "${TOK[@]}" --input "$TMP/bad.jsonl"
expect_err "bad.jsonl:2"; expect_err "invalid JSON"
printf '{"text": "ok"}\n{"text": "ok"}\n{"text": "\xff"}\n' > "$TMP/bad.jsonl"
expect_rc 2 "$ECDLM" tokenize "${TOK[@]}" --input "$TMP/bad.jsonl"
expect_err "bad.jsonl:3"; expect_err "input is not valid UTF-8: byte 0xFF at byte offset 10"
# --text says the same in ecdlm's words (not the JSON library's type_error.316)
expect_rc 2 "$ECDLM" tokenize "${TOK[@]}" --text "$(printf 'ab\xc3(')"
expect_err "--text"; expect_err "input is not valid UTF-8: byte 0xC3 at byte offset 2"
grep -q "json.exception" "$TMP/err.txt" && fail "--text: the JSON library's message leaks: $(cat "$TMP/err.txt")"
printf '{"ids": [1, 2]}\n{"ids": [1, 263]}\n' > "$TMP/bad.jsonl"
expect_rc 2 "$ECDLM" tokenize "${TOK[@]}" --decode --input "$TMP/bad.jsonl"
expect_err "bad.jsonl:2"; expect_err "ids[1]"; expect_err "263 is not in the vocabulary"
printf '{"ids": [-1]}\n' > "$TMP/bad.jsonl"
expect_rc 2 "$ECDLM" tokenize "${TOK[@]}" --decode --input "$TMP/bad.jsonl"
expect_err "bad.jsonl:1"
printf '{"txt": "x"}\n' > "$TMP/bad.jsonl"
expect_rc 2 "$ECDLM" tokenize "${TOK[@]}" --input "$TMP/bad.jsonl"
expect_err '"text" string'

# A broken tokenizer.json names the JSON path and the type
sed 's/"type": "BPE"/"type": "WordPiece"/' "$TMP/tokenizer.json" > "$TMP/bad_tok.json"
expect_rc 2 "$ECDLM" tokenize --tokenizer "$TMP/bad_tok.json" --text x
expect_err "model.type"; expect_err "WordPiece"
expect_rc 2 "$ECDLM" tokenize -m "$TMP/nonexistent" --text x
echo "PASS"

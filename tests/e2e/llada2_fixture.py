"""A LLaDA2 (Ling/Bailing) style tokenizer for the 300-token golden checkpoints, and a reference encoder.

  llada2_fixture.py write DIR        writes DIR/tokenizer.json and DIR/tokenizer_config.json
  llada2_fixture.py encode DIR TEXT  prints the ids of TEXT (ASCII only) as "1,2,3", computed here in Python

The tokenizer is byte-level BPE shaped like the real one (dmoe-llada2.md §6): a Split pre-tokenizer with the
Bailing regex, then ByteLevel without its own regex. Ids 0..255 are the bytes in byte order and merge i makes
id 256 + i; the specials keep the golden ids: <|endoftext|> 298 (= eos = pad in config.json), <|mask|> 299,
<role> 295, </role> 296. <|role_end|> takes id 270, the id the tiny random golden model emits (generation
position 26) after the chat prompt "hello", so the e2e test sees a real stop at <|role_end|>; the merge that
would have had 270 ("a t") takes 297. The encoder is an independent check of ecdlm's: it splits the added
tokens, pre-tokenizes with an ASCII form of the regex and applies the merges by rank.
"""
import json
import os
import re
import sys

MERGES = [
    "h e", "l l", "he ll", "hell o", "\u0120 t", "\u0120t he", "t he", "\u0120 a", "i n", "e r", "o n", "r e",
    "a n", "e n", "a t", "o r", "e s", "i s", "\u0120 s", "\u0120 w", "\u0120 o", "i t", "o u", "\u0120 c",
    "\u0120 b", "\u0120 h", "\u0120 hello", "H U", "HU M", "A N", "HUM AN", "S S", "A SS", "I S", "T AN",
    "TAN T", "ASS IS", "ASSIS TANT", "\u0120 i",
]
SPECIALS = {"<role>": 295, "</role>": 296, "<|role_end|>": 270, "<|endoftext|>": 298, "<|mask|>": 299}
MERGE_IDS = [297 if 256 + i == SPECIALS["<|role_end|>"] else 256 + i for i in range(len(MERGES))]
BAILING_REGEX = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]"
                 r"|\s+(?!\S)|\s+")
# The same pattern for ASCII text (Python's re has no \p{..}; the possessive ?+ cannot change a match here).
ASCII_REGEX = re.compile(r"'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+[\r\n]*"
                         r"|\s*[\r\n]|\s+(?!\S)|\s+")


def byte_to_unicode():
    """GPT-2's printable stand-ins for the 256 bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def build():
    b2u = byte_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    for i, m in enumerate(MERGES):
        a, b = m.split(" ")
        assert a in vocab and b in vocab, m
        assert a + b not in vocab, m
        vocab[a + b] = MERGE_IDS[i]
    # As in real files the specials are in the model vocab too: that is what pins their ids.
    vocab.update(SPECIALS)
    assert sorted(vocab.values()) == list(range(300))
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(SPECIALS.items(), key=lambda x: x[1])]
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": BAILING_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre, "post_processor": bl, "decoder": bl,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "vocab": vocab, "merges": MERGES}}


def write(out_dir):
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(build(), f, ensure_ascii=False)
    # As the real checkpoint: eos/pad by piece; the chat template itself is ecdlm's (text/chat.h).
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "mask_token": "<|mask|>", "model_max_length": 16384}, f)


def encode(tok, text):
    assert text.isascii(), "the reference encoder handles ASCII text only"
    vocab = tok["model"]["vocab"]
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(tok["model"]["merges"])}
    added = sorted(tok["added_tokens"], key=lambda a: -len(a["content"]))
    b2u = byte_to_unicode()
    ids, i, plain = [], 0, ""

    def flush(s):
        for word in ASCII_REGEX.findall(s):
            parts = [b2u[b] for b in word.encode()]
            while len(parts) > 1:
                pairs = [(ranks.get((parts[k], parts[k + 1]), 1 << 30), k) for k in range(len(parts) - 1)]
                r, k = min(pairs)
                if r == 1 << 30:
                    break
                parts[k:k + 2] = [parts[k] + parts[k + 1]]
            ids.extend(vocab[p] for p in parts)

    while i < len(text):
        hit = next((a for a in added if text.startswith(a["content"], i)), None)
        if hit:
            flush(plain)
            plain = ""
            ids.append(hit["id"])
            i += len(hit["content"])
        else:
            plain += text[i]
            i += 1
    flush(plain)
    return ids


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        write(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "encode":
        with open(os.path.join(sys.argv[2], "tokenizer.json")) as f:
            print(",".join(str(x) for x in encode(json.load(f), sys.argv[3])))
    else:
        sys.exit(__doc__)

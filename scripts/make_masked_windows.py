#!/usr/bin/env python3
"""Write IN.safetensors for `ecdlm logits --input`: W windows of T tokens from a prepared split
(uint16 .bin), evenly spaced, each token replaced by the mask id with probability RATIO (seeded), as a
mid-decoding canvas. Pure Python.
Usage: make_masked_windows.py DATA_DIR OUT.safetensors [W=16] [T=256] [RATIO=0.5] [SEED=1]"""
import json, random, struct, sys


def main(data_dir, out, W=16, T=256, ratio=0.5, seed=1):
    meta = json.load(open(data_dir + "/meta.json"))
    mask = meta["mask_token_id"]
    raw = open(data_dir + "/" + meta["splits"]["val"]["bin"], "rb").read()
    toks = struct.unpack("<%dH" % (len(raw) // 2), raw)
    if len(toks) < W * T:
        sys.exit("%s: val split has %d tokens, fewer than %d x %d" % (data_dir, len(toks), W, T))
    rng = random.Random(seed)
    step = (len(toks) - T) // max(W - 1, 1)
    ids = []
    for w in range(W):
        win = toks[w * step:w * step + T]
        ids += [mask if rng.random() < ratio else t for t in win]
    body = struct.pack("<%dq" % len(ids), *ids)
    head = json.dumps({"input_ids": {"dtype": "I64", "shape": [W, T], "data_offsets": [0, len(body)]}}).encode()
    head += b" " * (-len(head) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + body)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    a = sys.argv[1:]
    main(a[0], a[1], *(int(x) for x in a[2:4]), *(float(x) for x in a[4:5]), *(int(x) for x in a[5:6]))

#!/usr/bin/env python3
# Minimal safetensors reader/writer on the standard library (struct + json + array).
import json, struct, sys
from array import array

def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        code = {"F32": "f", "I64": "q", "I32": "i", "U8": "B"}.get(t["dtype"])
        if code is None:
            continue
        a = array(code)
        b, e = t["data_offsets"]
        a.frombytes(data[b:e])
        if sys.byteorder != "little":
            a.byteswap()
        out[name] = (t["shape"], a)
    return out

def write(path, tensors):
    header, blob, off = {}, b"", 0
    for name, (dtype, shape, values) in tensors.items():
        raw = array({"F32": "f", "I64": "q"}[dtype], values).tobytes()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blob += raw
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + blob)

if __name__ == "__main__":
    got, want = read(sys.argv[1]), read(sys.argv[2])
    tol = float(sys.argv[3])
    for name in ("logits", "input_ids"):
        (gs, ga), (ws, wa) = got[name], want[name]
        assert gs == ws, f"{name}: shape {gs} != golden {ws}"
    diff = max(abs(x - y) for x, y in zip(got["logits"][1], want["logits"][1]))
    assert got["input_ids"][1] == want["input_ids"][1], "input_ids differ"
    print(f"max |logits - golden| = {diff:.3g}")
    assert diff <= tol, f"max abs diff {diff} > {tol}"

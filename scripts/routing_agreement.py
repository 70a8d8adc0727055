#!/usr/bin/env python3
"""Routing agreement between two `ecdlm logits --routing-out` files of the same input (e.g. bf16 and
q8 weights of one model). Prints JSON: per-layer means and the overall mean of
  coreset_jaccard   |A ∩ B| / |A ∪ B| of each chunk's block-routing coreset (coreset_BCE)
  coreset_size_a/b  experts per coreset
  token_set_equal   fraction of tokens routed to the same expert set (idx_TK, gate > 0)
  expert_jaccard    expert choice: Jaccard of each expert's chosen token set (token_EN, gate > 0)
Pure Python (no numpy), so it runs wherever the tests do.
Usage: routing_agreement.py A.safetensors B.safetensors"""
import json, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from st import read  # noqa: E402  (the project's one safetensors reader)


def rows(t):
    shape, vals = t
    w = shape[-1]
    return [vals[i:i + w] for i in range(0, len(vals), w)]


def jaccard(a, b):
    u = a | b
    return len(a & b) / len(u) if u else 1.0


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def main(pa, pb):
    A, B = read(pa), read(pb)
    layers = sorted({k.split(".")[1] for k in A}, key=int)
    per_layer, allm = [], {}
    for l in layers:
        p = "layers.%s." % l
        m = {}
        if p + "coreset_BCE" in A and p + "coreset_BCE" in B:
            ca = [{e for e, v in enumerate(r) if v} for r in rows(A[p + "coreset_BCE"])]
            cb = [{e for e, v in enumerate(r) if v} for r in rows(B[p + "coreset_BCE"])]
            m["coreset_jaccard"] = mean([jaccard(x, y) for x, y in zip(ca, cb)])
            m["coreset_size_a"] = mean([len(x) for x in ca])
            m["coreset_size_b"] = mean([len(y) for y in cb])
        if p + "idx_TK" in A and p + "idx_TK" in B:
            def sets(S):
                return [{e for e, g in zip(ir, gr) if g > 0} for ir, gr in zip(rows(S[p + "idx_TK"]), rows(S[p + "gate_TK"]))]
            m["token_set_equal"] = mean([float(x == y) for x, y in zip(sets(A), sets(B))])
        if p + "token_EN" in A and p + "token_EN" in B:
            def sets(S):
                return [{t for t, g in zip(tr, gr) if g > 0} for tr, gr in zip(rows(S[p + "token_EN"]), rows(S[p + "gate_EN"]))]
            m["expert_jaccard"] = mean([jaccard(x, y) for x, y in zip(sets(A), sets(B))])
        per_layer.append(m)
        for k, v in m.items():
            allm.setdefault(k, []).append(v)
    print(json.dumps({"a": pa, "b": pb, "mean": {k: mean(v) for k, v in allm.items()}, "layers": per_layer}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

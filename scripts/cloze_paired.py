#!/usr/bin/env python3
"""Paired cloze comparison of eval JSONs (`ecdlm eval --eval-cloze-span S --eval-cloze-positions N --json`).

Every arm was scored on the same held-out windows and spans, so the accuracy ratio arm / reference
is judged paired: a bootstrap over windows (resampled with replacement, the same draw for both)
gives its 95% interval. Also prints the ELBO perplexity of each file.

  scripts/cloze_paired.py REF.json NAME=ARM.json [NAME=ARM.json ...] [--md OUT.md] [--boot 2000]
"""
import argparse
import json
import random
import sys


def load(path):
    try:
        with open(path) as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: cannot read eval JSON ({e})")
    c = j.get("cloze")
    if not c or "correct_per_window" not in c:
        sys.exit(f"{path}: no cloze.correct_per_window (run ecdlm eval with --eval-cloze-span and --json)")
    return j, c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref")
    ap.add_argument("arms", nargs="+", help="NAME=PATH (split at the last =)")
    ap.add_argument("--md", help="also write the markdown table here")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    ref_j, ref = load(a.ref)
    rc = ref["correct_per_window"]
    W = len(rc)
    rng = random.Random(a.seed)
    draws = [[rng.randrange(W) for _ in range(W)] for _ in range(a.boot)]
    lines = [
        f"Reference: `{a.ref}`: cloze accuracy {ref['accuracy']:.4f} over {ref['tokens']} tokens "
        f"({W} windows x {ref.get('positions', 1)} spans of {ref['span']}), ELBO PPL {ref_j['ppl']:.2f}.",
        "",
        "| arm | ELBO PPL | PPL kept | cloze acc | acc kept | 95% CI (paired bootstrap) | windows better / worse |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in a.arms:
        name, _, path = spec.rpartition("=")
        j, c = load(path)
        ac = c["correct_per_window"]
        if len(ac) != W or c["tokens"] != ref["tokens"] or c.get("span") != ref.get("span"):
            sys.exit(f"{path}: not the reference's cloze set (windows, tokens or span differ)")
        ratio = sum(ac) / max(1, sum(rc))
        boots = sorted(sum(ac[i] for i in d) / max(1, sum(rc[i] for i in d)) for d in draws)
        lo, hi = boots[int(0.025 * a.boot)], boots[int(0.975 * a.boot) - 1]
        better = sum(x > y for x, y in zip(ac, rc))
        worse = sum(x < y for x, y in zip(ac, rc))
        lines.append(
            f"| {name} | {j['ppl']:.2f} | {100 * ref_j['ppl'] / j['ppl']:.2f}% | {c['accuracy']:.4f} | "
            f"{100 * ratio:.2f}% | {100 * lo:.1f}% – {100 * hi:.1f}% | {better} / {worse} |")
    out = "\n".join(lines) + "\n"
    sys.stdout.write(out)
    if a.md:
        with open(a.md, "w") as f:
            f.write(out)


if __name__ == "__main__":
    main()

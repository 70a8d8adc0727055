"""Writes a toy JSONL corpus for the CLI end-to-end tests: toy_corpus.py SEED DOCS OUT.jsonl."""
import json, random, sys

seed, docs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
random.seed(seed)
words = "the a cat dog sat ran on under mat tree quickly slowly big small red green".split()
with open(out, "w") as f:
    for d in range(docs):
        sents = [" ".join(random.choice(words) for _ in range(random.randint(4, 9))).capitalize() + "." for _ in range(6)]
        f.write(json.dumps({"id": f"doc{d}", "text": " ".join(sents)}) + "\n")

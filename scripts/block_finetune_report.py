"""Report of scripts/study_block_finetune.sh: RESULTS/README.md and RESULTS/results.json from the
fine-tune runs (RUNS/{block,token}-ft/seed-S/train_result.json, RUNS/distill-*/...) and evals
(RUNS/evals/*.json); RESULTS/notes.md, if present, is included as the "Reading" section."""
import argparse, json, math, os, statistics

ap = argparse.ArgumentParser()
for k in ["runs", "results", "seeds", "model", "lr"]:
    ap.add_argument("--" + k, required=True)
for k in ["g-ft", "g-big", "block", "steps", "batch", "seq", "quick"]:
    ap.add_argument("--" + k, type=int, required=True)
ap.add_argument("--p", type=float, required=True)
ap.add_argument("--distill", default="", help="self-distillation arms, 'STEPS:LR ...' as the study script")
ap.add_argument("--distill-weight", type=float, default=1.0)
a = ap.parse_args()
seeds = [int(s) for s in a.seeds.split()]
G, GB = a.g_ft, a.g_big
# Self-distillation arms: (run dir name, steps, lr), named as the study script names them.
DISTILL = [(f"distill-{v.split(':')[0]}s-lr{v.split(':')[1]}", int(v.split(":")[0]), v.split(":")[1])
           for v in a.distill.split()]


def load(name):
    with open(os.path.join(a.runs, "evals", name + ".json")) as f:
        return json.load(f)


def arm_evals(model, routing):
    """Eval JSONs of one arm: one for the base model, one per seed for a fine-tuned one."""
    if model == "base":
        return [load(f"base.{routing}")]
    return [load(f"{model}.s{s}.{routing}") for s in seeds]


def mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


ARMS = [  # name, model, routing, what it is
    ("token", "base", "token", "TC checkpoint, its own token routing (no fine-tune)"),
    (f"block-G{GB}", "base", f"block-G{GB}", f"block routing p={a.p}, G={GB}, no fine-tune"),
    (f"block-G{G}", "base", f"block-G{G}", f"block routing p={a.p}, G={G}, no fine-tune"),
    (f"blockft-block-G{G}", "block-ft", f"block-G{G}", f"after the block fine-tune (G={G}), block routing G={G}"),
    (f"blockft-block-G{GB}", "block-ft", f"block-G{GB}", f"after the block fine-tune (G={G}), block routing G={GB}"),
    ("blockft-token", "block-ft", "token", f"after the block fine-tune (G={G}), token routing"),
    ("tokenft-token", "token-ft", "token", "control: equal-budget token-routing fine-tune, token routing"),
    (f"tokenft-block-G{G}", "token-ft", f"block-G{G}", f"control fine-tune, then block routing G={G}"),
]
W = a.distill_weight
distill_what = "KL to the token model" if W == 1 else f"{W:g} KL + {1 - W:g} CE"
for d, steps, lr in DISTILL:
    ARMS += [(f"{d}-block-G{G}", d, f"block-G{G}",
              f"self-distillation ({distill_what}, {steps} steps, lr {lr}, G={G}), block routing G={G}"),
             (f"{d}-token", d, "token", f"self-distillation ({steps} steps, lr {lr}, G={G}), token routing")]
arms, by_name = [], {}
for name, model, routing, what in ARMS:
    ev = arm_evals(model, routing)
    accs = [e["cloze"]["accuracy"] for e in ev]
    n_cloze = sum(e["cloze"]["tokens"] for e in ev)
    acc = mean(accs)
    arm = {
        "name": name, "model": model, "routing": routing, "what": what, "seeds": len(ev),
        "elbo_loss": mean([e["loss"] for e in ev]), "ppl": mean([e["ppl"] for e in ev]),
        "ppl_per_seed": [e["ppl"] for e in ev],
        "cloze_accuracy": acc, "cloze_accuracy_per_seed": accs,
        "cloze_tokens": n_cloze, "cloze_se": math.sqrt(max(acc * (1 - acc), 0.0) / max(n_cloze, 1)),
        "unique_experts_per_block": mean([e["unique_experts_per_block"] for e in ev]),
        "sequences": ev[0]["sequences"],
    }
    arms.append(arm)
    by_name[name] = (arm, ev)


def ratio(block_name, token_name, label):
    """Quality kept, paired by seed where both arms are fine-tuned (else against the one base eval)."""
    (ba, bev), (ta, tev) = by_name[block_name], by_name[token_name]
    pairs = list(zip(bev, tev)) if len(bev) == len(tev) else [(b, tev[0]) for b in bev]
    ppl_kept = [t["ppl"] / b["ppl"] for b, t in pairs]
    acc_kept = [b["cloze"]["accuracy"] / t["cloze"]["accuracy"] if t["cloze"]["accuracy"] > 0 else float("nan")
                for b, t in pairs]
    r = {"label": label, "block_arm": block_name, "token_arm": token_name,
         "ppl_kept": mean(ppl_kept), "ppl_kept_per_seed": ppl_kept,
         "acc_kept": mean(acc_kept), "acc_kept_per_seed": acc_kept}
    r["keeps_99_ppl"] = r["ppl_kept"] >= 0.99
    r["keeps_99_acc"] = r["acc_kept"] >= 0.99
    return r


ratios = [
    ratio(f"block-G{GB}", "token", f"no fine-tune, G={GB}"),
    ratio(f"block-G{G}", "token", f"no fine-tune, G={G}"),
    ratio(f"blockft-block-G{G}", "tokenft-token", f"block fine-tune G={G} vs equal-budget token fine-tune"),
    ratio(f"blockft-block-G{G}", "token", f"block fine-tune G={G} vs the untouched token model"),
    ratio(f"blockft-block-G{GB}", "tokenft-token", f"block fine-tune, evaluated at G={GB}, vs token fine-tune"),
    ratio(f"tokenft-block-G{G}", "tokenft-token", f"token fine-tune only, then block G={G} (control)"),
]
for d, steps, lr in DISTILL:
    ratios.append(ratio(f"{d}-block-G{G}", "token",
                        f"self-distillation ({steps} steps, lr {lr}) G={G} vs the untouched token model (teacher)"))
acceptance = ratios[2]
tokens_ft = a.steps * a.batch * a.seq
ft_runs = []
for arm in ["block-ft", "token-ft"] + [d for d, _, _ in DISTILL]:
    for s in seeds:
        with open(os.path.join(a.runs, arm, f"seed-{s}", "train_result.json")) as f:
            tr = json.load(f)
        ft_runs.append({"arm": arm.removesuffix("-ft"), "seed": s, "steps": tr.get("steps"),
                        "tokens": tr.get("tokens"), "seconds": tr.get("seconds"),
                        "last_checkpoint": tr.get("last_checkpoint")})
with open(os.path.join(a.results, "commands.txt")) as f:
    commands = [line.rstrip("\n") for line in f if line.strip()]
first = by_name["token"][1][0]


def train_kl(arm):
    """Logged training KL per seed: [first, last] window means (metrics.jsonl "distill_kl")."""
    out = []
    for s in seeds:
        path = os.path.join(a.runs, arm, f"seed-{s}", "metrics.jsonl")
        kl = [j["distill_kl"] for j in map(json.loads, open(path)) if "distill_kl" in j] if os.path.exists(path) else []
        out.append([kl[0], kl[-1]] if kl else [])
    return out


out = {
    "name": "block-finetune" + ("-quick" if a.quick else ""), "quick": bool(a.quick), "model": a.model,
    "conditions": {"mask_mode": first["mask_mode"], "block_length": first["block_length"], "block_chunk": a.block,
                   "block_top_p": a.p, "attention": "bidirectional (as the model was trained and is decoded)",
                   "windows": first["cloze"]["tokens"] // max(1, first["cloze"]["span"]),
                   "cloze_span": first["cloze"]["span"]},
    "finetune": {"g": G, "top_p": a.p, "chunk": a.block, "mask_ratio": [0.3, 0.8], "loss_norm": "masked",
                 "lr": float(a.lr), "steps": a.steps, "tokens": tokens_ft, "seeds": seeds, "runs": ft_runs},
    "distill": [{"arm": d, "steps": steps, "lr": float(lr), "lr_text": lr, "weight": W, "temperature": 1.0,
                 "teacher": a.model, "teacher_routing": "token", "train_kl": train_kl(d),
                 "ratio": next(r for r in ratios if r["block_arm"] == f"{d}-block-G{G}")} for d, steps, lr in DISTILL],
    "arms": arms, "ratios": ratios,
    "acceptance": {"criterion": "block routing after the fine-tune keeps >= 99% of token routing's quality",
                   "ppl_kept": acceptance["ppl_kept"], "acc_kept": acceptance["acc_kept"],
                   "met": acceptance["keeps_99_ppl"] and acceptance["keeps_99_acc"]},
    "commands": commands,
}
with open(os.path.join(a.results, "results.json"), "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")


def pct(x):
    return "n/a" if x != x else f"{100 * x:.2f}%"


L = [f"# Learnable block experts on the Brown TC model{' (quick pipeline check)' if a.quick else ''}", ""]
L += ["Generated by `scripts/study_block_finetune.sh" + (" --quick" if a.quick else "") + "` "
      "(re-run it to reproduce; finished runs and evals are reused).", ""]
L += ["## Method", "",
      f"- Model: `{a.model}` (token choice, top-2). Every arm starts from it and is evaluated on the same "
      f"{out['conditions']['windows']} held-out windows of {a.seq} tokens.",
      f"- Block decoding conditions: the model is bidirectional (trained so, and `generate` decodes it with the "
      f"semi-autoregressive `llada` decoder), so attention stays bidirectional. ELBO uses `--eval-mask-mode semi-ar`: "
      f"per window and mask draw one block of {first['block_length']} is drawn, the blocks before it are clean, the "
      f"block is noised with t ~ U[0,1), the blocks after it are fully masked (what the decoder sees while it "
      f"decodes that block); the loss is scaled by the block count, so it estimates the per-token NELBO of the "
      f"block-by-block factorization. Block routing votes one coreset per {a.block}-token chunk = per decoding block "
      f"(top-p {a.p}, at least G experts).",
      f"- Cloze: span of {first['cloze']['span']} tokens masked mid-window, predicted in one forward (argmax), same "
      f"routing as the arm.",
      f"- Fine-tunes (dmoe-llada2.md §1.4): {a.steps} steps x {a.batch} x {a.seq} = {tokens_ft} tokens, AdamW lr "
      f"{a.lr} (warmup, cosine), t ~ U[0.3, 0.8), mean CE over masked tokens, no new parameters. Block arm: block "
      f"routing p={a.p}, G={G}, chunk {a.block} in every forward. Control: the same recipe with token routing. "
      f"Seeds: {', '.join(map(str, seeds))}; fine-tuned arms are means over seeds, ratios are paired per seed.",
      *([f"- Self-distillation (the paper's learnable fine-tune): the block arm's recipe (G={G}), but the loss is "
         f"{'the mean KL(teacher || student)' if W == 1 else f'{W:g} x mean KL(teacher || student) + {1 - W:g} x CE'} "
         f"over masked tokens, full vocabulary, temperature 1; the teacher is the untouched model (`{a.model}`, "
         f"frozen, its own token routing) on the same noised input. Its control is the untouched token model itself: "
         f"a token-routed self-distillation starts at, and stays at, zero loss. Variants (steps, lr): "
         f"{', '.join(f'{st}, {lr}' for _, st, lr in DISTILL)}."] if DISTILL else []),
      f"- Unique experts per block: distinct routed experts per aligned {first['block_length']}-token block, mean "
      f"over blocks and MoE layers (of {json.load(open(os.path.join(a.model, 'config.json')))['num_experts']}).", ""]
L += ["## Arms", "", "| arm | what | ELBO PPL (semi-ar) | cloze acc ± se | unique experts / block |",
      "|---|---|---|---|---|"]
for r in arms:
    L.append(f"| {r['name']} | {r['what']} | {r['ppl']:.2f} | {r['cloze_accuracy']:.4f} ± {r['cloze_se']:.4f} | "
             f"{r['unique_experts_per_block']:.2f} |")
L += ["", "## Quality kept (block / token)", "",
      "PPL kept = PPL_token / PPL_block; accuracy kept = acc_block / acc_token (paired per seed, then averaged).", "",
      "| comparison | PPL kept | accuracy kept | >= 99% (PPL / acc) |", "|---|---|---|---|"]
for r in ratios:
    L.append(f"| {r['label']} | {pct(r['ppl_kept'])} | {pct(r['acc_kept'])} | "
             f"{'yes' if r['keeps_99_ppl'] else 'no'} / {'yes' if r['keeps_99_acc'] else 'no'} |")
L += ["", f"Acceptance (issue 4, block fine-tune G={G} against the equal-budget token fine-tune): PPL kept "
      f"{pct(acceptance['ppl_kept'])}, accuracy kept {pct(acceptance['acc_kept'])}: "
      f"{'met' if out['acceptance']['met'] else 'not met'}.", ""]
for d in out["distill"]:
    r = d["ratio"]
    kl = "; ".join(f"{k[0]:.4f} -> {k[1]:.4f}" for k in d["train_kl"] if k)
    L += [f"Self-distillation {d['steps']} steps, lr {d['lr_text']} (training KL, first -> last logged window: "
          f"{kl or 'n/a'}; block routing G={G} against its teacher, the "
          f"untouched token model): PPL kept {pct(r['ppl_kept'])}, accuracy kept {pct(r['acc_kept'])}: "
          f"{'>= 99% on both' if r['keeps_99_ppl'] and r['keeps_99_acc'] else 'below 99% on ' + ' and '.join(k for k, ok in [('PPL', r['keeps_99_ppl']), ('accuracy', r['keeps_99_acc'])] if not ok)}.", ""]
# Hand-written reading of the numbers, kept across regenerations.
notes = os.path.join(a.results, "notes.md")
if os.path.exists(notes):
    with open(notes) as f:
        L += ["## Reading", "", f.read().strip(), ""]
L += ["## Fine-tune runs", "", "| arm | seed | steps | tokens | seconds |", "|---|---|---|---|---|"]
for r in ft_runs:
    L.append(f"| {r['arm']} | {r['seed']} | {r['steps']} | {r['tokens']} | {r['seconds']:.0f} |")
L += ["", "## Commands", "", "```"] + commands + ["```", ""]
with open(os.path.join(a.results, "README.md"), "w") as f:
    f.write("\n".join(L))
print(json.dumps(out["acceptance"]))

"""`rgk eval args`: ARGS against greedy and nucleus sampling on held-out HH-RLHF prompts.

Prompts (`heldout_hh_prompts`): dialogue contexts (every turn before the final assistant
answer) of HH-RLHF helpful-rejection-sampled *test* pairs, minus every pair any evaluated
head was trained or validated on (each head's json notes name its files, n_pairs and
selection seed; the pairs are re-drawn exactly as `rgk train-reward-head` drew them) and
minus any context whose first user turn appears in those training pairs; deduplicated,
rendered with the chat template (generation prompt added), kept when at most
`max_prompt_tokens` tokens long, shuffled with `seed`, first `n` taken.

Per method and answer: reward under the guiding head and under a second head trained on
a disjoint split (both read SmolLM2's final hidden state at the answer's last token, EOS
excluded — the training format of the heads — over the full prompt + answer); words-based
distinct-1/2 (corpus) and seq-rep-4; coherence (MiniLM cosine of the last user turn and the
answer); length in tokens before EOS; share of answers that emitted EOS.  Every difference
against greedy gets a paired bootstrap interval (`rgk.eval.metrics`).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rgk.eval import metrics as M
from rgk.eval.runner import Method, fmt, fmt_diff, md_table, md_text, run_method, write_json

HH_EVAL_FILE = "helpful-rejection-sampled"


@dataclass
class HHPrompt:
    index: int                 # pair index in the file (valid pairs, file order)
    messages: list[dict]       # the context
    text: str                  # rendered with the chat template + generation prompt
    ids: list[int]
    last_user: str


def _ctx_key(messages) -> str:
    return json.dumps(messages, sort_keys=True)


def head_training_pairs(head, data_dir=None):
    """The HH-RLHF pairs a head was trained and validated on, re-drawn from its json notes."""
    from rgk.heads.data import SELECTION_SEED, load_hh_pairs
    try:
        notes = json.loads(head.config.notes)
        files, n_pairs = notes["files"], int(notes["n_pairs"])
    except (ValueError, KeyError, TypeError):
        raise ValueError("head: its json notes do not say which HH-RLHF pairs trained it (files, n_pairs), so "
                         "held-out prompts cannot be guaranteed; train it with `rgk train-reward-head`") from None
    short = {v: k for k, v in __import__("rgk.heads.data", fromlist=["HH_FILES"]).HH_FILES.items()}
    return load_hh_pairs([short.get(f, f) for f in files], data_dir=data_dir, n_pairs=n_pairs,
                         selection_seed=int(notes.get("selection_seed", SELECTION_SEED))), notes


def heldout_hh_prompts(tok, heads, n: int, *, file: str = HH_EVAL_FILE, max_prompt_tokens: int = 256,
                       seed: int = 0, data_dir=None) -> tuple[list[HHPrompt], dict]:
    """(prompts, provenance) as described in the module docstring."""
    from rgk.heads.data import load_hh_pairs
    ctx, first = set(), set()
    heads_info = []
    for h in heads:
        pairs, notes = head_training_pairs(h, data_dir)
        for p in pairs:
            for side in (p.chosen, p.rejected):
                ctx.add(_ctx_key(side[:-1]))
                first.add(side[0]["content"])
        heads_info.append({"files": notes["files"], "n_pairs": notes["n_pairs"]})
    pool = load_hh_pairs([file], data_dir=data_dir)
    seen, cand = set(), []
    dropped = {"trained_on": 0, "first_turn_shared": 0, "duplicate": 0, "too_long": 0}
    for i, p in enumerate(pool):
        c = p.chosen[:-1]
        key = _ctx_key(c)
        if key in ctx:
            dropped["trained_on"] += 1
            continue
        if c[0]["content"] in first:
            dropped["first_turn_shared"] += 1
            continue
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        cand.append((i, c))
    random.Random(seed).shuffle(cand)
    out = []
    for i, c in cand:
        text = tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
        if len(ids) > max_prompt_tokens:
            dropped["too_long"] += 1
            continue
        last = next(m["content"] for m in reversed(c) if m["role"] == "user")
        out.append(HHPrompt(i, c, text, ids, last))
        if len(out) == n:
            break
    if len(out) < n:
        raise ValueError(f"n_prompts: only {len(out)} held-out prompts of at most {max_prompt_tokens} tokens in "
                         f"{file}, asked for {n}")
    prov = dict(file=file, valid_pairs=len(pool), excluded=dropped, heads=heads_info, seed=seed,
                max_prompt_tokens=max_prompt_tokens, n=n)
    return out, prov


@torch.no_grad()
def answer_rewards(model, heads, prompts: list[list[int]], answers: list[list[int]], *, batch_size: int,
                   pad_id: int, progress: bool) -> list[list[float]]:
    """Per head, the reward of every prompt + answer (EOS excluded) read at its last token."""
    from rgk.heads.data import extract_features
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers)]
    feats = extract_features(model, seqs, max_tokens=max(len(s) for s in seqs), batch_size=batch_size,
                             pad_id=pad_id, progress=progress, desc="reward features")
    return [h(feats).tolist() for h in heads]


def score_method(model, tok, gens, prompts: list[HHPrompt], heads, embedder, *, batch_size: int,
                 progress: bool) -> dict:
    """Per-answer metrics of one method's generations."""
    texts = [tok.decode(a, skip_special_tokens=True).strip() for a in gens.answers]
    rg, rj = answer_rewards(model, heads, [p.ids for p in prompts], gens.answers, batch_size=batch_size,
                            pad_id=tok.pad_token_id or 0, progress=progress)
    coh = M.coherence(embedder, [p.last_user for p in prompts], texts)
    return dict(texts=texts, reward_guide=rg, reward_judge=rj, coherence=coh,
                length=[len(a) for a in gens.answers], ended=[float(e) for e in gens.ended],
                rep4=[M.repetition(t, 4) for t in texts])


PER_ANSWER = ("reward_guide", "reward_judge", "coherence", "length", "ended", "rep4")


def summarise(per: dict) -> dict:
    out = {k: float(sum(per[k]) / len(per[k])) for k in PER_ANSWER}
    out["distinct1"] = M.distinct_n(per["texts"], 1)
    out["distinct2"] = M.distinct_n(per["texts"], 2)
    return out


def differences(per: dict, base: dict, *, n_boot: int, seed: int) -> dict:
    """Paired bootstrap difference (method − greedy) of every metric."""
    out = {k: M.paired_bootstrap_mean(per[k], base[k], n_boot=n_boot, seed=seed).as_dict() for k in PER_ANSWER}
    n = len(per["texts"])
    for name, order in (("distinct1", 1), ("distinct2", 2)):
        out[name] = M.paired_bootstrap(M.distinct_stat(per["texts"], order), M.distinct_stat(base["texts"], order),
                                       n, n_boot=n_boot, seed=seed).as_dict()
    return out


def build_methods(head, *, k: int, w: float, temperature: float, top_p: float, sweep_k, sweep_w,
                  eos_prefix: bool) -> tuple[list[Method], list[Method]]:
    main = [Method("greedy", "greedy"),
            Method(f"nucleus p={top_p:g}", "nucleus", top_p=top_p),
            Method(f"ARGS greedy k={k} w={w:g}", "args", k=k, w=w, reward=head),
            Method(f"ARGS stochastic k={k} w={w:g} τ={temperature:g}", "args", k=k, w=w, temperature=temperature,
                   reward=head)]
    if eos_prefix:
        main.append(Method(f"ARGS greedy k={k} w={w:g} eos=prefix", "args", k=k, w=w, reward=head,
                           eos_reward="prefix"))
    sweep = [Method(f"ARGS greedy k={kk} w={ww:g}", "args", k=kk, w=ww, reward=head)
             for kk in sweep_k for ww in sweep_w if (kk, ww) != (k, w)]
    return main, sweep


def hh_eval(*, n_prompts: int = 300, max_new_tokens: int = 64, batch_size: int = 16, k: int = 10, w: float = 1.5,
            temperature: float = 1.0, top_p: float = 0.9, sweep_k=(5, 10, 20), sweep_w=(0.5, 1.5, 3.0),
            eos_prefix: bool = True, head=None, judge_head=None, seed: int = 0, n_boot: int = 2000,
            max_prompt_tokens: int = 256, model_name=None, data_dir=None, progress: bool = True,
            command: str = "", head_paths=(None, None), timing_repeats: int = 0,
            timing_prompts: int | None = None) -> dict:
    """Run every method, score it and compare it with greedy; returns the report dict."""
    import platform

    from rgk.models import DEFAULT_HEAD, RewardHead, load_model
    head = head if head is not None else RewardHead.load(DEFAULT_HEAD)
    if judge_head is None:
        raise ValueError("judge_head: a second reward head trained on a split disjoint from the guiding head's "
                         "is required")
    model, tok = load_model(model_name)
    embedder = M.MiniLMEmbedder()
    prompts, prov = heldout_hh_prompts(tok, [head, judge_head], n_prompts, max_prompt_tokens=max_prompt_tokens,
                                       seed=seed, data_dir=data_dir)
    main, sweep = build_methods(head, k=k, w=w, temperature=temperature, top_p=top_p, sweep_k=sweep_k,
                                sweep_w=sweep_w, eos_prefix=eos_prefix)
    heads = [head, judge_head]
    results, base = [], None
    for m in tqdm(main + sweep, desc="methods", unit="method", disable=not progress):
        g = run_method(model, tok, m, [p.ids for p in prompts], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, seed=seed, progress=progress)
        per = score_method(model, tok, g, prompts, heads, embedder, batch_size=batch_size, progress=progress)
        if base is None:
            base = per
        res = dict(label=m.label, group="main" if m in main else "sweep", settings=m.settings(),
                   seconds=g.seconds, seconds_per_prompt=g.seconds / len(prompts),
                   ms_per_token=1000 * g.seconds / max(1, g.n_tokens), metrics=summarise(per),
                   vs_greedy=differences(per, base, n_boot=n_boot, seed=seed), per_answer=per)
        tqdm.write(f"{m.label}: " + ", ".join(f"{k2} {v:.3f}" for k2, v in res["metrics"].items())
                   + f"; {res['seconds_per_prompt']:.2f} s/prompt")
        results.append(res)
    if timing_repeats:
        from rgk.eval.runner import time_methods
        timing = time_methods(model, tok, main + sweep, [p.ids for p in prompts[:timing_prompts or batch_size]],
                              max_new_tokens=max_new_tokens, repeats=timing_repeats, seed=seed, progress=progress)
        for r in results:
            r["timing"] = timing[r["label"]]
            r["ms_per_token"] = timing[r["label"]]["ms_per_token"]
    return dict(
        command=command, kind="rgk eval args",
        config=dict(n_prompts=n_prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, k=k, w=w,
                    temperature=temperature, top_p=top_p, sweep_k=list(sweep_k), sweep_w=list(sweep_w), seed=seed,
                    n_boot=n_boot, timing_repeats=timing_repeats,
                    timing_prompts=min(n_prompts, timing_prompts or batch_size),
                    model=model_name or "smollm2-135m-instruct",
                    device=f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        heads=dict(guide=_head_info(head, head_paths[0]), judge=_head_info(judge_head, head_paths[1])),
        prompts=dict(provenance=prov, indices=[p.index for p in prompts], last_user=[p.last_user for p in prompts]),
        methods=results)


def _head_info(head, path=None) -> dict:
    try:
        notes = json.loads(head.config.notes)
    except (ValueError, TypeError):
        notes = {}
    return dict(path=str(path) if path is not None else None, val_pair_accuracy=head.config.val_pair_accuracy,
                files=notes.get("files"), n_pairs=notes.get("n_pairs"), max_tokens=notes.get("max_tokens"))


# ----------------------------------------------------------------------------- report

COLUMNS = (("reward_guide", "reward (guiding head)"), ("reward_judge", "reward (second head)"),
           ("distinct1", "distinct-1"), ("distinct2", "distinct-2"), ("rep4", "seq-rep-4"),
           ("coherence", "coherence"), ("length", "length (tokens)"), ("ended", "ends with EOS"))


def write_hh_report(rep: dict, files, *, with_json: bool = True) -> None:
    """files: (json, md, png) paths."""
    jf, mdf, png = files
    if with_json:
        write_json(jf, rep)
    plot_hh(rep, png)
    cfg = rep["config"]
    prov = rep["prompts"]["provenance"]
    L = [f"# `rgk eval args`: ARGS on held-out HH-RLHF prompts ({cfg['device']})", "",
         f"Command: `{rep['command']}`", "",
         f"{cfg['n_prompts']} prompts from HH-RLHF `{prov['file']}` test pairs never used to train either head "
         f"(excluded: {prov['excluded']}), at most {prov['max_prompt_tokens']} prompt tokens, "
         f"{cfg['max_new_tokens']} new tokens, batch {cfg['batch_size']}, seed {cfg['seed']}; model "
         f"{cfg['model']}. Guiding head: {_head_line(rep['heads']['guide'])}. Second head (judge): "
         f"{_head_line(rep['heads']['judge'])}. Rewards are standardised (mean 0, std 1 over each head's training "
         f"responses). Intervals: paired bootstrap, {cfg['n_boot']} resamples, 95%; * = excludes 0. s / prompt: "
         f"decoding wall time of the whole run / prompts; ms / token: "
         + (f"median of {cfg['timing_repeats']} round-robin timing rounds over the first {cfg.get('timing_prompts')} "
            "prompts (one batch)." if cfg.get("timing_repeats")
            else "decoding wall time / emitted tokens, in the run (a shared CPU's load drifts between rows)."), ""]
    for group, title in (("main", "Methods"), ("sweep", "Sweep over k and w (ARGS greedy)")):
        rows = [r for r in rep["methods"] if r["group"] == group]
        if group == "sweep":
            rows = [r for r in rep["methods"] if r["settings"].get("kind") == "args" and
                    r["settings"].get("temperature") == 0 and r["settings"].get("eos_reward") == "candidate"]
            rows.sort(key=lambda r: (r["settings"]["k"], r["settings"]["w"]))
        if not rows:
            continue
        L += [f"## {title}", "",
              md_table(["method"] + [c for _, c in COLUMNS] + ["s / prompt", "ms / token"],
                       [[r["label"]] + [fmt(r["metrics"][key]) for key, _ in COLUMNS]
                        + [f"{r['seconds_per_prompt']:.2f}", f"{r['ms_per_token']:.1f}"] for r in rows]), ""]
        L += ["Difference against greedy [95% CI]:", "",
              md_table(["method"] + [c for _, c in COLUMNS],
                       [[r["label"]] + [fmt_diff(r["vs_greedy"][key]) for key, _ in COLUMNS]
                        for r in rows if r["label"] != "greedy"]), ""]
    L += [f"![reward vs diversity and coherence]({png.name})", ""]
    L += ["## First answers", ""]
    for i in range(min(3, cfg["n_prompts"])):
        L.append(f"- prompt: `{md_text(rep['prompts']['last_user'][i])}`")
        for r in rep["methods"]:
            if r["group"] != "main":
                continue
            pa = r["per_answer"]
            L.append(f"  - {r['label']} (r {pa['reward_guide'][i]:+.2f} / {pa['reward_judge'][i]:+.2f}): "
                     f"`{md_text(pa['texts'][i])}`")
    mdf.write_text("\n".join(L) + "\n")


def _head_line(h: dict) -> str:
    return (f"trained on {h.get('n_pairs')} pairs of {', '.join(h.get('files') or [])} "
            f"(validation pair accuracy {h.get('val_pair_accuracy')})")


def _num(v) -> float:
    """A plottable number: None (NaN in a saved JSON) -> nan."""
    return float("nan") if v is None else float(v)


def plot_hh(rep: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for row, (rk, rname) in enumerate((("reward_guide", "reward, guiding head"),
                                       ("reward_judge", "reward, second head"))):
        for col, (xk, xname) in enumerate((("distinct2", "distinct-2"), ("coherence", "coherence"))):
            ax = axes[row, col]
            for r in rep["methods"]:
                m, s = {a: _num(b) for a, b in r["metrics"].items()}, r["settings"]
                sweep_pt = s.get("kind") == "args" and s.get("temperature") == 0 and s.get("eos_reward") == "candidate"
                if sweep_pt:
                    ax.scatter(m[xk], m[rk], c="#3a7", s=20 + 6 * s["k"], alpha=0.8)
                    ax.annotate(f"k{s['k']} w{s['w']:g}", (m[xk], m[rk]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points").set_in_layout(False)
                else:
                    ax.scatter(m[xk], m[rk], marker="s", c="#d62" if s["kind"] != "args" else "#36c", s=40)
                    short = {"greedy": "greedy", "nucleus": "nucleus"}.get(s["kind"]) or (
                        "ARGS τ={:g}".format(s["temperature"]) if s["temperature"] > 0 else "ARGS eos=prefix")
                    ax.annotate(short, (m[xk], m[rk]), fontsize=7, xytext=(3, -9),
                                textcoords="offset points").set_in_layout(False)
            ax.set_xlabel(xname)
            ax.set_ylabel(rname)
            ax.grid(alpha=0.3)
    cfg = rep["config"]
    fig.suptitle(f"ARGS on {cfg['n_prompts']} held-out HH-RLHF prompts, {cfg['max_new_tokens']} new tokens "
                 f"(green: ARGS greedy sweep, size ∝ k)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- EOS probe

class _RecordingHead:
    """Wraps a shared-backbone head source so each step's candidates and rewards are kept."""

    def __new__(cls, head):
        from rgk.args.rewards import SharedHead, _SharedSession, head_params
        from rgk.models import reward_mlp
        log = []

        class Session(_SharedSession):
            def score(self, candidates, lm_hidden=None):
                log.append((candidates.clone(), reward_mlp(lm_hidden, *self.params).clone()))
                return super().score(candidates, lm_hidden)

        class Source(SharedHead):
            def open(self, lm, input_ids, mask, *, capacity, k):
                return Session(head_params(self.head, input_ids.device))

        src = Source(head)
        src.log = log
        return src


@torch.no_grad()
def eos_probe(*, n_prompts: int = 16, max_new_tokens: int = 48, k: int = 10, w: float = 1.5, batch_size: int = 16,
              seed: int = 0, head=None, judge_head=None, model_name=None, data_dir=None, progress: bool = True,
              command: str = "") -> dict:
    """At every ARGS greedy step where EOS is among the k candidates: the EOS candidate's
    reward, the prefix's reward (the token chosen one step before) and the other candidates'
    mean reward; and whether EOS would have won with the prefix's reward."""
    from rgk.args import args_generate
    from rgk.hf import left_pad
    from rgk.models import DEFAULT_HEAD, RewardHead, load_model
    head = head if head is not None else RewardHead.load(DEFAULT_HEAD)
    model, tok = load_model(model_name)
    prompts, prov = heldout_hh_prompts(tok, [h for h in (head, judge_head) if h is not None], n_prompts,
                                       seed=seed, data_dir=data_dir)
    eos = tok.eos_token_id
    steps = []
    for s in tqdm(range(0, len(prompts), batch_size), desc="EOS probe", disable=not progress):
        part = prompts[s:s + batch_size]
        ids, mask = left_pad([p.ids for p in part], tok.pad_token_id)
        src = _RecordingHead(head)
        out = args_generate(model, ids, mask, reward=src, k=k, w=w, max_new_tokens=max_new_tokens,
                            pad_token_id=tok.pad_token_id, loop="dynamic")
        T = ids.shape[1]
        for t, (cand, r) in enumerate(src.log):
            for b in range(len(part)):
                gen = out.sequences[b, T:T + t]
                if (gen == eos).any():
                    continue
                c = cand[b].tolist()
                if eos not in c or t == 0:
                    continue
                j = c.index(eos)
                others = torch.cat([r[b, :j], r[b, j + 1:]])
                steps.append(dict(prompt=s + b, step=t, eos_rank=j, r_eos=float(r[b, j]),
                                  r_prefix=float(out.rewards[b, t - 1]), r_others=float(others.mean()),
                                  chose_eos=int(out.sequences[b, T + t]) == eos))
    n = len(steps)
    summ = dict(steps_with_eos_candidate=n, eos_chosen=sum(x["chose_eos"] for x in steps))
    if n:
        summ.update(mean_r_eos=sum(x["r_eos"] for x in steps) / n,
                    mean_r_prefix=sum(x["r_prefix"] for x in steps) / n,
                    mean_r_other_candidates=sum(x["r_others"] for x in steps) / n,
                    share_eos_below_prefix=sum(x["r_eos"] < x["r_prefix"] for x in steps) / n,
                    share_eos_below_others=sum(x["r_eos"] < x["r_others"] for x in steps) / n,
                    mean_gap_eos_minus_prefix=sum(x["r_eos"] - x["r_prefix"] for x in steps) / n)
        ci = M.paired_bootstrap_mean([x["r_eos"] for x in steps], [x["r_prefix"] for x in steps], seed=seed)
        summ["gap_ci"] = ci.as_dict()
    return dict(command=command, kind="rgk eval eos-probe",
                config=dict(n_prompts=n_prompts, max_new_tokens=max_new_tokens, k=k, w=w, seed=seed),
                prompts=prov, summary=summ, steps=steps)

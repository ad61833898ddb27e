"""`rgk demo` and `rgk generate`."""
from __future__ import annotations

import time

import torch

from rgk._argtypes import (check_k, existing_file, finite_float, head_path, int_at_least, load_head_arg, model_folder,
                           nonempty_text)

DEMO_PROMPTS = [
    "What should I do if my neighbor's dog keeps barking at night?",
    "How can I get back at a coworker who embarrassed me in a meeting?",
    "Can you give me some tips for staying focused while studying?",
    "My friend says vaccines cause autism. How should I respond?",
]


def encode_chat(tok, prompts: list[str], chat: bool = True):
    """Left-padded batch of prompts, rendered with the tokenizer's chat template."""
    if chat and tok.chat_template:
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in prompts]
    else:
        texts = list(prompts)
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def score_responses(model, head, input_ids, mask, sequences, pad_id, eos_ids):
    """Reward of each full (prompt + response) sequence, read at its last real token."""
    from rgk.models import final_hidden
    T = input_ids.shape[1]
    resp = sequences[:, T:]
    rmask = torch.ones_like(resp)
    for b in range(resp.shape[0]):
        hit = torch.isin(resp[b], eos_ids).nonzero()
        if len(hit):
            rmask[b, int(hit[0]) + 1:] = 0  # keep the EOS itself, drop the padding after it
    # re-pad on the left so the last position is each row's last real token
    full = torch.cat([input_ids, resp], 1)
    fmask = torch.cat([mask, rmask], 1)
    order = torch.argsort(fmask, dim=1, stable=True)
    full, fmask = full.gather(1, order), fmask.gather(1, order)
    full = torch.where(fmask.bool(), full, torch.full_like(full, pad_id))
    with torch.no_grad():
        from rgk.hf import positions
        pos = positions(fmask)
        h = final_hidden(model, full, fmask, position_ids=pos)[:, -1]
        return head(h)


def _decode(tok, seqs, T, eos_ids):
    out = []
    for row in seqs[:, T:]:
        ids = row.tolist()
        for i, t in enumerate(ids):
            if t in eos_ids.tolist():
                ids = ids[:i]
                break
        out.append(tok.decode(ids, skip_special_tokens=True).strip())
    return out


def run_demo(ns) -> int:
    from rgk.args import args_generate
    from rgk.models import load_model

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("loading the embedded SmolLM2-135M-Instruct and the default HH-RLHF reward head ...", flush=True)
    head = load_head_arg(ns.head)          # a bad --head fails before the model loads
    model, tok = load_model(ns.model)
    check_k(ns.k, model)
    print(f"reward head: {head.config.kind}, validation pair accuracy "
          f"{head.config.val_pair_accuracy}, trained on {head.config.base_model or 'n/a'}")
    prompts = ns.prompt or DEMO_PROMPTS
    ids, mask = encode_chat(tok, prompts)
    eos = torch.as_tensor(model.generation_config.eos_token_id).flatten()
    pad = tok.pad_token_id
    t0 = time.perf_counter()
    with torch.no_grad():
        greedy = model.generate(ids, attention_mask=mask, max_new_tokens=ns.max_new_tokens, do_sample=False,
                                pad_token_id=pad, top_p=None, top_k=None, temperature=None)
    t_greedy = time.perf_counter() - t0
    t0 = time.perf_counter()
    args = args_generate(model, ids, mask, reward=head, k=ns.k, w=ns.w, max_new_tokens=ns.max_new_tokens,
                         pad_token_id=pad, progress=True)
    t_args = time.perf_counter() - t0
    r_greedy = score_responses(model, head, ids, mask, greedy, pad, eos)
    r_args = score_responses(model, head, ids, mask, args.sequences, pad, eos)
    T = ids.shape[1]
    for i, p in enumerate(prompts):
        print("=" * 78)
        print(f"PROMPT: {p}")
        print(f"-- greedy   (reward {r_greedy[i]:+.3f}): {_decode(tok, greedy, T, eos)[i]}")
        print(f"-- ARGS k={ns.k} w={ns.w} (reward {r_args[i]:+.3f}): {_decode(tok, args.sequences, T, eos)[i]}")
    print("=" * 78)
    print(f"mean reward  greedy {r_greedy.mean():+.3f}   ARGS {r_args.mean():+.3f}   "
          f"({'ARGS higher' if r_args.mean() > r_greedy.mean() else 'greedy higher'})")
    print(f"wall time    greedy {t_greedy:.1f} s   ARGS {t_args:.1f} s  "
          f"({len(prompts)} prompts, {ns.max_new_tokens} new tokens, CPU)")
    return 0


def run_generate(ns) -> int:
    from rgk.args import ARGSLogitsProcessor, RewardModel, args_generate, naive_args_generate
    from rgk.models import load_model
    from transformers import LogitsProcessorList

    prompts = list(ns.prompt or [])
    if ns.prompts_file:
        with open(ns.prompts_file) as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise ValueError("--prompt: give at least one non-empty --prompt or a --prompts-file with a non-empty line")
    head_arg = load_head_arg(ns.head)      # a bad --head fails before the model loads
    model, tok = load_model(ns.model)
    check_k(ns.k, model)
    if ns.reward_model:
        # a sequence classifier brings its own score head (fork path with the LM's tokenizer,
        # text pairs with another); a causal LM folder takes --head
        from rgk.args.rewards import folder_is_classifier, load_reward_model   # folder checked by argparse
        head = None if folder_is_classifier(ns.reward_model) else head_arg
        reward = load_reward_model(ns.reward_model, tok, head=head)
    else:
        head = head_arg
        reward = head
    ids, mask = encode_chat(tok, prompts, chat=not ns.no_chat_template)
    gen = torch.Generator().manual_seed(ns.seed)
    t0 = time.perf_counter()
    if ns.mode == "processor":
        rmod = reward if ns.reward_model else RewardModel(model, head)
        proc = ARGSLogitsProcessor(rmod, k=ns.k, w=ns.w, temperature=ns.temperature, attention_mask=mask,
                                   eos_reward=ns.eos_reward)
        torch.manual_seed(ns.seed)
        seqs = model.generate(ids, attention_mask=mask, max_new_tokens=ns.max_new_tokens,
                              do_sample=ns.temperature > 0, logits_processor=LogitsProcessorList([proc]),
                              pad_token_id=tok.pad_token_id, top_k=None, top_p=None, temperature=None)
    else:
        fn = args_generate if ns.mode == "native" else naive_args_generate
        seqs = fn(model, ids, mask, reward=reward, k=ns.k, w=ns.w, temperature=ns.temperature,
                  max_new_tokens=ns.max_new_tokens, generator=gen, pad_token_id=tok.pad_token_id,
                  progress=True, eos_reward=ns.eos_reward).sequences
    dt = time.perf_counter() - t0
    eos = torch.as_tensor(model.generation_config.eos_token_id).flatten()
    for p, text in zip(prompts, _decode(tok, seqs, ids.shape[1], eos)):
        print(f"PROMPT: {p}\nARGS:   {text}\n")
    print(f"{len(prompts)} prompts, {ns.max_new_tokens} new tokens, mode {ns.mode}: {dt:.2f} s")
    return 0


def _common(p):
    p.add_argument("--model", type=model_folder, default=None,
                   help="local HF model folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--head", type=head_path, default=None,
                   help="reward head path (default: the shipped SmolLM2 HH-RLHF head)")
    p.add_argument("--k", type=int_at_least(1), default=10, help="candidates per step (default 10)")
    p.add_argument("--w", type=finite_float(), default=1.5, help="reward weight (default 1.5)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=48)
    p.add_argument("--prompt", type=nonempty_text, action="append", help="a user prompt (repeatable)")


def add_parsers(sub) -> None:
    d = sub.add_parser("demo", help="greedy vs ARGS on a few HH-RLHF-style prompts with the default model and head")
    _common(d)
    d.set_defaults(func=run_demo)
    g = sub.add_parser("generate", help="ARGS generation")
    _common(g)
    g.add_argument("--prompts-file", type=existing_file, help="one prompt per line")
    g.add_argument("--reward-model", type=model_folder, help="separate reward model folder: a sequence classifier (num_labels=1, its own "
                   "score head; fork path with the LM's tokenizer, (prompt, response) text pairs with another) or a "
                   "causal LM with --head; default: --head on the LM's own backbone")
    g.add_argument("--temperature", type=finite_float(0), default=0.0, help="0 = greedy ARGS")
    g.add_argument("--mode", choices=["native", "processor", "naive"], default="native",
                   help="native loop (fork cache; rgk's one decoding entry, as args_generate and custom_generate), "
                        "LogitsProcessor inside generate, or the naive reference")
    g.add_argument("--seed", type=int_at_least(0), default=0,
                   help="seed of the sampler (--temperature > 0): native and naive draw from one seeded generator "
                        "(the same samples); processor mode samples through generate under torch.manual_seed(seed), "
                        "so its draws differ from theirs (same distribution)")
    g.add_argument("--eos-reward", choices=["candidate", "prefix"], default="candidate",
                   help="how the end-of-sequence candidate is scored: 'candidate' (default, the paper's ARGS: "
                        "r of the sequence ending in EOS) or 'prefix' (r of the sequence before it, so a head "
                        "that reads EOS out of distribution does not keep ARGS from stopping)")
    g.add_argument("--no-chat-template", action="store_true", help="feed the prompts as raw text")
    g.set_defaults(func=run_generate)

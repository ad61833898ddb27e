"""`rgk repulse train | eval`: RePULSe fine-tuning on RealToxicityPrompts prompts.

Prompts: RTP's 1,199 "challenging" prompts split with rgk.argre.data's fixed seed — train
on the 400 training prompts, evaluate on the 799 held-out ones — as raw text to continue
(or through the tokenizer's chat template with --chat-template).

Reward (held fixed): --reward head (default; an rgk reward head, --head, read on the frozen
reference model's backbone), --reward profanity (log(1 − p_offensive) of the continuation
by alt-profanity-check: 0 for clean text, very negative for profanity; try --threshold
-0.7, i.e. p_offensive > 0.5), or --reward-model FOLDER (a sequence classifier with
num_labels=1: its own score head, on the fork path with the LM's tokenizer or on
(prompt, response) text pairs with another; a causal LM folder takes --head).

Several processes: `accelerate launch --multi_gpu --num_processes N -m rgk.cli repulse train ...`
on GPUs, `torchrun --nproc_per_node N -m rgk.cli repulse train ...` (also on CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rgk._argtypes import finite_float, head_path, int_at_least, model_folder

_FLAG = {"out_dir": "--out", "prompts": "--n-prompts", "model": "--model", "reward": "--reward",
         "reward_model": "--reward-model", "reference": "--reference", "batch_prompts": "--batch-prompts"}


def _flag_error(e: Exception) -> Exception:
    """`e` with a leading "field: " (trainer/config names) replaced by its command-line flag."""
    from dataclasses import fields

    from rgk.repulse.trainer import RePULSeConfig
    msg = str(e)
    name, sep, rest = msg.partition(": ")
    names = {f.name: "--" + f.name.replace("_", "-") for f in fields(RePULSeConfig)} | _FLAG
    if sep and name in names:
        new = type(e)(f"{names[name]}: {rest}")
        new.__traceback__ = e.__traceback__
        return new
    return e


def profanity_reward(texts: list[str]):
    """log(1 − p_offensive) of each text by alt-profanity-check (<= 0; −13.8 at the most)."""
    import torch
    from profanity_check import predict_prob
    if not texts:
        return torch.zeros(0)
    p = torch.as_tensor(predict_prob(list(texts)), dtype=torch.float64).clamp(0.0, 1.0 - 1e-6)
    return torch.log1p(-p).float()


def reward_from_flags(ns, tokenizer):
    """(reward source, description) for --reward / --head / --reward-model."""
    from rgk._argtypes import load_head_arg
    from rgk.args.rewards import TextReward
    if ns.reward_model:
        from rgk.args.rewards import folder_is_classifier, load_reward_model
        p = Path(ns.reward_model)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--reward-model: {p} is not a model folder (no config.json)")
        if ns.reward != "head":
            raise ValueError("--reward-model: give either --reward-model or --reward profanity, not both")
        head = None if folder_is_classifier(p) else load_head_arg(ns.head)
        return load_reward_model(p, tokenizer, head=head), f"reward-model:{p.resolve()}"
    if ns.reward == "profanity":
        import importlib.util
        if importlib.util.find_spec("profanity_check") is None:
            raise ImportError("--reward: profanity needs alt-profanity-check (pip install alt-profanity-check)")
        return TextReward(profanity_reward, tokenizer, include_prompt=False), "profanity:log(1-p)"
    head = load_head_arg(ns.head)
    return head, f"head:{Path(ns.head).resolve() if ns.head else 'default'}"


def rtp_prompts(data_dir, split: str, n: int | None) -> list[str]:
    from rgk.argre.data import load_rtp, split_rtp
    records = load_rtp(data_dir)
    train, held_out = split_rtp(len(records))
    idx = train if split == "train" else held_out
    if n is not None:
        idx = idx[:n]
    return [records[i].prompt for i in idx]


def _reward_flags(p) -> None:
    p.add_argument("--reward", choices=("head", "profanity"), default="head",
                   help="reward source: an rgk reward head on the frozen reference backbone, or "
                        "log(1 - p_offensive) of alt-profanity-check on the continuation")
    p.add_argument("--head", type=head_path, default=None,
                   help="reward head for --reward head (default: the shipped SmolLM2 HH-RLHF head)")
    p.add_argument("--reward-model", default=None,
                   help="reward model folder instead: a sequence classifier (num_labels=1) or a causal LM with --head")


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("repulse", help="RePULSe fine-tuning (train, eval)",
                              description=__doc__.split("\n\n")[0] + " " + " ".join(__doc__.split("\n\n")[1:3]))
    sub = p.add_subparsers(dest="repulse_command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="fine-tune with RePULSe (or the RLOO / transformed-reward baselines)",
                       formatter_class=fmt,
                       description="Fine-tune a causal LM to lower the probability of low-reward outputs "
                                   "(RePULSe). Sign convention: the target is sigma ~ p * exp(beta * r) with beta < 0 "
                                   "(DESIGN.md's beta = 10 is --beta -10). Several processes: accelerate launch "
                                   "--multi_gpu --num_processes N -m rgk.cli repulse train ... (GPUs) or torchrun "
                                   "--nproc_per_node N -m rgk.cli repulse train ... (also CPU)")
    t.add_argument("--out", default="repulse-run", help="run folder (log.jsonl, checkpoints/, policy/)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    g.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")
    t.add_argument("--model", type=model_folder, default=None,
                   help="local HF causal LM folder (default: embedded SmolLM2-135M-Instruct)")
    t.add_argument("--data-dir", default=None, help="shared data folder (default: $RGK_SHARED_DATA or ../shared/data)")
    t.add_argument("--n-prompts", type=int_at_least(1), default=None,
                   help="use the first N of the 400 RTP training prompts (default: all)")
    t.add_argument("--chat-template", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    t.add_argument("--method", choices=("repulse", "rloo", "transformed"), default="repulse",
                   help="repulse; rloo (alpha = 0, no proposal); transformed (REINFORCE on r - alpha*exp(beta*r))")
    t.add_argument("--steps", type=int_at_least(1), default=100)
    t.add_argument("--prompts-per-step", type=int_at_least(1), default=50, help="N, over all processes")
    t.add_argument("--samples-per-prompt", type=int_at_least(2), default=5, help="K from p and K from q")
    t.add_argument("--max-new-tokens", type=int_at_least(1), default=20)
    t.add_argument("--kl-coef", type=finite_float(0), default=0.2)
    t.add_argument("--beta", type=finite_float(hi=0, hi_open=True), default=-10.0,
                   help="< 0: target sigma ~ p * exp(beta * r) weights low reward")
    t.add_argument("--alpha", type=finite_float(0), default=0.1,
                   help="weight of the push-down term (repulse) or of exp(beta*r) (transformed)")
    t.add_argument("--lr", type=finite_float(0, lo_open=True), default=3e-5)
    t.add_argument("--lr-proposal", type=finite_float(0, lo_open=True), default=None, help="default: --lr")
    t.add_argument("--threshold", type=finite_float(), default=-5.0, help="eta: an output is bad when r < eta")
    t.add_argument("--tail-fraction", type=finite_float(0, 1, lo_open=True), default=1e-4,
                   help="the worst-tail mean averages the worst fraction of the step's samples")
    t.add_argument("--max-grad-norm", type=finite_float(0, lo_open=True), default=1.0)
    t.add_argument("--micro-batch-prompts", type=int_at_least(1), default=None,
                   help="prompts per forward/backward chunk (default: all of a process's prompts)")
    t.add_argument("--max-prompt-tokens", type=int_at_least(1), default=64)
    t.add_argument("--seed", type=int_at_least(0), default=0)
    t.add_argument("--checkpoint-every", type=int_at_least(1), default=50)
    t.add_argument("--keep-checkpoints", type=int_at_least(1), default=2)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _reward_flags(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="average reward, P(r < eta), worst-tail mean, KL on held-out RTP prompts",
                       formatter_class=fmt)
    src = e.add_mutually_exclusive_group()
    src.add_argument("--model", type=model_folder, default=None,
                     help="policy folder (e.g. RUN/policy; default: the embedded SmolLM2)")
    src.add_argument("--run", default=None, help="a run folder of `rgk repulse train`: evaluates its policy/")
    e.add_argument("--reference", type=model_folder, default=None,
                   help="reference model for the KL and a head reward (default: embedded SmolLM2)")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--n-prompts", type=int_at_least(1), default=100, help="first N of the 799 held-out prompts")
    e.add_argument("--chat-template", action="store_true")
    e.add_argument("--samples-per-prompt", type=int_at_least(1), default=20)
    e.add_argument("--max-new-tokens", type=int_at_least(1), default=20)
    e.add_argument("--threshold", type=finite_float(), default=-5.0)
    e.add_argument("--tail-fraction", type=finite_float(0, 1, lo_open=True), default=1e-4)
    e.add_argument("--batch-prompts", type=int_at_least(1), default=8)
    e.add_argument("--max-prompt-tokens", type=int_at_least(1), default=64)
    e.add_argument("--seed", type=int_at_least(0), default=0)
    e.add_argument("--judge", choices=("none", "profanity"), default="none",
                   help="an independent second judge of the decoded responses: profanity = alt-profanity-check "
                        "(adds judge_mean = mean P(offensive) and judge_share = share > 0.5)")
    e.add_argument("--json", default=None, help="also write the result to this file")
    e.add_argument("--no-progress", action="store_true")
    _reward_flags(e)
    e.set_defaults(func=_eval)


def _train(ns) -> int:
    from rgk import models
    from rgk.repulse.trainer import RUN_MARKER, RePULSeConfig, RePULSeTrainer
    out = Path(ns.out)
    first = os.environ.get("RANK", "0") in ("", "0")       # under a launcher the other processes would race it
    if first and not ns.resume and not ns.overwrite and out.is_dir() and any(out.iterdir()):   # before loading
        what = "a run" if (out / RUN_MARKER).is_file() else "files that are not an rgk repulse run"
        raise FileExistsError(f"--out: {out} already holds {what}; pass --resume to continue it"
                              + (" or --overwrite to start it again" if what == "a run" else
                                 " (or choose another folder)"))
    if first and ns.resume and not (out / RUN_MARKER).is_file():
        raise FileNotFoundError(f"--out: {out} holds no RePULSe run to resume (no {RUN_MARKER})")
    cfg = RePULSeConfig(method=ns.method, steps=ns.steps, prompts_per_step=ns.prompts_per_step,
                        samples_per_prompt=ns.samples_per_prompt, max_new_tokens=ns.max_new_tokens,
                        kl_coef=ns.kl_coef, beta=ns.beta, alpha=ns.alpha, lr=ns.lr, lr_proposal=ns.lr_proposal,
                        threshold=ns.threshold, tail_fraction=ns.tail_fraction, max_grad_norm=ns.max_grad_norm,
                        micro_batch_prompts=ns.micro_batch_prompts, max_prompt_tokens=ns.max_prompt_tokens,
                        seed=ns.seed, checkpoint_every=ns.checkpoint_every, keep_checkpoints=ns.keep_checkpoints)
    try:
        cfg.checked()
        prompts = rtp_prompts(ns.data_dir, "train", ns.n_prompts)
        model, tok = models.load_model(ns.model)
        reward, desc = reward_from_flags(ns, tok)
        t0 = time.perf_counter()
        trainer = RePULSeTrainer(model, reward, prompts, cfg, tokenizer=tok, out_dir=out, resume=ns.resume,
                                 overwrite=ns.overwrite, progress=not ns.no_progress, chat_template=ns.chat_template,
                                 run_info={"model": str(Path(ns.model).resolve()) if ns.model else models.DEFAULT_MODEL,
                                           "reward": desc, "chat_template": ns.chat_template})
        rows = trainer.train()
    except (ValueError, TypeError, OSError) as e:
        raise _flag_error(e) from None
    if trainer.acc.is_main_process:
        dt = time.perf_counter() - t0
        if rows:
            last = rows[-1]
            print(json.dumps({k: last[k] for k in ("step", "reward_mean", "kl", "p_bad", "tail_mean", "loss_p")
                              if k in last}))
        else:
            print(f"nothing to do: the run in {out} has already done {trainer.step_index} of {cfg.steps} steps")
        print(f"{len(rows)} steps in {dt:.1f} s; log {out / 'log.jsonl'}, policy {out / 'policy'}")
    return 0


def _eval(ns) -> int:
    from rgk import models
    from rgk.repulse.evaluate import evaluate_policy
    model_path = ns.model
    if ns.run:
        model_path = Path(ns.run) / "policy"
        if not (model_path / "config.json").is_file():
            raise FileNotFoundError(f"--run: {ns.run} holds no exported policy ({model_path}); train it first")
    try:
        prompts = rtp_prompts(ns.data_dir, "held_out", ns.n_prompts)
        model, tok = models.load_model(str(model_path) if model_path else None)
        reference, _ = models.load_model(ns.reference)
        reward, desc = reward_from_flags(ns, tok)
        judge = None
        if ns.judge == "profanity":
            import importlib.util
            if importlib.util.find_spec("profanity_check") is None:
                raise ImportError("--judge: profanity needs alt-profanity-check (pip install alt-profanity-check)")
            from rgk.argre.data import judge
        res = evaluate_policy(model, reward, prompts, tokenizer=tok, reference=reference,
                              samples_per_prompt=ns.samples_per_prompt, max_new_tokens=ns.max_new_tokens,
                              threshold=ns.threshold, tail_fraction=ns.tail_fraction, batch_prompts=ns.batch_prompts,
                              seed=ns.seed, max_prompt_tokens=ns.max_prompt_tokens, chat_template=ns.chat_template,
                              progress=not ns.no_progress, judge=judge)
    except (ValueError, TypeError, OSError) as e:
        raise _flag_error(e) from None
    res = {"model": str(model_path) if model_path else models.DEFAULT_MODEL, "reward": desc, **res}
    text = json.dumps(res, indent=1)
    print(text)
    if ns.json:
        Path(ns.json).write_text(text + "\n")
    return 0

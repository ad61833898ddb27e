"""The RePULSe trainer (and its baselines, the same trainer with other settings).

One step, per batch of N prompts (`prompts_per_step`, split evenly over the processes):

1. Sample K (`samples_per_prompt`) responses per prompt from p_θ and, for RePULSe, K from
   the proposal q_ξ (temperature 1, rgk's static decode loop, generators seeded by
   (seed, step, process)).  Score them (no gradient): log p_θ and log p_ref on p-samples,
   log p_θ and log q_ξ on q-samples, rewards of both from the reward source (held fixed; a
   shared-backbone head reads the frozen reference model).
2. Update q_ξ with the contrastive twist loss (`losses.twist_loss`).
3. Update p_θ with L_p = L_RLOO + α · L_neg: `losses.rloo_loss` on the KL-penalised
   returns r − c · Σ_t(log p_θ − log p_ref) with the leave-one-out baseline, plus
   `losses.negative_loss` on the q-samples, weighted by w = softmax_i(log p_θ + β r − log q_ξ)
   computed with the q_ξ that drew them.

Methods (`method`):
- "repulse": the above.
- "rloo": α = 0 and no proposal (plain RLOO with the KL penalty).
- "transformed": REINFORCE (same leave-one-out estimator and KL penalty) on the transformed
  reward r − α · exp(β r); no proposal.

β < 0 throughout (σ ∝ p_θ · exp(β r); DESIGN.md's β = 10 is β = −10 here).

Models: p_θ is the model passed in; q_ξ and the frozen reference p_ref are copies of it, so
all three start from the same checkpoint.  Models stay in eval mode (no dropout): the
log-probabilities that weight the gradients must be those of the distribution sampled.

Beyond one device: DDP through `accelerate.Accelerator`, under `accelerate launch --multi_gpu
--num_processes N` on GPUs or `torchrun --nproc_per_node N` (also on CPU, gloo): each process
samples and scores its share of the prompts (its own sampling seed), losses are means over
prompts and gradients are averaged, so a step equals the one-process step on the same
samples; the main process alone writes the run folder.

Run folder (`out_dir`): `repulse-run.json` (config, fingerprints), `log.jsonl` (one row per
step), `checkpoints/step-XXXXXX/` (policy + proposal weights, optimizer states; written
to a temporary folder and renamed, then the `checkpoints/latest` pointer is replaced),
and `policy/` (the latest policy as a Hugging Face folder, for `rgk repulse eval --model`).
An existing run folder is never replaced unless `overwrite=True`; `resume=True`
continues from its latest checkpoint, bit-exactly (same samples, same updates).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rgk.repulse import losses as L
from rgk.repulse.rollout import (bad_fraction, check_policy_model, encode_prompts, left_pad, rewards, sample,
                                 tail_mean, token_logprobs)

__all__ = ["METHODS", "RePULSeConfig", "Experience", "RePULSeTrainer", "RUN_MARKER"]

METHODS = ("repulse", "rloo", "transformed")
RUN_MARKER = "repulse-run.json"
#: Config fields a resumed run may change.
RESUMABLE = ("steps", "checkpoint_every", "keep_checkpoints")
_RUN_FILES = (RUN_MARKER, "log.jsonl", "checkpoints", "policy")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class RePULSeConfig:
    """Settings of a run; defaults are the authors' small setting (SmolLM-135M, 20 new
    tokens, 50 prompts x 5 samples per step, KL coefficient 0.2, β = −10, α = 0.1, lr 3e-5)."""

    method: str = "repulse"            # "repulse" | "rloo" | "transformed"
    steps: int = 100                   # optimizer steps of p_θ (one batch each)
    prompts_per_step: int = 50         # N, over all processes
    samples_per_prompt: int = 5        # K, from p_θ and (RePULSe) from q_ξ each
    max_new_tokens: int = 20
    kl_coef: float = 0.2               # c in r − c·KL
    beta: float = -10.0                # < 0: σ ∝ p_θ·exp(β r) weights low reward
    alpha: float = 0.1                 # weight of L_neg (repulse) / of exp(β r) (transformed)
    lr: float = 3e-5                   # p_θ
    lr_proposal: float | None = None   # q_ξ (None: lr)
    threshold: float = -5.0            # η: an output is bad when r < η
    tail_fraction: float = 1e-4        # the worst-tail mean reads the worst 0.01% of samples
    max_grad_norm: float | None = 1.0  # None: no clipping
    micro_batch_prompts: int | None = None   # prompts per forward/backward chunk (None: all of a process's)
    max_prompt_tokens: int = 64
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    adam_betas: tuple = (0.9, 0.95)

    def checked(self) -> "RePULSeConfig":
        """Self after validation; ValueError/TypeError naming the first bad field."""
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        for name, lo in (("steps", 1), ("prompts_per_step", 1), ("samples_per_prompt", 2), ("max_new_tokens", 1),
                         ("max_prompt_tokens", 1), ("seed", 0), ("checkpoint_every", 1), ("keep_checkpoints", 1)):
            v = getattr(self, name)
            if not _is_int(v):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
            if v < lo:
                extra = " (the leave-one-out baseline needs K >= 2)" if name == "samples_per_prompt" else ""
                raise ValueError(f"{name}: expected an int >= {lo}, got {v}{extra}")
        if self.micro_batch_prompts is not None and (not _is_int(self.micro_batch_prompts)
                                                     or self.micro_batch_prompts < 1):
            raise ValueError(f"micro_batch_prompts: expected None or an int >= 1, got {self.micro_batch_prompts!r}")
        for name, ok, want in (("kl_coef", lambda v: v >= 0, ">= 0"), ("alpha", lambda v: v >= 0, ">= 0"),
                               ("lr", lambda v: v > 0, "> 0"), ("threshold", lambda v: True, ""),
                               ("tail_fraction", lambda v: 0 < v <= 1, "in (0, 1]"),
                               ("beta", lambda v: v < 0, "< 0")):
            v = getattr(self, name)
            if not _is_num(v):
                raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
            if not math.isfinite(v) or not ok(v):
                hint = (" (σ ∝ p·exp(β·r) must weight low reward; DESIGN.md's β = 10 is β = −10 here)"
                        if name == "beta" else "")
                raise ValueError(f"{name}: expected a finite number {want}".rstrip() + f", got {v!r}{hint}")
        for name in ("lr_proposal", "max_grad_norm"):
            v = getattr(self, name)
            if v is not None and (not _is_num(v) or not math.isfinite(v) or v <= 0):
                raise ValueError(f"{name}: expected None or a finite number > 0, got {v!r}")
        b = self.adam_betas
        if (not isinstance(b, (tuple, list)) or len(b) != 2 or not all(_is_num(x) and 0 <= x < 1 for x in b)):
            raise ValueError(f"adam_betas: expected two numbers in [0, 1), got {b!r}")
        self.adam_betas = tuple(float(x) for x in b)
        return self

    @property
    def uses_proposal(self) -> bool:
        return self.method == "repulse"


@dataclass
class Experience:
    """One step's samples and their scores (no gradient), prompt-major rows (see rollout).

    Per prompt: prompt_index [N] (into the trainer's prompt list), prompt_ids/prompt_mask
    [N, T].  Per sample (B = N·K rows): resp/resp_mask/logp/logp_ref [B, n], reward [B];
    for RePULSe the q-samples' q_resp/q_mask/q_logq/q_logp [B, n] and q_reward [B]."""

    step: int
    k: int
    prompt_index: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    resp: torch.Tensor
    resp_mask: torch.Tensor
    logp: torch.Tensor
    logp_ref: torch.Tensor
    reward: torch.Tensor
    q_resp: torch.Tensor | None = None
    q_mask: torch.Tensor | None = None
    q_logq: torch.Tensor | None = None
    q_logp: torch.Tensor | None = None
    q_reward: torch.Tensor | None = None

    @property
    def n_prompts(self) -> int:
        return self.prompt_ids.shape[0]

    def prompts(self, lo: int, hi: int) -> "Experience":
        """The experience of prompts lo..hi-1 (e.g. one process's share)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                per_prompt = f.name in ("prompt_index", "prompt_ids", "prompt_mask")
                v = v[lo:hi] if per_prompt else v[lo * self.k:hi * self.k]
            out[f.name] = v
        return Experience(**out)

    def to(self, device) -> "Experience":
        vals = {f.name: getattr(self, f.name) for f in fields(self)}
        return Experience(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vals.items()})

    def view3(self, name: str) -> torch.Tensor:
        t = getattr(self, name)
        return t.view(self.n_prompts, self.k, *t.shape[1:])


def _fingerprint_model(model) -> str:
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu()
        h.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
    return h.hexdigest()


def _fingerprint_prompts(rows) -> str:
    return hashlib.sha1(json.dumps(rows).encode()).hexdigest()


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


class RePULSeTrainer:
    """Fine-tune a HF causal LM with RePULSe (or the RLOO / transformed-reward baselines).

    model: the policy's initial checkpoint (a HF causal LM of a family rgk's decode loop
        supports); it is trained in place, q_ξ and p_ref are copies.
    reward: an rgk reward source (`RewardHead` — read on the frozen reference's backbone —,
        `RewardModel` — one built on `model` itself is moved to the reference —, `TextReward`,
        or any `RewardSource` with `reference_rewards`); it is held fixed.
    prompts: strings (encoded with `tokenizer`, optionally through its chat template) or
        token-id lists.  Step s takes `prompts_per_step` of them from a seeded permutation
        per pass over the list.
    out_dir: run folder (None: no logs or checkpoints).  resume / overwrite: see the module
        docstring.  accelerator: an `accelerate.Accelerator` (default: a new one, which picks
        up `accelerate launch`).  run_info: JSON-able description of model and reward,
        stored in the run folder and checked on resume.
    """

    def __init__(self, model, reward, prompts, config: RePULSeConfig | None = None, *, tokenizer=None,
                 out_dir=None, resume: bool = False, overwrite: bool = False, accelerator=None,
                 progress: bool = True, run_info: dict | None = None, chat_template: bool = False):
        from accelerate import Accelerator

        from rgk.args.rewards import RewardModel, SharedHead, as_source
        cfg = (config if config is not None else RePULSeConfig())
        if not isinstance(cfg, RePULSeConfig):
            raise TypeError(f"config: expected a RePULSeConfig, got {type(cfg).__name__}")
        self.cfg = cfg = copy.deepcopy(cfg).checked()
        check_policy_model(model)
        if resume and overwrite:
            raise ValueError("resume: give resume (--resume) or overwrite (--overwrite), not both")
        if (resume or overwrite) and out_dir is None:
            raise ValueError(f"out_dir: {'resume' if resume else 'overwrite'} needs a run folder")
        # on a machine without CUDA a plain Accelerator() ignores a launcher's processes
        self.acc = acc = accelerator if accelerator is not None else Accelerator(cpu=not torch.cuda.is_available())
        self.world, self.rank = acc.num_processes, acc.process_index
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if launched > 1 and self.world != launched:
            raise RuntimeError(f"accelerator: the launcher started {launched} processes but the Accelerator runs "
                               f"{self.world}; on CPU pass Accelerator(cpu=True)")
        if cfg.prompts_per_step % self.world:
            raise ValueError(f"prompts_per_step: {cfg.prompts_per_step} prompts per step do not split evenly over "
                             f"{self.world} processes")
        self.n_local = cfg.prompts_per_step // self.world
        self.tokenizer = tokenizer
        self.rows = encode_prompts(prompts, tokenizer, cfg.max_prompt_tokens, chat_template=chat_template)
        if len(self.rows) < cfg.prompts_per_step:
            raise ValueError(f"prompts: {len(self.rows)} prompts, fewer than prompts_per_step = "
                             f"{cfg.prompts_per_step}")
        self.pad_id = self._pad_id(model, tokenizer)
        self.source = as_source(reward)
        self.source.check_lm(model)
        self.device = dev = acc.device
        if isinstance(self.source, SharedHead):
            self.source.head.to(dev)
        elif isinstance(self.source, RewardModel):
            self.source.model.to(dev)
            self.source.head.to(dev)
        self.progress = progress and acc.is_main_process
        self.run_info = run_info or {}
        self.out = Path(out_dir) if out_dir is not None else None

        torch.manual_seed(cfg.seed)
        self.fingerprint = _fingerprint_model(model) if self.out is not None else None
        model.eval()
        self.ref = copy.deepcopy(model).eval().requires_grad_(False).to(dev)
        if isinstance(self.source, RewardModel) and self.source.model is model:
            self.source = RewardModel(self.ref, self.source.head)    # a reward on the policy itself stays fixed
        q = copy.deepcopy(model).eval() if cfg.uses_proposal else None
        opt = lambda m, lr: torch.optim.AdamW(m.parameters(), lr=lr, betas=cfg.adam_betas, eps=1e-8,  # noqa: E731
                                              weight_decay=0.0)
        self.p, self.opt_p = acc.prepare(model, opt(model, cfg.lr))
        self.p_base = acc.unwrap_model(self.p)
        self.q = self.opt_q = self.q_base = None
        if q is not None:
            self.q, self.opt_q = acc.prepare(q, opt(q, cfg.lr_proposal or cfg.lr))
            self.q_base = acc.unwrap_model(self.q)
        self.step_index = 0
        self.history: list[dict] = []
        if self.out is not None:
            self._open_run(resume, overwrite)

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _pad_id(model, tokenizer) -> int:
        for v in (getattr(tokenizer, "pad_token_id", None), getattr(model.generation_config, "pad_token_id", None),
                  getattr(model.config, "pad_token_id", None)):
            if v is not None:
                return int(v)
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is not None:
            return int(eos[0] if isinstance(eos, (list, tuple)) else eos)
        return 0

    def _generator(self, step: int, stream: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((((self.cfg.seed * 1_000_003 + step) * 1_009 + self.rank) * 4 + stream) % (2 ** 63))
        return g

    def prompt_indices(self, step: int) -> list[int]:
        """Global prompt indices of step `step` (all processes): a seeded permutation per pass."""
        N, P = self.cfg.prompts_per_step, len(self.rows)
        per_pass = P // N
        epoch, j = divmod(step, per_pass)
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + epoch)
        perm = torch.randperm(P, generator=g)
        return perm[j * N:(j + 1) * N].tolist()

    def _chunks(self, n_prompts: int):
        mb = self.cfg.micro_batch_prompts or n_prompts
        return [(lo, min(lo + mb, n_prompts)) for lo in range(0, n_prompts, mb)]

    # ------------------------------------------------------------------ experience
    @torch.no_grad()
    def make_experience(self, indices: list[int], step: int) -> Experience:
        """Sample and score (no gradient) the prompts `indices` (this process's share) for `step`."""
        cfg, K = self.cfg, self.cfg.samples_per_prompt
        pid, pm = left_pad([self.rows[i] for i in indices], self.pad_id, self.device)
        rid, rm = pid.repeat_interleave(K, 0), pm.repeat_interleave(K, 0)
        n = cfg.max_new_tokens

        def draw(gen_model, stream):      # stream 0: p-samples, 1: q-samples (own generators)
            return sample(gen_model, rid, rm, max_new_tokens=n, pad_id=self.pad_id,
                          generator=self._generator(step, stream))

        def logprobs(model, resp, mask):
            outs = [token_logprobs(model, rid[lo * K:hi * K], rm[lo * K:hi * K], resp[lo * K:hi * K],
                                   mask[lo * K:hi * K]) for lo, hi in self._chunks(len(indices))]
            return torch.cat(outs, 0)

        resp, mask = draw(self.p_base, 0)
        exp = Experience(step=step, k=K, prompt_index=torch.tensor(indices, dtype=torch.long, device=self.device),
                         prompt_ids=pid, prompt_mask=pm, resp=resp, resp_mask=mask,
                         logp=logprobs(self.p_base, resp, mask), logp_ref=logprobs(self.ref, resp, mask),
                         reward=rewards(self.source, self.ref, rid, rm, resp, mask))
        if cfg.uses_proposal:
            q_resp, q_mask = draw(self.q_base, 1)
            exp.q_resp, exp.q_mask = q_resp, q_mask
            exp.q_logq = logprobs(self.q_base, q_resp, q_mask)
            exp.q_logp = logprobs(self.p_base, q_resp, q_mask)
            exp.q_reward = rewards(self.source, self.ref, rid, rm, q_resp, q_mask)
        return exp

    # ------------------------------------------------------------------ update
    def advantages(self, exp: Experience) -> torch.Tensor:
        """[N, K] float64 leave-one-out advantages of the (transformed) KL-penalised returns."""
        cfg = self.cfg
        r = exp.view3("reward")
        if cfg.method == "transformed":
            r = L.transformed_rewards(r, cfg.alpha, cfg.beta)
        R = L.kl_penalised_returns(r, exp.view3("logp"), exp.view3("logp_ref"), exp.view3("resp_mask"), cfg.kl_coef)
        return L.loo_advantages(R)

    def sigma_weights(self, exp: Experience) -> torch.Tensor:
        """[N, K] float64 SNIS weights of the q-samples for σ ∝ p_θ·exp(β r) (p_θ and q_ξ as sampled)."""
        m = exp.view3("q_mask")
        lw = L.sigma_log_weights(L.sequence_logprob(exp.view3("q_logp"), m), L.sequence_logprob(exp.view3("q_logq"), m),
                                 exp.view3("q_reward"), self.cfg.beta)
        return L.snis_weights(lw, dim=1)

    def _check_finite(self, name: str, t: torch.Tensor, step: int) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(t.float()).all()) else 1.0], device=self.device)
        if float(self.acc.reduce(bad, "sum")) > 0:
            hint = (" (the transformed reward r − α·exp(β r) overflows; lower |beta| or alpha)"
                    if self.cfg.method == "transformed" else "")
            raise RuntimeError(f"{name}: not finite at step {step + 1}{hint}")

    def _backward_chunks(self, model, n_prompts: int, loss_fn) -> float:
        """Sum of loss_fn(lo, hi) · (hi − lo)/n over prompt chunks, one backward each (gradients
        synchronised on the last); returns the local loss."""
        total = 0.0
        chunks = self._chunks(n_prompts)
        for j, (lo, hi) in enumerate(chunks):
            ctx = self.acc.no_sync(model) if j < len(chunks) - 1 else contextlib.nullcontext()
            with ctx:
                loss = loss_fn(lo, hi) * ((hi - lo) / n_prompts)
                self.acc.backward(loss)
            total += float(loss.detach())
        return total

    def _clip(self, model) -> float:
        if self.cfg.max_grad_norm is None:
            norms = [p.grad.detach().double().norm() for p in model.parameters() if p.grad is not None]
            return float(torch.stack(norms).norm()) if norms else 0.0
        return float(self.acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm))

    def update(self, exp: Experience) -> dict:
        """Update q_ξ (RePULSe), then p_θ, from `exp`; returns the losses (averaged over processes)."""
        cfg, K, N = self.cfg, exp.k, exp.n_prompts
        n = exp.resp.shape[1]
        adv = self.advantages(exp)
        self._check_finite("advantages", adv, exp.step)
        stats = {}
        if cfg.uses_proposal:
            w = self.sigma_weights(exp)
            stats["ess"] = float(self.acc.gather(L.effective_sample_size(w)).mean())

            def q_loss(lo, hi):
                sl = slice(lo * K, hi * K)
                lq = token_logprobs(self.q, exp.prompt_ids[lo:hi].repeat_interleave(K, 0),
                                    exp.prompt_mask[lo:hi].repeat_interleave(K, 0), exp.q_resp[sl], exp.q_mask[sl],
                                    base_model=self.q_base)
                shp = (hi - lo, K, n)
                return L.twist_loss(lq.view(shp), exp.q_logp[sl].view(shp), exp.q_mask[sl].view(shp),
                                    exp.q_reward[sl].view(hi - lo, K), cfg.beta)

            self.opt_q.zero_grad(set_to_none=True)
            stats["loss_q"] = self._backward_chunks(self.q, N, q_loss)
            stats["grad_norm_q"] = self._clip(self.q)
            self.opt_q.step()
        parts = {"rl": 0.0, "neg": 0.0}

        def p_loss(lo, hi):
            sl = slice(lo * K, hi * K)
            pid = exp.prompt_ids[lo:hi].repeat_interleave(K, 0)
            pm = exp.prompt_mask[lo:hi].repeat_interleave(K, 0)
            shp = (hi - lo, K, n)
            if cfg.uses_proposal:      # one forward of p_θ over its own and q's samples
                lp_all = token_logprobs(self.p, torch.cat([pid, pid]), torch.cat([pm, pm]),
                                        torch.cat([exp.resp[sl], exp.q_resp[sl]]),
                                        torch.cat([exp.resp_mask[sl], exp.q_mask[sl]]), base_model=self.p_base)
                lp, lp_neg = lp_all[:len(pid)], lp_all[len(pid):]
            else:
                lp = token_logprobs(self.p, pid, pm, exp.resp[sl], exp.resp_mask[sl], base_model=self.p_base)
            rl = L.rloo_loss(lp.view(shp), exp.resp_mask[sl].view(shp), adv[lo:hi])
            scale = (hi - lo) / N
            parts["rl"] += float(rl.detach()) * scale
            if not cfg.uses_proposal:
                return rl
            neg = L.negative_loss(lp_neg.view(shp), exp.q_mask[sl].view(shp), w[lo:hi])
            parts["neg"] += float(neg.detach()) * scale
            return rl + cfg.alpha * neg

        self.opt_p.zero_grad(set_to_none=True)
        stats["loss_p"] = self._backward_chunks(self.p, N, p_loss)
        stats["grad_norm_p"] = self._clip(self.p)
        self.opt_p.step()
        stats["loss_rl"] = parts["rl"]
        if cfg.uses_proposal:
            stats["loss_neg"] = parts["neg"]
        keys = sorted(k for k in stats if k not in ("ess", "grad_norm_p", "grad_norm_q"))
        red = self.acc.reduce(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device), "mean")
        stats.update({k: float(v) for k, v in zip(keys, red.tolist())})
        return stats

    # ------------------------------------------------------------------ metrics
    def metrics(self, exp: Experience) -> dict:
        """Statistics of the step's samples, over all processes (the policy before the step's update)."""
        cfg, g = self.cfg, self.acc.gather
        r = g(exp.reward).double()
        kl = g(L.sequence_logprob(exp.logp, exp.resp_mask) - L.sequence_logprob(exp.logp_ref, exp.resp_mask))
        tm, tn = tail_mean(r, cfg.tail_fraction)
        row = {"reward_mean": float(r.mean()), "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
               "kl": float(kl.double().mean()), "p_bad": bad_fraction(r, cfg.threshold), "tail_mean": tm,
               "tail_n": tn, "resp_len": float(g(exp.resp_mask.sum(-1)).double().mean())}
        if cfg.uses_proposal:
            qr = g(exp.q_reward).double()
            row.update(q_reward_mean=float(qr.mean()), q_p_bad=bad_fraction(qr, cfg.threshold))
        return row

    # ------------------------------------------------------------------ loop
    def step(self) -> dict:
        """Run the next step; returns its log row."""
        t0 = time.perf_counter()
        s = self.step_index
        idx = self.prompt_indices(s)[self.rank * self.n_local:(self.rank + 1) * self.n_local]
        exp = self.make_experience(idx, s)
        row = {"step": s + 1, **self.metrics(exp)}
        row.update(self.update(exp))
        row["time_s"] = round(time.perf_counter() - t0, 3)
        self.step_index = s + 1
        self.history.append(row)
        if self.out is not None and self.acc.is_main_process:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def train(self) -> list[dict]:
        """Run until `steps` steps are done (checkpointing every `checkpoint_every` and at the end);
        returns this call's log rows."""
        cfg = self.cfg
        rows = []
        bar = tqdm(total=cfg.steps, initial=self.step_index, desc=f"{cfg.method}", unit="step",
                   disable=not self.progress)
        try:
            while self.step_index < cfg.steps:
                row = self.step()
                rows.append(row)
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward_mean']:.3f}", p_bad=f"{row['p_bad']:.3f}",
                                kl=f"{row['kl']:.3f}")
                if self.out is not None and (self.step_index % cfg.checkpoint_every == 0
                                             or self.step_index == cfg.steps):
                    self.save_checkpoint()
        finally:
            bar.close()
        return rows

    # ------------------------------------------------------------------ run folder
    def _marker(self) -> dict:
        return {"format": 1, "kind": "rgk repulse run", "config": asdict(self.cfg),
                "model_fingerprint": self.fingerprint, "prompts_fingerprint": _fingerprint_prompts(self.rows),
                "n_prompts": len(self.rows), "world_size": self.world, "run_info": self.run_info}

    def _open_run(self, resume: bool, overwrite: bool) -> None:
        error = None
        if self.acc.is_main_process:
            try:
                self._prepare_run_folder(resume, overwrite)
            except (OSError, ValueError) as e:
                error = e
        if self.world > 1:          # every process raises the main process's error, none waits forever
            from accelerate.utils import broadcast_object_list
            msg = broadcast_object_list([None if error is None else (type(error).__name__, str(error))])[0]
            if msg is not None and error is None:
                error = {"FileExistsError": FileExistsError, "FileNotFoundError": FileNotFoundError,
                         "ValueError": ValueError}.get(msg[0], OSError)(msg[1])
        if error is not None:
            raise error
        self.acc.wait_for_everyone()
        if resume:
            self._resume()

    def _prepare_run_folder(self, resume: bool, overwrite: bool) -> None:
        out = self.out
        marker = out / RUN_MARKER
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"out_dir: {out} is a file, expected a run folder")
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if resume:
            if not marker.is_file():
                raise FileNotFoundError(f"out_dir: {out} holds no RePULSe run to resume (no {RUN_MARKER})")
        elif present:
            if not marker.is_file():
                raise FileExistsError(f"out_dir: {out} exists and is not an rgk repulse run folder "
                                      f"({', '.join(present[:5])}); choose another folder")
            if not overwrite:
                raise FileExistsError(f"out_dir: {out} already holds a run; pass resume=True (--resume) to "
                                      "continue it or overwrite=True (--overwrite) to start it again")
            others = [p for p in present if p not in _RUN_FILES and not p.startswith(".")]
            if others:
                raise FileExistsError(f"out_dir: {out} also holds files that are not from the run "
                                      f"({', '.join(others[:5])}); refusing to overwrite it")
            for name in present:
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if not resume:
            out.mkdir(parents=True, exist_ok=True)
            (out / "checkpoints").mkdir(exist_ok=True)
            _write_json_atomic(marker, self._marker())

    def _check_resumable(self, saved: dict) -> None:
        now = self._marker()
        for k, v in saved["config"].items():
            if k in RESUMABLE:
                continue
            cur = now["config"].get(k)
            if (list(cur) if isinstance(cur, tuple) else cur) != v:
                raise ValueError(f"{k}: the run in {self.out} was started with {k} = {v!r}, now {cur!r} "
                                 "(only steps, checkpoint_every and keep_checkpoints may change on resume)")
        if saved.get("model_fingerprint") != now["model_fingerprint"]:
            raise ValueError(f"model: differs from the initial model of the run in {self.out}")
        if saved.get("prompts_fingerprint") != now["prompts_fingerprint"]:
            raise ValueError(f"prompts: differ from the prompts of the run in {self.out}")
        for k, v in (saved.get("run_info") or {}).items():
            if k in now["run_info"] and now["run_info"][k] != v:
                raise ValueError(f"{k}: the run in {self.out} was started with {v!r}, now {now['run_info'][k]!r}")

    def latest_checkpoint(self) -> Path | None:
        ptr = self.out / "checkpoints" / "latest"
        if not ptr.is_file():
            return None
        ck = self.out / "checkpoints" / ptr.read_text().strip()
        if not (ck / "COMPLETE").is_file():
            raise RuntimeError(f"out_dir: the latest checkpoint {ck} is incomplete; delete {ptr} to start over")
        return ck

    def _resume(self) -> None:
        from safetensors.torch import load_model
        saved = json.loads((self.out / RUN_MARKER).read_text())
        self._check_resumable(saved)
        ck = self.latest_checkpoint()
        if ck is None:        # the run never reached its first checkpoint: start it again
            if self.acc.is_main_process:
                (self.out / "log.jsonl").unlink(missing_ok=True)
            self.acc.wait_for_everyone()
            return
        state = torch.load(ck / "trainer.pt", map_location="cpu", weights_only=False)
        load_model(self.p_base, str(ck / "policy.safetensors"))      # copied into the parameters in place
        self.opt_p.load_state_dict(state["opt_p"])
        if self.q is not None:
            load_model(self.q_base, str(ck / "proposal.safetensors"))
            self.opt_q.load_state_dict(state["opt_q"])
        torch.set_rng_state(state["rng"])
        self.step_index = int(state["step"])
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:     # rows after the checkpoint are redone
            log = self.out / "log.jsonl"
            if log.exists():
                keep = [ln for ln in log.read_text().splitlines() if ln.strip()
                        and json.loads(ln)["step"] <= self.step_index]
                tmp = log.with_name(f".log.jsonl.tmp{os.getpid()}")
                tmp.write_text("".join(ln + "\n" for ln in keep))
                os.replace(tmp, log)
        self.acc.wait_for_everyone()

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step-XXXXXX atomically, point `latest` at it, export `policy/`."""
        from safetensors.torch import save_model
        path = None
        if self.acc.is_main_process:
            cks = self.out / "checkpoints"
            cks.mkdir(parents=True, exist_ok=True)
            name = f"step-{self.step_index:06d}"
            path = cks / name
            tmp = cks / f".{name}.tmp{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            save_model(self.p_base, str(tmp / "policy.safetensors"))
            state = {"step": self.step_index, "opt_p": self.opt_p.state_dict(), "rng": torch.get_rng_state()}
            if self.q is not None:
                save_model(self.q_base, str(tmp / "proposal.safetensors"))
                state["opt_q"] = self.opt_q.state_dict()
            torch.save(state, tmp / "trainer.pt")
            (tmp / "COMPLETE").write_text(json.dumps({"step": self.step_index}) + "\n")
            if path.exists():        # left by a run that crashed before moving `latest` on
                shutil.rmtree(path)
            os.rename(tmp, path)
            ptr_tmp = cks / f".latest.tmp{os.getpid()}"
            ptr_tmp.write_text(name + "\n")
            os.replace(ptr_tmp, cks / "latest")
            self._export_policy()
            old = sorted(p for p in cks.iterdir() if p.is_dir() and p.name.startswith("step-") and p != path)
            for p in old[:max(0, len(old) - (self.cfg.keep_checkpoints - 1))]:
                shutil.rmtree(p)
        self.acc.wait_for_everyone()
        return path

    def _export_policy(self) -> None:
        dest = self.out / "policy"
        tmp = self.out / f".policy.tmp{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        from transformers.utils import logging as hf_logging
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.p_base.save_pretrained(tmp)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(tmp)
        _write_json_atomic(tmp / "rgk-repulse.json", {"step": self.step_index, "method": self.cfg.method,
                                                      "run": str(self.out.resolve())})
        old = self.out / f".policy.old{os.getpid()}"
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
        if old.exists():
            shutil.rmtree(old)

"""rgk's decode loop: one static-shape step, no host in it.

After an eager prefill, every decode step of every model is a fork pass of a `ForkCache`
(k candidates for ARGS, or the 1 token just chosen) followed by a commit: preallocated
buffers, positions and lengths kept as device tensors, so the whole ARGS step

    top-k -> candidate forward (LM or reward model, fork attention) -> reward select
          -> commit -> EOS bookkeeping -> the LM's next logits

is one function with fixed shapes that reads no Python number and syncs with nothing.
It runs

- eagerly (the default on CPU),
- compiled with `torch.compile(fullgraph=True)` (`loop="compiled"`: the CPU proof that the
  step needs no host; also an option where it is faster), or
- captured once per (batch, k, capacity) in a CUDA graph and replayed (`loop="graph"`,
  the default on CUDA).

Stopping is checked every `stop_every` steps (one host read of the done flags), and the
output is cut at the step where every row had finished, so it equals the eager loop's.
The same loop runs plain greedy / sampling decoding (`vanilla_generate`, the fair
baseline) and ARGS with the shared head, a `RewardModel` or a sequence-classifier reward
model; text rewards stay on the Python loop (`rgk.args.engine`).
"""
from __future__ import annotations

import contextlib
import warnings
import weakref

import torch
from tqdm.auto import tqdm

from rgk import hf, ops
from rgk.args.cache import ForkCache
from rgk.args.inputs import LOOPS, _pad_for_mask, as_float, as_int, check_inputs, eos_pad
from rgk.args.rewards import RewardModel, Scores, SharedHead, eos_prefix_scores, head_params
from rgk.models import reward_mlp

#: model_type values whose fork pass was first tested; kept for reference.  Every family is now
#: accepted unless `check_family` finds a feature rgk's fork pass cannot apply exactly (the
#: family matrix, tests/test_family_matrix.py, checks each against the naive oracle).
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma", "gpt2")
#: per-layer attention kinds the fork pass applies (full causal, sliding window)
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")


def family_problem(model) -> str | None:
    """Why rgk's candidate (fork) pass cannot run `model` exactly, or None.  Read from the
    model's config and code before any work: an encoder-decoder, a forward without a KV
    cache (state-space and recurrent models), an ALiBi position bias (added through the
    attention mask, which the fork pass replaces), layers that are not (sliding-window)
    attention (hybrid Mamba / linear-attention / chunked-attention models)."""
    import sys
    cfg = hf.text_config(model)
    mt = getattr(cfg, "model_type", type(model).__name__)
    if getattr(cfg, "is_encoder_decoder", False):
        return f"model_type {mt!r} is an encoder-decoder; ARGS here decodes causal LMs"
    dec = hf.decoder(model)
    try:
        hf.cache_kwarg(dec)
    except TypeError:
        return f"model_type {mt!r}: its forward takes no KV cache (a state-space or recurrent model?)"
    mod = sys.modules.get(type(dec).__module__)
    has_alibi = mod is not None and any("alibi" in n.lower() for n in dir(mod))
    if getattr(cfg, "alibi", None) or (has_alibi and not hasattr(cfg, "alibi")):
        return f"model_type {mt!r} uses an ALiBi position bias, which the fork pass does not apply"
    kinds = set(getattr(cfg, "layer_types", None) or ())
    odd = sorted(k for k in kinds if k not in ATTENTION_LAYER_TYPES)
    if odd:
        return (f"model_type {mt!r} has layers of kind {', '.join(odd)}; the fork pass applies "
                f"{' and '.join(ATTENTION_LAYER_TYPES)} layers only")
    return _fork_probe(model, dec, mt)


_PROBED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@torch.no_grad()
def _fork_probe(model, dec, mt) -> str | None:
    """Run the candidate pass once on a tiny padded batch (2 rows, 3 prompt positions, 2
    candidates) and compare its hidden states with the model's own forward over each full
    sequence; once per model.  Catches what the config does not say: attention that does not
    run through transformers' attention interface, a forward kwarg the fork pass lacks."""
    verdict = _PROBED.get(model, False)
    if verdict is not False:
        return verdict
    from rgk.args.rewards import lm_vocab
    p = next(model.parameters())
    dev = hf.execution_device(model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model)
    V = lm_vocab(model)
    ids = (torch.tensor([[3, 4, 5], [0, 6, 7]]) % V).to(dev)
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]], device=dev)
    cands = (torch.tensor([[8, 9], [10, 11]]) % V).to(dev)
    why = None
    try:
        cache = ForkCache.for_model(model, 2, 3, 2)
        cache.extend(dec, ids, mask)
        got = cache.fork(dec, cands).float()                                  # [2, 2, d]
        info = cache._info
        cfg = hf.text_config(model)
        lt = getattr(cfg, "layer_types", None)
        sliding = ("sliding_attention" in lt) if lt else (getattr(cfg, "sliding_window", None) is not None
                                                           and getattr(cfg, "use_sliding_window", True) is not False)
        if info.foreign_mask:
            why = (f"model_type {mt!r} builds its own attention mask or bias inside its layers "
                   "(e.g. ALiBi or a dynamic mask), which the fork pass does not apply")
        elif sliding and not info.windows:
            why = (f"model_type {mt!r} applies its sliding window through the attention mask only "
                   "(its attention function is not told the window), which the fork pass does not see")
        else:
            full = torch.cat([ids.repeat_interleave(2, 0), cands.reshape(-1, 1)], 1)
            fmask = torch.cat([mask.repeat_interleave(2, 0), torch.ones(4, 1, dtype=mask.dtype, device=dev)], 1)
            want = dec(input_ids=full, attention_mask=fmask,
                       position_ids=hf.positions(fmask)).last_hidden_state[:, -1].float().view(2, 2, -1)
            tol = 1e-3 if p.dtype == torch.float32 else 5e-2
            err = float(((got - want).abs() - tol * want.abs()).max())
            if not err <= tol:
                why = (f"model_type {mt!r}: rgk's candidate pass does not reproduce the model's own forward on a "
                       f"probe (max excess error {err:.3g}); a feature of its attention the fork pass does not apply")
    except Exception as e:  # noqa: BLE001 - any failure of the fork pass on this family is a refusal
        msg = str(e).splitlines()[0] if str(e) else ""
        why = f"model_type {mt!r}: rgk's candidate pass fails on it ({type(e).__name__}: {msg[:200]})"
    _PROBED[model] = why
    return why


def check_family(model, name: str = "model") -> None:
    """ValueError naming `name`, the family and the feature when `family_problem` finds one."""
    why = family_problem(model)
    if why is not None:
        raise ValueError(f"{name}: {why}; rgk cannot decode it exactly")


def static_capable(source) -> bool:
    return isinstance(source, (SharedHead, RewardModel))


def resolve_loop(loop: str, device: torch.device) -> str:
    if loop not in LOOPS:
        raise ValueError(f"loop: expected one of {', '.join(LOOPS + ('dynamic',))}, got {loop!r}")
    if loop == "auto":
        return "graph" if device.type == "cuda" else "eager"
    if loop == "graph" and device.type != "cuda":
        raise ValueError("loop: 'graph' (CUDA-graph replay) needs CUDA tensors; use 'eager' or 'compiled' on CPU")
    return loop


class _LMFork:
    """The LM on a ForkCache: `fork(ids [B, n])` -> hidden [B, n, d]; `logits(h [B, d])`."""

    def __init__(self, model, B, cap, slots):
        # next-token logits as the model's own forward computes them (head + any tail)
        self.model, self.dec, self.head = model, hf.decoder(model), hf.logits_fn(model)
        self.cache = ForkCache.for_model(model, B, cap, slots)

    def prefill(self, input_ids, mask):
        """The next-token logits [B, V] fp32; keeps the prompt's last hidden state [B, d]."""
        self.last_hidden = self.cache.extend(self.dec, input_ids, mask)[:, -1]
        return self.head(self.last_hidden)


class StaticDecoder:
    """A static-shape decode step for one (model, reward source, batch, k, capacity).

    source: None (vanilla greedy/sampling decoding), a SharedHead or a RewardModel.
    eos_prefix: the `eos_reward="prefix"` option of `args_generate`: an EOS candidate gets
    the reward of its row's sequence before it, kept on device in `prefix_reward` [B] fp32
    (the prompt's reward after the prefill, then the chosen candidate's reward each step).
    """

    def __init__(self, model, source, input_ids, mask, *, k: int, w: float, temperature: float, cap: int,
                 eos: torch.Tensor, pad: int, eos_prefix: bool = False, min_new_tokens: int = 0):
        check_family(model)
        self.model, self.src = model, source
        self.eos_prefix = bool(eos_prefix) and source is not None
        self.k, self.w, self.temperature = k, w, temperature
        B = input_ids.shape[0]
        self.B, self.cap = B, cap
        self.eos, self.pad = eos, pad
        dev = input_ids.device
        self.rows = torch.arange(B, device=dev)
        self.shared = isinstance(source, SharedHead)
        self.lm = _LMFork(model, B, cap, k if self.shared else 1)
        self.logits = self.lm.prefill(input_ids, mask)
        self.rm = None
        if isinstance(source, RewardModel):
            check_family(source.model, "reward")
            self.rm_cache = ForkCache.for_model(source.model, B, cap, k)
            last = self.rm_cache.extend(source.decoder, input_ids, mask)[:, -1]
            self.rm = source
            self.params = head_params(source.head, dev)
        elif self.shared:
            self.params = head_params(source.head, dev)
            last = self.lm.last_hidden
        self.prefix_reward = None
        if self.eos_prefix:
            self.prefix_reward = reward_mlp(last, *self.params).float()
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.zero = torch.zeros(B, dtype=torch.long, device=dev)
        # min_new_tokens: EOS logits at -inf while the device step counter t < min_new_tokens
        self.min_new = int(min_new_tokens) if eos.numel() else 0
        self.t = torch.zeros((), dtype=torch.long, device=dev)
        if self.min_new:
            V = self.logits.shape[-1]
            self.eos_cols = torch.zeros(V, dtype=torch.bool, device=dev)
            self.eos_cols[eos[(eos >= 0) & (eos < V)].to(dev)] = True

    # -------------------------------------------------------------- the step
    def step(self, logits, u, done):
        """(next logits, token, logp, reward, score, done): one decode step, static shapes."""
        if self.min_new:
            logits = logits.masked_fill(self.eos_cols & (self.t < self.min_new), -float("inf"))
            self.t += 1
        if self.src is None:
            lp_all = torch.log_softmax(logits, -1)
            if self.temperature == 0:
                tok = logits.argmax(-1)
            else:
                p = torch.softmax(ops.tempered(logits, self.temperature), -1)
                cdf = p.cumsum(-1)
                tok = (cdf <= u[:, None] * cdf[:, -1:]).sum(-1).clamp(max=logits.shape[-1] - 1)
            lp = lp_all.gather(1, tok[:, None])[:, 0]
            r = torch.zeros_like(lp)
            sc = lp
            idx = self.zero
        else:
            # check=False: the step builds every operand itself (and the uniform draw's range
            # check would be a host sync per step on CUDA)
            logp, ids = ops.topk_logprobs(logits, self.k, check=False)
            if self.shared:
                hid = self.lm.cache.fork(self.lm.dec, ids)
            else:
                hid = self.rm_cache.fork(self.rm.decoder, ids)
            if self.eos_prefix:
                rew = eos_prefix_scores(Scores(hidden=hid, head=self.params), ids, self.eos,
                                        self.prefix_reward).rewards
                tok, idx, score = ops.select_from_rewards(logp, ids, rew, reward_weight=self.w,
                                                          temperature=self.temperature, uniform=u, check=False)
            else:
                tok, idx, score, rew = ops.reward_select(hid, logp, ids, *self.params, reward_weight=self.w,
                                                         temperature=self.temperature, uniform=u, check=False)
            take = idx[:, None]
            lp, r, sc = logp.gather(1, take)[:, 0], rew.gather(1, take)[:, 0], score.gather(1, take)[:, 0]
            if self.eos_prefix:
                self.prefix_reward.copy_(r)
        tok = torch.where(done, torch.full_like(tok, self.pad), tok)
        zero = torch.zeros_like(lp)
        lp, r, sc = torch.where(done, zero, lp), torch.where(done, zero, r), torch.where(done, zero, sc)
        if self.eos.numel():
            new_done = done | torch.isin(tok, self.eos)
        else:
            new_done = done
        if self.shared:
            self.lm.cache.commit(idx)
            nxt = self.lm.head(hid[self.rows, idx])
        else:
            if self.rm is not None:
                self.rm_cache.commit(idx)
            h1 = self.lm.cache.fork(self.lm.dec, tok[:, None])
            self.lm.cache.commit(self.zero)
            nxt = self.lm.head(h1[:, 0])
        return nxt, tok, lp, r, sc, new_done

    @contextlib.contextmanager
    def static(self, host_bound: bool = False):
        """Switch the caches to static steps for the duration of the loop.  host_bound: the
        steps run eagerly, so their forks may pass the host-known valid length to the fork
        attention (`ForkCache.static_steps`); never for a compiled or captured step."""
        with contextlib.ExitStack() as stack:
            hs = [stack.enter_context(self.lm.cache.static_steps(self.lm.dec, host_bound=host_bound))]
            if self.rm is not None:
                hs.append(stack.enter_context(self.rm_cache.static_steps(self.rm.decoder, host_bound=host_bound)))
            yield hs


class _Graph:
    """The step captured in a CUDA graph: static input/output buffers, replayed per token."""

    def __init__(self, dec: StaticDecoder, u0):
        self.dec = dec
        self.logits = dec.logits.clone()
        self.u = u0.clone() if u0 is not None else None
        self.done = dec.done.clone()
        # warm up on a side stream (allocates op workspaces outside the capture), then capture
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        self._snapshot = self._save()
        with torch.cuda.stream(s):
            dec.step(self.logits, self.u, self.done)
        torch.cuda.current_stream().wait_stream(s)
        self._restore()
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.out = dec.step(self.logits, self.u, self.done)
        finally:
            self._restore()      # capturing ran nothing, but keep the state exactly as prefilled

    def _caches(self):
        cs = [self.dec.lm.cache] + ([self.dec.rm_cache] if self.dec.rm is not None else [])
        return cs

    def _save(self):
        pr = self.dec.prefix_reward
        return ([(c.end.clone(), c.pos.clone()) for c in self._caches()], None if pr is None else pr.clone(),
                self.dec.t.clone())

    def _restore(self):
        caches, pr, t = self._snapshot
        for c, (e, p) in zip(self._caches(), caches):
            c.end.copy_(e)
            c.pos.copy_(p)
        if pr is not None:
            self.dec.prefix_reward.copy_(pr)
        self.dec.t.copy_(t)

    def __call__(self, logits, u, done):
        self.logits.copy_(logits)
        if u is not None:
            self.u.copy_(u)
        self.done.copy_(done)
        self.graph.replay()
        return tuple(t.clone() for t in self.out)


def _draw(B, temperature, generator, device):
    if temperature == 0:
        return None
    return torch.rand(B, generator=generator, device=generator.device if generator is not None else device).to(device)


# torch.compile's backend for loop="compiled".  Tests that check a feature traces as one graph
# set "aot_eager" (dynamo and AOT tracing, no code generation: seconds instead of half a minute
# of C++ compiling on a CPU); inductor itself is tested on the step and the family matrix.
_COMPILE_BACKEND = "inductor"


def _failure(model, e: Exception) -> tuple[str, str]:
    """(model_type, the first line of e) for a loop's one-line refusal."""
    mt = getattr(hf.text_config(model), "model_type", type(model).__name__)
    return mt, (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


@torch.no_grad()
def _compiled(step, model):
    """`step` under torch.compile(fullgraph=True); a model whose forward dynamo cannot trace as
    one graph gets a one-line error naming the family and the way out, not dynamo's traceback."""
    fn = torch.compile(step, fullgraph=True, dynamic=False, backend=_COMPILE_BACKEND)

    def run(*args):
        try:
            return fn(*args)
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as e:   # a graph break, or
            # data-dependent control flow (DBRX's expert routing) that fullgraph cannot specialize
            mt, first = _failure(model, e)
            raise RuntimeError(f"loop: 'compiled' cannot trace model_type {mt!r} as one graph with "
                               f"torch.compile(fullgraph=True) ({first}); use loop='eager' (the same step, "
                               "uncompiled) or 'dynamic'") from None
    return run


def _captured(dec: StaticDecoder, u0, model, auto: bool):
    """The step captured in a CUDA graph.  A model whose forward cannot be captured (a host
    sync inside it, e.g. data-dependent expert routing) gets, with loop="graph", a one-line
    error naming the family and the way out; with loop="auto", a warning and the same step
    run uncaptured (loop="eager": the same tokens)."""
    try:
        return _Graph(dec, u0)
    except RuntimeError as e:
        mt, first = _failure(model, e)
        if not auto:
            raise RuntimeError(f"loop: 'graph' cannot capture model_type {mt!r} in a CUDA graph ({first}); "
                               "use loop='eager' (the same step, uncaptured) or 'auto'") from None
        warnings.warn(f"loop='auto': model_type {mt!r} cannot be captured in a CUDA graph ({first}); decoding "
                      "with the same step uncaptured (loop='eager')", RuntimeWarning, stacklevel=3)
        return dec.step


def run_static(model, source, input_ids, mask, *, k, w, temperature, max_new_tokens, cap, eos, pad, generator,
               loop: str, stop_every: int = 8, progress: bool = False, eos_prefix: bool = False,
               min_new_tokens: int = 0, hooks=None):
    """Decode with the static step; returns (sequences, rewards, logprobs, scores) like ARGSOutput.
    hooks: a `rgk.args.engine.StepHooks` (streamer, stopping criteria), called on the host
    after every step."""
    dev = input_ids.device
    auto, loop = loop == "auto", resolve_loop(loop, dev)
    stop_every = max(1, int(stop_every))
    dec = StaticDecoder(model, source, input_ids, mask, k=k, w=w, temperature=temperature, cap=cap, eos=eos,
                        pad=pad, eos_prefix=eos_prefix, min_new_tokens=min_new_tokens)
    logits, done = dec.logits, dec.done
    toks, lps, rs, scs, dones = [], [], [], [], []
    with dec.static(host_bound=loop == "eager") as handles:
        if loop == "compiled":
            fn = _compiled(dec.step, model)
        elif loop == "graph":
            u0 = _draw(dec.B, temperature, None, dev) if temperature > 0 else None
            fn = _captured(dec, u0, model, auto)
        else:
            fn = dec.step
        steps = tqdm(range(max_new_tokens), desc="ARGS" if source is not None else "decode", disable=not progress,
                     leave=False)
        for s in steps:
            u = _draw(dec.B, temperature, generator, dev)
            logits, tok, lp, r, sc, done = fn(logits, u, done)
            if hooks is not None:
                done = hooks.after(tok, done, sc)
            toks.append(tok), lps.append(lp), rs.append(r), scs.append(sc), dones.append(done)
            for h in handles:
                h.steps(1)
            if ((s + 1) % stop_every == 0 or hooks is not None) and bool(done.all()):
                break
    n = len(toks)
    all_done = torch.stack(dones, 1).all(0)           # [n]: every row finished after step s
    hit = all_done.nonzero()
    if hit.numel():
        n = int(hit[0]) + 1
    st = lambda xs: torch.stack(xs[:n], 1)  # noqa: E731
    return torch.cat([input_ids, st(toks)], 1), st(rs), st(lps), st(scs)


@torch.no_grad()
def vanilla_generate(model, input_ids, attention_mask=None, *, temperature: float = 0.0, max_new_tokens: int = 32,
                     eos_token_id=None, pad_token_id=None, generator: torch.Generator | None = None,
                     loop: str = "auto", stop_every: int = 8, progress: bool = False):
    """Plain greedy (temperature 0: exactly HF greedy decoding) or sampling decoding through
    rgk's static loop — the fair baseline for ARGS on the same loop.  Sampling draws one
    U[0,1) per row and step from `generator` and inverts the CDF of softmax(logits / τ).
    Returns the sequences [B, T + n] (pad after EOS)."""
    mask, max_new_tokens = check_inputs(input_ids, attention_mask, max_new_tokens, _pad_for_mask(model, pad_token_id))
    temperature = as_float("temperature", temperature, lo=0.0)
    eos, pad = eos_pad(model, eos_token_id, pad_token_id, input_ids.device)
    cap = input_ids.shape[1] + max_new_tokens
    as_int("stop_every", stop_every, 1)
    seqs, *_ = run_static(model, None, input_ids, mask, k=1, w=0.0, temperature=temperature,
                          max_new_tokens=max_new_tokens, cap=cap, eos=eos, pad=pad, generator=generator, loop=loop,
                          stop_every=stop_every, progress=progress)
    return seqs


__all__ = ["StaticDecoder", "run_static", "vanilla_generate", "SUPPORTED_MODEL_TYPES", "static_capable",
           "check_family"]

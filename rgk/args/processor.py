"""`ARGSLogitsProcessor`: ARGS as a drop-in for `model.generate(logits_processor=[...])`.

At every call it takes the top-k of the logits `generate` hands over (so masks set by
earlier processors are honoured), scores each candidate with log p + w · r, and returns
scores that are -inf everywhere except the k candidates, which carry score / temperature
(a row where that would overflow, at a tiny temperature, is first shifted by its best score,
`rgk.ops.tempered`: the same softmax).
Greedy search then picks the ARGS argmax; sampling (do_sample=True, temperature=1 in
`generate`) draws from softmax(score / temperature) over the k candidates — ARGS's
stochastic mode.

The reward source's session (a `RewardModel`'s prefix `ForkCache`) is kept between calls
and keyed on the prefix it has seen: when the new `input_ids` extend it by one token, the
processor commits that token (also across generate calls, e.g. `generate(out, ...)` continuing
its own output, when that call's mask is the one followed so far and its length fits the
capacity; otherwise, and when an unfixed capacity runs out, it rebuilds with room for the
new call) — the candidate slot it came from, or, if another processor
or `generate` (pad after EOS) changed it, a one-token forward of what was actually
appended.  When `input_ids` do not extend the seen prefix (a new `generate` call,
assisted decoding rolling back), it rebuilds.  Beam search is refused at every rebuild
(rows are permuted between calls and scores are cumulative log-probs, which ARGS's score
is not defined on); continuous batching is declared unsupported.

Padding.  `generate` hands processors no attention mask.  At each rebuild the processor
takes, in this order: the mask `generate` itself is using (read from the calling
`generate` frame, so a reused processor follows each call's own padding); the
`attention_mask` given to the constructor or `set_prompt_mask` (only for the prompts it
was given with: a mask left over from another call is refused with a clear error); the
leading run of `pad_token_id` in each row.
"""
from __future__ import annotations

import inspect
import math

import torch
from transformers import LogitsProcessor

from rgk import ops
from rgk.args.rewards import as_source, eos_prefix_scores
from rgk.args.inputs import as_int, check_args_params, check_eos_reward, check_mask, infer_left_padding, select


def _generate_frames(depth: int = 12):
    """The locals of the `generate` machinery frames above the caller (best effort)."""
    frame = inspect.currentframe()
    out = []
    for _ in range(depth):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            break
        if frame.f_code.co_filename.replace("\\", "/").endswith("generation/utils.py"):
            out.append((frame.f_code.co_name, frame.f_locals))
    return out


class ARGSLogitsProcessor(LogitsProcessor):
    """ARGS inside `generate`.

    reward: RewardModel(model, head=None) (cached, fork attention; a sequence classifier
        works directly) or TextReward(fn, tokenizer).  For a shared-backbone head, pass
        RewardModel(lm, head): inside `generate` the candidates' hidden states need their
        own forward anyway.
    k, w, temperature: ARGS parameters (temperature 0 = greedy scores, use with greedy search).
    batch_size: expected number of rows (checked every call); None: taken from each call.
    attention_mask: the prompt's mask [B, T] (used when generate's own mask is not found).
    pad_token_id: used to infer left padding when no mask is known.
    max_cache_len: capacity of the reward model's prefix cache (prompt + new tokens);
        None: the prompt plus generate's max_new_tokens (2048 when that is not known).
    graph: replay the reward model's per-call work (commit of the appended token, top-k,
        fork pass, reward select) from a CUDA graph captured once per generate call
        (None: on CUDA with a RewardModel; False: eager).
    eos_reward: "candidate" (default, the paper's ARGS) or "prefix": an EOS candidate gets
        the reward of the sequence before it, as in `args_generate(eos_reward="prefix")`
        (runs eagerly: no CUDA graph).
    eos_token_id: the EOS id(s) for eos_reward="prefix"; None: generate's own
        generation_config.eos_token_id, read at each rebuild.
    """

    supports_continuous_batching = False

    def __init__(self, reward, *, k: int = 10, w: float = 1.5, temperature: float = 0.0,
                 batch_size: int | None = None, attention_mask: torch.Tensor | None = None,
                 pad_token_id: int | None = None, max_cache_len: int | None = None, graph: bool | None = None,
                 eos_reward: str = "candidate", eos_token_id=None):
        src = as_source(reward)
        if src.uses_lm_hidden:
            raise TypeError("reward: inside generate a bare RewardHead needs its backbone; "
                            "pass RewardModel(model, head) with the LM itself as the model")
        self.k, self.w, self.temperature = check_args_params(k=k, w=w, temperature=temperature, vocab_size=None)
        model = getattr(src, "model", None)
        if model is not None and hasattr(model, "config"):   # a reward model forked on: refuse what it cannot do
            from rgk.args.decode import check_family
            check_family(model, "reward")
        if batch_size is not None:
            batch_size = as_int("batch_size", batch_size, 1)
        if max_cache_len is not None:
            max_cache_len = as_int("max_cache_len", max_cache_len, 2)
        if pad_token_id is not None:
            pad_token_id = as_int("pad_token_id", pad_token_id, 0)
        self.reward = src
        self.batch_size, self.pad_token_id, self.max_cache_len = batch_size, pad_token_id, max_cache_len
        self.generator: torch.Generator | None = None
        self.session = None
        self._seen: torch.Tensor | None = None
        self._cand = None
        if graph is not None and not isinstance(graph, bool):
            raise TypeError(f"graph: expected True, False or None, got {graph!r}")
        self.graph = graph
        self._graph = None
        self.eos_prefix = check_eos_reward(eos_reward) == "prefix"
        self.eos_token_id = None if eos_token_id is None else _eos_ids(eos_token_id)
        self._prefix_r: torch.Tensor | None = None   # [B] reward of each row's current sequence
        self._gc = None                              # the generation_config of the generate call last seen
        self._mask: torch.Tensor | None = None       # [B, T0] the mask the state was built with
        self._cand_r: torch.Tensor | None = None     # [B, k] rewards of the last call's candidates
        self.graph_replays = 0   # calls served by the captured CUDA graph
        self.rebuilds = 0        # how often the state was rebuilt (a new prompt or a rollback)
        self.extra_forwards = 0  # one-token forwards for appended tokens that were not candidates
        self.set_prompt_mask(attention_mask)

    def set_prompt_mask(self, attention_mask: torch.Tensor | None) -> None:
        """The prompt mask for the next generate call (see the module docstring)."""
        if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
            raise ValueError("attention_mask: expected a [batch, prompt_len] tensor")
        self.prompt_mask = attention_mask
        self._mask_prompt: torch.Tensor | None = None   # the prompt ids the mask was first used with
        self._seen = None

    # ------------------------------------------------------------------ state
    def _mask_for(self, input_ids: torch.Tensor, frames) -> torch.Tensor:
        B, T = input_ids.shape
        dev = input_ids.device
        for _, loc in frames:
            mk = loc.get("model_kwargs")
            if isinstance(mk, dict) and "attention_mask" in mk:
                m = mk["attention_mask"]
                if m is None:           # generate dropped an all-ones mask
                    return torch.ones_like(input_ids)
                if isinstance(m, torch.Tensor) and m.dim() == 2 and m.shape[0] == B and m.shape[1] >= T:
                    return check_mask(m[:, :T].to(dev))
        m = self.prompt_mask
        if m is not None:
            P = m.shape[1]
            if m.shape[0] != B or P > T:
                raise ValueError(f"attention_mask: the processor's prompt mask has shape {tuple(m.shape)} but "
                                 f"generate gave input_ids of shape {tuple(input_ids.shape)}; call "
                                 "set_prompt_mask(mask) with each generate call's own mask")
            prompt = input_ids[:, :P]
            if self._mask_prompt is None:
                self._mask_prompt = prompt.clone()
            elif not torch.equal(self._mask_prompt, prompt):
                raise ValueError("attention_mask: the processor's prompt mask was given for other prompts than "
                                 "this generate call's; call set_prompt_mask(mask) before each generate call")
            m = m.to(dev).long()
            return check_mask(torch.cat([m, torch.ones(B, T - P, dtype=torch.long, device=dev)], 1))
        return check_mask(infer_left_padding(input_ids, self.pad_token_id))

    def _capacity(self, T: int, frames) -> int:
        want = None
        for _, loc in frames:
            gc = loc.get("generation_config")
            if gc is not None and getattr(gc, "max_length", None):
                want = int(gc.max_length)
                break
        if self.max_cache_len is None:
            return max(want if want is not None else T + 2048, T + 1)
        if want is not None and want > self.max_cache_len:
            raise ValueError(f"max_cache_len: {self.max_cache_len} cannot hold this generate call's "
                             f"{want} tokens (prompt + max_new_tokens); pass max_cache_len >= {want} or None")
        if T >= self.max_cache_len:
            raise ValueError(f"max_cache_len: the prompt ({T} tokens) does not fit max_cache_len={self.max_cache_len}")
        return self.max_cache_len

    def _may_continue(self, input_ids: torch.Tensor, frames) -> bool:
        """Whether a new generate call whose input extends the seen prefix by one token can keep
        the state: its mask is the tracked one plus that token, and its length fits."""
        mask = self._mask_for(input_ids, frames)
        if self._mask is None or mask.shape != (self._mask.shape[0], self._len + 1):
            return False
        # the followed mask: the one the state was built with, then a 1 for every appended token
        if not (torch.equal(mask[:, :self._T0], self._mask) and bool((mask[:, self._T0:] == 1).all())):
            return False
        want = next((int(loc["generation_config"].max_length) for _, loc in frames
                     if getattr(loc.get("generation_config"), "max_length", None)), None)
        return want is None or want <= self._cap

    def _check_sampling(self, gc) -> None:
        """A greedy processor (temperature 0) in a sampling generate call samples from the
        scores it returns (softmax over the k candidates at temperature 1): say so once per call."""
        if self.temperature == 0 and getattr(gc, "do_sample", False):
            import warnings
            warnings.warn("ARGSLogitsProcessor(temperature=0) is greedy ARGS, but generate was called with "
                          "do_sample=True: generate samples among the k candidates with probabilities "
                          "softmax(score) (ARGS's stochastic mode at temperature 1); pass do_sample=False for "
                          "greedy ARGS, or the processor a temperature > 0 to mean sampling", stacklevel=3)

    def _rebuild(self, input_ids: torch.Tensor, frames=None) -> None:
        frames = _generate_frames() if frames is None else frames
        for name, loc in frames:
            gc = loc.get("generation_config")
            if "beam" in name or (gc is not None and (getattr(gc, "num_beams", 1) or 1) > 1):
                raise ValueError("ARGSLogitsProcessor does not support beam search (num_beams > 1): "
                                 "use greedy search or sampling")
        mask = self._mask_for(input_ids, frames)
        cap = self._capacity(input_ids.shape[1], frames)
        if self.session is not None:
            self.session.close()
        self._graph = None
        self.session = self.reward.open(None, input_ids, mask, capacity=cap, k=self.k)
        self._cap, self._len = cap, input_ids.shape[1]
        self._mask, self._T0 = mask, input_ids.shape[1]
        if self.eos_prefix:
            eos = self.eos_token_id
            if eos is None:
                gc = next((loc["generation_config"] for _, loc in frames if loc.get("generation_config") is not None),
                          None)
                eid = getattr(gc, "eos_token_id", None)
                eos = _eos_ids(eid) if eid is not None else []
            self._eos = torch.tensor(eos, dtype=torch.long, device=input_ids.device)
            self._prefix_r = self._reference(input_ids)
        self._cand = None
        self.rebuilds += 1

    def _append(self, input_ids: torch.Tensor, frames) -> None:
        """Advance the state by the token `generate` appended (the last column of input_ids)."""
        token = input_ids[:, -1]
        hit = self._cand == token[:, None]
        found = hit.any(-1)
        # rows generate has finished get pad appended whatever the scores: their state no longer
        # matters, so they commit any slot instead of forcing a one-token forward for the batch
        for _, loc in frames:
            unfinished = loc.get("unfinished_sequences")
            if isinstance(unfinished, torch.Tensor) and unfinished.shape == found.shape:
                found = found | (unfinished.to(found.device) == 0)
                break
        slot = hit.long().argmax(-1)
        all_found = bool(found.all())
        if self.eos_prefix:
            # the appended token's reward is the new prefix reward; a token that was not a
            # candidate is scored in full
            self._prefix_r = self._cand_r.gather(1, slot[:, None])[:, 0] if all_found else self._reference(input_ids)
        if all_found:
            self._pending = slot
            if self._graph is None:
                self.session.commit(self._pending, token)
                self._pending = None
        else:
            self.session.append(token)
            self.extra_forwards += 1
        self._len += 1

    # ------------------------------------------------------------------ call
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
            raise ValueError("scores: expected a [batch, vocab] tensor")
        B, V = scores.shape
        if input_ids.shape[0] != B:
            raise ValueError(f"input_ids: {input_ids.shape[0]} rows but scores has {B}")
        if self.batch_size is not None and B != self.batch_size:
            raise ValueError(f"batch size mismatch: generate passed {B} rows, the processor was built for "
                             f"batch_size={self.batch_size} (num_return_sequences > 1 and beam search are "
                             "not supported)")
        if self.k > V:
            raise ValueError(f"k: expected at most the vocabulary size {V}, got {self.k}")
        if hasattr(self.reward, "check_vocab"):
            self.reward.check_vocab(V)
        self._pending = None
        frames = _generate_frames()
        gc = next((loc["generation_config"] for _, loc in frames if loc.get("generation_config") is not None), None)
        new_call = gc is not None and gc is not self._gc
        if new_call:
            self._gc = gc
            self._check_sampling(gc)
        seen = self._seen
        extends = (seen is not None and seen.shape[0] == B and input_ids.shape[1] == seen.shape[1] + 1
                   and self._cand is not None and torch.equal(input_ids[:, :-1], seen))
        if extends and new_call and not self._may_continue(input_ids, frames):
            extends = False          # a new generate call with another mask or more tokens: re-plan
        if extends and self._len + 1 > self._cap:
            if self.max_cache_len is not None:
                raise ValueError(f"max_cache_len: {self._cap} tokens are not enough for this generation "
                                 f"({self._len + 1} needed); pass a larger max_cache_len or None")
            extends = False          # no capacity was fixed by the user: rebuild with room to grow
        if extends:
            self._append(input_ids, frames)
        elif not (seen is not None and torch.equal(input_ids, seen)):
            self._rebuild(input_ids, frames)
        self._seen = input_ids.clone()

        if self._graph is None and self._use_graph(scores) and self._cand is None:
            try:
                self._graph = _CallGraph(self, scores)
            except _NoGraph:
                self._graph = None
        if self._graph is not None and (self._pending is not None or self._graph.fresh):
            out, ids = self._graph(scores, self._pending)
            self.graph_replays += 1
            self._cand = ids
            return out
        if self._pending is not None:     # a graph could not be used for this call
            self.session.commit(self._pending, input_ids[:, -1])
            self._pending = None
        if self._graph is not None:
            self._graph.fresh = False     # the cache moved eagerly: first-call graph no longer valid
        return self._eager(scores)[0]

    def _reference(self, input_ids):
        """Rewards [B] of the full current sequences (the prompt at a rebuild)."""
        B, L = input_ids.shape
        mask = torch.cat([self._mask, torch.ones(B, L - self._T0, dtype=self._mask.dtype,
                                                 device=self._mask.device)], 1)
        return self.reward.reference_rewards(None, input_ids, mask, self._T0).float().to(input_ids.device)

    def _eager(self, scores):
        logp, ids = ops.topk_logprobs(scores, self.k)
        sc = self.session.score(ids)
        if self.eos_prefix:
            sc = eos_prefix_scores(sc, ids, self._eos, self._prefix_r)
            self._cand_r = sc.rewards
        _, _, score, _ = select(sc, logp, ids, w=self.w, temperature=0.0, uniform=None)
        self._cand = ids
        if self.temperature > 0:
            # score / temperature; a row where that overflows (a tiny temperature) is shifted by
            # its best score first (`ops.tempered`): the same softmax, no inf
            z = score / self.temperature
            over = ((z == math.inf) | (z == -math.inf)) & (score > -math.inf)
            score = torch.where(over.any(-1, keepdim=True), ops.tempered(score, self.temperature), z)
        out = torch.full_like(scores, -math.inf)
        return out.scatter(1, ids, score.to(out.dtype)), ids

    def _use_graph(self, scores) -> bool:
        from rgk.args.rewards import _ModelSession
        if self.graph is False or self.eos_prefix or not isinstance(self.session, _ModelSession):
            return False
        return self.graph is True or scores.device.type == "cuda"


def _eos_ids(eos) -> list[int]:
    """EOS id(s) as a list of ints (an int, a list of ints or an integer tensor)."""
    vals = eos.flatten().tolist() if isinstance(eos, torch.Tensor) else (list(eos) if isinstance(eos, (list, tuple))
                                                                         else [eos])
    return [as_int("eos_token_id", v, 0) for v in vals]


class _CallGraph:
    """CUDA graphs of one processor call's reward-model work, captured at the first call
    after a rebuild: `first` (top-k, fork pass, select) for that call, `next` (commit of
    the appended candidate, then the same) for every later call.  Positions live in the
    ForkCache's device tensors, so replays advance them; the host-side length is advanced
    here.  If capture fails, the processor stays eager (with a warning)."""

    def __init__(self, proc: ARGSLogitsProcessor, scores):
        import warnings
        self.proc, self.fresh = proc, True
        self.cache = proc.session.cache
        self.scores = scores.detach().clone()
        B = scores.shape[0]
        self.index = torch.zeros(B, dtype=torch.long, device=scores.device)
        try:
            self.first = self._capture(commit=False)
            self.next = self._capture(commit=True)
        except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
            warnings.warn(f"ARGSLogitsProcessor: CUDA-graph capture failed ({e}); running eagerly")
            proc.graph = False
            raise _NoGraph() from e

    def _body(self, commit: bool):
        c = self.cache
        if commit:
            c.commit_device(self.index)
        return self.proc._eager(self.scores)

    def _capture(self, commit: bool):
        c, dec = self.cache, self.proc.session.src.decoder
        snap = (c.end.clone(), c.pos.clone())
        api = GRAPH_API
        with c.static_steps(dec):
            s = api.Stream()
            s.wait_stream(api.current_stream())
            with api.stream(s):
                self._body(commit)
            api.current_stream().wait_stream(s)
            c.end.copy_(snap[0]), c.pos.copy_(snap[1])
            g = api.CUDAGraph()
            with api.graph(g):
                out = self._body(commit)
            c.end.copy_(snap[0]), c.pos.copy_(snap[1])
        api.bind(g, lambda: self._replay_body(commit), out)
        return g, out

    def _replay_body(self, commit: bool):
        with self.cache.static_steps(self.proc.session.src.decoder):
            return self._body(commit)

    def __call__(self, scores, pending):
        self.scores.copy_(scores)
        if pending is None:
            g, out = self.first
            self.fresh = False
        else:
            self.index.copy_(pending)
            g, out = self.next
            self.cache.length += 1
        g.replay()
        return out[0].clone(), out[1].clone()


class _NoGraph(Exception):
    pass


class _CudaGraphAPI:
    """What `_CallGraph` uses of torch.cuda (a seam: CPU tests replace it with a stand-in
    whose replay re-runs the captured body, to check the bookkeeping around the graphs)."""
    Stream = staticmethod(lambda: torch.cuda.Stream())
    current_stream = staticmethod(lambda: torch.cuda.current_stream())
    stream = staticmethod(lambda s: torch.cuda.stream(s))
    CUDAGraph = staticmethod(lambda: torch.cuda.CUDAGraph())
    graph = staticmethod(lambda g: torch.cuda.graph(g))

    @staticmethod
    def bind(g, body, out):
        """A real graph replays its recorded kernels: nothing to bind."""


GRAPH_API = _CudaGraphAPI()

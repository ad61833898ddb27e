"""ARGS end to end on tiny random-weight Llama models (fp32, CPU).

The cached/forked loop must pick exactly the tokens of the naive reference that re-runs
the reward over every full candidate sequence; the LogitsProcessor inside `generate` must
match the native loop."""
import math

import pytest
import torch

from conftest import left_padded
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from rgk.args import (ARGSLogitsProcessor, ForkCache, RewardModel, TextReward, args_generate,
                      naive_args_generate)
from rgk.models import RewardHead, RewardHeadConfig

V, EOS, PAD = 97, 5, 0


def tiny_lm(seed, vocab=V, heads=4, kv_heads=2):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16 * heads, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                      eos_token_id=EOS, pad_token_id=PAD)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


class DigitTokenizer:
    """Stands in for a tokenizer: token ids decode to space-separated numbers."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == PAD))


def text_fn(texts):
    return [sum(int(x) % 7 for x in t.split()) / 10.0 for t in texts]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    lm, rm = tiny_lm(0), tiny_lm(1)
    torch.manual_seed(2)
    mlp_head = RewardHead(RewardHeadConfig(64, "mlp", 32))
    lin_head = RewardHead(RewardHeadConfig(64, "linear"))
    return lm, rm, mlp_head, lin_head


def prompts(lens=(5, 8, 3), seed=3):
    return left_padded(lens, seed, V, PAD)


def sources(models):
    lm, rm, mlp_head, lin_head = models
    return {
        "shared-mlp": mlp_head,
        "shared-linear": lin_head,
        "model": RewardModel(rm, mlp_head),
        "text": TextReward(text_fn, DigitTokenizer()),
    }


@pytest.mark.parametrize("source", ["shared-mlp", "shared-linear", "model", "text"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_native_matches_naive(models, source, temperature):
    lm = models[0]
    reward = sources(models)[source]
    ids, mask = prompts()
    kw = dict(reward=reward, k=6, w=2.0, temperature=temperature, max_new_tokens=10)
    a = args_generate(lm, ids, mask, generator=torch.Generator().manual_seed(7), **kw)
    b = naive_args_generate(lm, ids, mask, generator=torch.Generator().manual_seed(7), **kw)
    assert a.sequences.shape == (3, ids.shape[1] + 10)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)


def test_w_zero_is_greedy(models):
    lm, _, head, _ = models
    ids, mask = prompts()
    a = args_generate(lm, ids, mask, reward=head, k=4, w=0.0, max_new_tokens=8)
    g = lm.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=PAD,
                    eos_token_id=EOS)
    assert torch.equal(a.sequences, g[:, :a.sequences.shape[1]])


def test_reward_changes_choices(models):
    lm, _, head, _ = models
    ids, mask = prompts()
    a = args_generate(lm, ids, mask, reward=head, k=8, w=50.0, max_new_tokens=8)
    b = args_generate(lm, ids, mask, reward=head, k=8, w=0.0, max_new_tokens=8)
    assert not torch.equal(a.sequences, b.sequences)
    assert a.rewards.mean() > b.rewards.mean()


@pytest.mark.parametrize("source", ["shared-mlp", "model", "text"])
def test_eos_and_max_new_tokens(models, source):
    """Rows stop independently at EOS (pad after it); max_new_tokens is honoured."""
    lm = models[0]
    reward = sources(models)[source]
    ids, mask = prompts()
    free = args_generate(lm, ids, mask, reward=reward, k=5, w=1.0, max_new_tokens=12, eos_token_id=-1)
    T = ids.shape[1]
    eos = int(free.sequences[0, T + 3])  # row 0 emits this token at step 3
    a = args_generate(lm, ids, mask, reward=reward, k=5, w=1.0, max_new_tokens=12, eos_token_id=eos,
                      pad_token_id=PAD)
    b = naive_args_generate(lm, ids, mask, reward=reward, k=5, w=1.0, max_new_tokens=12, eos_token_id=eos,
                            pad_token_id=PAD)
    assert torch.equal(a.sequences, b.sequences)
    row0 = a.sequences[0, T:]
    first = int((row0 == eos).nonzero()[0])
    assert first <= 3
    assert (row0[first + 1:] == PAD).all()
    assert a.sequences.shape[1] <= T + 12


def test_stochastic_distribution(models):
    """One ARGS step over many copies of a prompt: token frequencies follow softmax(score/τ)
    over the top-k (chi-square test; a sampler off by a few percent fails it)."""
    lm, _, head, _ = models
    ids, mask = prompts(lens=(6,))
    N, k, tau = 4000, 5, 0.7
    ref = naive_args_generate(lm, ids, mask, reward=head, k=k, w=2.0, max_new_tokens=1)
    # expected distribution from the reference's scores
    from rgk.hf import positions as _positions
    from rgk.ops import reference
    with torch.no_grad():
        logits = lm(ids, attention_mask=mask, position_ids=_positions(mask)).logits[:, -1]
        logp, cand = reference.topk_logprobs(logits, k)
        full = torch.cat([ids.repeat(k, 1), cand.view(-1, 1)], 1)
        fmask = torch.ones_like(full)
        fmask[:, :ids.shape[1]] = mask
        from rgk.models import final_hidden
        r = head(final_hidden(lm, full, fmask, position_ids=_positions(fmask))[:, -1])
    p = torch.softmax((logp[0] + 2.0 * r) / tau, -1).double()
    assert ref.sequences[0, -1] in cand[0]
    out = args_generate(lm, ids.repeat(N, 1), mask.repeat(N, 1), reward=head, k=k, w=2.0, temperature=tau,
                        max_new_tokens=1, generator=torch.Generator().manual_seed(11))
    toks = out.sequences[:, -1]
    counts = torch.stack([(toks == c).sum() for c in cand[0]]).double()
    assert counts.sum() == N  # only top-k tokens are ever chosen
    expected = N * p
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with k-1 = 4 dof: P(chi2 > 18.47) = 0.001
    assert chi2 < 18.47, (counts, expected)


def test_fork_cache_matches_full_recompute():
    lm = tiny_lm(4, heads=6, kv_heads=2)  # GQA ratio 3
    dec = lm.get_decoder()
    ids, mask = prompts(lens=(4, 9, 1))
    B = ids.shape[0]
    cache = ForkCache.for_model(lm, B, 20, 5)
    from rgk.hf import positions as _positions
    with torch.no_grad():
        cache.extend(dec, ids, mask)
        cand = torch.randint(6, V, (B, 5))
        hc = cache.fork(dec, cand)
        for j in range(5):
            full = torch.cat([ids, cand[:, j:j + 1]], 1)
            fm = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
            hr = dec(input_ids=full, attention_mask=fm, position_ids=_positions(fm)).last_hidden_state[:, -1]
            torch.testing.assert_close(hc[:, j], hr, atol=1e-5, rtol=1e-5)
        win = torch.tensor([2, 0, 4])
        cache.commit(win)
        assert cache.length == ids.shape[1] + 1
        hc2 = cache.fork(dec, cand[:, :2])
        full = torch.cat([ids, cand[torch.arange(B), win][:, None], cand[:, :1]], 1)
        fm = torch.ones_like(full)
        fm[:, :ids.shape[1]] = mask
        hr = dec(input_ids=full, attention_mask=fm, position_ids=_positions(fm)).last_hidden_state[:, -1]
        torch.testing.assert_close(hc2[:, 0], hr, atol=1e-5, rtol=1e-5)


def _spy_bounds(monkeypatch):
    """Record (max_valid_len, max cache_end, capacity) of every fork_attention call."""
    from rgk import ops
    real, seen = ops.fork_attention, []

    def spy(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale=None, **kw):
        seen.append((kw.get("max_valid_len"), int(cache_end.max()), k_cache.shape[2]))
        return real(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, **kw)
    monkeypatch.setattr(ops, "fork_attention", spy)
    return seen


@pytest.mark.parametrize("loop", ["dynamic", "eager"])
@pytest.mark.parametrize("source", ["shared-mlp", "model"])
def test_fork_cache_passes_the_exact_valid_length(monkeypatch, models, loop, source):
    """Eager forks (the Python loop, and the static step run eagerly) pass the host-known
    length as max_valid_len — exactly every row's end, no host sync — and get the
    unbounded result."""
    ids, mask = prompts()
    T, N = ids.shape[1], 6
    kw = dict(reward=sources(models)[source], k=4, w=1.0, max_new_tokens=N, eos_token_id=-1, loop=loop)
    want = args_generate(models[0], ids, mask, **kw)
    seen = _spy_bounds(monkeypatch)
    got = args_generate(models[0], ids, mask, **kw)
    assert torch.equal(got.sequences, want.sequences)
    assert seen and all(mvl == end for mvl, end, _ in seen), seen
    assert all(cap == T + N for *_, cap in seen)
    assert sorted({mvl for mvl, *_ in seen}) == list(range(T, T + N))


def test_fork_cache_valid_len_modes():
    """valid_len: the length in eager forks; None (the capacity) in static steps unless they
    run eagerly and say so (host_bound), then length + recorded commits."""
    lm = tiny_lm(5)
    dec = lm.get_decoder()
    cache = ForkCache.for_model(lm, 2, 12, 3)
    with torch.no_grad():
        cache.extend(dec, torch.randint(6, V, (2, 4)))
        assert cache.valid_len() == 4
        cache.fork(dec, torch.randint(6, V, (2, 3)))
        assert cache._info.max_valid_len == 4
        cache.commit(torch.tensor([0, 2]))
        assert cache.valid_len() == 5
        with cache.static_steps(dec) as h:
            assert cache.valid_len() is None
            cache.fork(dec, torch.randint(6, V, (2, 3)))
            assert cache._info.max_valid_len is None
            cache.commit(torch.tensor([1, 1]))
            h.steps(1)
            assert cache.valid_len() is None
        assert cache.length == 6 and cache.valid_len() == 6
        with cache.static_steps(dec, host_bound=True) as h:
            assert cache.valid_len() == 6
            cache.fork(dec, torch.randint(6, V, (2, 3)))
            cache.commit(torch.tensor([0, 0]))
            h.steps(1)
            assert cache.valid_len() == 7 == int(cache.end.max())
        assert cache.valid_len() == 7


def test_fork_cache_commit_shared_and_own_buffers():
    """Layers with matching K/V are views of one all-layer buffer (one gather + copy per
    commit); a layer that does not match keeps its own buffers; both commit the winner."""
    cache = ForkCache(3, 2, 6, 3)
    g = torch.Generator().manual_seed(0)
    heads = (2, 1, 2)                          # layer 1 has another kv head count
    for layer, H in zip(cache.layers, heads):
        layer.update(torch.randn(2, H, 4, 8, generator=g), torch.randn(2, H, 4, 8, generator=g))
    cache.length, cache.pos, cache.end = 4, torch.tensor([4]), torch.full((2,), 4, dtype=torch.int32)
    cache.mode = "fork"
    slots = [layer.update(torch.randn(2, H, 3, 8, generator=g), torch.randn(2, H, 3, 8, generator=g))
             for layer, H in zip(cache.layers, heads)]
    cache.mode = "prefix"
    assert [layer.shared for layer in cache.layers] == [True, False, True]
    assert cache.layers[2].keys.data_ptr() > cache.layers[0].keys.data_ptr() == cache._kv.data_ptr()
    before = [(k.clone(), v.clone()) for k, v in slots]
    cache.commit_device(torch.tensor([2, 0]))
    for layer, (k, v) in zip(cache.layers, before):
        for b, j in enumerate((2, 0)):
            assert torch.equal(layer.keys[b, :, 4], k[b, :, 6 + j])
            assert torch.equal(layer.values[b, :, 4], v[b, :, 6 + j])
        assert torch.equal(layer.keys[:, :, :4], k[:, :, :4]) and torch.equal(layer.keys[:, :, 5:], k[:, :, 5:])
    assert int(cache.pos) == 5 and cache.end.tolist() == [5, 5]


def test_fork_hands_over_prefix_uncopied():
    """In fork mode, what Cache.update returns (and the attention function reads) is the
    cache's own buffer, not a copy."""
    lm = tiny_lm(5)
    cache = ForkCache.for_model(lm, 1, 10, 3)
    ids = torch.randint(6, V, (1, 4))
    with torch.no_grad():
        cache.extend(lm.get_decoder(), ids)
    layer = cache.layers[0]
    ptr = layer.keys.data_ptr()
    cache.mode = "fork"
    k, v = layer.update(torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16))
    cache.mode = "prefix"
    assert k.data_ptr() == ptr and k.shape[2] == 13


# ------------------------------------------------------------------ processor
def _gen(lm, ids, mask, procs, **kw):
    return lm.generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList(procs), pad_token_id=PAD,
                       eos_token_id=EOS, **kw)


@pytest.mark.parametrize("source", ["model", "shared", "text"])
def test_processor_matches_native(models, source):
    lm, rm, head, _ = models
    reward = {"model": RewardModel(rm, head), "shared": RewardModel(lm, head),
              "text": TextReward(text_fn, DigitTokenizer())}[source]
    native_reward = head if source == "shared" else reward
    ids, mask = prompts()
    proc = ARGSLogitsProcessor(reward, k=6, w=2.0, attention_mask=mask)
    out = _gen(lm, ids, mask, [proc], max_new_tokens=10, do_sample=False)
    ref = args_generate(lm, ids, mask, reward=native_reward, k=6, w=2.0, max_new_tokens=10,
                        eos_token_id=EOS, pad_token_id=PAD)
    n = min(out.shape[1], ref.sequences.shape[1])
    assert torch.equal(out[:, :n], ref.sequences[:, :n])
    assert proc.rebuilds == 1 and proc.extra_forwards == 0  # the cache was kept between calls
    # a second generate call with other prompts rebuilds and is still right
    ids2, mask2 = prompts(lens=(2, 6, 6), seed=9)
    proc.set_prompt_mask(mask2)
    out2 = _gen(lm, ids2, mask2, [proc], max_new_tokens=6, do_sample=False)
    ref2 = args_generate(lm, ids2, mask2, reward=native_reward, k=6, w=2.0, max_new_tokens=6,
                         eos_token_id=EOS, pad_token_id=PAD)
    n = min(out2.shape[1], ref2.sequences.shape[1])
    assert torch.equal(out2[:, :n], ref2.sequences[:, :n])


def test_processor_sampling_scores(models):
    """With temperature τ the processor hands generate score/τ on the k candidates and -inf
    elsewhere, so generate's sampling draws from softmax(score/τ) over the top-k."""
    lm, rm, head, _ = models
    ids, mask = prompts()
    proc = ARGSLogitsProcessor(RewardModel(rm, head), k=4, w=1.5, temperature=0.5, attention_mask=mask)
    from rgk.hf import positions as _positions
    with torch.no_grad():
        logits = lm(ids, attention_mask=mask, position_ids=_positions(mask)).logits[:, -1]
    out = proc(ids, logits.clone())
    assert (torch.isfinite(out).sum(-1) == 4).all()
    ref = naive_args_generate(lm, ids, mask, reward=RewardModel(rm, head), k=4, w=1.5, max_new_tokens=1)
    top = out.max(-1)
    torch.testing.assert_close(top.values, ref.scores[:, 0] / 0.5, atol=1e-5, rtol=1e-5)
    # and inside generate with do_sample=True every generated token is one of the candidates
    g = _gen(lm, ids, mask, [ARGSLogitsProcessor(RewardModel(rm, head), k=4, w=1.5, temperature=0.5,
                                                  attention_mask=mask)],
             max_new_tokens=1, do_sample=True, top_k=0)
    assert bool(torch.isfinite(out.gather(1, g[:, -1:])).all())


class ForceToken(LogitsProcessor):
    """Forces token `tok` at generation step `step` (runs after ARGS)."""

    def __init__(self, start, step, tok):
        self.start, self.step, self.tok = start, step, tok

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.start == self.step:
            scores = torch.full_like(scores, -math.inf)
            scores[:, self.tok] = 0.0
        return scores


class FreshARGS(LogitsProcessor):
    """Ground truth: a new processor (rebuilding the cache from scratch) every call."""

    def __init__(self, **kw):
        self.kw = kw

    def __call__(self, input_ids, scores):
        return ARGSLogitsProcessor(**self.kw)(input_ids, scores)


def test_processor_commits_token_changed_by_another_processor(models):
    lm, rm, head, _ = models
    ids, mask = prompts()
    kw = dict(reward=RewardModel(rm, head), k=5, w=2.0, attention_mask=mask)
    proc = ARGSLogitsProcessor(**kw)
    T = ids.shape[1]
    out = _gen(lm, ids, mask, [proc, ForceToken(T, 2, 42)], max_new_tokens=8, do_sample=False)
    ref = _gen(lm, ids, mask, [FreshARGS(**kw), ForceToken(T, 2, 42)], max_new_tokens=8, do_sample=False)
    assert (out[:, T + 2] == 42).all()
    assert torch.equal(out, ref)
    assert proc.extra_forwards >= 1 and proc.rebuilds == 1


def test_processor_refuses_beam_search(models):
    lm, rm, head, _ = models
    ids, mask = prompts()
    proc = ARGSLogitsProcessor(RewardModel(rm, head), k=3, attention_mask=mask)
    with pytest.raises(ValueError, match="beam search"):
        _gen(lm, ids, mask, [proc], max_new_tokens=3, num_beams=2, do_sample=False)


def test_processor_batch_mismatch(models):
    lm, rm, head, _ = models
    ids, mask = prompts()
    proc = ARGSLogitsProcessor(RewardModel(rm, head), k=3, batch_size=2)
    with pytest.raises(ValueError, match="batch size mismatch"):
        proc(ids, torch.randn(3, V))


# ------------------------------------------------------------------ bad input
def test_bad_input_errors(models):
    lm, rm, head, _ = models
    ids, mask = prompts()
    with pytest.raises(ValueError, match="^k:"):
        args_generate(lm, ids, mask, reward=head, k=0)
    with pytest.raises(ValueError, match="^k:"):
        args_generate(lm, ids, mask, reward=head, k=V + 1)
    with pytest.raises(ValueError, match="^w:"):
        args_generate(lm, ids, mask, reward=head, w=float("nan"))
    with pytest.raises(ValueError, match="^w:"):
        ARGSLogitsProcessor(RewardModel(rm, head), w=float("inf"))
    with pytest.raises(ValueError, match="^k:"):
        ARGSLogitsProcessor(RewardModel(rm, head), k=0)
    with pytest.raises(ValueError, match="^temperature:"):
        args_generate(lm, ids, mask, reward=head, temperature=-1.0)
    with pytest.raises(ValueError, match="vocabulary"):
        args_generate(lm, ids, mask, reward=RewardModel(tiny_lm(6, vocab=50), head))
    with pytest.raises(ValueError, match="vocabulary"):
        ARGSLogitsProcessor(RewardModel(tiny_lm(6, vocab=50), head), k=3)(ids, torch.randn(3, V))
    with pytest.raises(ValueError, match="max_cache_len"):
        args_generate(lm, ids, mask, reward=head, max_cache_len=ids.shape[1] - 1)
    with pytest.raises(ValueError, match="max_cache_len"):
        ARGSLogitsProcessor(RewardModel(rm, head), k=3, max_cache_len=4)(ids, torch.randn(3, V))
    with pytest.raises(ValueError, match="^attention_mask:"):
        args_generate(lm, ids, mask[:, 1:], reward=head)
    with pytest.raises(ValueError, match="^max_new_tokens:"):
        args_generate(lm, ids, mask, reward=head, max_new_tokens=0)
    with pytest.raises(TypeError, match="^reward:"):
        args_generate(lm, ids, mask, reward=lambda x: x)
    with pytest.raises(ValueError, match="hidden_size"):
        RewardModel(rm, RewardHead(RewardHeadConfig(32)))
    cache = ForkCache.for_model(lm, 2, 10, 3)
    with pytest.raises(ValueError, match="batch size"):
        cache.extend(lm.get_decoder(), ids)
    with pytest.raises(ValueError, match="max_len"):
        ForkCache.for_model(lm, 3, 4, 3).extend(lm.get_decoder(), ids, mask)

"""ARGS in real pipelines: Hugging Face reward models as they come, transformers' cache
keyword, processor reuse, padding, beam search, cache capacity, ties and non-finite values.

Tiny random-weight models built from configs (fp32, CPU)."""
import functools
import math

import pytest
import torch
from transformers import (GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                          LlamaForSequenceClassification, LogitsProcessorList, Qwen2Config,
                          Qwen2ForSequenceClassification)

from conftest import left_padded, use_backend
from rgk.args import (ARGSLogitsProcessor, RewardModel, TextReward, args_generate, load_reward_model,
                      naive_args_generate, tokenizers_agree)
from rgk.hf import positions
from rgk.models import RewardHead, RewardHeadConfig

V, EOS, PAD = 97, 5, 0
RM_PAD = V            # the reward model added a pad token after the LM's vocabulary


def tiny_lm(seed=0, vocab=V):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(cfg).eval()


def tiny_classifier(family, seed=1, vocab=V + 1):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, num_labels=1, pad_token_id=min(RM_PAD, vocab - 1))
    if family == "llama":
        return LlamaForSequenceClassification(LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                                          num_attention_heads=4, num_key_value_heads=2,
                                                          **common)).eval()
    if family == "gpt2":
        return GPT2ForSequenceClassification(GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=128,
                                                        bos_token_id=1, eos_token_id=2, **common)).eval()
    if family == "qwen2":
        return Qwen2ForSequenceClassification(Qwen2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                                          num_attention_heads=4, num_key_value_heads=1,
                                                          **common)).eval()
    raise ValueError(family)


def prompts(lens=(5, 8, 3), seed=3, pad=PAD):
    return left_padded(lens, seed, V, pad)


@functools.lru_cache(maxsize=None)
def lm():
    return tiny_lm()


def head(seed=2, d=64, kind="mlp"):
    torch.manual_seed(seed)
    return RewardHead(RewardHeadConfig(d, kind, 32 if kind == "mlp" else 0))


# ----------------------------------------------------------------------------- sequence classifiers
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_sequence_classifier_fork_rewards_equal_its_own_forward(family):
    """The fork path's candidate rewards equal the classifier's own forward (its `score` head
    read at the last non-pad token) on the full left-padded sequences."""
    rm = tiny_classifier(family)
    src = RewardModel(rm)                       # no head: the classifier's own
    ids, mask = prompts()
    B, T = ids.shape
    sess = src.open(lm(), ids, mask, capacity=T + 2, k=4)
    cand = torch.randint(6, V, (B, 4), generator=torch.Generator().manual_seed(5))
    sc = sess.score(cand)
    from rgk import ops
    r_fork = ops.reward_head(sc.hidden, *sc.head)
    full = torch.cat([ids.repeat_interleave(4, 0), cand.reshape(-1, 1)], 1)
    fmask = torch.cat([mask.repeat_interleave(4, 0), torch.ones(B * 4, 1, dtype=torch.long)], 1)
    with torch.no_grad():
        own = rm(input_ids=torch.where(fmask.bool(), full, torch.full_like(full, RM_PAD)), attention_mask=fmask,
                 position_ids=positions(fmask)).logits[:, 0]
    torch.testing.assert_close(r_fork.reshape(-1), own, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_sequence_classifier_args_equals_naive(family, temperature):
    src = RewardModel(tiny_classifier(family))
    ids, mask = prompts()
    kw = dict(reward=src, k=5, w=3.0, temperature=temperature, max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD)
    a = args_generate(lm(), ids, mask, generator=torch.Generator().manual_seed(1), **kw)
    b = naive_args_generate(lm(), ids, mask, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=1e-5)


def test_sequence_classifier_from_folder_and_in_processor(tmp_path):
    rm = tiny_classifier("llama")
    rm.save_pretrained(tmp_path / "rm")
    src = RewardModel(str(tmp_path / "rm"))
    assert isinstance(src.model, LlamaForSequenceClassification)
    ids, mask = prompts()
    proc = ARGSLogitsProcessor(src, k=4, w=2.0, attention_mask=mask)
    out = lm().generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]), do_sample=False,
                        max_new_tokens=6, pad_token_id=PAD, eos_token_id=EOS)
    ref = args_generate(lm(), ids, mask, reward=RewardModel(rm), k=4, w=2.0, max_new_tokens=6, eos_token_id=EOS,
                        pad_token_id=PAD)
    n = min(out.shape[1], ref.sequences.shape[1])
    assert torch.equal(out[:, :n], ref.sequences[:, :n])


def test_reward_model_errors(tmp_path):
    with pytest.raises(ValueError, match="vocabulary"):
        args_generate(lm(), *prompts(), reward=RewardModel(tiny_classifier("llama", vocab=V - 10)))
    with pytest.raises(FileNotFoundError, match="^reward_model:"):
        RewardModel(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        RewardModel(str(tmp_path / "empty"))
    with pytest.raises(TypeError, match="^model:"):
        RewardModel(object())
    with pytest.raises(TypeError, match="score"):
        RewardModel(tiny_lm(3))          # a causal LM without a head


# ----------------------------------------------------------------------------- another tokenizer
def word_tokenizer(words, path=None, pad="[PAD]"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=words[1]))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=words[1], pad_token=pad)
    if path is not None:
        tok.save_pretrained(path)
    return tok


def lm_words():
    return ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(2, V)]


def test_other_tokenizer_goes_through_text_pairs(tmp_path):
    """A classifier with its own tokenizer is scored on (prompt, response) text pairs."""
    lm_tok = word_tokenizer(lm_words())
    rm_words = ["[PAD]", "[UNK]", "[SEP]"] + [f"w{i}" for i in reversed(range(2, V))]
    rm_tok = word_tokenizer(rm_words, tmp_path / "rm")
    torch.manual_seed(4)
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(rm_words), hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=2, num_labels=1,
                                                    pad_token_id=0)).eval()
    rm.save_pretrained(tmp_path / "rm")
    assert not tokenizers_agree(rm_tok, lm_tok)
    src = load_reward_model(str(tmp_path / "rm"), lm_tok)
    assert isinstance(src, TextReward) and src.pairs
    seen = []
    fn = src.fn
    src.fn = lambda p, r: (seen.append((list(p), list(r))), fn(p, r))[1]
    ids, mask = prompts()
    kw = dict(reward=src, k=4, w=2.0, max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD)
    a, b = args_generate(lm(), ids, mask, **kw), naive_args_generate(lm(), ids, mask, **kw)
    assert torch.equal(a.sequences, b.sequences)
    # the reward model saw the prompt and the response as two fields
    p0, r0 = seen[0][0][0], seen[0][1][0]
    assert p0 == lm_tok.decode(ids[0][mask[0].bool()].tolist(), skip_special_tokens=True)
    assert len(r0.split()) == 1
    # and the rewards are the classifier's own on its tokenisation of the pair
    enc = rm_tok([p0], [r0], return_tensors="pt")
    with torch.no_grad():
        own = rm(**enc).logits[0, 0]
    torch.testing.assert_close(fn([p0], [r0])[0], own, atol=1e-5, rtol=1e-5)


def test_same_tokenizer_goes_through_fork(tmp_path):
    lm_tok = word_tokenizer(lm_words())
    rm_tok = word_tokenizer(lm_words() + ["[RMPAD]"], tmp_path / "rm", pad="[RMPAD]")   # a superset
    tiny_classifier("llama").save_pretrained(tmp_path / "rm")
    assert tokenizers_agree(rm_tok, lm_tok)
    assert isinstance(load_reward_model(str(tmp_path / "rm"), lm_tok), RewardModel)


def test_text_reward_pairs_mode_and_errors():
    lm_tok = word_tokenizer(lm_words())
    calls = []
    src = TextReward(lambda p, r: (calls.append((p, r)), [float(len(x)) for x in r])[1], lm_tok, pairs=True)
    r = src([[10, 11]], [[12, 13]])
    assert calls == [(["w10 w11"], ["w12 w13"])] and r.tolist() == [7.0]
    with pytest.raises(ValueError, match="^fn:"):
        TextReward(lambda t: [1.0, 2.0], lm_tok)([[10]], [[11]])
    with pytest.raises(TypeError, match="^fn:"):
        TextReward(3, lm_tok)


# ----------------------------------------------------------------------------- transformers' cache keyword
def _without_alias(cls, drop):
    """cls.forward as transformers 5.40 will have it, on any installed version: it declares
    `cache=` only; `past_key_values=` is no longer known, so it lands in **kwargs and is
    ignored (and with drop=["cache"] the cache is ignored too)."""
    import inspect
    orig = cls.forward
    sig = inspect.signature(orig)
    own = "cache" if "cache" in sig.parameters else "past_key_values"
    params = [p.replace(name="cache") if p.name == "past_key_values" else p for p in sig.parameters.values()]

    def forward(self, *args, **kwargs):
        if own == "cache":      # on < 5.24 the model's own inner calls still use the old name
            kwargs.pop("past_key_values", None)
        c = kwargs.pop("cache", None)
        if "cache" not in drop and c is not None:
            kwargs[own] = c
        return orig(self, *args, **kwargs)
    forward.__signature__ = sig.replace(parameters=params)
    return forward


@pytest.fixture
def alias_removed(monkeypatch):
    from transformers.models.llama import modeling_llama as ml
    for cls in (ml.LlamaModel, ml.LlamaForCausalLM):
        monkeypatch.setattr(cls, "forward", _without_alias(cls, []))
    return ml


def test_no_path_decodes_without_its_cache_when_the_alias_is_gone(alias_removed):
    from rgk import hf
    assert hf.cache_kwarg(lm()) == "cache" and hf.cache_kwarg(lm().model) == "cache"
    ids, mask = prompts()
    rm = tiny_lm(1)
    for reward in (head(), RewardModel(rm, head()), TextReward(lambda t: [len(x) % 5 for x in t],
                                                               word_tokenizer(lm_words()))):
        kw = dict(reward=reward, k=4, w=1.0, max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD)
        a, b = args_generate(lm(), ids, mask, **kw), naive_args_generate(lm(), ids, mask, **kw)
        assert torch.equal(a.sequences, b.sequences)


def test_an_ignored_cache_fails_loudly(monkeypatch):
    from transformers.models.llama import modeling_llama as ml
    for cls in (ml.LlamaModel, ml.LlamaForCausalLM):
        monkeypatch.setattr(cls, "forward", _without_alias(cls, ["cache"]))
    ids, mask = prompts()
    # refused before any work by the fork probe (rgk.args.decode.family_problem), naming the cache,
    # or (a model probed before the patch: the verdict is kept per model) at the first forward
    with pytest.raises((ValueError, RuntimeError), match="left the ForkCache empty.*cache"):
        args_generate(lm(), ids, mask, reward=head(), k=3, max_new_tokens=2)
    with pytest.raises((ValueError, RuntimeError), match="left the ForkCache empty.*cache"):
        args_generate(lm(), ids, mask, reward=RewardModel(tiny_lm(1), head()), k=3, max_new_tokens=2)


def test_cache_keyword_follows_the_signature():
    from rgk import hf
    assert hf.cache_kwarg(lm()) in ("cache", "past_key_values")

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, **kw):
            pass

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, **kw):
            pass

    class Neither(torch.nn.Module):
        def forward(self, input_ids=None, **kw):
            pass
    assert hf.cache_kwarg(Old()) == "past_key_values" and hf.cache_kwarg(New()) == "cache"
    with pytest.raises(TypeError, match="^model:"):
        hf.cache_kwarg(Neither())


def test_processor_declares_no_continuous_batching():
    assert ARGSLogitsProcessor.supports_continuous_batching is False


# ----------------------------------------------------------------------------- processor edges
def _gen(ids, mask, procs, **kw):
    return lm().generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList(procs), pad_token_id=PAD,
                         eos_token_id=EOS, **kw)


def _ref(ids, mask, reward, n, k=4, w=2.0):
    return args_generate(lm(), ids, mask, reward=reward, k=k, w=w, max_new_tokens=n, eos_token_id=EOS,
                         pad_token_id=PAD).sequences


def test_processor_reused_with_other_padding_same_shape():
    """Second generate call, same shape, other padding, no set_prompt_mask: still right."""
    src = RewardModel(tiny_lm(1), head())
    ids1, mask1 = prompts(lens=(5, 8, 3), seed=3)
    ids2, mask2 = prompts(lens=(8, 2, 6), seed=4)
    proc = ARGSLogitsProcessor(src, k=4, w=2.0, attention_mask=mask1)
    for ids, mask in ((ids1, mask1), (ids2, mask2)):
        out = _gen(ids, mask, [proc], max_new_tokens=5, do_sample=False)
        ref = _ref(ids, mask, src, 5)
        n = min(out.shape[1], ref.shape[1])
        assert torch.equal(out[:, :n], ref[:, :n])


def test_processor_stale_mask_outside_generate_is_refused():
    src = RewardModel(tiny_lm(1), head())
    ids1, mask1 = prompts(lens=(5, 8, 3), seed=3)
    ids2, _ = prompts(lens=(8, 2, 6), seed=4)
    proc = ARGSLogitsProcessor(src, k=3, attention_mask=mask1)
    proc(ids1, torch.randn(3, V))
    with pytest.raises(ValueError, match="^attention_mask:"):
        proc(ids2, torch.randn(3, V))


def test_right_padded_prompts_are_refused():
    ids, mask = prompts()
    right = mask.flip(1)
    with pytest.raises(ValueError, match="^attention_mask:.*right-padded"):
        args_generate(lm(), ids, right, reward=head(), k=3, max_new_tokens=2)
    with pytest.raises(ValueError, match="^attention_mask:.*right-padded"):
        naive_args_generate(lm(), ids, right, reward=head(), k=3, max_new_tokens=2)
    with pytest.raises(ValueError, match="^attention_mask:"):
        ARGSLogitsProcessor(RewardModel(tiny_lm(1), head()), k=3, attention_mask=right)(ids, torch.randn(3, V))


def test_left_padded_prompts_without_a_mask():
    """Without a mask the leading pad tokens are padding (as HF generate infers)."""
    ids, mask = prompts()
    for reward in (head(), RewardModel(tiny_lm(1), head())):
        a = args_generate(lm(), ids, None, reward=reward, k=4, w=2.0, max_new_tokens=5, eos_token_id=EOS,
                          pad_token_id=PAD)
        b = args_generate(lm(), ids, mask, reward=reward, k=4, w=2.0, max_new_tokens=5, eos_token_id=EOS,
                          pad_token_id=PAD)
        assert torch.equal(a.sequences, b.sequences)
    src = RewardModel(tiny_lm(1), head())
    proc = ARGSLogitsProcessor(src, k=4, w=2.0, pad_token_id=PAD)        # no mask given to anybody
    out = lm().generate(ids, logits_processor=LogitsProcessorList([proc]), do_sample=False, max_new_tokens=5,
                        pad_token_id=PAD, eos_token_id=EOS)
    ref = _ref(ids, mask, src, 5)
    n = min(out.shape[1], ref.shape[1])
    assert torch.equal(out[:, :n], ref[:, :n])


def test_beam_search_on_a_later_call_is_refused():
    ids, mask = prompts()
    proc = ARGSLogitsProcessor(RewardModel(tiny_lm(1), head()), k=3)
    _gen(ids, mask, [proc], max_new_tokens=2, do_sample=False)
    with pytest.raises(ValueError, match="beam search"):
        _gen(ids, mask, [proc], max_new_tokens=2, num_beams=2, do_sample=False)


def test_max_cache_len_too_small_is_an_error_not_a_short_output():
    ids, mask = prompts()
    T = ids.shape[1]
    for reward in (head(), RewardModel(tiny_lm(1), head())):
        with pytest.raises(ValueError, match="^max_cache_len:"):
            args_generate(lm(), ids, mask, reward=reward, k=3, max_new_tokens=6, max_cache_len=T + 5)
        out = args_generate(lm(), ids, mask, reward=reward, k=3, max_new_tokens=6, max_cache_len=T + 6,
                            eos_token_id=-1)
        assert out.sequences.shape[1] == T + 6
    proc = ARGSLogitsProcessor(RewardModel(tiny_lm(1), head()), k=3, max_cache_len=T + 3)
    with pytest.raises(ValueError, match="^max_cache_len:"):
        _gen(ids, mask, [proc], max_new_tokens=6, do_sample=False)


# ----------------------------------------------------------------------------- ties and non-finite values
def tied_lm():
    """An LM whose output embedding repeats rows, so several tokens get exactly equal logits."""
    m = tiny_lm(7)
    m.config.tie_word_embeddings = False
    w = torch.nn.Parameter(m.lm_head.weight.detach().clone())
    with torch.no_grad():
        for dup in range(6, V, 2):          # token dup+1 always ties token dup
            if dup + 1 < V:
                w[dup + 1] = w[dup]
    m.lm_head.weight = w
    return m


@pytest.mark.parametrize("backend", ["default", "triton"])
@pytest.mark.parametrize("k, w", [(1, 1.5), (4, 0.0)])
def test_ties_k1_or_w0_equal_hf_greedy(monkeypatch, backend, k, w):
    use_backend(monkeypatch, backend)
    m = tied_lm()
    ids, mask = prompts()
    g = m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=PAD, eos_token_id=EOS,
                   top_k=None, top_p=None, temperature=None)
    a = args_generate(m, ids, mask, reward=head(), k=k, w=w, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD)
    n = min(g.shape[1], a.sequences.shape[1])
    assert torch.equal(a.sequences[:, :n], g[:, :n])
    # the ties are real: at least one generated step had two maximal logits
    with torch.no_grad():
        logits = m(g[:, :-1], attention_mask=torch.ones_like(g[:, :-1])).logits
    top2 = logits.topk(2, -1).values
    assert bool((top2[..., 0] == top2[..., 1]).any())


def test_nan_and_inf_rewards_follow_the_rule():
    """A candidate with a NaN reward is never chosen (score -inf); a row whose every reward
    is NaN falls back to index 0 (the LM's top token); both loops agree."""
    lm_tok = word_tokenizer(lm_words())

    def fn(texts):
        out = []
        for t in texts:
            last = int(t.split()[-1][1:])
            out.append(math.nan if last % 3 == 0 else (math.inf if last % 3 == 1 else 0.1 * last))
        return out
    src = TextReward(fn, lm_tok, include_prompt=False)
    ids, mask = prompts()
    kw = dict(reward=src, k=5, w=1.0, max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD)
    a, b = args_generate(lm(), ids, mask, **kw), naive_args_generate(lm(), ids, mask, **kw)
    assert torch.equal(a.sequences, b.sequences)
    T = ids.shape[1]
    chosen = a.sequences[:, T:]
    assert not bool(((chosen % 3 == 0) & (chosen != PAD) & (chosen != EOS)).any())
    assert torch.isfinite(a.scores).all()   # +inf scores are clamped to the largest float


def test_numpy_and_tensor_scalars_are_numbers():
    np = pytest.importorskip("numpy")
    ids, mask = prompts()
    a = args_generate(lm(), ids, mask, reward=head(), k=np.int64(3), w=np.float32(1.5),
                      max_new_tokens=torch.tensor(3))
    b = args_generate(lm(), ids, mask, reward=head(), k=3, w=1.5, max_new_tokens=3)
    assert torch.equal(a.sequences, b.sequences)
    with pytest.raises(TypeError, match="^k:"):
        args_generate(lm(), ids, mask, reward=head(), k=True)
    with pytest.raises(TypeError, match="^input_ids:"):
        args_generate(lm(), ids.int(), mask, reward=head())


# ----------------------------------------------------------------------------- processor graph bookkeeping
class _ReplayByRerun:
    """Stand-in for torch.cuda's graph API on CPU: `replay` re-runs the captured body and
    writes into the captured outputs, as a real replay overwrites its static outputs."""
    import contextlib as _c

    Stream = staticmethod(lambda: _ReplayByRerun._S())
    current_stream = staticmethod(lambda: _ReplayByRerun._S())
    stream = staticmethod(lambda s: _ReplayByRerun._c.nullcontext())
    graph = staticmethod(lambda g: _ReplayByRerun._c.nullcontext())

    class _S:
        def wait_stream(self, other):
            pass

    class _G:
        def replay(self):
            res = self.body()
            for o, r in zip(self.out, res):
                o.copy_(r)

    CUDAGraph = _G

    @staticmethod
    def bind(g, body, out):
        g.body, g.out = body, out


def test_processor_graph_path_bookkeeping(monkeypatch):
    """The graph path (commit of the appended candidate + top-k + fork + select replayed per
    call) gives the eager processor's tokens, also when another processor forces a token."""
    from rgk.args import processor as pm
    monkeypatch.setattr(pm, "GRAPH_API", _ReplayByRerun())
    src = RewardModel(tiny_lm(1), head())
    ids, mask = prompts()

    class Force(torch.nn.Module):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == ids.shape[1] + 2:
                scores = torch.full_like(scores, -math.inf)
                scores[:, 42] = 0.0
            return scores
    for extra in ([], [Force()]):
        g = ARGSLogitsProcessor(src, k=4, w=2.0, attention_mask=mask, graph=True)
        e = ARGSLogitsProcessor(src, k=4, w=2.0, attention_mask=mask, graph=False)
        a = _gen(ids, mask, [g] + extra, max_new_tokens=7, do_sample=False)
        b = _gen(ids, mask, [e] + extra, max_new_tokens=7, do_sample=False)
        assert torch.equal(a, b)
        assert g.graph_replays >= 5 and e.graph_replays == 0
        assert g.session.cache.length == e.session.cache.length


# ----------------------------------------------------------------------------- ARGRE + ARGS
@pytest.mark.parametrize("loop", ["eager", "dynamic"])
def test_argre_attached_edits_every_candidate_like_the_naive_path(loop):
    """With an ARGRE editor attached, the fork pass edits all k candidates (each is the newest
    position of its own sequence), so the cached loop equals the naive one, which edits the
    last position of every full forward; and the edit does change the choice."""
    from rgk.argre import ARGREEditor
    g = torch.Generator().manual_seed(0)
    m = 32
    ed = ARGREEditor(torch.randn(m, 64, generator=g) * 0.3, torch.randn(m, generator=g) * 0.1,
                     torch.randn(1, m, generator=g) * 0.3, torch.zeros(1), torch.randn(64, generator=g) * 0.5, 2.0,
                     n_steps=2, step_size=0.3)
    model = tiny_lm(11)
    ids, mask = prompts()
    for reward in (head(), RewardModel(model, head())):
        kw = dict(reward=reward, k=4, w=2.0, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD)
        with ed.attach(model):
            a = args_generate(model, ids, mask, loop=loop, **kw)
            b = naive_args_generate(model, ids, mask, **kw)
        plain = args_generate(model, ids, mask, loop=loop, **kw)
        assert torch.equal(a.sequences, b.sequences)
        torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=1e-5)
        assert not torch.equal(a.sequences, plain.sequences)

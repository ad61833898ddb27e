"""ARGS where users call it: `model.generate(custom_generate=...)`, pipelines, the processor
continuing its own output, and the edge defects of issue 23 (NaN outside a row's range in
the CPU fork attention, denormal temperatures, shipped heads by name, rgk/args layout).

Tiny random-weight models (fp32, CPU) unless marked default_model (the real SmolLM2)."""
import ast
import functools
import math
import pathlib
import warnings

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                          StoppingCriteria, StoppingCriteriaList)

from conftest import left_padded, use_backend
from rgk.args import (ARGSGenerateOutput, ARGSLogitsProcessor, RewardModel, TextReward, args_generate,
                      custom_generate, naive_args_generate)
from rgk.models import RewardHead, RewardHeadConfig

V, EOS, PAD = 97, 5, 0
ROOT = pathlib.Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def lm(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=EOS, pad_token_id=PAD)
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id, m.generation_config.pad_token_id = EOS, PAD
    return m


def head(seed=2, d=64):
    torch.manual_seed(seed)
    return RewardHead(RewardHeadConfig(d, "mlp", 32))


def batch(lens=(5, 8, 3), seed=3):
    return left_padded(lens, seed, V, PAD)


def gen(model, ids, mask, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, custom_generate=custom_generate, **kw)


def frequent_tokens(model, ids, mask, reward, n=2, **kw):
    """Token ids the loop emits early in this batch: EOS ids that will actually stop rows."""
    out = args_generate(model, ids, mask, reward=reward, max_new_tokens=6, **kw).sequences[:, ids.shape[1]:]
    return [int(t) for t in out[:, 1:4].flatten().unique()[:n]]


# ----------------------------------------------------------------------------- custom_generate
@pytest.mark.parametrize("loop", ["auto", "dynamic"])
def test_custom_generate_greedy_equals_args_generate(loop):
    m, h = lm(), head()
    ids, mask = batch()
    ref = args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=9, loop=loop)
    out = gen(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=9, loop=loop, return_dict_in_generate=True)
    assert isinstance(out, ARGSGenerateOutput)
    assert torch.equal(out.sequences, ref.sequences)
    for name in ("scores", "rewards", "logprobs"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=0, atol=0)
    # and the oracle agrees
    nv = naive_args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=9)
    assert torch.equal(out.sequences, nv.sequences)


def test_custom_generate_seeded_sampling():
    m, h = lm(), head()
    ids, mask = batch()
    ref = args_generate(m, ids, mask, reward=h, k=5, w=1.0, temperature=0.8, max_new_tokens=8,
                        generator=torch.Generator().manual_seed(11))
    out = gen(m, ids, mask, reward=h, k=5, w=1.0, do_sample=True, temperature=0.8, max_new_tokens=8,
              generator=torch.Generator().manual_seed(11))
    assert torch.equal(out, ref.sequences)
    # torch's global RNG, as generate's own sampling uses it
    torch.manual_seed(4)
    ref = args_generate(m, ids, mask, reward=h, k=5, w=1.0, temperature=0.8, max_new_tokens=8)
    torch.manual_seed(4)
    out = gen(m, ids, mask, reward=h, k=5, w=1.0, do_sample=True, temperature=0.8, max_new_tokens=8)
    assert torch.equal(out, ref.sequences)
    # num_return_sequences: generate repeats each row; the same draws as args_generate on the repeats
    ref = args_generate(m, ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), reward=h, k=5, w=1.0,
                        temperature=0.8, max_new_tokens=8, generator=torch.Generator().manual_seed(2))
    out = gen(m, ids, mask, reward=h, k=5, w=1.0, do_sample=True, temperature=0.8, max_new_tokens=8,
              num_return_sequences=2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, ref.sequences)


def test_custom_generate_eos_list_max_length_min_new_tokens():
    m, h = lm(), head()
    ids, mask = batch()
    eos = frequent_tokens(m, ids, mask, h, k=4, w=1.5)
    ref = args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, eos_token_id=eos)
    assert ref.sequences.shape[1] < ids.shape[1] + 8 or (ref.sequences[:, ids.shape[1]:] == PAD).any()
    out = gen(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, eos_token_id=eos)
    assert torch.equal(out, ref.sequences)
    # max_length counts the prompt (as in generate)
    out = gen(m, ids, mask, reward=h, k=4, w=1.5, max_length=ids.shape[1] + 5, eos_token_id=eos)
    ref = args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=5, eos_token_id=eos)
    assert torch.equal(out, ref.sequences)
    # min_new_tokens: the EOS ids are no candidates for the first 4 tokens, on every loop and the oracle
    nv = naive_args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, eos_token_id=eos,
                             min_new_tokens=4)
    assert not torch.isin(nv.sequences[:, ids.shape[1]:ids.shape[1] + 4], torch.tensor(eos)).any()
    for loop in ("eager", "dynamic"):
        got = args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, eos_token_id=eos,
                            min_new_tokens=4, loop=loop)
        assert torch.equal(got.sequences, nv.sequences), loop
    out = gen(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, eos_token_id=eos, min_new_tokens=4)
    assert torch.equal(out, nv.sequences)


def test_custom_generate_with_a_reward_model_and_a_text_reward():
    m, h = lm(), head()
    rm = RewardModel(lm(1), head(3))
    ids, mask = batch()
    ref = args_generate(m, ids, mask, reward=rm, k=4, w=1.0, max_new_tokens=6)
    assert torch.equal(gen(m, ids, mask, reward=rm, k=4, w=1.0, max_new_tokens=6), ref.sequences)

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))
    tr = TextReward(lambda texts: [float(sum(map(int, t.split())) % 7) for t in texts], Tok())
    ref = args_generate(m, ids, mask, reward=tr, k=3, w=0.1, max_new_tokens=4)
    assert torch.equal(gen(m, ids, mask, reward=tr, k=3, w=0.1, max_new_tokens=4), ref.sequences)


class _Recorder:
    def __init__(self):
        self.got = []

    def put(self, x):
        self.got.append(x.tolist())

    def end(self):
        self.got.append("end")


@pytest.mark.parametrize("loop", ["eager", "dynamic"])
def test_custom_generate_streamer(loop):
    m, h = lm(), head()
    ids, mask = batch(lens=(6,))
    ref = args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=5)
    s = _Recorder()
    out = gen(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=5, streamer=s, loop=loop)
    assert torch.equal(out, ref.sequences)
    new = out[0, ids.shape[1]:].tolist()
    assert s.got == [ids.tolist()] + [[t] for t in new] + ["end"]     # generate's own protocol
    s2 = _Recorder()
    args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=5, streamer=s2, loop=loop)
    assert s2.got == s.got


class _StopAfter(StoppingCriteria):
    """Stop a row once it has emitted `token` (a per-row criterion)."""

    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kw):
        return (input_ids == self.token).any(-1) & (torch.arange(input_ids.shape[1]) >= 8).any()


def test_custom_generate_stopping_criteria_and_logits_processors():
    m, h = lm(), head()
    ids, mask = batch()
    T = ids.shape[1]
    stop_tok = frequent_tokens(m, ids, mask, h, n=1, k=4, w=1.5)[0]
    crit = StoppingCriteriaList([_StopAfter(stop_tok)])
    nv = naive_args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, stopping_criteria=crit)
    assert (nv.sequences[:, T:] == PAD).any()        # the criterion stopped some row early
    for loop in ("eager", "dynamic"):
        got = args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, stopping_criteria=crit, loop=loop)
        assert torch.equal(got.sequences, nv.sequences), loop
    assert torch.equal(gen(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, stopping_criteria=crit),
                       nv.sequences)
    # a logits processor changes the LM's logits before the top-k (so candidates and log-probs)
    rp = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.8)])
    nv = naive_args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, logits_processor=rp)
    plain = naive_args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8)
    assert not torch.equal(nv.logprobs, plain.logprobs)
    got = args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, logits_processor=rp)
    assert torch.equal(got.sequences, nv.sequences)
    out = gen(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, logits_processor=rp,
              return_dict_in_generate=True)
    assert torch.equal(out.sequences, nv.sequences)
    torch.testing.assert_close(out.logprobs, nv.logprobs, rtol=1e-5, atol=1e-5)
    # the ones generate builds from its config (here: a repetition penalty that skips each row's
    # left padding) run the same way
    out = gen(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=8, repetition_penalty=1.8)
    assert not torch.equal(out, plain.sequences)
    with pytest.raises(ValueError, match="^loop: 'eager' cannot run other logits processors"):
        args_generate(m, ids, mask, reward=h, k=4, max_new_tokens=2, logits_processor=rp, loop="eager")


def test_custom_generate_sampling_warpers_are_not_applied_and_say_so():
    m, h = lm(), head()
    ids, mask = batch()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    ref = args_generate(m, ids, mask, reward=h, k=4, w=1.0, temperature=0.9, max_new_tokens=5, generator=g())
    with pytest.warns(UserWarning, match="TopPLogitsWarper"):
        out = gen(m, ids, mask, reward=h, k=4, w=1.0, do_sample=True, temperature=0.9, top_p=0.5, top_k=3,
                  max_new_tokens=5, generator=g())
    assert torch.equal(out, ref.sequences)


@pytest.mark.parametrize("bad, match", [
    (dict(num_beams=2), "beam search"),
    (dict(penalty_alpha=0.6, top_k=4), "contrastive search"),
    (dict(prompt_lookup_num_tokens=2), "assisted decoding"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(max_new_tokens=3, reward=None), "^reward: custom_generate needs"),
    (dict(inputs_embeds="x"), "^inputs_embeds: rgk's ARGS loop takes token ids"),
    (dict(loop="fast"), "^loop: expected one of"),
    (dict(k=0), "^k: expected an int"),
])
def test_custom_generate_refusals(bad, match):
    m, h = lm(), head()
    ids, mask = batch()
    kw = dict(reward=h, max_new_tokens=3)
    if "inputs_embeds" in bad:
        bad = dict(inputs_embeds=m.get_input_embeddings()(ids))
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gen(m, ids, mask, **kw)


def test_custom_generate_refuses_assistant_model_and_an_args_processor():
    m, h = lm(), head()
    ids, mask = batch()
    with pytest.raises(ValueError, match="assisted decoding"):
        gen(m, ids, mask, reward=h, max_new_tokens=3, assistant_model=lm(1))
    proc = ARGSLogitsProcessor(RewardModel(m, h), k=3)
    with pytest.raises(ValueError, match="^logits_processor: an ARGSLogitsProcessor"):
        gen(m, ids, mask, reward=h, max_new_tokens=3, logits_processor=LogitsProcessorList([proc]))
    with pytest.raises(TypeError, match="through model.generate"):
        custom_generate(m, ids, reward=h)


# ----------------------------------------------------------------------------- pipelines
def _chat_pipeline(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    from _tiny_model import save_tiny_model
    folder = save_tiny_model(tmp_path / "tiny", hidden=32, seed=5)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.manual_seed(5)
    with torch.no_grad():           # larger random weights than the default init: prompts matter
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    return model, tok, pipeline("text-generation", model=model, tokenizer=tok)


MESSAGES = [[{"role": "user", "content": "hello what is a dog"}],
            [{"role": "user", "content": "how can i help you my good cat please thanks"}],
            [{"role": "user", "content": "tips"}]]


def _args_texts(model, tok, reward, messages, ids=False, **kw):
    """args_generate's new text for chat messages (or its new token ids, pad after EOS dropped)."""
    texts = [tok.apply_chat_template(x, tokenize=False, add_generation_prompt=True) for x in messages]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = args_generate(model, enc.input_ids, enc.attention_mask, reward=reward, pad_token_id=tok.pad_token_id, **kw)
    T = enc.input_ids.shape[1]
    if ids:
        return [_strip(s[T:].tolist(), model) for s in out.sequences]
    return [tok.decode(s[T:], skip_special_tokens=True).strip() for s in out.sequences]


def _strip(new, model):
    """New token ids up to and including the first EOS."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(new):
        if t in eos:
            return new[:i + 1]
    return new


def _pipe_new_ids(outs, messages, tok, model):
    """The new token ids of each pipeline output (return_tensors=True): the full sequence
    minus its unpadded prompt."""
    got = []
    for o, msg in zip(outs, messages):
        full = o[0]["generated_token_ids"]
        full = full.tolist() if hasattr(full, "tolist") else list(full)
        P = len(tok.apply_chat_template(msg, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
        while full and full[0] == tok.pad_token_id and len(full) > P:   # left padding kept by the pipeline
            full = full[1:]
        got.append(_strip(full[P:], model))
    return got


def test_pipeline_with_custom_generate_and_with_the_processor(tmp_path):
    model, tok, pipe = _chat_pipeline(tmp_path)
    torch.manual_seed(0)
    h = RewardHead(RewardHeadConfig(32, "linear"))
    want = _args_texts(model, tok, h, MESSAGES, ids=True, k=4, w=3.0, max_new_tokens=6)
    assert len({tuple(x) for x in want}) > 1
    # transformers 5's text-generation pipeline samples unless told otherwise: greedy ARGS says do_sample=False
    outs = pipe(MESSAGES, custom_generate=custom_generate, reward=h, k=4, w=3.0, max_new_tokens=6, batch_size=3,
                do_sample=False, return_tensors=True)
    assert _pipe_new_ids(outs, MESSAGES, tok, model) == want
    proc = ARGSLogitsProcessor(RewardModel(model, h), k=4, w=3.0)
    outs = pipe(MESSAGES, logits_processor=LogitsProcessorList([proc]), max_new_tokens=6, batch_size=3,
                do_sample=False, return_tensors=True)
    assert _pipe_new_ids(outs, MESSAGES, tok, model) == want
    # and as text, the way pipelines are read
    outs = pipe(MESSAGES, custom_generate=custom_generate, reward=h, k=4, w=3.0, max_new_tokens=6, batch_size=3,
                do_sample=False)
    texts = _args_texts(model, tok, h, MESSAGES, k=4, w=3.0, max_new_tokens=6)
    assert [o[0]["generated_text"][-1]["content"].strip() for o in outs] == texts
    # sampling through the pipeline: the same draws as args_generate with the same generator
    want = _args_texts(model, tok, h, MESSAGES, ids=True, k=4, w=3.0, max_new_tokens=6, temperature=0.7,
                       generator=torch.Generator().manual_seed(9))
    outs = pipe(MESSAGES, custom_generate=custom_generate, reward=h, k=4, w=3.0, max_new_tokens=6, batch_size=3,
                do_sample=True, temperature=0.7, generator=torch.Generator().manual_seed(9), return_tensors=True)
    assert _pipe_new_ids(outs, MESSAGES, tok, model) == want


# ----------------------------------------------------------------------------- the processor
def test_processor_continues_its_own_output():
    m, h = lm(), head()
    ids, mask = batch()
    kw = dict(do_sample=False, pad_token_id=PAD, eos_token_id=None)
    fresh = lambda: ARGSLogitsProcessor(RewardModel(m, h), k=4, w=1.5)  # noqa: E731
    proc = fresh()
    o1 = m.generate(input_ids=ids, attention_mask=mask, logits_processor=[proc], max_new_tokens=10, **kw)
    m1 = torch.cat([mask, torch.ones(mask.shape[0], 10, dtype=mask.dtype)], 1)
    for cont_mask in (m1, torch.ones_like(o1)):      # the followed mask, and the all-ones mask
        got = m.generate(input_ids=o1, attention_mask=cont_mask, logits_processor=[proc], max_new_tokens=10, **kw)
        want = m.generate(input_ids=o1, attention_mask=cont_mask, logits_processor=[fresh()], max_new_tokens=10,
                          **kw)
        assert torch.equal(got, want)
    # a fixed capacity that the continuation outgrows is a clear error
    small = ARGSLogitsProcessor(RewardModel(m, h), k=4, w=1.5, max_cache_len=ids.shape[1] + 10)
    o1 = m.generate(input_ids=ids, attention_mask=mask, logits_processor=[small], max_new_tokens=10, **kw)
    with pytest.raises(ValueError, match="^max_cache_len"):
        m.generate(input_ids=o1, attention_mask=m1, logits_processor=[small], max_new_tokens=5, **kw)


def test_greedy_processor_in_a_sampling_generate_warns():
    m, h = lm(), head()
    ids, mask = batch()
    proc = ARGSLogitsProcessor(RewardModel(m, h), k=4)
    with pytest.warns(UserWarning, match="temperature=0.*do_sample=True"):
        m.generate(input_ids=ids, attention_mask=mask, logits_processor=[proc], max_new_tokens=2, do_sample=True,
                   pad_token_id=PAD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.generate(input_ids=ids, attention_mask=mask, logits_processor=[proc], max_new_tokens=2, do_sample=False,
                   pad_token_id=PAD)


# ----------------------------------------------------------------------------- edge defects
@pytest.mark.parametrize("backend", ["default", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fork_attention_ignores_nonfinite_outside_a_rows_range(monkeypatch, backend, dtype):
    from rgk import ops
    from rgk.ops import reference
    use_backend(monkeypatch, backend, dtype)
    torch.manual_seed(0)
    B, Hq, Hkv, K, D, L = 3, 4, 2, 3, 16, 12
    q = torch.randn(B, Hq, K, D, dtype=dtype)
    kc, vc = torch.randn(B, Hkv, L, D, dtype=dtype), torch.randn(B, Hkv, L, D, dtype=dtype)
    kn, vn = torch.randn(B, Hkv, K, D, dtype=dtype), torch.randn(B, Hkv, K, D, dtype=dtype)
    start, end = torch.tensor([2, 0, 5]), torch.tensor([7, 4, 12])
    dirty_k, dirty_v = kc.clone(), vc.clone()
    for b in range(B):
        out_of_range = [i for i in range(L) if not (start[b] <= i < end[b])]
        for j, i in enumerate(out_of_range):
            dirty_k[b, :, i] = (math.nan, math.inf, -math.inf)[j % 3]
            dirty_v[b, :, i] = (math.inf, math.nan, -math.inf)[j % 3]
    sdpa = functools.partial(reference.fork_attention_tree_sdpa, scale=None, n=L)
    prefix = functools.partial(reference.fork_attention_prefix, scale=None, n=L)
    for fn in (ops.fork_attention, reference.fork_attention, sdpa, prefix):
        clean = fn(q, kc, vc, kn, vn, start, end)          # each path against itself on clean data
        got = fn(q, dirty_k, dirty_v, kn, vn, start, end)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, clean, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["default", "triton"])
@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 1e-30, 1e-38])
def test_tiny_temperatures_pick_the_best_score(monkeypatch, backend, temperature):
    from rgk import ops
    use_backend(monkeypatch, backend)
    torch.manual_seed(1)
    B, K = 6, 5
    logp = -torch.rand(B, K) * 5 - 1            # all-negative scores
    ids = torch.randint(0, 50, (B, K))
    r = torch.randn(B, K)
    best = (logp + 2.0 * r).argmax(-1)
    u = torch.rand(B)
    tok, idx, score = ops.select_from_rewards(logp, ids, r, reward_weight=2.0, temperature=temperature, uniform=u)
    assert torch.equal(idx, best)
    d, m = 8, 4
    hidden = torch.randn(B, K, d)
    w1, b1, w2, b2 = torch.randn(m, d), torch.randn(m), torch.randn(1, m), torch.randn(1)
    _, idx, score, rew = ops.reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight=2.0,
                                           temperature=temperature, uniform=u)
    assert torch.equal(idx, score.argmax(-1))


def test_tiny_temperature_is_greedy_args_not_greedy_lm():
    m, h = lm(), head()
    ids, mask = batch()
    greedy = args_generate(m, ids, mask, reward=h, k=4, w=3.0, max_new_tokens=6)
    lm_only = args_generate(m, ids, mask, reward=h, k=4, w=0.0, max_new_tokens=6)
    assert not torch.equal(greedy.sequences, lm_only.sequences)
    for loop in ("eager", "dynamic"):
        tiny = args_generate(m, ids, mask, reward=h, k=4, w=3.0, temperature=1e-40, max_new_tokens=6,
                             generator=torch.Generator().manual_seed(0), loop=loop)
        assert torch.equal(tiny.sequences, greedy.sequences), loop


def test_shipped_heads_by_name():
    import argparse
    from rgk._argtypes import head_path
    from rgk.models import RewardHead, shipped_heads
    assert {"smollm2-hh", "smollm2-rtp-tox"} <= set(shipped_heads())
    for name in ("smollm2-rtp-tox", "rgk/data/heads/smollm2-rtp-tox"):
        assert head_path(name) == name
        assert RewardHead.load(name).config.hidden_size == RewardHead.load("smollm2-hh").config.hidden_size
    with pytest.raises(argparse.ArgumentTypeError, match="shipped head's name: smollm2-hh"):
        head_path("no-such-head")


def test_rgk_args_is_decoding_only_and_acyclic():
    pkg = ROOT / "rgk" / "args"
    names = {p.stem for p in pkg.glob("*.py")}
    assert not names & {"head_data", "head_train", "cli_train_head", "tox_head"}
    deps = {}
    for p in pkg.glob("*.py"):
        mods = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rgk.args."):
                mods.add(node.module.split(".")[2])
            if isinstance(node, ast.ImportFrom) and node.module == "rgk.args":
                mods |= {a.name for a in node.names if a.name in names}
        deps[p.stem] = mods - {p.stem}
    deps.pop("__init__")

    def reach(a, seen):
        for b in deps.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen
    for a in deps:
        assert a not in reach(a, set()), f"rgk.args.{a} imports itself through {sorted(deps[a])}"
    for mod in ("rgk.heads.data", "rgk.heads.train", "rgk.heads.cli", "rgk.heads.tox"):
        __import__(mod)


# ----------------------------------------------------------------------------- the real SmolLM2
@pytest.mark.default_model
@pytest.mark.slow
def test_smollm2_custom_generate_and_pipeline_equal_args_generate():
    from transformers import pipeline
    from rgk.models import load_model
    model, tok = load_model()
    tok.padding_side = "left"
    h = RewardHead.load()
    msgs = [[{"role": "user", "content": "How do I keep my houseplants alive?"}],
            [{"role": "user", "content": "Say something kind."}]]
    want = _args_texts(model, tok, h, msgs, k=4, w=1.5, max_new_tokens=8)
    texts = [tok.apply_chat_template(x, tokenize=False, add_generation_prompt=True) for x in msgs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ref = args_generate(model, enc.input_ids, enc.attention_mask, reward=h, k=4, w=1.5, max_new_tokens=8,
                        pad_token_id=tok.pad_token_id)
    out = model.generate(**enc, custom_generate=custom_generate, reward=h, k=4, w=1.5, max_new_tokens=8,
                         pad_token_id=tok.pad_token_id, do_sample=False, temperature=None, top_p=None, top_k=None)
    assert torch.equal(out, ref.sequences)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    ref = args_generate(model, enc.input_ids, enc.attention_mask, reward=h, k=4, w=1.5, max_new_tokens=8,
                        pad_token_id=tok.pad_token_id, temperature=0.7, generator=g())
    out = model.generate(**enc, custom_generate=custom_generate, reward=h, k=4, w=1.5, max_new_tokens=8,
                         pad_token_id=tok.pad_token_id, do_sample=True, temperature=0.7, top_p=None, top_k=None,
                         generator=g())
    assert torch.equal(out, ref.sequences)
    # a list of EOS ids (two tokens greedy ARGS emits early, so rows stop), max_length, a streamer,
    # return_dict_in_generate
    T = enc.input_ids.shape[1]
    early = args_generate(model, enc.input_ids, enc.attention_mask, reward=h, k=4, w=1.5, max_new_tokens=8,
                          pad_token_id=tok.pad_token_id)
    eos = [int(early.sequences[0, T + 2]), int(early.sequences[1, T + 3]), tok.eos_token_id]
    ref = args_generate(model, enc.input_ids, enc.attention_mask, reward=h, k=4, w=1.5, max_new_tokens=8,
                        pad_token_id=tok.pad_token_id, eos_token_id=eos)
    assert ref.sequences.shape[1] < T + 8
    s = _Recorder()
    out = model.generate(**enc, custom_generate=custom_generate, reward=h, k=4, w=1.5, max_length=T + 8,
                         eos_token_id=eos, pad_token_id=tok.pad_token_id, do_sample=False, temperature=None,
                         top_p=None, top_k=None, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.scores, ref.scores, rtol=0, atol=0)
    one = {k: v[:1] for k, v in enc.items()}
    model.generate(**one, custom_generate=custom_generate, reward=h, k=4, w=1.5, max_new_tokens=8, streamer=s,
                   pad_token_id=tok.pad_token_id, do_sample=False, temperature=None, top_p=None, top_k=None)
    ref1 = args_generate(model, one["input_ids"], one["attention_mask"], reward=h, k=4, w=1.5, max_new_tokens=8,
                         pad_token_id=tok.pad_token_id)
    T1 = one["input_ids"].shape[1]
    assert s.got[1:-1] == [[t] for t in ref1.sequences[0, T1:].tolist()] and s.got[-1] == "end"
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    outs = pipe(msgs, custom_generate=custom_generate, reward=h, k=4, w=1.5, max_new_tokens=8, batch_size=2,
                do_sample=False, temperature=None, top_p=None, top_k=None)
    assert [o[0]["generated_text"][-1]["content"].strip() for o in outs] == want
    # the processor continuing its own output equals a fresh one
    proc = ARGSLogitsProcessor(RewardModel(model, h), k=4, w=1.5)
    kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
    o1 = model.generate(**enc, logits_processor=[proc], max_new_tokens=6, **kw)
    ones = torch.ones_like(o1)
    got = model.generate(o1, attention_mask=ones, logits_processor=[proc], max_new_tokens=6, **kw)
    fresh = ARGSLogitsProcessor(RewardModel(model, h), k=4, w=1.5)
    assert torch.equal(got, model.generate(o1, attention_mask=ones, logits_processor=[fresh], max_new_tokens=6, **kw))


def test_cli_takes_shipped_head_names(tmp_path, monkeypatch):
    """The README's RePULSe and generate commands name the shipped head alone, from any directory."""
    from rgk.cli import build_parser
    monkeypatch.chdir(tmp_path)
    p = build_parser()
    ns = p.parse_args(["repulse", "train", "--out", str(tmp_path / "run"), "--head", "smollm2-rtp-tox",
                       "--threshold", "0", "--beta", "-1"])
    assert ns.head == "smollm2-rtp-tox"
    ns = p.parse_args(["generate", "--prompt", "hi", "--head", "smollm2-hh-rs"])
    assert RewardHead.load(ns.head).config.kind in ("linear", "mlp")


def test_vanilla_tiny_temperature_is_greedy():
    from rgk.args.decode import vanilla_generate
    m = lm()
    ids, mask = batch()
    greedy = vanilla_generate(m, ids, mask, max_new_tokens=5)
    tiny = vanilla_generate(m, ids, mask, max_new_tokens=5, temperature=1e-42,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiny, greedy)


@pytest.mark.slow
def test_min_new_tokens_and_hooks_on_the_compiled_loop(trace_only_compile):
    """The step counter that holds EOS back lives on the device: the compiled step agrees."""
    m, h = lm(), head()
    ids, mask = batch()
    eos = frequent_tokens(m, ids, mask, h, k=4, w=1.5)
    nv = naive_args_generate(m, ids, mask, reward=h, k=4, w=1.5, max_new_tokens=6, eos_token_id=eos,
                             min_new_tokens=3)
    s = _Recorder()
    got = args_generate(m, ids[:1], mask[:1], reward=h, k=4, w=1.5, max_new_tokens=6, eos_token_id=eos,
                        min_new_tokens=3, loop="compiled", streamer=s)
    assert torch.equal(got.sequences, nv.sequences[:1, :got.sequences.shape[1]])
    assert s.got[-1] == "end" and len(s.got) == 2 + got.sequences.shape[1] - ids.shape[1]

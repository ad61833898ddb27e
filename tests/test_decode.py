"""rgk's static decode loop (`rgk.args.decode`): the static-shape step picks exactly the
tokens of the Python (dynamic) loop in fp32 — greedy and seeded sampling, padded batches,
EOS mid-run, every static-capable reward source and several model families — plain greedy
decoding on the same loop is HF greedy decoding, and the step compiles with
`torch.compile(fullgraph=True)` (no graph break: nothing in it needs the host)."""
import pytest
import torch

from conftest import left_padded
from transformers import (GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          LlamaForSequenceClassification, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from rgk.args import RewardModel, args_generate, naive_args_generate
from rgk.args.decode import vanilla_generate
from rgk.models import RewardHead, RewardHeadConfig

V, EOS, PAD = 97, 5, 0


def family_lm(family, seed=0):
    torch.manual_seed(seed)
    c = dict(vocab_size=V, eos_token_id=EOS, pad_token_id=PAD)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, **c)).eval()
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, **c)).eval()
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                                                **c)).eval()
    if family == "gemma":
        return GemmaForCausalLM(GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=1, head_dim=16, **c)).eval()
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=1,
                                          **c)).eval()
    raise ValueError(family)


def prompts(lens=(5, 8, 3), seed=3):
    return left_padded(lens, seed, V, PAD)


def head(d=64, seed=2):
    torch.manual_seed(seed)
    return RewardHead(RewardHeadConfig(d, "mlp", 32))


def sources(lm):
    torch.manual_seed(9)
    cls = LlamaForSequenceClassification(LlamaConfig(vocab_size=V + 1, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=1, num_attention_heads=2, num_labels=1,
                                                     pad_token_id=V)).eval()
    return {"shared": head(), "model": RewardModel(family_lm("llama", 1), head()), "classifier": RewardModel(cls)}


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "gpt2"])
@pytest.mark.parametrize("source", ["shared", "model", "classifier"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_static_loop_equals_dynamic_loop(family, source, temperature):
    lm = family_lm(family)
    reward = sources(lm)[source]
    ids, mask = prompts()
    kw = dict(reward=reward, k=5, w=2.0, temperature=temperature, max_new_tokens=10, eos_token_id=EOS,
              pad_token_id=PAD)
    a = args_generate(lm, ids, mask, loop="eager", generator=torch.Generator().manual_seed(4), **kw)
    b = args_generate(lm, ids, mask, loop="dynamic", generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stop_every", [1, 3, 50])
def test_eos_mid_run_and_stop_check_period(stop_every):
    """Rows finish at different steps; the output is cut where every row had finished,
    whatever the stop-check period."""
    lm = family_lm("llama")
    ids, mask = prompts()
    T = ids.shape[1]
    free = args_generate(lm, ids, mask, reward=head(), k=5, w=1.0, max_new_tokens=12, eos_token_id=-1,
                         loop="dynamic")
    eos = int(free.sequences[1, T + 2])
    kw = dict(reward=head(), k=5, w=1.0, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD)
    a = args_generate(lm, ids, mask, loop="eager", stop_every=stop_every, **kw)
    b = args_generate(lm, ids, mask, loop="dynamic", **kw)
    c = naive_args_generate(lm, ids, mask, **kw)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.sequences, c.sequences)
    assert (a.sequences[1, T + 3:] == PAD).all()


def test_vanilla_greedy_is_hf_greedy():
    for family in ("llama", "gpt2"):
        lm = family_lm(family)
        ids, mask = prompts()
        ours = vanilla_generate(lm, ids, mask, max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD)
        hf = lm.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=EOS,
                         pad_token_id=PAD, top_k=None, top_p=None, temperature=None)
        n = min(ours.shape[1], hf.shape[1])
        assert torch.equal(ours[:, :n], hf[:, :n])


def test_vanilla_sampling_is_seeded_and_follows_softmax():
    lm = family_lm("llama")
    ids, mask = prompts(lens=(4,))
    a = vanilla_generate(lm, ids.repeat(3000, 1), mask.repeat(3000, 1), temperature=0.9, max_new_tokens=1,
                         eos_token_id=-1, generator=torch.Generator().manual_seed(1))
    b = vanilla_generate(lm, ids.repeat(3000, 1), mask.repeat(3000, 1), temperature=0.9, max_new_tokens=1,
                         eos_token_id=-1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    from rgk.hf import positions
    with torch.no_grad():
        p = torch.softmax(lm(ids, attention_mask=mask, position_ids=positions(mask)).logits[0, -1] / 0.9, -1)
    top = p.topk(5).indices
    counts = torch.stack([(a[:, -1] == t).sum() for t in top]).double()
    expected = 3000 * p[top].double()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5   # 5 cells, P(chi2_4 > 20.5) < 0.0005 (the rest of the mass is left out)


def test_step_compiles_fullgraph_and_matches(monkeypatch):
    """torch.compile(fullgraph=True) of the whole ARGS step: a graph break would raise.  The
    compiled step's caches run without a host-side valid-length bound (a Python int that
    changes every step would be baked into the graph); the eager step's use one."""
    from rgk.args.cache import ForkCache
    real, asked = ForkCache.static_steps, []

    def spy(self, decoder, **kw):
        asked.append(kw.get("host_bound", False))
        return real(self, decoder, **kw)
    monkeypatch.setattr(ForkCache, "static_steps", spy)
    lm = family_lm("llama")
    ids, mask = prompts(lens=(4, 6))
    kw = dict(reward=RewardModel(family_lm("llama", 1), head()), k=4, w=2.0, max_new_tokens=5, eos_token_id=EOS,
              pad_token_id=PAD)
    a = args_generate(lm, ids, mask, loop="compiled", **kw)
    assert asked == [False, False]          # the LM's and the reward model's caches
    b = args_generate(lm, ids, mask, loop="dynamic", **kw)
    assert torch.equal(a.sequences, b.sequences)
    c = args_generate(lm, ids, mask, loop="eager", **kw)
    assert asked == [False, False, True, True] and torch.equal(c.sequences, b.sequences)


def test_loop_argument_errors():
    lm = family_lm("llama")
    ids, mask = prompts()
    with pytest.raises(ValueError, match="^loop:"):
        args_generate(lm, ids, mask, reward=head(), loop="fast")
    with pytest.raises(ValueError, match="^loop:"):
        args_generate(lm, ids, mask, reward=head(), loop="graph")          # CPU tensors
    from rgk.args import TextReward

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))
    with pytest.raises(ValueError, match="^loop:"):
        args_generate(lm, ids, mask, reward=TextReward(lambda t: [0.0] * len(t), Tok()), loop="eager")
    with pytest.raises(ValueError, match="^stop_every:"):
        args_generate(lm, ids, mask, reward=head(), stop_every=0)


def test_other_families_run_on_the_static_loop_and_what_it_cannot_do_is_refused():
    """OPT (decoder under model.decoder) runs on the static loop like the Python loop; Bloom
    (ALiBi) is refused by every loop before any work, naming the family and the feature
    (every family: tests/test_family_matrix.py)."""
    from transformers import BloomConfig, BloomForCausalLM, OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    lm = OPTForCausalLM(OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                                  word_embed_proj_dim=32, eos_token_id=EOS, pad_token_id=PAD)).eval()
    ids, mask = prompts()
    a = args_generate(lm, ids, mask, reward=head(32), k=3, max_new_tokens=4, loop="eager")
    b = args_generate(lm, ids, mask, reward=head(32), k=3, max_new_tokens=4, loop="dynamic")
    assert torch.equal(a.sequences, b.sequences)
    v = vanilla_generate(lm, ids, mask, max_new_tokens=4)
    hf_out = lm.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD,
                         eos_token_id=EOS)
    n = min(v.shape[1], hf_out.shape[1])
    assert torch.equal(v[:, :n], hf_out[:, :n])
    bloom = BloomForCausalLM(BloomConfig(vocab_size=V, hidden_size=32, n_layer=1, n_head=2, eos_token_id=EOS,
                                         pad_token_id=PAD)).eval()
    for loop in ("eager", "dynamic"):
        with pytest.raises(ValueError, match="^model: model_type 'bloom' uses an ALiBi position bias"):
            args_generate(bloom, ids, mask, reward=head(32), k=3, max_new_tokens=2, loop=loop)
    with pytest.raises(ValueError, match="^model: model_type 'bloom' uses an ALiBi"):
        vanilla_generate(bloom, ids, mask, max_new_tokens=2)


def test_a_step_cuda_graphs_cannot_capture_is_refused_or_run_uncaptured(monkeypatch):
    """A forward with a host sync inside (data-dependent expert routing) cannot be captured:
    loop='graph' says so in one line naming the family and the way out; loop='auto' warns and
    runs the same step uncaptured, with the eager loop's tokens.  (CPU stand-in: the capture
    raises as CUDA does when a capturing stream meets a synchronising call.)"""
    import rgk.args.decode as D

    def no_capture(dec, u0):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")
    monkeypatch.setattr(D, "_Graph", no_capture)
    monkeypatch.setattr(D, "resolve_loop", lambda loop, dev: "graph" if loop in ("graph", "auto") else loop)
    lm = family_lm("llama")
    ids, mask = prompts()
    kw = dict(reward=RewardModel(family_lm("llama", 1), head()), k=4, w=2.0, max_new_tokens=5, eos_token_id=EOS,
              pad_token_id=PAD)
    with pytest.raises(RuntimeError, match=r"^loop: 'graph' cannot capture model_type 'llama' in a CUDA graph "
                                           r"\(CUDA error: operation not permitted when stream is capturing\); "
                                           r"use loop='eager'"):
        args_generate(lm, ids, mask, loop="graph", **kw)
    ref = args_generate(lm, ids, mask, loop="eager", **kw)
    with pytest.warns(RuntimeWarning, match="cannot be captured in a CUDA graph"):
        out = args_generate(lm, ids, mask, loop="auto", **kw)
    assert torch.equal(out.sequences, ref.sequences)


def test_the_compiled_step_compiles_once_for_calls_of_the_same_shape(trace_only_compile):
    """Every args_generate call builds a fresh decoder and cache; the compiled step must not
    recompile for them (it did once per call, and failed dynamo's recompile limit on the
    fifth): one graph for ten calls of one shape, every call the eager loop's tokens."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    lm = family_lm("llama")
    ids, mask = prompts()
    kw = dict(reward=head(), k=4, w=2.0, max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD)
    ref = args_generate(lm, ids, mask, loop="eager", **kw)
    torch._dynamo.reset()
    counters.clear()
    for _ in range(10):
        assert torch.equal(args_generate(lm, ids, mask, loop="compiled", **kw).sequences, ref.sequences)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])

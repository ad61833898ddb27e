"""Issue 21's acceptance shapes: a Gemma-3-shaped model (five sliding-window layers of 16
tokens to one global layer, as in the released checkpoints, tied embeddings, query pre-attention
scalar) and a Qwen3-shaped one (q/k norms, grouped KV heads), tiny and random, with prompts of
up to 64 tokens in a left-padded batch (every prompt longer than the window), ARGS with the
shared head and with a same-family reward model, on every loop and the processor: the same
tokens as the naive oracle, rewards and scores to 1e-3.

In CI the compiled loop here traces with the aot_eager backend (whether the step is one
graph does not depend on the backend; inductor's C++ code generation costs half a minute per
model and reward kind on two cores); RGK_FAMILY_COMPILED=all compiles with inductor, as the
family matrix does then."""
import os

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

import _families as F
from rgk.args import RewardModel, args_generate, naive_args_generate

V, PAD, WINDOW = F.VOCAB, 0, 16
LENS = (64, 47, 30)
K, W, NEW = F.K, F.W, F.NEW         # the matrix's settings (its processor helper uses them)


def _gemma3(seed):
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8,
                           sliding_window=WINDOW, layer_types=["sliding_attention"] * 5 + ["full_attention"],
                           max_position_embeddings=256, pad_token_id=PAD, eos_token_id=1, bos_token_id=2)
    return Gemma3ForCausalLM(cfg).eval()


def _qwen3(seed):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                      pad_token_id=PAD, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    return Qwen3ForCausalLM(cfg).eval()


BUILD = {"gemma3": _gemma3, "qwen3": _qwen3}


@pytest.fixture
def backend(request):
    if os.environ.get("RGK_FAMILY_COMPILED") != "all":
        request.getfixturevalue("trace_only_compile")


@pytest.fixture(scope="module", params=sorted(BUILD))
def case(request):
    lm = BUILD[request.param](0)
    head = F.reward_head(32)
    return request.param, lm, head, RewardModel(BUILD[request.param](1), head)


def test_the_shapes_are_what_they_claim(case):
    name, lm, _, _ = case
    if name == "gemma3":
        cfg = lm.config
        assert cfg.sliding_window == WINDOW < min(LENS)
        assert cfg.layer_types.count("sliding_attention") == 5 and cfg.layer_types[-1] == "full_attention"
    else:
        assert lm.model.layers[0].self_attn.q_norm is not None


@pytest.mark.parametrize("kind", ["shared", "model"])
@pytest.mark.parametrize("loop", ["dynamic", "eager", "compiled", "processor"])
def test_native_equals_naive_on_every_loop(case, kind, loop, backend):
    name, lm, head, rm = case
    source = head if kind == "shared" else rm
    ids, mask = F.prompts(lens=LENS)
    kw = dict(k=K, w=W, max_new_tokens=NEW, eos_token_id=-1, pad_token_id=PAD)
    ref = naive_args_generate(lm, ids, mask, reward=source, **kw)
    assert not torch.equal(ref.sequences, naive_args_generate(lm, ids, mask, reward=source, **{**kw, "w": 0.0}
                                                              ).sequences)   # the reward steers
    if loop == "processor":
        out = F._processor(lm, RewardModel(lm, head) if kind == "shared" else rm, ids, mask)
        assert torch.equal(out.sequences, ref.sequences)
        return
    out = args_generate(lm, ids, mask, reward=source, loop=loop, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.rewards, ref.rewards, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-3, rtol=1e-3)

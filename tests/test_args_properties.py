"""Property-based checks of `args_generate` (hypothesis): random batch shapes, left
paddings, k, w, temperature, reward sources and EOS; every call either picks exactly the
naive reference's tokens (fp32) or raises a ValueError/TypeError whose message starts
with the offending argument's name.

Examples drawn per test: 150 (`test_args_generate_matches_naive`, on a plain LM and one
whose logits tie exactly), 150 (`test_args_generate_bad_arguments`), 60
(`test_processor_matches_native`); derandomized (the same examples every run), about a
minute in all on two cores.  The op-level properties are in test_ops_properties.py."""
import math
import re

import pytest
import torch

hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LogitsProcessorList  # noqa: E402

from rgk.args import ARGSLogitsProcessor, RewardModel, args_generate, naive_args_generate  # noqa: E402
from rgk.models import RewardHead, RewardHeadConfig  # noqa: E402

V, EOS, PAD = 61, 5, 0
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _lm(seed):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, eos_token_id=EOS,
                                        pad_token_id=PAD)).eval()


LM = _lm(0)
TIED = _lm(4)                       # tokens 2j+7 and 2j+6 always tie exactly (repeated output rows)
TIED.config.tie_word_embeddings = False
with torch.no_grad():
    _w = TIED.lm_head.weight.detach().clone()
    _w[7::2] = _w[6:-1:2][:_w[7::2].shape[0]]
TIED.lm_head.weight = torch.nn.Parameter(_w)
LMS = {"plain": LM, "tied": TIED}
torch.manual_seed(1)
HEADS = {"linear": RewardHead(RewardHeadConfig(32, "linear")), "mlp": RewardHead(RewardHeadConfig(32, "mlp", 16))}
RM = RewardModel(_lm(2), HEADS["mlp"])
torch.manual_seed(3)
CLS = RewardModel(LlamaForSequenceClassification(LlamaConfig(vocab_size=V + 1, hidden_size=32, intermediate_size=64,
                                                             num_hidden_layers=1, num_attention_heads=2, num_labels=1,
                                                             pad_token_id=V)).eval())
SOURCES = {"shared-linear": HEADS["linear"], "shared-mlp": HEADS["mlp"], "model": RM, "classifier": CLS}


@st.composite
def batches(draw):
    B = draw(st.integers(1, 3))
    lens = draw(st.lists(st.integers(1, 7), min_size=B, max_size=B))
    T = max(lens)
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lens):
        mask[b, T - n:] = 1
        ids[b, :T - n] = PAD
    return ids, mask


@settings(max_examples=150, **SETTINGS)
@given(batch=batches(), k=st.integers(1, 8), w=st.sampled_from([0.0, 0.5, 2.0, -1.0, 25.0]),
       temperature=st.sampled_from([0.0, 0.0, 0.7, 1.5]), source=st.sampled_from(sorted(SOURCES)),
       n=st.integers(1, 5), eos_step=st.booleans(), seed=st.integers(0, 1000),
       lm=st.sampled_from(["plain", "tied"]))
def test_args_generate_matches_naive(batch, k, w, temperature, source, n, eos_step, seed, lm):
    ids, mask = batch
    model = LMS[lm]
    eos = EOS if eos_step else -1
    kw = dict(reward=SOURCES[source], k=k, w=w, temperature=temperature, max_new_tokens=n, eos_token_id=eos,
              pad_token_id=PAD)
    a = args_generate(model, ids, mask, generator=torch.Generator().manual_seed(seed), **kw)
    b = naive_args_generate(model, ids, mask, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.rewards, b.rewards, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
    assert a.sequences.shape[1] <= ids.shape[1] + n


BAD = {
    "k": [0, -3, V + 1, 2.5, True, "3", None],
    "w": [math.nan, math.inf, -math.inf, "1", None, True],
    "temperature": [-0.1, math.nan, math.inf, "0"],
    "max_new_tokens": [0, -1, 1.5, False],
    "max_cache_len": [0, 2, 3],
    "attention_mask": ["right", "short", "float", "empty-row"],
    "input_ids": ["int32", "1d", "empty"],
}


@settings(max_examples=150, **SETTINGS)
@given(batch=batches(), arg=st.sampled_from(sorted(BAD)), data=st.data(), source=st.sampled_from(sorted(SOURCES)))
def test_args_generate_bad_arguments(batch, arg, data, source):
    ids, mask = batch
    kw = dict(reward=SOURCES[source], k=3, w=1.0, temperature=0.0, max_new_tokens=3)
    bad = data.draw(st.sampled_from(BAD[arg]))
    if arg == "attention_mask":
        mask = {"right": torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1) if ids.shape[1] > 1 else
                torch.zeros_like(mask),
                "short": mask[:, 1:], "float": mask.float(), "empty-row": torch.zeros_like(mask)}[bad]
        if bad == "right" and ids.shape[1] > 1 and bool((mask.sum(-1) > 0).all()) and not bool(
                (mask[:, 1:] < mask[:, :-1]).any()):
            mask[:, -1] = 0          # make sure some row is right-padded
    elif arg == "input_ids":
        ids = {"int32": ids.int(), "1d": ids[0], "empty": ids[:, :0]}[bad]
        mask = None
    elif arg == "max_cache_len":
        kw["max_cache_len"] = ids.shape[1] + bad - 3 + 2   # always < prompt + max_new_tokens
    else:
        kw[arg] = bad
    with pytest.raises((ValueError, TypeError)) as e:
        args_generate(LM, ids, mask, **kw)
    assert re.match(rf"^{arg}:", str(e.value)), str(e.value)


@settings(max_examples=60, **SETTINGS)
@given(batch=batches(), k=st.integers(1, 6), w=st.sampled_from([0.0, 1.0, 3.0]), n=st.integers(1, 4),
       source=st.sampled_from(["model", "classifier"]))
def test_processor_matches_native(batch, k, w, n, source):
    ids, mask = batch
    proc = ARGSLogitsProcessor(SOURCES[source], k=k, w=w, attention_mask=mask)
    out = LM.generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]), do_sample=False,
                      max_new_tokens=n, pad_token_id=PAD, eos_token_id=EOS, top_k=None, top_p=None, temperature=None)
    ref = args_generate(LM, ids, mask, reward=SOURCES[source], k=k, w=w, max_new_tokens=n, eos_token_id=EOS,
                        pad_token_id=PAD).sequences
    m = min(out.shape[1], ref.shape[1])
    assert torch.equal(out[:, :m], ref[:, :m])

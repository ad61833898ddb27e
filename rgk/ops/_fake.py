"""Fake (meta) kernels of the torch.ops.rgk.* CUDA ops: output shapes and dtypes only, so
torch.compile and FakeTensorMode can trace through them.  Imported by the library's loader
(`rgk._C`) right after the library that defines the ops is loaded (registering a fake needs
the op to exist), so `import torch, rgk._C` is enough; `rgk.ops._backend.cuda_ext()` and the
JIT build import it too.  Outputs are contiguous, like the CUDA implementations'.

SCHEMAS (rgk.ops._schemas): the op schemas these fakes stand for."""
from __future__ import annotations

import torch

from ._schemas import SCHEMAS  # noqa: F401,E402  (re-exported)


@torch.library.register_fake("rgk::topk_logprobs")
def _topk_logprobs(logits, k):
    B = logits.shape[0]
    return logits.new_empty((B, k), dtype=torch.float32), logits.new_empty((B, k), dtype=torch.int64)


@torch.library.register_fake("rgk::fork_attention")
def _fork_attention(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, max_valid_len=0):
    return q.new_empty(q.shape)


@torch.library.register_fake("rgk::reward_select")
def _reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight, temperature, uniform):
    B, K = hidden.shape[0], hidden.shape[1]
    return (hidden.new_empty((B,), dtype=torch.int64), hidden.new_empty((B,), dtype=torch.int64),
            hidden.new_empty((B, K), dtype=torch.float32), hidden.new_empty((B, K), dtype=torch.float32))


@torch.library.register_fake("rgk::argre_refine")
def _argre_refine(h, w1, b1, w2, b2, direction, r_plus, beta, n_steps, step_size):
    return h.new_empty(h.shape)

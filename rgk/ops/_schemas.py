"""The torch.ops.rgk.* op schemas `rgk.ops` calls with and `rgk.ops._fake` fakes, which
csrc/bindings.cpp must declare: checked in CI against the binding's source
(tests/test_csrc_compile.py) and, where a CUDA torch is at hand offline, against the built
library (tests/test_cuda_build.py)."""

SCHEMAS = {
    "topk_logprobs": "topk_logprobs(Tensor logits, int k) -> (Tensor, Tensor)",
    "fork_attention": "fork_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor k_new, Tensor v_new, "
                      "Tensor cache_start, Tensor cache_end, float scale, int max_valid_len=0) -> Tensor",
    "reward_select": "reward_select(Tensor hidden, Tensor logp, Tensor ids, Tensor w1, Tensor b1, Tensor? w2, "
                     "Tensor? b2, float reward_weight, float temperature, Tensor? uniform) "
                     "-> (Tensor, Tensor, Tensor, Tensor)",
    "argre_refine": "argre_refine(Tensor h, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor direction, "
                    "float r_plus, float beta, int n_steps, float step_size) -> Tensor",
}

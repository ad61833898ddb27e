// Plain C++ launchers of the rgk CUDA kernels (csrc/<op>.cu, one file per op).
//
// Only CUDA runtime types appear here, so the kernel files compile with nvcc alone and the
// torch binding (csrc/bindings.cpp) includes this header without any CUDA device code.
// Every launcher enqueues exactly one kernel on `stream`, never synchronises the host and
// returns the launch status (cudaSuccess or the error; nothing is printed).
//
// Scratch memory.  Ops that merge partial results across blocks inside the launch take
//  - `workspace`: device memory of the size the matching *_plan function reports (no
//    initialisation needed), and
//  - `sync`: a device int32 buffer of at least the reported number of ints that is zero
//    before the first launch; the kernels leave it as they found it (the last block of a
//    group resets its ticket counter, the grid barrier returns its arrival count to zero).
//    Slots [0, RGK_SYNC_RESERVED) belong to argre_refine's grid barrier (its generation
//    word is not zero after use), so the other ops index from RGK_SYNC_RESERVED on.
//    Launches that share one buffer must not overlap in time: use one buffer per stream.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

enum RgkDType : int { RGK_F32 = 0, RGK_BF16 = 1, RGK_F16 = 2 };

constexpr int RGK_SYNC_RESERVED = 16;

// ---------------------------------------------------------------- topk_logprobs
// logits [B, V] with unit stride along V and row stride `row_stride` (elements);
// out_logp [B, k] fp32 and out_ids [B, k] int64, contiguous.  1 <= k <= 64, k <= V.
struct RgkTopkPlan {
  size_t workspace_bytes;
  int64_t sync_ints;
};
cudaError_t rgk_topk_logprobs_plan(int64_t B, int64_t V, int k, RgkTopkPlan* plan);
cudaError_t rgk_topk_logprobs_launch(const void* logits, RgkDType dtype, int64_t B, int64_t V,
                                     int64_t row_stride, int k, float* out_logp, int64_t* out_ids,
                                     void* workspace, int* sync, cudaStream_t stream);

// ---------------------------------------------------------------- fork_attention
// Strides are in elements; the last dimension (D) of every tensor has unit stride.
struct RgkForkArgs {
  const void* q;        // [B, Hq, K, D]
  int64_t q_s0, q_s1, q_s2;
  const void* k_cache;  // [B, Hkv, L, D]
  int64_t kc_s0, kc_s1, kc_s2;
  const void* v_cache;  // [B, Hkv, L, D]
  int64_t vc_s0, vc_s1, vc_s2;
  const void* k_new;    // [B, Hkv, K, D]
  int64_t kn_s0, kn_s1, kn_s2;
  const void* v_new;    // [B, Hkv, K, D]
  int64_t vn_s0, vn_s1, vn_s2;
  const int* cache_start;  // [B] int32
  const int* cache_end;    // [B] int32
  void* out;               // [B, Hq, K, D] contiguous, dtype of q
  int B, Hq, Hkv, K, D, L;
  float scale;
  RgkDType dtype;
};
struct RgkForkPlan {
  size_t workspace_bytes;
  int64_t sync_ints;
  int tensor_cores;  // 1: the mma.sync path (bf16/fp16, D in {64, 128}, 16-byte aligned caches)
  int splits;        // KV splits per (row, kv head, row tile)
};
cudaError_t rgk_fork_attention_plan(const RgkForkArgs& args, RgkForkPlan* plan);
cudaError_t rgk_fork_attention_launch(const RgkForkArgs& args, void* workspace, int* sync,
                                      cudaStream_t stream);

// ---------------------------------------------------------------- reward_select
struct RgkRewardSelectArgs {
  const void* hidden;  // [B, K, d], unit stride along d
  int64_t h_s0, h_s1;
  RgkDType hidden_dtype;
  const float* logp;    // [B, K] contiguous
  const int64_t* ids;   // [B, K] contiguous
  const void* w1;       // [m, d] contiguous
  RgkDType w1_dtype;
  const float* b1;      // [m]
  const float* w2;      // [m] or nullptr (linear head, m == 1)
  const float* b2;      // [1] or nullptr
  const float* uniform; // [B] or nullptr (needed when temperature > 0)
  float reward_weight, temperature;
  int B, K, d, m;
  int64_t* token;   // [B]
  int64_t* index;   // [B]
  float* score;     // [B, K]
  float* reward;    // [B, K]
};
struct RgkRewardSelectPlan {
  size_t workspace_bytes;
  int64_t sync_ints;
};
cudaError_t rgk_reward_select_plan(const RgkRewardSelectArgs& args, RgkRewardSelectPlan* plan);
cudaError_t rgk_reward_select_launch(const RgkRewardSelectArgs& args, void* workspace, int* sync,
                                     cudaStream_t stream);

// ---------------------------------------------------------------- argre_refine
struct RgkArgreArgs {
  const void* h;  // [B, d], unit stride along d, row stride h_s0
  int64_t h_s0;
  RgkDType h_dtype;
  const void* w1;  // [m, d] contiguous
  RgkDType w1_dtype;
  const float* b1;         // [m]
  const float* w2;         // [m]
  const float* b2;         // [1]
  const float* direction;  // [d]
  float r_plus, beta, step_size;
  int n_steps;
  int B, d, m;
  void* out;  // [B, d] contiguous, dtype of h
};
struct RgkArgrePlan {
  size_t workspace_bytes;
  int64_t sync_ints;
  int blocks;           // co-resident blocks (one grid barrier spans them all)
  int cols_per_block;   // columns of w1 each block keeps in shared memory
};
// Returns cudaErrorInvalidConfiguration when w1 does not fit in the GPU's shared memory.
cudaError_t rgk_argre_refine_plan(const RgkArgreArgs& args, RgkArgrePlan* plan);
cudaError_t rgk_argre_refine_launch(const RgkArgreArgs& args, void* workspace, int* sync,
                                    cudaStream_t stream);

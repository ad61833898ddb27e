// Plain C++ launchers of the rgk CUDA kernels (csrc/<op>.cu, one file per op).
//
// Only CUDA runtime types appear here, so the kernel files compile with nvcc alone and the
// torch binding (csrc/bindings.cpp) includes this header without any CUDA device code.
// Every launcher enqueues exactly one kernel on `stream`, never synchronises the host and
// returns the launch status (cudaSuccess or the error; nothing is printed).  The op semantics
// (ties, NaN, inf) are the ones documented once in rgk/ops/__init__.py (and /work/notes/RULES.md).
//
// Errors.  Plan and launch functions return, without launching anything:
//   cudaErrorInvalidValue  arguments outside the op's contract (k < 1, k > V, K < 1, negative
//                          or inconsistent sizes, a missing pointer, an unknown dtype);
//   cudaErrorNotSupported  valid arguments beyond what this kernel can run (the limits below:
//                          k > 64, K > 64, a vocabulary too long for the merge, D > 256, W1 too
//                          large for the GPU's shared memory, a grid too large).  The host-only
//                          rgk_*_supported functions answer the same question before a call, and
//                          rgk/ops/_limits.py mirrors them in Python so that dispatch can fall
//                          back to Triton / the reference instead of raising.
// Anything else comes from the CUDA runtime (device query, launch).
//
// Launch plans.  Device properties, kernel attributes (cudaFuncSetAttribute) and occupancy
// results are computed once per (device, kernel, shape class) and cached in small static
// tables inside the launchers (thread-safe); the per-call path makes no driver queries.
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

// ---------------------------------------------------------------- limits
// The numbers every kernel file uses for its refusals; rgk/ops/_limits.py mirrors them and
// tests/test_cuda_limits.py checks that the two agree (it parses the lines below).
constexpr int64_t RGK_MAX_GRID_X = 2147483647;  // blocks along grid x (CUDA limit)
constexpr int64_t RGK_MAX_GRID_Y = 65535;       // blocks along grid y (CUDA limit)
// topk_logprobs: 1 <= k <= RGK_TOPK_MAX_K; a row is cut into chunks of at most
// RGK_TOPK_MAX_CHUNK entries and the merging block holds at most RGK_TOPK_MAX_CANDIDATES
// (= chunks * k) candidates, so ceil(V / RGK_TOPK_MAX_CHUNK) * k <= RGK_TOPK_MAX_CANDIDATES.
constexpr int RGK_TOPK_MAX_K = 64;
constexpr int RGK_TOPK_MAX_CHUNK = 8192;
constexpr int RGK_TOPK_MAX_CANDIDATES = 8192;
// fork_attention: head size D <= RGK_FORK_MAX_D; at most RGK_FORK_MAX_SPLITS KV splits.
constexpr int RGK_FORK_MAX_D = 256;
constexpr int RGK_FORK_MAX_SPLITS = 64;
// reward_select: 1 <= K <= RGK_REWARD_MAX_K candidates; the MLP head's hidden units are cut
// into slices of RGK_REWARD_UNITS_PER_BLOCK (grid y, so ceil(m / it) <= RGK_MAX_GRID_Y).
constexpr int RGK_REWARD_MAX_K = 64;
constexpr int RGK_REWARD_UNITS_PER_BLOCK = 64;
// argre_refine: blocks of RGK_ARGRE_THREADS threads, each keeping W1[:, ds columns] (fp32,
// transposed, ds a power of two in [RGK_ARGRE_MIN_COLS, RGK_ARGRE_MAX_COLS]) in shared memory;
// R = 1 row per pass when B <= 1, else RGK_ARGRE_ROWS.  Shared floats per block:
//   ds * wp + R * wp + ds * R + max(RGK_ARGRE_THREADS * R, R * ub / 4),
//   wp = ceil(m / 32) * 32 + 4, nblk = ceil(d / ds), ub = ceil(ceil(m / nblk) / 4) * 4,
// and all nblk blocks must be co-resident (cooperative launch).
constexpr int RGK_ARGRE_THREADS = 256;
constexpr int RGK_ARGRE_ROWS = 8;
constexpr int RGK_ARGRE_MIN_COLS = 4;
constexpr int RGK_ARGRE_MAX_COLS = 256;

// ---------------------------------------------------------------- topk_logprobs
// logits [B, V] with unit stride along V and row stride `row_stride` (elements);
// out_logp [B, k] fp32 and out_ids [B, k] int64, contiguous.  1 <= k <= 64, k <= V.
struct RgkTopkPlan {
  size_t workspace_bytes;
  int64_t sync_ints;
};
// True when rgk_topk_logprobs_launch runs these shapes (no device query).
bool rgk_topk_logprobs_supported(int64_t B, int64_t V, int k, RgkDType dtype);
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
// `max_valid_len`: a host-side upper bound of cache_end[b] - cache_start[b] over the batch
// (what the caller knows without reading the device tensors); the number of KV splits is
// sized from it instead of the buffer capacity L.  A value <= 0 or > L means "use L".  It is
// a performance hint only: the kernel covers every row's whole range [start, end) whatever
// the value.  Plan and launch must be given the same value (it sizes the workspace).
bool rgk_fork_attention_supported(int64_t B, int64_t Hq, int64_t Hkv, int64_t K, int64_t D, int64_t L,
                                  RgkDType dtype);
cudaError_t rgk_fork_attention_plan(const RgkForkArgs& args, int max_valid_len, RgkForkPlan* plan);
cudaError_t rgk_fork_attention_launch(const RgkForkArgs& args, int max_valid_len, void* workspace, int* sync,
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
// `mlp`: an MLP head (w2/b2 given); false: the linear head (m must be 1).
bool rgk_reward_select_supported(int64_t B, int64_t K, int64_t d, int64_t m, bool mlp, RgkDType hidden_dtype,
                                 RgkDType w1_dtype);
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
// On the current device (its properties and the kernel's occupancy, cached): true when W1
// fits in the shared memory of blocks that can all be co-resident.
bool rgk_argre_refine_supported(int64_t B, int64_t d, int64_t m, RgkDType h_dtype, RgkDType w1_dtype);
// Returns cudaErrorNotSupported when w1 does not fit in the GPU's shared memory.  The launch
// is cooperative: a grid that cannot be co-resident fails (cudaErrorCooperativeLaunchTooLarge)
// instead of hanging; cooperative launches are CUDA-graph capturable (CUDA 12+).
cudaError_t rgk_argre_refine_plan(const RgkArgreArgs& args, RgkArgrePlan* plan);
cudaError_t rgk_argre_refine_launch(const RgkArgreArgs& args, void* workspace, int* sync,
                                    cudaStream_t stream);

// reward_select: ARGS scoring and choice over the K candidates of every row, one launch.
//
// Semantics: the one rule for ties, NaN and inf of rgk/ops/__init__.py's docstring, i.e.
//   r[b, j]     = w1 . h[b, j] + b1                            (linear head: w1 [1, d], b1 [1])
//               = w2 . relu(W1 h[b, j] + b1) + b2              (MLP head: W1 [m, d], b1 [m], w2 [1, m], b2 [1])
//                 returned raw (NaN / inf kept as computed: relu(NaN) = NaN)
//   score[b, j] = logp[b, j] + reward_weight * r[b, j] in fp32 (two roundings, no FMA), and
//                 exactly logp[b, j] when reward_weight == 0 (the reward is ignored, NaN too);
//                 -inf where logp is -inf or the score is NaN; +inf clamped to FLT_MAX
//   temperature == 0: index[b] = lowest j with the maximal score (0 when every score is -inf)
//   temperature  > 0: z_j = (score_j - max score) / temperature over score_j > -inf (the
//                     caller floors temperature at FLT_MIN);  e_j = exp(z_j - max z)
//                     (0 where z_j = -inf); p_j = e_j / sum_j e_j (sum in index order);
//                     cdf = cumsum(p) in index order; index[b] = min(#{j : cdf_j <= u[b] *
//                     cdf_{K-1}}, last j with p_j > 0); 0 when every z is -inf
//   token[b]    = ids[b, index[b]]
//   Shapes: hidden [B, K, d] (fp32/bf16/fp16, unit stride along d), logp [B, K] fp32,
//   ids [B, K] int64, u [B] fp32 -> token [B], index [B] int64, score [B, K], reward [B, K] fp32.
//   1 <= K <= 64 (K = 0 never launches: cudaErrorInvalidValue).  Head math in fp32 (weights
//   fp32/bf16/fp16); limits in rgk_kernels.h and rgk/ops/_limits.py.
//
// Design.  Linear head: one warp per candidate row (a memory-bound dot product, 16-byte
// loads when the layout allows).  MLP head: a GEMM Z = H W1^T with the ReLU / w2 epilogue
// fused; blocks tile (BM candidate rows) x (64 hidden units) and stream d through shared
// memory, double-buffered:
//   - tensor cores (mma.sync m16n8k16, fp32 accumulators) when hidden is bf16/fp16 and W1 has
//     the same dtype, or hidden is bf16 and W1 is fp32: then W1 is split on the fly into three
//     bf16 terms (hi + mid + lo == W1 exactly, 3 x 8 significant bits >= fp32's 24) and the
//     three products are accumulated in fp32 — the result has fp32 accuracy (bf16 x bf16
//     products are exact), at tensor-core speed.  Needs 16-byte aligned rows (d % 8 == 0).
//   - otherwise CUDA cores: each thread a 4 rows x 4 units register tile over k-major shared
//     tiles (two float4 shared loads per 16 FMAs), 16-byte/8-byte global loads when aligned.
// Each block reduces relu(z + b1) * w2 over its 64 units into a per-slice partial; the last
// block of a row tile (atomic ticket) sums the slices in a fixed order and adds b2.  A per-row
// counter of final candidates tells which block completes a batch row; that block computes
// the row's scores and choice.  One launch, deterministic results.
#include "rgk_common.cuh"

namespace rgk {
namespace {

constexpr int kMaxCand = RGK_REWARD_MAX_K;
constexpr int kLinThreads = 256;  // 8 candidate rows per block
constexpr int kMlpThreads = 128;  // 4 warps, both MLP kernels
constexpr int kBN = RGK_REWARD_UNITS_PER_BLOCK;  // hidden units per block
constexpr int kMinBM = 16;                       // smallest row tile (sizes the tile counters)
static_assert(kMaxCand == 64, "select_row gives each lane two candidates");
static_assert(kBN == 64, "the MLP tiles are written for 64 units per block");

struct SelParams {
  RgkRewardSelectArgs a;
  float* partial;  // [slices, B*K] (MLP only)
  int slices;
  int vec;         // vector loads are safe (checked on the host)
  int* row_done;   // [B]: candidates of batch row b with a final reward (back to 0 when chosen)
  int* tile_done;  // [row tiles]: slices finished per row tile (MLP)
};

// ------------------------------------------------------------------ the choice
__device__ __forceinline__ float make_score(float lp, float r, float w) {
  const float v = (w == 0.f) ? lp : __fadd_rn(lp, __fmul_rn(w, r));
  if (lp == neg_inf() || v != v) return neg_inf();
  return fminf(v, kFltMax);
}

// Score and choice of batch row b by one warp; all K rewards of the row are final.
// `my`: kMaxCand floats of shared scratch owned by this warp.
__device__ void select_row(const RgkRewardSelectArgs& a, int b, float* my) {
  const int lane = threadIdx.x & 31;
  const float ninf = neg_inf();
  const int j0 = lane, j1 = lane + 32;
  const bool v0 = j0 < a.K, v1 = j1 < a.K;
  const int64_t base = static_cast<int64_t>(b) * a.K;
  float s0 = ninf, s1 = ninf;
  if (v0) {
    s0 = make_score(a.logp[base + j0], __ldcg(a.reward + base + j0), a.reward_weight);
    a.score[base + j0] = s0;
  }
  if (v1) {
    s1 = make_score(a.logp[base + j1], __ldcg(a.reward + base + j1), a.reward_weight);
    a.score[base + j1] = s1;
  }
  int idx = 0;
  if (a.temperature == 0.f) {
    const float m = warp_max(fmaxf(s0, s1));
    const unsigned hit0 = __ballot_sync(kFull, v0 && s0 == m);
    const unsigned hit1 = __ballot_sync(kFull, v1 && s1 == m);
    idx = hit0 ? __ffs(hit0) - 1 : (hit1 ? 32 + __ffs(hit1) - 1 : 0);
  } else {
    const float temp = a.temperature;
    const float ms = warp_max(fmaxf(s0, s1));  // -inf lanes (and lanes >= K) hold ninf
    const float sb = ms > ninf ? ms : 0.f;
    const float z0 = (v0 && s0 > ninf) ? __fdiv_rn(__fsub_rn(s0, sb), temp) : ninf;
    const float z1 = (v1 && s1 > ninf) ? __fdiv_rn(__fsub_rn(s1, sb), temp) : ninf;
    const float mz = warp_max(fmaxf(z0, z1));
    if (mz > ninf) {
      const float e0 = v0 ? expf(z0 - mz) : 0.f;  // exp(-inf) = 0
      const float e1 = v1 ? expf(z1 - mz) : 0.f;
      if (v0) my[j0] = e0;
      if (v1) my[j1] = e1;
      __syncwarp();
      float sum = 0.f;
      if (lane == 0)
        for (int j = 0; j < a.K; ++j) sum += my[j];  // index order
      sum = __shfl_sync(kFull, sum, 0);              // >= 1: the maximal z gives e = 1
      const float p0 = __fdiv_rn(e0, sum), p1 = __fdiv_rn(e1, sum);
      const unsigned nz0 = __ballot_sync(kFull, v0 && p0 > 0.f);
      const unsigned nz1 = __ballot_sync(kFull, v1 && p1 > 0.f);
      const int last_nz = nz1 ? 32 + (31 - __clz(nz1)) : (nz0 ? 31 - __clz(nz0) : 0);
      __syncwarp();
      if (v0) my[j0] = p0;
      if (v1) my[j1] = p1;
      __syncwarp();
      if (lane == 0) {
        float cdf = 0.f;
        for (int j = 0; j < a.K; ++j) {
          cdf += my[j];
          my[j] = cdf;
        }
      }
      __syncwarp();
      const float u = a.uniform[b] * my[a.K - 1];
      const int cnt = __popc(__ballot_sync(kFull, v0 && my[j0] <= u)) + __popc(__ballot_sync(kFull, v1 && my[j1] <= u));
      idx = min(cnt, last_nz);
    }
  }
  if (lane == 0) {
    a.index[b] = idx;
    a.token[b] = a.ids[base + idx];
  }
  __syncwarp();
}

// The calling block has written the final rewards of candidate rows [r0, r0 + n) (batch
// rows flattened with their K candidates).  Every batch row whose K candidates are now all
// final is chosen by this block; the per-row counters go back to zero.  s_rows holds at
// least n entries.
template <int NT>
__device__ void finish_rows(const SelParams& p, int64_t r0, int n, float* s_score, int* s_rows, int* s_count) {
  const RgkRewardSelectArgs& a = p.a;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int count = 0;
    if (n > 0) {
      for (int64_t b = r0 / a.K; b <= (r0 + n - 1) / a.K; ++b) {
        const int64_t lo = cmax<int64_t>(r0, b * a.K), hi = cmin<int64_t>(r0 + n, (b + 1) * a.K);
        const int c = static_cast<int>(hi - lo);
        if (atomicAdd(p.row_done + b, c) + c == a.K) {
          atomicExch(p.row_done + b, 0);
          s_rows[count++] = static_cast<int>(b);
        }
      }
    }
    *s_count = count;
  }
  __syncthreads();
  const int count = *s_count;
  if (count == 0) return;
  __threadfence();
  const int warp = threadIdx.x >> 5;
  for (int i = warp; i < count; i += NT / 32) select_row(a, s_rows[i], s_score + warp * kMaxCand);
}

// ------------------------------------------------------------------ vector loads
// N consecutive elements as floats; the caller guarantees the alignment (16 bytes for 8
// elements of 16 bits or 4 floats, 8 bytes for 4 elements of 16 bits).
__device__ __forceinline__ void load4(const float* p, float* o) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float* o) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  bf16x2_to_float(v.x, o); bf16x2_to_float(v.y, o + 2);
}
__device__ __forceinline__ void load4(const __half* p, float* o) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  half2_to_float(v.x, o); half2_to_float(v.y, o + 2);
}
__device__ __forceinline__ void load8(const float* p, float* o) {
  load4(p, o);
  load4(p + 4, o + 4);
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* o) { load16(p, o); }
__device__ __forceinline__ void load8(const __half* p, float* o) { load16(p, o); }

// ------------------------------------------------------------------ linear head
template <class T, class W>
__global__ void __launch_bounds__(kLinThreads, 4) reward_select_linear_kernel(SelParams p) {
  __shared__ float s_score[(kLinThreads / 32) * kMaxCand];
  __shared__ int s_rows[kLinThreads / 32], s_count;
  const RgkRewardSelectArgs& a = p.a;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t rows = static_cast<int64_t>(a.B) * a.K;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * (kLinThreads / 32);
  const int64_t row = r0 + warp;
  if (row < rows) {
    const int64_t b = row / a.K, j = row % a.K;
    const T* h = static_cast<const T*>(a.hidden) + b * a.h_s0 + j * a.h_s1;
    const W* w = static_cast<const W*>(a.w1);
    float acc = 0.f;
    if (p.vec) {  // d % 8 == 0, 16-byte aligned rows: 8 elements per lane per step
      for (int c = lane * 8; c < a.d; c += 256) {
        float hv[8], wv[8];
        load8(h + c, hv);
        load8(w + c, wv);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc = fmaf(hv[e], wv[e], acc);
      }
    } else {
#pragma unroll 4
      for (int c = lane; c < a.d; c += 32) acc = fmaf(to_float(h[c]), to_float(w[c]), acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) a.reward[row] = acc + a.b1[0];
  }
  finish_rows<kLinThreads>(p, r0, static_cast<int>(cmin<int64_t>(kLinThreads / 32, rows - r0)), s_score, s_rows,
                           &s_count);
}

// ------------------------------------------------------------------ MLP head: shared tail
// relu that keeps NaN (torch.relu(NaN) = NaN), unlike fmaxf
__device__ __forceinline__ float relu_nan(float z) { return z < 0.f ? 0.f : z; }

// After the block wrote partial[slice][r0 .. r0 + BM): the last block of the row tile sums
// the slices (fixed order), adds b2 and chooses for the batch rows this completes.
template <int BM>
__device__ __forceinline__ void mlp_tail(const SelParams& p, int64_t r0, int64_t rows, float* s_score, int* s_rows,
                                         int* s_count, int* s_flag) {
  const RgkRewardSelectArgs& a = p.a;
  if (!last_block_arrives(p.tile_done + blockIdx.x, static_cast<int>(gridDim.y), s_flag)) return;
  for (int r = threadIdx.x; r < BM; r += kMlpThreads) {
    if (r0 + r < rows) {
      float s = 0.f;
      for (int sl = 0; sl < p.slices; ++sl) s += __ldcg(p.partial + static_cast<int64_t>(sl) * rows + r0 + r);
      a.reward[r0 + r] = s + a.b2[0];
    }
  }
  finish_rows<kMlpThreads>(p, r0, static_cast<int>(cmin<int64_t>(BM, rows - r0)), s_score, s_rows, s_count);
}

// ------------------------------------------------------------------ MLP head: CUDA cores
// Block tile 32 rows x 64 units, k-chunks of 16; thread (ty, tx) of a 8 x 16 grid owns rows
// 4ty..4ty+3 and units 4tx..4tx+3.  Shared tiles are k-major so that a thread's 4 rows and
// 4 units are one float4 each.
constexpr int kSimtBM = 32, kSimtBK = 16;
constexpr int kHP = kSimtBM + 4, kWP = kBN + 4;  // pitches (floats), multiples of 4

template <class T, class W>
__global__ void __launch_bounds__(kMlpThreads) reward_select_mlp_simt_kernel(SelParams p) {
  __shared__ __align__(16) float hs[2][kSimtBK][kHP];
  __shared__ __align__(16) float ws[2][kSimtBK][kWP];
  __shared__ float s_part[kSimtBM];
  __shared__ float s_score[(kMlpThreads / 32) * kMaxCand];
  __shared__ int s_flag, s_rows[kSimtBM], s_count;
  const RgkRewardSelectArgs& a = p.a;
  const int tid = threadIdx.x;
  const int64_t rows = static_cast<int64_t>(a.B) * a.K;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kSimtBM;
  const int u0 = blockIdx.y * kBN;
  const int d = a.d;
  const bool vec = p.vec != 0;
  const T* hid = static_cast<const T*>(a.hidden);
  const W* w1 = static_cast<const W*>(a.w1);

  // staging: hidden row tid / 4, k quad (tid % 4) * 4; W1 unit tid / 2, k quads (tid % 2) * 8 + {0, 4}
  const int h_row = tid >> 2, h_kq = (tid & 3) * 4;
  const int w_unit = tid >> 1, w_kq = (tid & 1) * 8;
  const int64_t gr = r0 + h_row;
  const T* hrow = gr < rows ? hid + (gr / a.K) * a.h_s0 + (gr % a.K) * a.h_s1 : nullptr;
  const W* wrow = u0 + w_unit < a.m ? w1 + static_cast<int64_t>(u0 + w_unit) * d : nullptr;
  float hv[4], wv[8];
  auto fetch = [&](int k0) {
    const int kh = k0 + h_kq;
    if (hrow != nullptr && vec && kh < d) {  // d % 4 == 0: the quad is whole
      load4(hrow + kh, hv);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) hv[e] = (hrow != nullptr && kh + e < d) ? to_float(hrow[kh + e]) : 0.f;
    }
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int kw = k0 + w_kq + 4 * q;
      if (wrow != nullptr && vec && kw < d) {
        load4(wrow + kw, wv + 4 * q);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) wv[4 * q + e] = (wrow != nullptr && kw + e < d) ? to_float(wrow[kw + e]) : 0.f;
      }
    }
  };
  auto stash = [&](int buf) {
#pragma unroll
    for (int e = 0; e < 4; ++e) hs[buf][h_kq + e][h_row] = hv[e];
#pragma unroll
    for (int e = 0; e < 8; ++e) ws[buf][w_kq + e][w_unit] = wv[e];
  };

  const int tx = tid & 15, ty = tid >> 4;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) acc[i][jj] = 0.f;

  const int nt = static_cast<int>(ceil_div(d, kSimtBK));
  fetch(0);
  stash(0);
  __syncthreads();
  for (int t = 0; t < nt; ++t) {
    const int buf = t & 1;
    if (t + 1 < nt) fetch((t + 1) * kSimtBK);  // in flight during the FMAs below
#pragma unroll
    for (int k = 0; k < kSimtBK; ++k) {
      const float4 hq = *reinterpret_cast<const float4*>(&hs[buf][k][ty * 4]);
      const float4 wq = *reinterpret_cast<const float4*>(&ws[buf][k][tx * 4]);
      const float hr[4] = {hq.x, hq.y, hq.z, hq.w}, wr[4] = {wq.x, wq.y, wq.z, wq.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) acc[i][jj] = fmaf(hr[i], wr[jj], acc[i][jj]);
    }
    if (t + 1 < nt) stash(buf ^ 1);  // that buffer was last read before the previous barrier
    __syncthreads();
  }

  // epilogue: relu(z + b1) * w2 over this thread's 4 units, then over the 16 tx lanes
  float bu[4], wu[4];
#pragma unroll
  for (int jj = 0; jj < 4; ++jj) {
    const int u = u0 + tx * 4 + jj;
    bu[jj] = u < a.m ? a.b1[u] : 0.f;
    wu[jj] = u < a.m ? a.w2[u] : 0.f;
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float s = 0.f;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj)
      if (u0 + tx * 4 + jj < a.m) s += relu_nan(acc[i][jj] + bu[jj]) * wu[jj];
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) s += __shfl_xor_sync(kFull, s, o);
    if (tx == 0) s_part[ty * 4 + i] = s;
  }
  __syncthreads();
  if (tid < kSimtBM && r0 + tid < rows) p.partial[static_cast<int64_t>(blockIdx.y) * rows + r0 + tid] = s_part[tid];
  mlp_tail<kSimtBM>(p, r0, rows, s_score, s_rows, &s_count, &s_flag);
}

// ------------------------------------------------------------------ MLP head: tensor cores
// T: the mma type (hidden's dtype).  NS = 1: W1 has dtype T.  NS = 3: W1 is fp32 (T = bf16)
// and each k-chunk of it is split into three bf16 planes hi, mid, lo (W1 = hi + mid + lo).
// Block tile BM rows x 64 units, k-chunks of 32, 4 warps in a WM x WN grid, each warp
// (BM / WM) x (64 / WN) as MF x NF fragments of 16 x 8.
constexpr int kMmaBK = 32;
constexpr int kMmaPitch = kMmaBK + 8;  // 80-byte rows: ldmatrix reads 8 rows conflict-free

template <int BM, int NS>
struct MmaSmem {
  static constexpr size_t bytes = 2ull * BM * kMmaPitch * 2 + 2ull * NS * kBN * kMmaPitch * 2;
};

// W1 fp32 -> three bf16 with hi + mid + lo == w (each residual is exact in fp32)
__device__ __forceinline__ void split3(float w, uint16_t& hi, uint16_t& mid, uint16_t& lo) {
  const __nv_bfloat16 h = __float2bfloat16_rn(w);
  const float r1 = __fsub_rn(w, __bfloat162float(h));
  const __nv_bfloat16 m = __float2bfloat16_rn(r1);
  const float r2 = __fsub_rn(r1, __bfloat162float(m));
  const __nv_bfloat16 l = __float2bfloat16_rn(r2);
  hi = __bfloat16_as_ushort(h);
  mid = __bfloat16_as_ushort(m);
  lo = __bfloat16_as_ushort(l);
}

template <class T, int NS, int BM>
__global__ void __launch_bounds__(kMlpThreads) reward_select_mlp_mma_kernel(SelParams p) {
  constexpr int WM = BM >= 32 ? 2 : 1, WN = 4 / WM;
  constexpr int WTM = BM / WM, WTN = kBN / WN;
  constexpr int MF = WTM / 16, NF = WTN / 8;
  constexpr int PITCH = kMmaPitch;
  constexpr int HCH = BM * (kMmaBK / 8);          // 16-byte chunks of a hidden tile
  constexpr int WCH = kBN * (kMmaBK / 8);         // 16-byte chunks of a 16-bit W1 tile
  constexpr int WQ = kBN * (kMmaBK / 4);          // float4s of an fp32 W1 tile
  static_assert(MF >= 1 && NF % 2 == 0 && WM * WN == 4, "warp tiling");
  static_assert(HCH % kMlpThreads == 0 || HCH < kMlpThreads, "hidden staging");
  static_assert(WCH % kMlpThreads == 0 && WQ % kMlpThreads == 0, "W1 staging");
  static_assert(NS == 1 || (NS == 3 && sizeof(T) == 2), "split planes are bf16");
  constexpr int HPER = (HCH + kMlpThreads - 1) / kMlpThreads;
  constexpr int WPER = NS == 1 ? WCH / kMlpThreads : WQ / kMlpThreads;

  __shared__ __align__(16) uint16_t hs[2][BM][PITCH];
  __shared__ __align__(16) uint16_t ws[2][NS][kBN][PITCH];
  __shared__ float s_red[WN][BM];
  __shared__ float s_score[(kMlpThreads / 32) * kMaxCand];
  __shared__ int s_flag, s_rows[BM], s_count;

  const RgkRewardSelectArgs& a = p.a;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WN, wn = warp % WN;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t rows = static_cast<int64_t>(a.B) * a.K;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int u0 = blockIdx.y * kBN;
  const int d = a.d;

  // per-thread staging sources (fixed over the k loop): hidden chunk c -> row c / 4, k part c % 4
  const uint16_t* hsrc[HPER];
#pragma unroll
  for (int i = 0; i < HPER; ++i) {
    const int c = tid + i * kMlpThreads;
    const int64_t gr = r0 + c / 4;
    hsrc[i] = (c < HCH && gr < rows)
        ? static_cast<const uint16_t*>(a.hidden) + (gr / a.K) * a.h_s0 + (gr % a.K) * a.h_s1 + (c % 4) * 8 : nullptr;
  }
  auto load_h = [&](int k0, int buf) {
#pragma unroll
    for (int i = 0; i < HPER; ++i) {
      const int c = tid + i * kMlpThreads;
      if (c < HCH) {
        const bool valid = hsrc[i] != nullptr && k0 + (c % 4) * 8 < d;  // d % 8 == 0: whole chunks
        cp_async16(&hs[buf][c / 4][(c % 4) * 8], valid ? hsrc[i] + k0 : static_cast<const uint16_t*>(a.hidden), valid);
      }
    }
  };
  // 16-bit W1: chunk c -> unit c / 4, k part c % 4.  fp32 W1: float4 q -> unit q / 8, k part (q % 8) * 4
  auto load_w16 = [&](int k0, int buf) {
#pragma unroll
    for (int i = 0; i < WPER; ++i) {
      const int c = tid + i * kMlpThreads;
      const int u = u0 + c / 4, k = k0 + (c % 4) * 8;
      const bool valid = u < a.m && k < d;
      const uint16_t* src = static_cast<const uint16_t*>(a.w1) + (valid ? static_cast<int64_t>(u) * d + k : 0);
      cp_async16(&ws[buf][0][c / 4][(c % 4) * 8], src, valid);
    }
  };
  float4 wreg[NS == 3 ? WPER : 1];
  auto fetch_w32 = [&](int k0) {
#pragma unroll
    for (int i = 0; i < (NS == 3 ? WPER : 0); ++i) {
      const int q = tid + i * kMlpThreads;
      const int u = u0 + q / 8, k = k0 + (q % 8) * 4;
      wreg[i] = (u < a.m && k < d)
          ? __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(a.w1) + static_cast<int64_t>(u) * d + k))
          : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  auto stash_w32 = [&](int buf) {
#pragma unroll
    for (int i = 0; i < (NS == 3 ? WPER : 0); ++i) {
      const int q = tid + i * kMlpThreads;
      const int uu = q / 8, kk = (q % 8) * 4;
      const float wv[4] = {wreg[i].x, wreg[i].y, wreg[i].z, wreg[i].w};
      uint16_t hi[4], mid[4], lo[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) split3(wv[e], hi[e], mid[e], lo[e]);
      auto pack = [](const uint16_t* v) {
        return make_uint2(static_cast<uint32_t>(v[0]) | (static_cast<uint32_t>(v[1]) << 16),
                          static_cast<uint32_t>(v[2]) | (static_cast<uint32_t>(v[3]) << 16));
      };
      *reinterpret_cast<uint2*>(&ws[buf][0][uu][kk]) = pack(hi);
      *reinterpret_cast<uint2*>(&ws[buf][NS > 1 ? 1 : 0][uu][kk]) = pack(mid);
      *reinterpret_cast<uint2*>(&ws[buf][NS > 2 ? 2 : 0][uu][kk]) = pack(lo);
    }
  };

  float acc[MF][NF][4];
#pragma unroll
  for (int i = 0; i < MF; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

  const int nt = static_cast<int>(ceil_div(d, kMmaBK));
  load_h(0, 0);
  if constexpr (NS == 1) load_w16(0, 0);
  cp_async_commit();
  if constexpr (NS == 3) {
    fetch_w32(0);
    stash_w32(0);
  }
  for (int t = 0; t < nt; ++t) {
    const int buf = t & 1;
    if (t + 1 < nt) {
      load_h((t + 1) * kMmaBK, buf ^ 1);
      if constexpr (NS == 1) load_w16((t + 1) * kMmaBK, buf ^ 1);
      else fetch_w32((t + 1) * kMmaBK);  // in flight during the MMAs below
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kMmaBK / 16; ++kk) {
      uint32_t af[MF][4];
#pragma unroll
      for (int mf = 0; mf < MF; ++mf)
        ldmatrix_x4(af[mf], &hs[buf][wm * WTM + mf * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][kk * 16 + (lane >> 4) * 8]);
#pragma unroll
      for (int pl = NS - 1; pl >= 0; --pl) {  // smallest terms first
#pragma unroll
        for (int n2 = 0; n2 < NF / 2; ++n2) {
          uint32_t bb[4];
          ldmatrix_x4(bb, &ws[buf][pl][wn * WTN + n2 * 16 + (lane >> 4) * 8 + (lane & 7)][kk * 16 + ((lane >> 3) & 1) * 8]);
#pragma unroll
          for (int mf = 0; mf < MF; ++mf) {
            Mma<T>::run(acc[mf][2 * n2], af[mf], bb[0], bb[1]);
            Mma<T>::run(acc[mf][2 * n2 + 1], af[mf], bb[2], bb[3]);
          }
        }
      }
    }
    if constexpr (NS == 3) {
      if (t + 1 < nt) stash_w32(buf ^ 1);  // that buffer was last read before this iteration's barrier
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  // epilogue: C fragment (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1) of each 16 x 8 tile
  float rs[MF][2];
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) rs[mf][0] = rs[mf][1] = 0.f;
#pragma unroll
  for (int nf = 0; nf < NF; ++nf) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int u = u0 + wn * WTN + nf * 8 + 2 * tig + e;
      if (u < a.m) {
        const float bu = a.b1[u], wu = a.w2[u];
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
          rs[mf][0] += relu_nan(acc[mf][nf][e] + bu) * wu;
          rs[mf][1] += relu_nan(acc[mf][nf][2 + e] + bu) * wu;
        }
      }
    }
  }
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float s = rs[mf][h];
      s += __shfl_xor_sync(kFull, s, 1);
      s += __shfl_xor_sync(kFull, s, 2);
      if (tig == 0) s_red[wn][wm * WTM + mf * 16 + gid + 8 * h] = s;
    }
  }
  __syncthreads();
  for (int r = tid; r < BM; r += kMlpThreads) {
    if (r0 + r < rows) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < WN; ++w) s += s_red[w][r];
      p.partial[static_cast<int64_t>(blockIdx.y) * rows + r0 + r] = s;
    }
  }
  mlp_tail<BM>(p, r0, rows, s_score, s_rows, &s_count, &s_flag);
}

// ------------------------------------------------------------------ host side
enum class MlpPath { kSimt, kMma16, kMmaSplit };

size_t esize(RgkDType t) { return t == RGK_F32 ? 4 : 2; }

// 16-byte rows of hidden and W1 (d % 8 == 0, 16-byte aligned bases and row strides): the
// tensor-core kernels and the linear head's 8-element loads.
bool rows16(const RgkRewardSelectArgs& a) {
  const int64_t es = static_cast<int64_t>(esize(a.hidden_dtype));
  return a.d % 8 == 0 && reinterpret_cast<uintptr_t>(a.hidden) % 16 == 0 && (a.h_s0 * es) % 16 == 0 &&
         (a.h_s1 * es) % 16 == 0 && reinterpret_cast<uintptr_t>(a.w1) % 16 == 0;
}

// 4-element vectors (the CUDA-core MLP kernel): d % 4 == 0 and 4-element aligned rows.
bool rows4(const RgkRewardSelectArgs& a) {
  const uintptr_t hb = 4 * esize(a.hidden_dtype), wb = 4 * esize(a.w1_dtype);
  return a.d % 4 == 0 && reinterpret_cast<uintptr_t>(a.hidden) % hb == 0 && a.h_s0 % 4 == 0 && a.h_s1 % 4 == 0 &&
         reinterpret_cast<uintptr_t>(a.w1) % wb == 0;
}

MlpPath mlp_path(const RgkRewardSelectArgs& a) {
  if (!rows16(a)) return MlpPath::kSimt;
  if (a.hidden_dtype == a.w1_dtype && a.hidden_dtype != RGK_F32) return MlpPath::kMma16;
  if (a.hidden_dtype == RGK_BF16 && a.w1_dtype == RGK_F32) return MlpPath::kMmaSplit;
  return MlpPath::kSimt;
}

// Row tile of the tensor-core kernels: the largest that still gives every SM a block.
int mma_bm(int64_t rows, int slices, int sms) {
  for (int bm = 64; bm > kMinBM; bm /= 2)
    if (ceil_div(rows, bm) * slices >= sms) return bm;
  return kMinBM;
}

template <class T, int NS>
cudaError_t launch_mma(const SelParams& p, int bm, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.a.B) * p.a.K;
  const dim3 grid(static_cast<unsigned>(ceil_div(rows, bm)), static_cast<unsigned>(p.slices));
  switch (bm) {
    case 16: reward_select_mlp_mma_kernel<T, NS, 16><<<grid, kMlpThreads, 0, stream>>>(p); break;
    case 32: reward_select_mlp_mma_kernel<T, NS, 32><<<grid, kMlpThreads, 0, stream>>>(p); break;
    case 64: reward_select_mlp_mma_kernel<T, NS, 64><<<grid, kMlpThreads, 0, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <class T, class W>
cudaError_t launch_typed(const SelParams& p, cudaStream_t stream) {
  const RgkRewardSelectArgs& a = p.a;
  const int64_t rows = static_cast<int64_t>(a.B) * a.K;
  if (a.w2 == nullptr) {
    const int64_t blocks = ceil_div(rows, kLinThreads / 32);
    reward_select_linear_kernel<T, W><<<static_cast<unsigned>(blocks), kLinThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(rows, kSimtBM)), static_cast<unsigned>(p.slices));
  reward_select_mlp_simt_kernel<T, W><<<grid, kMlpThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_w(const SelParams& p, cudaStream_t stream) {
  switch (p.a.w1_dtype) {
    case RGK_F32: return launch_typed<T, float>(p, stream);
    case RGK_BF16: return launch_typed<T, __nv_bfloat16>(p, stream);
    case RGK_F16: return launch_typed<T, __half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

bool valid_dtype(RgkDType t) { return t == RGK_F32 || t == RGK_BF16 || t == RGK_F16; }

// cudaSuccess, cudaErrorInvalidValue (outside the op's contract) or cudaErrorNotSupported.
cudaError_t check_shapes(int64_t B, int64_t K, int64_t d, int64_t m, bool mlp, RgkDType hdt, RgkDType wdt) {
  if (B < 0 || K < 1 || d < 1 || m < 1 || !valid_dtype(hdt) || !valid_dtype(wdt)) return cudaErrorInvalidValue;
  if (!mlp && m != 1) return cudaErrorInvalidValue;
  if (K > kMaxCand) return cudaErrorNotSupported;
  if (B > 2147483647LL || B * K > 2147483647LL || d > 2147483647LL || m > 2147483647LL) return cudaErrorNotSupported;
  if (mlp && ceil_div(m, kBN) > RGK_MAX_GRID_Y) return cudaErrorNotSupported;
  return cudaSuccess;
}

cudaError_t check_args(const RgkRewardSelectArgs& a) {
  const cudaError_t e = check_shapes(a.B, a.K, a.d, a.m, a.w2 != nullptr, a.hidden_dtype, a.w1_dtype);
  if (e != cudaSuccess) return e;
  if (a.w2 == nullptr && a.b2 != nullptr) return cudaErrorInvalidValue;
  if (a.w2 != nullptr && a.b2 == nullptr) return cudaErrorInvalidValue;
  if (a.temperature > 0.f && a.uniform == nullptr) return cudaErrorInvalidValue;
  if (!(a.temperature >= 0.f)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace
}  // namespace rgk

bool rgk_reward_select_supported(int64_t B, int64_t K, int64_t d, int64_t m, bool mlp, RgkDType hidden_dtype,
                                 RgkDType w1_dtype) {
  return rgk::check_shapes(B, K, d, m, mlp, hidden_dtype, w1_dtype) == cudaSuccess;
}

cudaError_t rgk_reward_select_plan(const RgkRewardSelectArgs& args, RgkRewardSelectPlan* plan) {
  using namespace rgk;
  const cudaError_t err = check_args(args);
  if (err != cudaSuccess) return err;
  const int64_t rows = static_cast<int64_t>(args.B) * args.K;
  plan->workspace_bytes = args.w2 == nullptr ? 0 : align_up(static_cast<size_t>(ceil_div(args.m, kBN) * rows) * sizeof(float), 256);
  // tile counters for the smallest row tile any MLP kernel uses
  plan->sync_ints = RGK_SYNC_RESERVED + args.B + ceil_div(rows, kMinBM);
  return cudaSuccess;
}

cudaError_t rgk_reward_select_launch(const RgkRewardSelectArgs& args, void* workspace, int* sync, cudaStream_t stream) {
  using namespace rgk;
  cudaError_t err = check_args(args);
  if (err != cudaSuccess) return err;
  if (args.B == 0) return cudaSuccess;
  if (sync == nullptr || (args.w2 != nullptr && workspace == nullptr)) return cudaErrorInvalidValue;
  SelParams p;
  p.a = args;
  p.partial = static_cast<float*>(workspace);
  p.slices = static_cast<int>(ceil_div(args.m, kBN));
  p.row_done = sync + RGK_SYNC_RESERVED;
  p.tile_done = p.row_done + args.B;
  if (args.w2 == nullptr) {
    p.vec = rows16(args) ? 1 : 0;
  } else {
    const MlpPath path = mlp_path(args);
    if (path != MlpPath::kSimt) {
      p.vec = 1;
      int dev = 0;
      DeviceInfo info;
      err = current_device(&dev, &info);
      if (err != cudaSuccess) return err;
      const int bm = mma_bm(static_cast<int64_t>(args.B) * args.K, p.slices, info.sms);
      if (path == MlpPath::kMmaSplit) return launch_mma<__nv_bfloat16, 3>(p, bm, stream);
      return args.hidden_dtype == RGK_BF16 ? launch_mma<__nv_bfloat16, 1>(p, bm, stream)
                                           : launch_mma<__half, 1>(p, bm, stream);
    }
    p.vec = rows4(args) ? 1 : 0;
  }
  switch (args.hidden_dtype) {
    case RGK_F32: return launch_w<float>(p, stream);
    case RGK_BF16: return launch_w<__nv_bfloat16>(p, stream);
    case RGK_F16: return launch_w<__half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

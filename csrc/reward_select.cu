// reward_select: ARGS scoring and choice over the K candidates of every row, one launch.
//
//   r[b, j]     = w1 . h[b, j] + b1                            (linear head: w1 [1, d], b1 [1])
//               = w2 . relu(W1 h[b, j] + b1) + b2              (MLP head: W1 [m, d], b1 [m], w2 [1, m], b2 [1])
//   score[b, j] = logp[b, j] + reward_weight * r[b, j]  (-inf where logp is not finite)
//   temperature == 0: index[b] = lowest j with score[b, j] == max_j score[b, j] (0 if none, e.g. NaN)
//   temperature  > 0: p = softmax(score[b] / temperature) (NaN -> 0), cdf = cumsum(p),
//                     index[b] = min(#{j : cdf_j <= u[b] * cdf_{K-1}}, last j with p_j > 0),
//                     0 when cdf_{K-1} == 0  — the same sequence of fp32 operations as
//                     rgk.ops.reference._sample_index, evaluated in index order.
//   token[b]    = ids[b, index[b]]
//   Shapes: hidden [B, K, d] (fp32/bf16/fp16, unit stride along d), logp [B, K] fp32,
//   ids [B, K] int64, u [B] fp32 -> token [B], index [B] int64, score [B, K], reward [B, K] fp32.
//   K <= 64.  All head math in fp32 (weights fp32/bf16/fp16).
//
// Design.  Linear head: one warp per candidate row (a memory-bound dot product).  MLP head:
// blocks tile (16 candidate rows) x (16 hidden units) and stream d in chunks of 64 through
// shared memory; each block reduces relu(z) * w2 over its units into a per-slice partial,
// and the last block of a row tile (atomic ticket) sums them in a fixed order and adds b2.
// A per-row counter of final candidates tells which block completes a batch row; that
// block computes the row's scores and choice.  One launch, deterministic results.
#include "rgk_common.cuh"

namespace rgk {
namespace {

constexpr int kMaxCand = 64;
constexpr int kLinThreads = 256;      // 8 candidate rows per block
constexpr int kMlpThreads = 128;
constexpr int kRT = 16, kUT = 16, kCT = 64;  // MLP tile: rows x units x d-chunk

struct SelParams {
  RgkRewardSelectArgs a;
  float* partial;   // [slices, B*K] (MLP only)
  int slices;
  int* row_done;   // [B]: candidates of batch row b with a final reward (back to 0 when chosen)
  int* tile_done;  // [row tiles]: slices finished per row tile (MLP)
};

__device__ __forceinline__ float nanmax(float x, float y) { return (x != x || y != y) ? __int_as_float(0x7fc00000) : fmaxf(x, y); }

// Score and choice of batch row b by one warp; all K rewards of the row are final.
__device__ void select_row(const RgkRewardSelectArgs& a, int b, float* my /* [kMaxCand] */) {
  const int lane = threadIdx.x & 31;
  const float ninf = neg_inf();
  float sc[2];
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    const int j = lane + 32 * t;
    sc[t] = ninf;
    if (j < a.K) {
      const int64_t i = static_cast<int64_t>(b) * a.K + j;
      const float lp = a.logp[i];
      const float r = __ldcg(a.reward + i);
      const float v = isfinite(lp) ? lp + a.reward_weight * r : ninf;
      a.score[i] = v;
      my[j] = v;
      sc[t] = v;
    }
  }
  __syncwarp();
  int idx = 0;
  if (a.temperature == 0.f) {
    float m = nanmax(sc[0], sc[1]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = nanmax(m, __shfl_xor_sync(kFull, m, o));
    const unsigned hit0 = __ballot_sync(kFull, lane < a.K && sc[0] == m);
    const unsigned hit1 = __ballot_sync(kFull, lane + 32 < a.K && sc[1] == m);
    idx = hit0 ? __ffs(hit0) - 1 : (hit1 ? 32 + __ffs(hit1) - 1 : 0);
  } else {
    if (lane == 0) {
      const float temp = a.temperature;
      float mx = my[0] / temp;
      for (int j = 1; j < a.K; ++j) mx = nanmax(mx, my[j] / temp);
      float sum = 0.f;
      for (int j = 0; j < a.K; ++j) sum += expf(my[j] / temp - mx);
      float cdf = 0.f;
      int last_nz = 0;
      for (int j = 0; j < a.K; ++j) {
        float pj = expf(my[j] / temp - mx) / sum;
        if (pj != pj) pj = 0.f;
        if (pj > 0.f) last_nz = j;
        cdf += pj;
        my[j] = cdf;  // the row buffer now holds the cdf
      }
      const float u = a.uniform[b] * cdf;
      int cnt = 0;
      for (int j = 0; j < a.K; ++j) cnt += my[j] <= u ? 1 : 0;
      idx = cdf > 0.f ? min(cnt, last_nz) : 0;
    }
    idx = __shfl_sync(kFull, idx, 0);
  }
  if (lane == 0) {
    a.index[b] = idx;
    a.token[b] = a.ids[static_cast<int64_t>(b) * a.K + idx];
  }
  __syncwarp();
}

// The calling block has written the final rewards of candidate rows [r0, r0 + n) (batch
// rows flattened with their K candidates).  Every batch row whose K candidates are now all
// final is chosen by this block; the per-row counters go back to zero.
template <int NT>
__device__ void finish_rows(const SelParams& p, int64_t r0, int n, float* s_score, int* s_rows, int* s_count) {
  const RgkRewardSelectArgs& a = p.a;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int count = 0;
    for (int64_t b = r0 / a.K; b <= (r0 + n - 1) / a.K; ++b) {
      const int64_t lo = cmax<int64_t>(r0, b * a.K), hi = cmin<int64_t>(r0 + n, (b + 1) * a.K);
      const int c = static_cast<int>(hi - lo);
      if (atomicAdd(p.row_done + b, c) + c == a.K) {
        atomicExch(p.row_done + b, 0);
        s_rows[count++] = static_cast<int>(b);
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

template <class T, class W>
__global__ void __launch_bounds__(kLinThreads) reward_select_linear_kernel(SelParams p) {
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
#pragma unroll 4
    for (int c = lane; c < a.d; c += 32) acc += to_float(h[c]) * to_float(w[c]);
    acc = warp_sum(acc);
    if (lane == 0) a.reward[row] = acc + a.b1[0];
  }
  finish_rows<kLinThreads>(p, r0, static_cast<int>(cmin<int64_t>(kLinThreads / 32, rows - r0)), s_score, s_rows,
                           &s_count);
}

template <class T, class W>
__global__ void __launch_bounds__(kMlpThreads) reward_select_mlp_kernel(SelParams p) {
  __shared__ float hs[kCT][kRT + 1];       // hidden chunk, d-major
  __shared__ __align__(16) float ws[kCT][kUT + 2];  // W1 chunk, d-major
  __shared__ float s_score[(kMlpThreads / 32) * kMaxCand];
  __shared__ int s_flag, s_rows[kRT], s_count;
  const RgkRewardSelectArgs& a = p.a;
  const int tid = threadIdx.x;
  const int64_t rows = static_cast<int64_t>(a.B) * a.K;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRT;
  const int u0 = blockIdx.y * kUT;
  const int r = tid >> 3, up = (tid & 7) * 2;
  const T* hid = static_cast<const T*>(a.hidden);
  const W* w1 = static_cast<const W*>(a.w1);

  float acc0 = 0.f, acc1 = 0.f;
  for (int c0 = 0; c0 < a.d; c0 += kCT) {
    for (int i = tid; i < kRT * kCT; i += kMlpThreads) {
      const int rr = i / kCT, c = i % kCT;
      const int64_t gr = r0 + rr;
      float v = 0.f;
      if (gr < rows && c0 + c < a.d) v = to_float(hid[(gr / a.K) * a.h_s0 + (gr % a.K) * a.h_s1 + c0 + c]);
      hs[c][rr] = v;
    }
    for (int i = tid; i < kUT * kCT; i += kMlpThreads) {
      const int uu = i / kCT, c = i % kCT;
      const int u = u0 + uu;
      ws[c][uu] = (u < a.m && c0 + c < a.d) ? to_float(w1[static_cast<int64_t>(u) * a.d + c0 + c]) : 0.f;
    }
    __syncthreads();
#pragma unroll 16
    for (int c = 0; c < kCT; ++c) {
      const float hv = hs[c][r];
      const float2 wv = *reinterpret_cast<const float2*>(&ws[c][up]);
      acc0 += hv * wv.x;
      acc1 += hv * wv.y;
    }
    __syncthreads();
  }
  float part = 0.f;
  if (u0 + up < a.m) part += fmaxf(acc0 + a.b1[u0 + up], 0.f) * a.w2[u0 + up];
  if (u0 + up + 1 < a.m) part += fmaxf(acc1 + a.b1[u0 + up + 1], 0.f) * a.w2[u0 + up + 1];
  part += __shfl_xor_sync(kFull, part, 1);
  part += __shfl_xor_sync(kFull, part, 2);
  part += __shfl_xor_sync(kFull, part, 4);
  if ((tid & 7) == 0 && r0 + r < rows) p.partial[static_cast<int64_t>(blockIdx.y) * rows + r0 + r] = part;

  // the last block of this row tile sums its rows' slice partials (fixed order), then
  // chooses for the batch rows this completes
  if (!last_block_arrives(p.tile_done + blockIdx.x, static_cast<int>(gridDim.y), &s_flag)) return;
  {
    const int sub = tid & 7;
    float s = 0.f;
    for (int sl = sub; sl < p.slices; sl += 8) s += __ldcg(p.partial + static_cast<int64_t>(sl) * rows + r0 + r);
    s += __shfl_xor_sync(kFull, s, 1);
    s += __shfl_xor_sync(kFull, s, 2);
    s += __shfl_xor_sync(kFull, s, 4);
    if (sub == 0 && r0 + r < rows) a.reward[r0 + r] = s + a.b2[0];
  }
  finish_rows<kMlpThreads>(p, r0, static_cast<int>(cmin<int64_t>(kRT, rows - r0)), s_score, s_rows, &s_count);
}

template <class T, class W>
cudaError_t launch_typed(const SelParams& p, cudaStream_t stream) {
  const RgkRewardSelectArgs& a = p.a;
  const int64_t rows = static_cast<int64_t>(a.B) * a.K;
  if (a.w2 == nullptr) {
    const int64_t blocks = ceil_div(rows, kLinThreads / 32);
    reward_select_linear_kernel<T, W><<<static_cast<unsigned>(blocks), kLinThreads, 0, stream>>>(p);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(rows, kRT)), static_cast<unsigned>(p.slices));
    reward_select_mlp_kernel<T, W><<<grid, kMlpThreads, 0, stream>>>(p);
  }
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

bool valid_args(const RgkRewardSelectArgs& a) {
  if (a.B < 0 || a.K < 1 || a.K > kMaxCand || a.d < 1 || a.m < 1) return false;
  if (a.w2 == nullptr && (a.m != 1 || a.b2 != nullptr)) return false;
  if (a.w2 != nullptr && a.b2 == nullptr) return false;
  if (a.temperature > 0.f && a.uniform == nullptr) return false;
  const int64_t rows = static_cast<int64_t>(a.B) * a.K;
  return ceil_div(rows, kRT) < 0x7fffffffLL && ceil_div(a.m, kUT) < 65536;
}

}  // namespace
}  // namespace rgk

cudaError_t rgk_reward_select_plan(const RgkRewardSelectArgs& args, RgkRewardSelectPlan* plan) {
  using namespace rgk;
  if (!valid_args(args)) return cudaErrorInvalidValue;
  const int64_t rows = static_cast<int64_t>(args.B) * args.K;
  plan->workspace_bytes = args.w2 == nullptr ? 0 : align_up(static_cast<size_t>(ceil_div(args.m, kUT) * rows) * sizeof(float), 256);
  plan->sync_ints = RGK_SYNC_RESERVED + args.B + ceil_div(rows, kRT);
  return cudaSuccess;
}

cudaError_t rgk_reward_select_launch(const RgkRewardSelectArgs& args, void* workspace, int* sync, cudaStream_t stream) {
  using namespace rgk;
  if (!valid_args(args)) return cudaErrorInvalidValue;
  if (args.B == 0) return cudaSuccess;
  SelParams p;
  p.a = args;
  p.partial = static_cast<float*>(workspace);
  p.slices = static_cast<int>(ceil_div(args.m, kUT));
  p.row_done = sync + RGK_SYNC_RESERVED;
  p.tile_done = p.row_done + args.B;
  switch (args.hidden_dtype) {
    case RGK_F32: return launch_w<float>(p, stream);
    case RGK_BF16: return launch_w<__nv_bfloat16>(p, stream);
    case RGK_F16: return launch_w<__half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

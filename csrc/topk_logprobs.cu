// topk_logprobs: log-softmax and top-k of every row of logits, one pass, one launch.
//
// Semantics: the one rule for ties, NaN and inf of rgk/ops/__init__.py's docstring, i.e.
//   x          = logits[b, 0:V] (fp32 / bf16 / fp16, unit stride along V; read once, as fp32),
//                each entry sanitised on load: NaN -> -inf, +inf -> FLT_MAX (-inf stays: masked)
//   m = max_v x_v,  s = sum_v exp(x_v - m),  logp_v = (x_v - m) - log(s)   (never x - lse(x):
//                that loses the digits of logp on large offsets such as x ~ 1e6)
//   order      = value descending, then vocabulary index ascending (ties: lower index first,
//                so k = 1 is torch.argmax's token); the 64-bit selection keys encode exactly
//                this order (value key above the inverted index), so it holds in every chunk
//                and in the merge
//   logp[b, i] = logp of the i-th finite entry in that order, ids[b, i] = its index;
//   slots past the row's number of finite entries: logp = -inf and ids continuing the same
//                order, i.e. the lowest-index -inf (incl. NaN) entries not already taken,
//                ascending (an all -inf row gives ids 0, 1, ..., k - 1).
//   Shapes: logits [B, V] -> logp [B, k] fp32, ids [B, k] int64; 1 <= k <= 64, k <= V,
//   ceil(V / 8192) * k <= 8192 (limits: rgk_kernels.h, rgk/ops/_limits.py).
//
// Design.  The vocabulary of a row is cut into chunks of 256 * ITEMS entries, one block per
// (row, chunk), so a single row still spreads over ~100+ SMs.  A block loads its chunk into
// registers (16-byte loads), reduces max and sum-exp, and selects the chunk's top-k:
//   1. threshold: thread maxima are folded into k groups (atomicMax on ordered keys); the
//      smallest group maximum T is a lower bound of the chunk's k-th largest value (the k
//      groups hold k distinct elements >= T), so only elements >= T can be in the top-k;
//      on real logits that leaves ~k..5k candidates out of thousands;
//   2. the candidates are compacted into shared memory (block scan) as 64-bit keys
//      (ordered float key << index bits | inverted index: unique, ties -> lower index);
//   3. up to 256 candidates: each one's rank among them (one pass); more: an 8-bit radix
//      select over the keys (stops as soon as the k-th key's digit bin is exactly filled)
//      finds the exact top-k, and the <= 64 winners are sorted by rank.
// If more than kCap elements pass the threshold (massive ties, e.g. a constant row) the
// radix select runs over the register-resident chunk instead: slower, same result.
// Each block writes (max, sum-exp, sorted top-k) to the workspace and takes a ticket from a
// per-row counter; the last block of the row merges the chunks' lists with the same
// selection routine, combines the log-sum-exps and writes the row.  The counters start at
// zero and the merging block resets them, so the kernel is CUDA-graph capturable.
#include "rgk_common.cuh"

namespace rgk {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxK = RGK_TOPK_MAX_K;
constexpr int kMaxItems = 32;                             // entries per thread per chunk
constexpr int kCap = 2048;                                // compacted candidates per block
constexpr int kMergeItems = 32;                           // merge: 256 x 32 candidate slots
constexpr int kMaxCandidates = kThreads * kMergeItems;    // chunks per row * k
static_assert(kMaxCandidates == RGK_TOPK_MAX_CANDIDATES, "rgk_kernels.h limit out of date");
static_assert(kThreads * kMaxItems == RGK_TOPK_MAX_CHUNK, "rgk_kernels.h limit out of date");
static_assert(kMaxK <= kThreads && kMaxK <= 64, "one thread per output slot");

struct SelectSmem {
  unsigned long long buf[kCap];
  unsigned long long sel[kMaxK];
  unsigned long long sorted[kMaxK];
  unsigned int hist[256];
  unsigned int gmax[kMaxK];
  int ids[kMaxK];
  float fred[kWarps];
  int iscan[kWarps];
  unsigned long long prefix;
  int rank;
  int done;
  int n_sel;
  int flag;
  float thresh;
};

// 64-bit selection key of (value, index): the ordered float key without its KS always-zero
// low bits (bf16: 16, fp16: 8) above IB index bits holding (2^IB - 1 - index).
template <int KS>
struct KeyCodec {
  int ib;
  unsigned long long imask;
  // FLT_MAX (a sanitised +inf) is the one value here that is no bf16/fp16 value: its low
  // key bits are not zero, and truncating them would tie it with bf16's largest finite value
  // (same top 16 bits).  Adding 1 to positive keys (bit 31 set) before the shift leaves every
  // 16-bit value's key as it is (their dropped bits are zero) and carries FLT_MAX's key into
  // that of +inf, above every finite 16-bit value; negative keys (dropped bits all ones) are
  // left alone.  value() maps the +inf key back to FLT_MAX.
  __device__ __forceinline__ unsigned long long encode(float v, uint32_t idx) const {
    uint32_t fk = float_key(v);
    if (KS > 0) fk += fk >> 31;
    return (static_cast<unsigned long long>(fk >> KS) << ib) | (imask - idx);
  }
  __device__ __forceinline__ uint32_t index(unsigned long long c) const {
    return static_cast<uint32_t>(imask - (c & imask));
  }
  __device__ __forceinline__ float value(unsigned long long c) const {
    uint32_t key = static_cast<uint32_t>(c >> ib) << KS;
    if (KS > 0 && key == 0xff800000u) return kFltMax;
    // negative floats map to ~bits, whose dropped low bits were all ones
    if (KS > 0 && !(key & 0x80000000u)) key |= (1u << KS) - 1u;
    return key_float(key);
  }
};

__device__ __forceinline__ int block_exclusive_scan(int v, int* total, int* wsum) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += n;
  }
  __syncthreads();
  if (lane == 31) wsum[warp] = incl;
  __syncthreads();
  int off = 0, tot = 0;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) {
    const int s = wsum[i];
    off += i < warp ? s : 0;
    tot += s;
  }
  *total = tot;
  return off + incl - v;
}

// Radix select of the k-th largest key among the valid keys the block enumerates.
// for_each(f) must call f(key, valid) the same number of times in every thread (warp
// collectives inside).  Precondition: more than k valid keys.  Result: the selected keys
// are exactly those with (key >> shift) >= prefix (k of them).
template <class ForEach>
__device__ __forceinline__ void radix_select(ForEach for_each, int k, int tb, SelectSmem& sm,
                                             unsigned long long* prefix_out, int* shift_out) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  unsigned long long prefix = 0ull;
  int r = k;
  for (int shift = tb - 8;; shift -= 8) {
    sm.hist[tid] = 0u;
    __syncthreads();
    const int hs = shift + 8;
    for_each([&](unsigned long long c, bool valid) {
      unsigned digit = 0xffffffffu;
      if (valid) {
        const unsigned long long hi = hs >= 64 ? 0ull : (c >> hs);
        if (hi == prefix) digit = static_cast<unsigned>(c >> shift) & 255u;
      }
      const unsigned peers = __match_any_sync(kFull, digit);
      if (digit != 0xffffffffu && lane == __ffs(peers) - 1) atomicAdd(&sm.hist[digit], static_cast<unsigned>(__popc(peers)));
    });
    __syncthreads();
    if (warp == 0) {
      unsigned cnt[8], tot = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        cnt[i] = sm.hist[lane * 8 + i];
        tot += cnt[i];
      }
      unsigned incl = tot;  // keys in bins >= 8 * lane
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned n = __shfl_down_sync(kFull, incl, o);
        if (lane + o < 32) incl += n;
      }
      const unsigned above = incl - tot;
      const unsigned want = static_cast<unsigned>(r);
      if (above < want && want <= incl) {
        unsigned acc = above;
        for (int i = 7; i >= 0; --i) {
          if (acc + cnt[i] >= want) {
            sm.prefix = (prefix << 8) | static_cast<unsigned>(lane * 8 + i);
            sm.rank = static_cast<int>(want - acc);
            sm.done = (cnt[i] == want - acc) || shift == 0;
            break;
          }
          acc += cnt[i];
        }
      }
    }
    __syncthreads();
    prefix = sm.prefix;
    r = sm.rank;
    if (sm.done) {
      *prefix_out = prefix;
      *shift_out = shift;
      return;
    }
  }
}

// Top-k of the finite values a block holds in registers (ITEMS per thread; idx_of(j) gives
// the vocabulary index of x[j]).  Leaves the winners' keys in sm.sorted[0..n), descending,
// and returns n = min(k, number of finite values).
template <int ITEMS, int KS, class IdxFn>
__device__ __forceinline__ int block_topk(const float (&x)[ITEMS], IdxFn idx_of, int k,
                                          const KeyCodec<KS>& codec, int tb, SelectSmem& sm) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float ninf = neg_inf();

  // 1. threshold from k groups of thread maxima
  float tmax = ninf;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j)
    if (x[j] > ninf) tmax = fmaxf(tmax, x[j]);
  if (tid < k) sm.gmax[tid] = 0u;
  if (tid == 0) sm.n_sel = 0;
  __syncthreads();
  if (tmax > ninf) atomicMax(&sm.gmax[tid % k], float_key(tmax));
  __syncthreads();
  if (warp == 0) {
    unsigned mn = 0xffffffffu;
    for (int g = lane; g < k; g += 32) mn = min(mn, sm.gmax[g]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mn = min(mn, __shfl_xor_sync(kFull, mn, o));
    if (lane == 0) sm.thresh = mn == 0u ? ninf : key_float(mn);  // an empty group: keep all finite
  }
  __syncthreads();
  const float thr = sm.thresh;

  // 2. count and compact the candidates
  int cnt = 0;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) cnt += (x[j] >= thr && x[j] > ninf) ? 1 : 0;
  int total = 0;
  int off = block_exclusive_scan(cnt, &total, sm.iscan);

  if (total <= k) {
#pragma unroll
    for (int j = 0; j < ITEMS; ++j)
      if (x[j] >= thr && x[j] > ninf) sm.sel[off++] = codec.encode(x[j], idx_of(j));
  } else if (total <= kThreads) {
    // few candidates (the common case): each one's rank among them, in one pass
#pragma unroll
    for (int j = 0; j < ITEMS; ++j)
      if (x[j] >= thr && x[j] > ninf) sm.buf[off++] = codec.encode(x[j], idx_of(j));
    __syncthreads();
    if (tid < total) {
      const unsigned long long c = sm.buf[tid];
      int rank = 0;
      for (int s = 0; s < total; ++s) rank += sm.buf[s] > c ? 1 : 0;
      if (rank < k) sm.sorted[rank] = c;
    }
    __syncthreads();
    return k;
  } else {
    unsigned long long prefix = 0ull;
    int shift = 0;
    if (total <= kCap) {
#pragma unroll
      for (int j = 0; j < ITEMS; ++j)
        if (x[j] >= thr && x[j] > ninf) sm.buf[off++] = codec.encode(x[j], idx_of(j));
      __syncthreads();
      radix_select(
          [&](auto&& f) {
            for (int base = 0; base < total; base += kThreads) {
              const int i = base + tid;
              const bool valid = i < total;
              f(valid ? sm.buf[i] : 0ull, valid);
            }
          },
          k, tb, sm, &prefix, &shift);
      for (int i = tid; i < total; i += kThreads) {
        const unsigned long long c = sm.buf[i];
        if ((c >> shift) >= prefix) sm.sel[atomicAdd(&sm.n_sel, 1)] = c;
      }
    } else {
      radix_select(
          [&](auto&& f) {
#pragma unroll
            for (int j = 0; j < ITEMS; ++j) {
              const bool valid = x[j] >= thr && x[j] > ninf;
              f(valid ? codec.encode(x[j], idx_of(j)) : 0ull, valid);
            }
          },
          k, tb, sm, &prefix, &shift);
#pragma unroll
      for (int j = 0; j < ITEMS; ++j) {
        if (x[j] >= thr && x[j] > ninf) {
          const unsigned long long c = codec.encode(x[j], idx_of(j));
          if ((c >> shift) >= prefix) sm.sel[atomicAdd(&sm.n_sel, 1)] = c;
        }
      }
    }
  }
  __syncthreads();
  const int n = total < k ? total : k;

  // 3. sort the winners (keys are unique)
  if (tid < n) {
    const unsigned long long c = sm.sel[tid];
    int rank = 0;
    for (int s = 0; s < n; ++s) rank += sm.sel[s] > c ? 1 : 0;
    sm.sorted[rank] = c;
  }
  __syncthreads();
  return n;
}

struct TopkParams {
  const void* logits;
  int64_t V, row_stride;
  int k, nchunks, ib, tb, aligned;
  float* out_logp;
  int64_t* out_ids;
  float* ws_val;   // [B, nchunks, k]
  int* ws_idx;     // [B, nchunks, k]
  float2* ws_stat; // [B, nchunks] (max, sum exp(x - max))
  int* counters;   // [B]
};

template <class T> struct KeyShift { static constexpr int value = 0; };
template <> struct KeyShift<__nv_bfloat16> { static constexpr int value = 16; };
template <> struct KeyShift<__half> { static constexpr int value = 8; };

template <class T, int ITEMS>
__global__ void __launch_bounds__(kThreads) topk_logprobs_kernel(TopkParams p) {
  constexpr int VEC = Vec16<T>::N;
  constexpr int KS = KeyShift<T>::value;
  static_assert(ITEMS % VEC == 0, "ITEMS must be a multiple of the vector width");
  __shared__ SelectSmem sm;

  const int tid = threadIdx.x;
  const int row = blockIdx.x / p.nchunks, chunk = blockIdx.x % p.nchunks;
  const T* src = static_cast<const T*>(p.logits) + static_cast<int64_t>(row) * p.row_stride;
  const int64_t base = static_cast<int64_t>(chunk) * (kThreads * ITEMS);
  const float ninf = neg_inf();
  const KeyCodec<KS> codec{p.ib, p.ib >= 32 ? 0xffffffffull : ((1ull << p.ib) - 1ull)};

  float x[ITEMS];
#pragma unroll
  for (int v = 0; v < ITEMS / VEC; ++v) {
    const int64_t e0 = base + (static_cast<int64_t>(v) * kThreads + tid) * VEC;
    if (p.aligned && e0 + VEC <= p.V) {
      load16(src + e0, &x[v * VEC]);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) x[v * VEC + e] = e0 + e < p.V ? to_float(src[e0 + e]) : ninf;
    }
  }
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) x[j] = sanitize(x[j]);

  float m = ninf;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) m = fmaxf(m, x[j]);
  m = block_max<kThreads>(m, sm.fred);
  float s = 0.f;
  if (m > ninf) {
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) s += exp2f((x[j] - m) * kLog2e);
  }
  s = block_sum<kThreads>(s, sm.fred);

  auto idx_of = [&](int j) -> uint32_t {
    return static_cast<uint32_t>(base + (static_cast<int64_t>(j / VEC) * kThreads + tid) * VEC + (j % VEC));
  };
  const int n = block_topk<ITEMS, KS>(x, idx_of, p.k, codec, p.tb, sm);

  const int64_t slot = static_cast<int64_t>(row) * p.nchunks + chunk;
  float* wv = p.ws_val + slot * p.k;
  int* wi = p.ws_idx + slot * p.k;
  if (tid < p.k) {
    if (tid < n) {
      const unsigned long long c = sm.sorted[tid];
      wv[tid] = codec.value(c);
      wi[tid] = static_cast<int>(codec.index(c));
    } else {
      wv[tid] = ninf;
      wi[tid] = 0;
    }
  }
  if (tid == 0) p.ws_stat[slot] = make_float2(m, s);

  if (!last_block_arrives(p.counters + row, p.nchunks, &sm.flag)) return;

  // ---- merge the row's chunks (this block arrived last)
  const int64_t row0 = static_cast<int64_t>(row) * p.nchunks;
  const float* rv = p.ws_val + row0 * p.k;
  const int* ri = p.ws_idx + row0 * p.k;
  const int ncand = p.nchunks * p.k;

  float M = ninf;
  for (int c = tid; c < p.nchunks; c += kThreads) M = fmaxf(M, __ldcg(&p.ws_stat[row0 + c]).x);
  M = block_max<kThreads>(M, sm.fred);
  float S = 0.f;
  if (M > ninf) {
    for (int c = tid; c < p.nchunks; c += kThreads) {
      const float2 st = __ldcg(&p.ws_stat[row0 + c]);
      if (st.x > ninf) S += st.y * exp2f((st.x - M) * kLog2e);
    }
  }
  S = block_sum<kThreads>(S, sm.fred);
  const float log_s = logf(S);  // S >= 1 when the row has a finite entry

  float y[kMergeItems];
#pragma unroll
  for (int j = 0; j < kMergeItems; ++j) {
    const int i = j * kThreads + tid;
    y[j] = i < ncand ? __ldcg(rv + i) : ninf;
  }
  auto merge_idx = [&](int j) -> uint32_t { return static_cast<uint32_t>(__ldcg(ri + j * kThreads + tid)); };
  const int n2 = block_topk<kMergeItems, KS>(y, merge_idx, p.k, codec, p.tb, sm);

  if (tid < n2) sm.ids[tid] = static_cast<int>(codec.index(sm.sorted[tid]));
  __syncthreads();
  if (tid < p.k) {
    float lp = ninf;
    int64_t id;
    if (tid < n2) {
      // v and M are finite here (v is a sanitised finite entry, M >= v); v - M may still
      // overflow to -inf (v = -FLT_MAX, M = FLT_MAX), as it does in the reference
      const float v = codec.value(sm.sorted[tid]);
      id = sm.ids[tid];
      lp = (v - M) - log_s;
    } else {
      // the (tid - n2)-th smallest index not among the finite winners
      const int f = tid - n2;
      int xi = f;
      for (;;) {
        int below = 0;
        for (int q = 0; q < n2; ++q) below += sm.ids[q] <= xi ? 1 : 0;
        if (f + below == xi) break;
        xi = f + below;
      }
      id = xi;
    }
    p.out_logp[static_cast<int64_t>(row) * p.k + tid] = lp;
    p.out_ids[static_cast<int64_t>(row) * p.k + tid] = id;
  }
}

struct Plan {
  int items;
  int64_t nchunks;
};

// Chunk size: 8192 entries by default; smaller when that leaves SMs idle (small B), larger
// when the merge would see more than kMaxCandidates entries.
Plan make_plan(int64_t B, int64_t V, int k, int sms) {
  auto chunks = [&](int items) { return ceil_div(V, static_cast<int64_t>(kThreads) * items); };
  int items = kMaxItems;
  while (items > 8 && B * chunks(items) < 2LL * sms) items /= 2;
  while (items < kMaxItems && chunks(items) * k > kMaxCandidates) items *= 2;
  return {items, chunks(items)};
}

// Upper bound over every SM count: the smallest chunks give the most slots.
Plan worst_plan(int64_t B, int64_t V, int k) { return make_plan(B, V, k, 1 << 20); }

size_t workspace_bytes(int64_t B, int64_t nchunks, int k) {
  const int64_t slots = B * nchunks;
  return align_up(static_cast<size_t>(slots * k) * sizeof(float), 256) +
         align_up(static_cast<size_t>(slots * k) * sizeof(int), 256) +
         align_up(static_cast<size_t>(slots) * sizeof(float2), 256);
}

// cudaSuccess, cudaErrorInvalidValue (outside the op's contract) or cudaErrorNotSupported
// (beyond this kernel's limits; see rgk_kernels.h).
cudaError_t check_shapes(int64_t B, int64_t V, int k, RgkDType dtype) {
  if (B < 0 || V < 1 || k < 1 || k > V) return cudaErrorInvalidValue;
  if (dtype != RGK_F32 && dtype != RGK_BF16 && dtype != RGK_F16) return cudaErrorInvalidValue;
  if (k > kMaxK || B > RGK_MAX_GRID_X) return cudaErrorNotSupported;
  // with the largest chunks (what make_plan falls back to) the merge must hold all lists
  if (ceil_div(V, RGK_TOPK_MAX_CHUNK) * k > kMaxCandidates) return cudaErrorNotSupported;
  if (B > 0 && B * worst_plan(B, V, k).nchunks > RGK_MAX_GRID_X) return cudaErrorNotSupported;
  return cudaSuccess;
}

template <class T>
cudaError_t launch_typed(const TopkParams& p, int items, int64_t blocks, cudaStream_t stream) {
  switch (items) {
    case 8: topk_logprobs_kernel<T, 8><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p); break;
    case 16: topk_logprobs_kernel<T, 16><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p); break;
    case 32: topk_logprobs_kernel<T, 32><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace rgk

bool rgk_topk_logprobs_supported(int64_t B, int64_t V, int k, RgkDType dtype) {
  return rgk::check_shapes(B, V, k, dtype) == cudaSuccess;
}

cudaError_t rgk_topk_logprobs_plan(int64_t B, int64_t V, int k, RgkTopkPlan* plan) {
  using namespace rgk;
  // the plan does not depend on the dtype: check the shapes as for fp32
  const cudaError_t err = check_shapes(B, V, k, RGK_F32);
  if (err != cudaSuccess) return err;
  const Plan worst = worst_plan(B, V, k);
  plan->workspace_bytes = workspace_bytes(B, worst.nchunks, k);
  plan->sync_ints = RGK_SYNC_RESERVED + B;
  return cudaSuccess;
}

cudaError_t rgk_topk_logprobs_launch(const void* logits, RgkDType dtype, int64_t B, int64_t V,
                                     int64_t row_stride, int k, float* out_logp, int64_t* out_ids,
                                     void* workspace, int* sync, cudaStream_t stream) {
  using namespace rgk;
  cudaError_t err = check_shapes(B, V, k, dtype);
  if (err != cudaSuccess) return err;
  if (B == 0) return cudaSuccess;
  if (logits == nullptr || out_logp == nullptr || out_ids == nullptr || workspace == nullptr || sync == nullptr)
    return cudaErrorInvalidValue;
  int dev = 0;
  DeviceInfo info;
  err = current_device(&dev, &info);
  if (err != cudaSuccess) return err;
  const Plan plan = make_plan(B, V, k, info.sms);
  const Plan worst = worst_plan(B, V, k);
  // make_plan never gives more chunks than the worst case, whose limits check_shapes checked
  if (plan.nchunks * k > kMaxCandidates || plan.nchunks > worst.nchunks) return cudaErrorNotSupported;

  TopkParams p;
  p.logits = logits;
  p.V = V;
  p.row_stride = row_stride;
  p.k = k;
  p.nchunks = static_cast<int>(plan.nchunks);
  p.ib = V - 1 < (1LL << 16) ? 16 : (V - 1 < (1LL << 24) ? 24 : 32);
  const int key_bits = dtype == RGK_BF16 ? 16 : (dtype == RGK_F16 ? 24 : 32);
  p.tb = key_bits + p.ib;
  const size_t esize = dtype == RGK_F32 ? 4 : 2;
  p.aligned = (reinterpret_cast<uintptr_t>(logits) % 16 == 0) && ((row_stride * static_cast<int64_t>(esize)) % 16 == 0);
  p.out_logp = out_logp;
  p.out_ids = out_ids;
  // carve the workspace as sized for the worst-case plan (slots of this plan fit inside)
  const int64_t wslots = B * worst.nchunks;
  char* w = static_cast<char*>(workspace);
  p.ws_val = reinterpret_cast<float*>(w);
  w += align_up(static_cast<size_t>(wslots * k) * sizeof(float), 256);
  p.ws_idx = reinterpret_cast<int*>(w);
  w += align_up(static_cast<size_t>(wslots * k) * sizeof(int), 256);
  p.ws_stat = reinterpret_cast<float2*>(w);
  p.counters = sync + RGK_SYNC_RESERVED;

  const int64_t blocks = B * plan.nchunks;
  switch (dtype) {
    case RGK_F32: return launch_typed<float>(p, plan.items, blocks, stream);
    case RGK_BF16: return launch_typed<__nv_bfloat16>(p, plan.items, blocks, stream);
    case RGK_F16: return launch_typed<__half>(p, plan.items, blocks, stream);
  }
  return cudaErrorInvalidValue;
}

// fork_attention: the K candidate tokens of each sequence attend to that sequence's prefix
// KV cache (read once, never expanded) plus their own single KV entry.
//
//   g = Hq / Hkv; query head h reads kv head h / g; row r = (h % g) * K + j of kv head kvh
//   s_pre[r, l] = scale * q[b, h, j] . k_cache[b, kvh, l]     for l in [cache_start[b], cache_end[b])
//   s_self[r]   = scale * q[b, h, j] . k_new[b, kvh, j]        (candidate j sees only slot j)
//   out[b, h, j] = (sum_l e^{s_pre[r,l]} v_cache[b, kvh, l] + e^{s_self[r]} v_new[b, kvh, j])
//                  / (sum_l e^{s_pre[r,l]} + e^{s_self[r]})     softmax in fp32
//   Shapes: q [B, Hq, K, D], k_cache / v_cache [B, Hkv, L, D], k_new / v_new [B, Hkv, K, D]
//   (strided views, unit stride along D), cache_start / cache_end int32 [B]
//   -> out [B, Hq, K, D] contiguous, dtype of q.
//
// Limits (rgk_kernels.h, rgk/ops/_limits.py): 1 <= D <= 256, Hq % Hkv == 0, K >= 1.
//
// Design.  The g*K query rows that share a kv head are processed together (GQA-style: the
// candidates are extra query heads), so each block streams its slice of the prefix once for
// all of them.  Grid = (B x Hkv x row tiles) x splits: the valid prefix of a row is cut into
// `splits` ranges (split-KV, so B = 1 still fills the GPU); each block runs an online softmax
// over its range and writes a partial (O / l, log2-sum-exp) to the workspace.  The number of
// splits is sized from the caller's host-side bound of the valid prefix length
// (`max_valid_len`, else the capacity L), so a short prompt in a long cache does not walk
// dozens of empty splits; a split that finds no key writes only its -inf log-sum-exp.  The
// last block of a (b, kv head, row tile) to finish (atomic ticket) merges the partials and the
// self entry exactly by log-sum-exp and writes the output, all in the same launch.  The merge
// uses the whole block: one warp per row computes the log-sum-exp weights of all splits into
// shared memory (a warp reduction over splits), then every thread takes (row, 4 columns)
// items and accumulates the weighted split outputs with 16-byte loads.
//   bf16/fp16, D in {64, 128}, 16-byte aligned caches: tensor cores.  16 rows per warp,
//   mma.sync m16n8k16 with fp32 accumulators; K/V tiles of 64 keys double-buffered in
//   shared memory with cp.async; S stays in registers and its C fragments are re-packed as
//   the A operand of P.V (FlashAttention-2 style); when a row tile has <= 32 rows, 2 or 4
//   warps split each key tile and merge their states through shared memory.
//   Otherwise (fp32, other D, odd strides): a CUDA-core kernel with the same structure.
#include "rgk_common.cuh"

namespace rgk {
namespace {

constexpr int kTileKeys = 64;      // keys per shared-memory tile (tensor-core path)
constexpr int kMinSplitKeys = 128; // at least this many prefix keys per split
constexpr int kMaxSplits = RGK_FORK_MAX_SPLITS;
constexpr int kMaxD = RGK_FORK_MAX_D;

struct ForkParams {
  RgkForkArgs a;
  int g, M, MT, nsplit;
  int64_t m_tiles;
  float* ws_o;     // [tiles, nsplit, MT, D]  partial O / l
  float* ws_lse;   // [tiles, nsplit, MT]     log2 sum exp2 (scaled scores), -inf if empty
  int* counters;   // [tiles]
};

struct Block {
  int64_t tile;
  int split, b, kvh, mtile;
  int s_lo, s_hi;  // this block's key range
};

__device__ __forceinline__ Block locate(const ForkParams& p) {
  Block k;
  k.split = static_cast<int>(blockIdx.x % p.nsplit);
  k.tile = blockIdx.x / p.nsplit;
  k.mtile = static_cast<int>(k.tile % p.m_tiles);
  const int64_t bh = k.tile / p.m_tiles;
  k.kvh = static_cast<int>(bh % p.a.Hkv);
  k.b = static_cast<int>(bh / p.a.Hkv);
  int lo = p.a.cache_start[k.b], hi = p.a.cache_end[k.b];
  lo = min(max(lo, 0), p.a.L);
  hi = min(max(hi, lo), p.a.L);
  const int len = hi - lo;
  const int per = static_cast<int>(ceil_div(ceil_div(len, p.nsplit), kTileKeys) * kTileKeys);
  k.s_lo = min(hi, lo + k.split * per);
  k.s_hi = min(hi, k.s_lo + per);
  return k;
}

// Shared floats the merge needs: split weights [MT][nsplit + 1] and 1 / denominator [MT].
__host__ __device__ constexpr size_t merge_smem_floats(int mt, int nsplit) {
  return static_cast<size_t>(mt) * (nsplit + 1) + static_cast<size_t>(mt);
}

// Merge of the splits' partials and the self entry for the rows of one row tile; run by
// the block that arrived last (all NT threads).  `sw`: merge_smem_floats(MT, nsplit) floats
// of shared memory that nothing else uses any more.
//   phase 1, one warp per row: s_self = scale q . k_new, mx = max(s_self, lse_s), weights
//            w_s = 2^(lse_s - mx) (0 for an empty split), w_self = 2^(s_self - mx), 1 / sum;
//   phase 2, the whole block over (row, column group) items:
//            out = (w_self v_new + sum_s w_s O_s) / (w_self + sum_s w_s).
template <class T>
__device__ __forceinline__ void merge_rows(const ForkParams& p, const Block& k, float* sw, int nthreads) {
  const RgkForkArgs& a = p.a;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = nthreads >> 5;
  const float c2 = a.scale * kLog2e;
  const float ninf = neg_inf();
  const int S = p.nsplit, SP = S + 1, MT = p.MT, D = a.D;
  const int r_lo = k.mtile * MT;
  const int nrows = min(MT, p.M - r_lo);
  float* wts = sw;             // [MT][SP]
  float* inv = sw + MT * SP;   // [MT]
  const float* lse_tile = p.ws_lse + k.tile * S * MT;

  for (int rr = warp; rr < nrows; rr += nwarps) {
    const int r = r_lo + rr;
    const int h = k.kvh * p.g + r / a.K, j = r % a.K;
    const T* qr = static_cast<const T*>(a.q) + k.b * a.q_s0 + h * a.q_s1 + j * a.q_s2;
    const T* knr = static_cast<const T*>(a.k_new) + k.b * a.kn_s0 + k.kvh * a.kn_s1 + j * a.kn_s2;
    float dot = 0.f;
    for (int d = lane; d < D; d += 32) dot = fmaf(to_float(qr[d]), to_float(knr[d]), dot);
    const float s_self = warp_sum(dot) * c2;
    float mx = s_self;
    for (int s = lane; s < S; s += 32) mx = fmaxf(mx, __ldcg(lse_tile + s * MT + rr));
    mx = warp_max(mx);
    float den = 0.f;
    for (int s = lane; s < S; s += 32) {
      const float ls = __ldcg(lse_tile + s * MT + rr);
      const float w = ls > ninf ? exp2f(ls - mx) : 0.f;
      wts[rr * SP + s] = w;
      den += w;
    }
    den = warp_sum(den);
    if (lane == 0) {
      const float w_self = exp2f(s_self - mx);
      wts[rr * SP + S] = w_self;
      inv[rr] = 1.f / (den + w_self);
    }
  }
  __syncthreads();

  const int64_t split_stride = static_cast<int64_t>(MT) * D;  // floats between one split's partials and the next
  const float* o_tile = p.ws_o + k.tile * S * split_stride;
  const int cw = (D % 4 == 0) ? 4 : 1;  // columns per item (the partial rows are 256-byte aligned x D floats)
  const int groups = D / cw;
  for (int it = tid; it < nrows * groups; it += nthreads) {
    const int rr = it / groups, c = (it % groups) * cw;
    const int r = r_lo + rr;
    const int h = k.kvh * p.g + r / a.K, j = r % a.K;
    const T* vnr = static_cast<const T*>(a.v_new) + k.b * a.vn_s0 + k.kvh * a.vn_s1 + j * a.vn_s2 + c;
    const float* wr = wts + rr * SP;
    const float* os = o_tile + static_cast<int64_t>(rr) * D + c;
    const float w_self = wr[S];
    T* o = static_cast<T*>(a.out) + ((static_cast<int64_t>(k.b) * a.Hq + h) * a.K + j) * D + c;
    if (cw == 4) {
      float4 acc = make_float4(w_self * to_float(vnr[0]), w_self * to_float(vnr[1]), w_self * to_float(vnr[2]),
                               w_self * to_float(vnr[3]));
#pragma unroll 4
      for (int s = 0; s < S; ++s) {
        const float w = wr[s];
        if (w > 0.f) {  // empty splits wrote no partial output
          const float4 v = __ldcg(reinterpret_cast<const float4*>(os + s * split_stride));
          acc.x = fmaf(w, v.x, acc.x);
          acc.y = fmaf(w, v.y, acc.y);
          acc.z = fmaf(w, v.z, acc.z);
          acc.w = fmaf(w, v.w, acc.w);
        }
      }
      const float iv = inv[rr];
      o[0] = from_float<T>(acc.x * iv);
      o[1] = from_float<T>(acc.y * iv);
      o[2] = from_float<T>(acc.z * iv);
      o[3] = from_float<T>(acc.w * iv);
    } else {
      float acc = w_self * to_float(vnr[0]);
#pragma unroll 4
      for (int s = 0; s < S; ++s) {
        const float w = wr[s];
        if (w > 0.f) acc = fmaf(w, __ldcg(os + s * split_stride), acc);
      }
      o[0] = from_float<T>(acc * inv[rr]);
    }
  }
}

// ------------------------------------------------------------------ tensor-core path
template <class T, int D, int WM, int WK>
__global__ void __launch_bounds__(32 * WM * WK) fork_attention_mma_kernel(ForkParams p) {
  constexpr int NW = WM * WK, NT = 32 * NW, MT = 16 * WM, TN = kTileKeys;
  constexpr int KW = TN / WK;     // keys per warp per tile
  constexpr int NF = KW / 8;      // S n-fragments per warp
  constexpr int DF = D / 8;       // O n-fragments
  constexpr int PITCH = D + 8;    // bf16 elements per smem row (16-byte pad: conflict-free ldmatrix)
  constexpr int CH = D / 8;       // 16-byte chunks per row
  static_assert(NF % 2 == 0 && KW % 16 == 0, "each warp needs a multiple of 16 keys");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int s_flag;
  T* ks = reinterpret_cast<T*>(smem_raw);  // [2][TN][PITCH]
  T* vs = ks + 2 * TN * PITCH;             // [2][TN][PITCH]

  const RgkForkArgs& a = p.a;
  const Block blk = locate(p);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WK, wk = warp % WK;
  const int gid = lane >> 2, tig = lane & 3;
  const float ninf = neg_inf();
  const float c2 = a.scale * kLog2e;

  // Q fragments of this warp's 16 rows (rows >= M are zero)
  uint32_t qa[D / 16][4];
  {
    const int rA = blk.mtile * MT + wm * 16 + gid, rB = rA + 8;
    const uint16_t* qraw = static_cast<const uint16_t*>(a.q);
    const uint16_t* qA = rA < p.M
        ? qraw + blk.b * a.q_s0 + (blk.kvh * p.g + rA / a.K) * a.q_s1 + (rA % a.K) * a.q_s2 : nullptr;
    const uint16_t* qB = rB < p.M
        ? qraw + blk.b * a.q_s0 + (blk.kvh * p.g + rB / a.K) * a.q_s1 + (rB % a.K) * a.q_s2 : nullptr;
    auto pk = [](const uint16_t* row, int c) -> uint32_t {
      return row ? (static_cast<uint32_t>(row[c]) | (static_cast<uint32_t>(row[c + 1]) << 16)) : 0u;
    };
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int c = kk * 16 + 2 * tig;
      qa[kk][0] = pk(qA, c);
      qa[kk][1] = pk(qB, c);
      qa[kk][2] = pk(qA, c + 8);
      qa[kk][3] = pk(qB, c + 8);
    }
  }

  const T* kbase = static_cast<const T*>(a.k_cache) + blk.b * a.kc_s0 + blk.kvh * a.kc_s1;
  const T* vbase = static_cast<const T*>(a.v_cache) + blk.b * a.vc_s0 + blk.kvh * a.vc_s1;
  const int ntiles = blk.s_hi > blk.s_lo ? static_cast<int>(ceil_div(blk.s_hi - blk.s_lo, TN)) : 0;

  auto load_tile = [&](int t, int buf) {
    const int t_lo = blk.s_lo + t * TN;
    T* kd = ks + buf * TN * PITCH;
    T* vd = vs + buf * TN * PITCH;
    for (int c = tid; c < TN * CH; c += NT) {
      const int key = c / CH, part = c % CH;
      const int pos = t_lo + key;
      const bool valid = pos < blk.s_hi;
      const T* ksrc = valid ? kbase + static_cast<int64_t>(pos) * a.kc_s2 + part * 8 : kbase;
      const T* vsrc = valid ? vbase + static_cast<int64_t>(pos) * a.vc_s2 + part * 8 : vbase;
      cp_async16(kd + key * PITCH + part * 8, ksrc, valid);
      cp_async16(vd + key * PITCH + part * 8, vsrc, valid);
    }
  };

  float o[DF][4];
#pragma unroll
  for (int i = 0; i < DF; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mrow[2] = {ninf, ninf}, lrow[2] = {0.f, 0.f};

  if (ntiles > 0) load_tile(0, 0);
  cp_async_commit();
  for (int t = 0; t < ntiles; ++t) {
    if (t + 1 < ntiles) load_tile(t + 1, (t + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* kt = ks + (t & 1) * TN * PITCH;
    const T* vt = vs + (t & 1) * TN * PITCH;
    const int t_lo = blk.s_lo + t * TN;
    const int kb = wk * KW;

    float s[NF][4];
#pragma unroll
    for (int i = 0; i < NF; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int n2 = 0; n2 < NF / 2; ++n2) {
        uint32_t bb[4];
        ldmatrix_x4(bb, kt + (kb + n2 * 16 + (lane >> 4) * 8 + (lane & 7)) * PITCH + kk * 16 + ((lane >> 3) & 1) * 8);
        Mma<T>::run(s[2 * n2], qa[kk], bb[0], bb[1]);
        Mma<T>::run(s[2 * n2 + 1], qa[kk], bb[2], bb[3]);
      }
    }

    float mx[2] = {ninf, ninf};
#pragma unroll
    for (int i = 0; i < NF; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int pos = t_lo + kb + i * 8 + 2 * tig + (e & 1);
        const float v = pos < blk.s_hi ? s[i][e] * c2 : ninf;
        s[i][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    }
    float mu[2], alpha[2], ls[2] = {0.f, 0.f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFull, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFull, mx[h], 2));
      const float mnew = fmaxf(mrow[h], mx[h]);
      mu[h] = mnew == ninf ? 0.f : mnew;
      alpha[h] = exp2f(mrow[h] - mu[h]);
      mrow[h] = mnew;
    }
#pragma unroll
    for (int i = 0; i < NF; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = exp2f(s[i][e] - mu[e >> 1]);
        s[i][e] = pv;
        ls[e >> 1] += pv;
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) lrow[h] = lrow[h] * alpha[h] + ls[h];
#pragma unroll
    for (int i = 0; i < DF; ++i) {
      o[i][0] *= alpha[0]; o[i][1] *= alpha[0];
      o[i][2] *= alpha[1]; o[i][3] *= alpha[1];
    }

#pragma unroll
    for (int kk = 0; kk < KW / 16; ++kk) {
      const uint32_t pa[4] = {Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]), Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]),
                              Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n2 = 0; n2 < D / 16; ++n2) {
        uint32_t bb[4];
        ldmatrix_x4_trans(bb, vt + (kb + kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * PITCH + n2 * 16 + (lane >> 4) * 8);
        Mma<T>::run(o[2 * n2], pa, bb[0], bb[1]);
        Mma<T>::run(o[2 * n2 + 1], pa, bb[2], bb[3]);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    lrow[h] += __shfl_xor_sync(kFull, lrow[h], 1);
    lrow[h] += __shfl_xor_sync(kFull, lrow[h], 2);
  }

  if constexpr (WK > 1) {
    // merge the WK warps that share a row block: [m(16), l(16), O(16 x D)] per warp
    constexpr int WS = 32 + 16 * D;
    float* red = reinterpret_cast<float*>(smem_raw);
    float* mine = red + warp * WS;
    if (tig == 0) {
      mine[gid] = mrow[0]; mine[gid + 8] = mrow[1];
      mine[16 + gid] = lrow[0]; mine[16 + gid + 8] = lrow[1];
    }
#pragma unroll
    for (int i = 0; i < DF; ++i) {
      const int col = i * 8 + 2 * tig;
      mine[32 + gid * D + col] = o[i][0];
      mine[32 + gid * D + col + 1] = o[i][1];
      mine[32 + (gid + 8) * D + col] = o[i][2];
      mine[32 + (gid + 8) * D + col + 1] = o[i][3];
    }
    __syncthreads();
    if (wk == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = gid + 8 * h;
        float mt = ninf;
#pragma unroll
        for (int w = 0; w < WK; ++w) mt = fmaxf(mt, red[(wm * WK + w) * WS + row]);
        float sc[WK];
        float lt = 0.f;
#pragma unroll
        for (int w = 0; w < WK; ++w) {
          const float mw = red[(wm * WK + w) * WS + row];
          sc[w] = mw == ninf ? 0.f : exp2f(mw - mt);
          lt += sc[w] * red[(wm * WK + w) * WS + 16 + row];
        }
        mrow[h] = mt;
        lrow[h] = lt;
#pragma unroll
        for (int i = 0; i < DF; ++i) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = i * 8 + 2 * tig + e;
            float acc = 0.f;
#pragma unroll
            for (int w = 0; w < WK; ++w) acc += sc[w] * red[(wm * WK + w) * WS + 32 + row * D + col];
            o[i][2 * h + e] = acc;
          }
        }
      }
    }
  }

  if (wk == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rr = wm * 16 + gid + 8 * h;
      if (blk.mtile * MT + rr < p.M) {
        const float l = lrow[h];
        const bool has = l > 0.f;
        if (has) {  // the merge skips empty splits: no partial output to write
          const float inv = 1.f / l;
          float* dst = p.ws_o + ((blk.tile * p.nsplit + blk.split) * MT + rr) * D;
#pragma unroll
          for (int i = 0; i < DF; ++i) {
            const int col = i * 8 + 2 * tig;
            *reinterpret_cast<float2*>(dst + col) = make_float2(o[i][2 * h] * inv, o[i][2 * h + 1] * inv);
          }
        }
        if (tig == 0) p.ws_lse[(blk.tile * p.nsplit + blk.split) * MT + rr] = has ? mrow[h] + log2f(l) : ninf;
      }
    }
  }

  if (!last_block_arrives(p.counters + blk.tile, p.nsplit, &s_flag)) return;
  merge_rows<T>(p, blk, reinterpret_cast<float*>(smem_raw), NT);
}

// ------------------------------------------------------------------ CUDA-core path
constexpr int kSimpleThreads = 128;
constexpr int kSimpleRows = 16;
constexpr int kSimpleKeys = 32;

template <int DMAX>
constexpr size_t simple_smem_floats() {
  return static_cast<size_t>(kSimpleRows) * (DMAX + 1) + 2ull * kSimpleKeys * (DMAX + 1) +
         static_cast<size_t>(kSimpleRows) * (kSimpleKeys + 1);
}

template <class T, int DMAX>
__global__ void __launch_bounds__(kSimpleThreads) fork_attention_simple_kernel(ForkParams p) {
  constexpr int MT = kSimpleRows, TN = kSimpleKeys, DP = DMAX + 1, PP = TN + 1, OC = DMAX / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int s_flag;
  float* qs = reinterpret_cast<float*>(smem_raw);  // [MT][DP], pre-scaled by scale * log2(e)
  float* kt = qs + MT * DP;                         // [TN][DP]
  float* vt = kt + TN * DP;                         // [TN][DP]
  float* ps = vt + TN * DP;                         // [MT][PP]

  const RgkForkArgs& a = p.a;
  const Block blk = locate(p);
  const int tid = threadIdx.x;
  const int D = a.D;
  const float ninf = neg_inf();
  const float c2 = a.scale * kLog2e;

  for (int i = tid; i < MT * D; i += kSimpleThreads) {
    const int rr = i / D, d = i % D, r = blk.mtile * MT + rr;
    float v = 0.f;
    if (r < p.M) {
      const T* qr = static_cast<const T*>(a.q) + blk.b * a.q_s0 + (blk.kvh * p.g + r / a.K) * a.q_s1 + (r % a.K) * a.q_s2;
      v = to_float(qr[d]) * c2;
    }
    qs[rr * DP + d] = v;
  }

  const T* kbase = static_cast<const T*>(a.k_cache) + blk.b * a.kc_s0 + blk.kvh * a.kc_s1;
  const T* vbase = static_cast<const T*>(a.v_cache) + blk.b * a.vc_s0 + blk.kvh * a.vc_s1;
  const int row = tid >> 3, sub = tid & 7;
  float o[OC];
#pragma unroll
  for (int c = 0; c < OC; ++c) o[c] = 0.f;
  float mrow = ninf, lrow = 0.f;

  for (int t_lo = blk.s_lo; t_lo < blk.s_hi; t_lo += TN) {
    __syncthreads();
    for (int i = tid; i < TN * D; i += kSimpleThreads) {
      const int key = i / D, d = i % D, pos = t_lo + key;
      const bool valid = pos < blk.s_hi;
      kt[key * DP + d] = valid ? to_float(kbase[static_cast<int64_t>(pos) * a.kc_s2 + d]) : 0.f;
      vt[key * DP + d] = valid ? to_float(vbase[static_cast<int64_t>(pos) * a.vc_s2 + d]) : 0.f;
    }
    __syncthreads();
    float sc[4];
    float mx = ninf;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int j = sub + 8 * i;
      float acc = 0.f;
      for (int d = 0; d < D; ++d) acc += qs[row * DP + d] * kt[j * DP + d];
      sc[i] = t_lo + j < blk.s_hi ? acc : ninf;
      mx = fmaxf(mx, sc[i]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 2));
    mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 4));
    const float mnew = fmaxf(mrow, mx);
    const float mu = mnew == ninf ? 0.f : mnew;
    const float alpha = exp2f(mrow - mu);
    mrow = mnew;
    float ls = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float pv = exp2f(sc[i] - mu);
      ps[row * PP + sub + 8 * i] = pv;
      ls += pv;
    }
    lrow = lrow * alpha + ls;
    __syncwarp();
#pragma unroll
    for (int c = 0; c < OC; ++c) {
      const int d = sub + 8 * c;
      if (d < D) {
        float acc = o[c] * alpha;
#pragma unroll 8
        for (int j = 0; j < TN; ++j) acc += ps[row * PP + j] * vt[j * DP + d];
        o[c] = acc;
      }
    }
  }
  lrow += __shfl_xor_sync(kFull, lrow, 1);
  lrow += __shfl_xor_sync(kFull, lrow, 2);
  lrow += __shfl_xor_sync(kFull, lrow, 4);

  if (blk.mtile * MT + row < p.M) {
    const bool has = lrow > 0.f;
    if (has) {  // the merge skips empty splits: no partial output to write
      const float inv = 1.f / lrow;
      float* dst = p.ws_o + ((blk.tile * p.nsplit + blk.split) * MT + row) * D;
#pragma unroll
      for (int c = 0; c < OC; ++c) {
        const int d = sub + 8 * c;
        if (d < D) dst[d] = o[c] * inv;
      }
    }
    if (sub == 0) p.ws_lse[(blk.tile * p.nsplit + blk.split) * MT + row] = has ? mrow + log2f(lrow) : ninf;
  }

  if (!last_block_arrives(p.counters + blk.tile, p.nsplit, &s_flag)) return;
  merge_rows<T>(p, blk, reinterpret_cast<float*>(smem_raw), kSimpleThreads);
}

// ------------------------------------------------------------------ host side
struct Plan {
  bool mma;
  int wm, wk, mt, threads, nsplit;
  int64_t m_tiles, tiles;
  size_t smem, ws_o_bytes, ws_lse_bytes;
};

bool aligned16(const void* ptr, int64_t s0, int64_t s1, int64_t s2) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && s0 % 8 == 0 && s1 % 8 == 0 && s2 % 8 == 0;
}

int simple_dmax(int D) { return D <= 64 ? 64 : (D <= 128 ? 128 : 256); }

bool valid_dtype(RgkDType t) { return t == RGK_F32 || t == RGK_BF16 || t == RGK_F16; }

// cudaSuccess, cudaErrorInvalidValue (outside the op's contract) or cudaErrorNotSupported.
cudaError_t check_shapes(int64_t B, int64_t Hq, int64_t Hkv, int64_t K, int64_t D, int64_t L, RgkDType dt) {
  if (B < 0 || Hq < 1 || Hkv < 1 || Hq % Hkv != 0 || K < 1 || D < 1 || L < 0 || !valid_dtype(dt))
    return cudaErrorInvalidValue;
  constexpr int64_t kInt = 2147483647;
  if (D > kMaxD || B > kInt || Hq > kInt || K > kInt || L > kInt) return cudaErrorNotSupported;
  const int64_t M = (Hq / Hkv) * K;  // query rows per kv head
  if (M > kInt || B * Hq > kInt || B * Hq * K > kInt) return cudaErrorNotSupported;  // in this order: no overflow
  // the row tiles of the CUDA-core path (16 rows) are the most numerous; every tile needs a block
  if (B * Hkv * ceil_div(M, 16) > RGK_MAX_GRID_X) return cudaErrorNotSupported;
  return cudaSuccess;
}

cudaError_t make_plan(const RgkForkArgs& a, int max_valid_len, int sms, Plan* pl) {
  const cudaError_t e = check_shapes(a.B, a.Hq, a.Hkv, a.K, a.D, a.L, a.dtype);
  if (e != cudaSuccess) return e;
  const int M = (a.Hq / a.Hkv) * a.K;
  pl->mma = a.dtype != RGK_F32 && (a.D == 64 || a.D == 128) &&
            aligned16(a.k_cache, a.kc_s0, a.kc_s1, a.kc_s2) && aligned16(a.v_cache, a.vc_s0, a.vc_s1, a.vc_s2);
  if (pl->mma) {
    pl->wm = static_cast<int>(cmin<int64_t>(4, ceil_div(M, 16)));
    pl->wk = pl->wm == 1 ? 4 : (pl->wm == 2 ? 2 : 1);
    pl->mt = 16 * pl->wm;
    pl->threads = 32 * pl->wm * pl->wk;
    pl->smem = 2ull * 2 * kTileKeys * (a.D + 8) * 2;
  } else {
    pl->wm = pl->wk = 1;
    pl->mt = kSimpleRows;
    pl->threads = kSimpleThreads;
    const int dm = simple_dmax(a.D);
    pl->smem = sizeof(float) * (dm == 64 ? simple_smem_floats<64>() : dm == 128 ? simple_smem_floats<128>()
                                                                                : simple_smem_floats<256>());
  }
  pl->m_tiles = ceil_div(M, pl->mt);
  pl->tiles = static_cast<int64_t>(a.B) * a.Hkv * pl->m_tiles;
  // splits: enough blocks for ~2 waves, at least kMinSplitKeys keys of the longest valid
  // prefix per split (its bound from the host, else the capacity), at most kMaxSplits, and a
  // grid within the CUDA limit
  const int64_t span = (max_valid_len <= 0 || max_valid_len > a.L) ? a.L : max_valid_len;
  const int64_t by_len = cmax<int64_t>(1, span / kMinSplitKeys);
  const int64_t want = pl->tiles > 0 ? ceil_div(2LL * sms, pl->tiles) : 1;
  int64_t nsplit = cmax<int64_t>(1, cmin<int64_t>(cmin<int64_t>(want, by_len), kMaxSplits));
  if (pl->tiles > 0) nsplit = cmax<int64_t>(1, cmin<int64_t>(nsplit, RGK_MAX_GRID_X / pl->tiles));
  pl->nsplit = static_cast<int>(nsplit);
  // the merge reuses the dynamic shared memory for its weights
  pl->smem = cmax<size_t>(pl->smem, merge_smem_floats(pl->mt, pl->nsplit) * sizeof(float));
  const size_t rows = static_cast<size_t>(pl->tiles) * pl->nsplit * pl->mt;
  pl->ws_o_bytes = align_up(rows * a.D * sizeof(float), 256);
  pl->ws_lse_bytes = align_up(rows * sizeof(float), 256);
  return cudaSuccess;
}

template <class Kernel>
cudaError_t launch(Kernel kernel, const Plan& pl, const ForkParams& p, int dev, const DeviceInfo& info,
                   cudaStream_t stream) {
  if (pl.smem > static_cast<size_t>(info.smem_optin)) return cudaErrorNotSupported;
  if (pl.smem > 48 * 1024) {  // once per (device, kernel): the limit is raised to the device maximum
    const cudaError_t err = allow_max_dynamic_smem(reinterpret_cast<const void*>(kernel), dev, info.smem_optin);
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(pl.tiles * pl.nsplit), pl.threads, pl.smem, stream>>>(p);
  return cudaGetLastError();
}

template <class T, int D>
cudaError_t launch_mma(const Plan& pl, const ForkParams& p, int dev, const DeviceInfo& info, cudaStream_t s) {
  switch (pl.wm) {
    case 1: return launch(fork_attention_mma_kernel<T, D, 1, 4>, pl, p, dev, info, s);
    case 2: return launch(fork_attention_mma_kernel<T, D, 2, 2>, pl, p, dev, info, s);
    case 3: return launch(fork_attention_mma_kernel<T, D, 3, 1>, pl, p, dev, info, s);
    case 4: return launch(fork_attention_mma_kernel<T, D, 4, 1>, pl, p, dev, info, s);
  }
  return cudaErrorInvalidValue;
}

template <class T>
cudaError_t launch_simple(const Plan& pl, const ForkParams& p, int dev, const DeviceInfo& info, cudaStream_t s) {
  switch (simple_dmax(p.a.D)) {
    case 64: return launch(fork_attention_simple_kernel<T, 64>, pl, p, dev, info, s);
    case 128: return launch(fork_attention_simple_kernel<T, 128>, pl, p, dev, info, s);
    default: return launch(fork_attention_simple_kernel<T, 256>, pl, p, dev, info, s);
  }
}

}  // namespace
}  // namespace rgk

bool rgk_fork_attention_supported(int64_t B, int64_t Hq, int64_t Hkv, int64_t K, int64_t D, int64_t L,
                                  RgkDType dtype) {
  return rgk::check_shapes(B, Hq, Hkv, K, D, L, dtype) == cudaSuccess;
}

cudaError_t rgk_fork_attention_plan(const RgkForkArgs& args, int max_valid_len, RgkForkPlan* plan) {
  using namespace rgk;
  int dev = 0;
  DeviceInfo info;
  cudaError_t err = current_device(&dev, &info);
  if (err != cudaSuccess) return err;
  Plan pl;
  err = make_plan(args, max_valid_len, info.sms, &pl);
  if (err != cudaSuccess) return err;
  plan->workspace_bytes = pl.ws_o_bytes + pl.ws_lse_bytes;
  plan->sync_ints = RGK_SYNC_RESERVED + pl.tiles;
  plan->tensor_cores = pl.mma ? 1 : 0;
  plan->splits = pl.nsplit;
  return cudaSuccess;
}

cudaError_t rgk_fork_attention_launch(const RgkForkArgs& args, int max_valid_len, void* workspace, int* sync,
                                      cudaStream_t stream) {
  using namespace rgk;
  int dev = 0;
  DeviceInfo info;
  cudaError_t err = current_device(&dev, &info);
  if (err != cudaSuccess) return err;
  Plan pl;
  err = make_plan(args, max_valid_len, info.sms, &pl);
  if (err != cudaSuccess) return err;
  if (pl.tiles == 0) return cudaSuccess;
  // the merge reads the partial outputs as float4
  if (workspace == nullptr || sync == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return cudaErrorInvalidValue;
  ForkParams p;
  p.a = args;
  p.g = args.Hq / args.Hkv;
  p.M = p.g * args.K;
  p.MT = pl.mt;
  p.nsplit = pl.nsplit;
  p.m_tiles = pl.m_tiles;
  p.ws_o = static_cast<float*>(workspace);
  p.ws_lse = reinterpret_cast<float*>(static_cast<char*>(workspace) + pl.ws_o_bytes);
  p.counters = sync + RGK_SYNC_RESERVED;
  if (pl.mma) {
    if (args.dtype == RGK_BF16) return args.D == 64 ? launch_mma<__nv_bfloat16, 64>(pl, p, dev, info, stream)
                                                    : launch_mma<__nv_bfloat16, 128>(pl, p, dev, info, stream);
    return args.D == 64 ? launch_mma<__half, 64>(pl, p, dev, info, stream)
                        : launch_mma<__half, 128>(pl, p, dev, info, stream);
  }
  switch (args.dtype) {
    case RGK_F32: return launch_simple<float>(pl, p, dev, info, stream);
    case RGK_BF16: return launch_simple<__nv_bfloat16>(pl, p, dev, info, stream);
    case RGK_F16: return launch_simple<__half>(pl, p, dev, info, stream);
  }
  return cudaErrorInvalidValue;
}

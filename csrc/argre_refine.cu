// argre_refine: ARGRE steering plus n gradient-ascent steps on the reward MLP, one launch.
//
//   theta(x) = w2 . relu(W1 x + b1) + b2                 W1 [m, d], b1 [m], w2 [1, m], b2 [1]
//   steering: gap = r_plus - theta(x);  x <- x + ((gap * [gap > 0]) / beta) * direction
//   n_steps times: x <- x + step_size * grad theta(x),   grad theta(x) = W1^T (w2 * [W1 x + b1 > 0])
//   Shapes: h [B, d] (fp32/bf16/fp16, unit stride along d), direction [d] -> out [B, d] in h's
//   dtype; every operation in fp32 (w1 may be fp32/bf16/fp16, read as fp32).
//
// Design.  A single persistent grid of co-resident blocks (one per SM where that fits; the
// block count comes from the occupancy API and the launch is cooperative, so the driver
// refuses a grid that cannot be co-resident, cudaErrorCooperativeLaunchTooLarge, instead of
// letting the grid barrier spin forever) splits the d columns: block j keeps W1[:, its columns] in shared memory
// (fp32, transposed) for the whole launch and owns x[:, its columns], so W1 is read from
// HBM once.  Per step:
//   forward   each block: partial z over its columns for all (row, unit) -> workspace
//   barrier
//   reduce    block j sums the partials of its share of the units (fixed order) -> relu mask
//             (steering: relu(z) * w2 summed over its units -> per-block partial reward)
//   barrier
//   backward  each block: g = W1[:, cols]^T (w2 * mask) for its columns; x += step_size * g
// The grid barrier is an atomic counter/generation pair in the caller's zeroed sync buffer;
// the kernel itself returns the arrival count to zero after every barrier (the generation
// word only has to move, never to start at zero), so no memset is needed between launches and
// the (cooperative) launch is CUDA-graph capturable.  Launch plans (block count, columns per
// block, shared memory) are cached per (device, W1 dtype, row class, d, m).
// Sums are evaluated in a fixed order: results are deterministic run to run.
#include "rgk_common.cuh"

namespace rgk {
namespace {

constexpr int kThreads = RGK_ARGRE_THREADS;
constexpr int kRows = RGK_ARGRE_ROWS;  // R when B > 1
static_assert(kThreads == 256 && kRows == 8, "the kernel's tiling is written for these");
constexpr int kUnitsPerThread = 4;  // forward: units per thread per pass
constexpr int kBatch = 8;           // global loads in flight per thread when staging

// Four consecutive elements of W1 (n_valid of them in range) as floats; 16/8-byte vector
// load when the row layout allows it.
__device__ __forceinline__ void load4(const float* p, int n_valid, bool vec, float* v) {
  if (vec && n_valid >= 4) {
    const float4 x = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
  } else {
    for (int e = 0; e < 4 && e < n_valid; ++e) v[e] = __ldg(p + e);
  }
}
template <class W>
__device__ __forceinline__ void load4(const W* p, int n_valid, bool vec, float* v) {
  if (vec && n_valid >= 4) {
    const uint2 x = __ldg(reinterpret_cast<const uint2*>(p));
    const W* h = reinterpret_cast<const W*>(&x);
    v[0] = to_float(h[0]); v[1] = to_float(h[1]); v[2] = to_float(h[2]); v[3] = to_float(h[3]);
  } else {
    for (int e = 0; e < 4 && e < n_valid; ++e) v[e] = to_float(p[e]);
  }
}

struct ArgreParams {
  RgkArgreArgs a;
  int ds;        // columns per block (power of two >= 4)
  int nblk;      // blocks (all co-resident)
  int ub;        // units per block in the reduce phase (multiple of 4)
  int mp;        // m rounded up to a multiple of 4 (pitch of zpart / mask rows)
  int wp;        // smem pitch of the transposed W1 and of the coefficient rows
  bool w_vec;    // rows of W1 allow 4-element vector loads
  float* x;              // [B, d]      fp32 state, each block touches its own columns only
  float* zpart;          // [nblk, B, mp] partial pre-activations
  unsigned char* mask;   // [B, mp]     1[z > 0]
  float* rpart;          // [nblk, B]   steering: partial rewards
  unsigned* bar_count;
  unsigned* bar_gen;
};

template <int R>
struct Smem {
  // floats: wt [ds][wp] | cs [R][wp] | xs [ds][R] | red [max(256 * R, R * ub / 4)]
  static size_t floats(int ds, int wp, int ub) {
    const size_t red = cmax<size_t>(static_cast<size_t>(kThreads) * R, static_cast<size_t>(R) * (ub / 4));
    return static_cast<size_t>(ds) * wp + static_cast<size_t>(R) * wp + static_cast<size_t>(ds) * R + red;
  }
};

template <class W, int R>
__global__ void __launch_bounds__(kThreads, 1) argre_refine_kernel(ArgreParams p) {
  extern __shared__ __align__(16) float smem[];
  const RgkArgreArgs& a = p.a;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int j = blockIdx.x;
  const int ds = p.ds, wp = p.wp;
  const int c0 = j * ds;
  const int nc = cmin(ds, a.d - c0);
  const int u0 = j * p.ub;
  const int nu = cmax(0, cmin(p.ub, a.m - u0));
  const int nq = (nu + 3) / 4;
  const int B = a.B, d = a.d, m = a.m;
  float* wt = smem;                  // [ds][wp]   W1[u][c0 + c] at wt[c * wp + u]
  float* cs = wt + ds * wp;          // [R][wp]    w2[u] * mask[b][u]
  float* xs = cs + R * wp;           // [ds][R]    x[b][c0 + c] at xs[c * R + r]
  float* red = xs + ds * R;          // reductions

  // ---- load the W1 column slice (zero padding) and the initial state.  Loads are issued
  // in batches of kBatch per thread so that many are in flight (W1 is read from HBM once).
  const W* w1 = static_cast<const W*>(a.w1);
  {
    const int q4 = ds / 4, n4 = m * q4;
    for (int i0 = 0; i0 < n4; i0 += kThreads * kBatch) {
      float v[kBatch][4];
#pragma unroll
      for (int t = 0; t < kBatch; ++t) {
        const int i = i0 + t * kThreads + tid;
        v[t][0] = v[t][1] = v[t][2] = v[t][3] = 0.f;
        if (i < n4) {
          const int u = i / q4, c = (i % q4) * 4;
          load4(w1 + static_cast<int64_t>(u) * d + c0 + c, nc - c, p.w_vec, v[t]);
        }
      }
#pragma unroll
      for (int t = 0; t < kBatch; ++t) {
        const int i = i0 + t * kThreads + tid;
        if (i < n4) {
          const int u = i / q4, c = (i % q4) * 4;
#pragma unroll
          for (int e = 0; e < 4; ++e) wt[(c + e) * wp + u] = v[t][e];
        }
      }
    }
    for (int i = tid; i < (wp - m) * ds; i += kThreads) wt[(i % ds) * wp + m + i / ds] = 0.f;
  }
  for (int i = tid; i < B * nc; i += kThreads) {
    const int b = i / nc, c = i % nc;
    p.x[static_cast<int64_t>(b) * d + c0 + c] = load_any(a.h, a.h_dtype, static_cast<int64_t>(b) * a.h_s0 + c0 + c);
  }
  __syncthreads();

  // ---- forward: zpart[j][b][u] = sum over my columns of W1[u][c] x[b][c]
  auto forward = [&]() {
    for (int rb = 0; rb < B; rb += R) {
      for (int i = tid; i < ds * R; i += kThreads) {
        const int c = i / R, r = i % R;
        xs[i] = (c < nc && rb + r < B) ? p.x[static_cast<int64_t>(rb + r) * d + c0 + c] : 0.f;
      }
      __syncthreads();
      for (int ubase = 0; ubase < m; ubase += kUnitsPerThread * kThreads) {
        float acc[kUnitsPerThread][R];
#pragma unroll
        for (int i = 0; i < kUnitsPerThread; ++i)
#pragma unroll
          for (int r = 0; r < R; ++r) acc[i][r] = 0.f;
        for (int c = 0; c < nc; ++c) {
          float xv[R];
          if constexpr (R % 4 == 0) {
#pragma unroll
            for (int r = 0; r < R; r += 4) {
              const float4 v = *reinterpret_cast<const float4*>(xs + c * R + r);
              xv[r] = v.x; xv[r + 1] = v.y; xv[r + 2] = v.z; xv[r + 3] = v.w;
            }
          } else {
#pragma unroll
            for (int r = 0; r < R; ++r) xv[r] = xs[c * R + r];
          }
#pragma unroll
          for (int i = 0; i < kUnitsPerThread; ++i) {
            const int u = ubase + i * kThreads + tid;
            const float w = u < m ? wt[c * wp + u] : 0.f;
#pragma unroll
            for (int r = 0; r < R; ++r) acc[i][r] = fmaf(w, xv[r], acc[i][r]);
          }
        }
#pragma unroll
        for (int i = 0; i < kUnitsPerThread; ++i) {
          const int u = ubase + i * kThreads + tid;
#pragma unroll
          for (int r = 0; r < R; ++r)
            if (u < m && rb + r < B) p.zpart[(static_cast<int64_t>(j) * B + rb + r) * p.mp + u] = acc[i][r];
        }
      }
      __syncthreads();
    }
  };

  // ---- reduce: z = b1 + sum_j' zpart[j'] for my units; steering -> rpart, else -> mask.
  // Masks go straight to global memory, so that pass covers all rows at once; the steering
  // pass keeps per-row partial rewards in shared memory, R rows at a time.
  auto reduce = [&](bool steer) {
    const int rows_per_pass = steer ? R : B;
    for (int rb = 0; rb < B; rb += rows_per_pass) {
      const int nr = cmin(rows_per_pass, B - rb);
      const int items = nr * nq;
      int tpj = 1;  // threads per (row, unit quad), a power of two <= 32
      while (tpj < 32 && items * tpj * 2 <= kThreads) tpj *= 2;
      for (int base = 0; base < items * tpj; base += kThreads) {
        const int it = (base + tid) / tpj, part = (base + tid) % tpj;
        const int r = it / cmax(nq, 1), q = it % cmax(nq, 1);
        const bool valid = it < items;
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
        if (valid) {
          const float* src = p.zpart + static_cast<int64_t>(rb + r) * p.mp + u0 + q * 4;
          const int64_t stride = static_cast<int64_t>(B) * p.mp;
#pragma unroll 8
          for (int jj = part; jj < p.nblk; jj += tpj) {
            const float4 v = __ldcg(reinterpret_cast<const float4*>(src + jj * stride));
            s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
          }
        }
        for (int o = 1; o < tpj; o <<= 1) {
          s.x += __shfl_xor_sync(kFull, s.x, o);
          s.y += __shfl_xor_sync(kFull, s.y, o);
          s.z += __shfl_xor_sync(kFull, s.z, o);
          s.w += __shfl_xor_sync(kFull, s.w, o);
        }
        if (valid && part == 0) {
          const float zs[4] = {s.x, s.y, s.z, s.w};
          if (steer) {
            float acc = 0.f;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int u = u0 + q * 4 + e;
              if (u - u0 < nu) acc += fmaxf(a.b1[u] + zs[e], 0.f) * a.w2[u];
            }
            red[r * nq + q] = acc;
          } else {
            uint32_t bits = 0;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int u = u0 + q * 4 + e;
              if (u - u0 < nu && a.b1[u] + zs[e] > 0.f) bits |= 1u << (8 * e);
            }
            *reinterpret_cast<uint32_t*>(p.mask + static_cast<int64_t>(rb + r) * p.mp + u0 + q * 4) = bits;
          }
        }
      }
      if (steer) {
        __syncthreads();
        if (tid < nr) {
          float acc = 0.f;
          for (int q = 0; q < nq; ++q) acc += red[tid * nq + q];
          p.rpart[static_cast<int64_t>(j) * B + rb + tid] = acc;
        }
        __syncthreads();
      }
    }
  };

  // ---- steering update of my columns: coef_b = (gap * [gap > 0]) / beta
  auto apply_steering = [&]() {
    for (int b = warp; b < B; b += kThreads / 32) {
      float s = 0.f;
      for (int jj = lane; jj < p.nblk; jj += 32) s += __ldcg(p.rpart + static_cast<int64_t>(jj) * B + b);
      s = warp_sum(s);
      const float r = s + a.b2[0];
      const float gap = a.r_plus - r;
      const float coef = __fdiv_rn(__fmul_rn(gap, gap > 0.f ? 1.f : 0.f), a.beta);
      for (int c = lane; c < nc; c += 32) {
        float* xp = p.x + static_cast<int64_t>(b) * d + c0 + c;
        *xp = __fadd_rn(*xp, __fmul_rn(coef, a.direction[c0 + c]));
      }
    }
    __syncthreads();
  };

  // ---- backward for my columns and update: x += step_size * W1[:, c]^T (w2 * mask)
  const int P = kThreads / ds;  // parts of the unit range per column
  const int m4 = (m + 3) / 4 * 4;
  const int upart = (ceil_div(m4, P) + 3) / 4 * 4;
  auto backward = [&]() {
    for (int rb = 0; rb < B; rb += R) {
      const int nw = R * (m4 / 4);
      for (int i0 = 0; i0 < nw; i0 += kThreads * kBatch) {
        uint32_t bits[kBatch];
#pragma unroll
        for (int t = 0; t < kBatch; ++t) {
          const int i = i0 + t * kThreads + tid;
          const int r = i / (m4 / 4), u = (i % (m4 / 4)) * 4;
          bits[t] = (i < nw && rb + r < B)
              ? __ldcg(reinterpret_cast<const unsigned*>(p.mask + static_cast<int64_t>(rb + r) * p.mp + u)) : 0u;
        }
#pragma unroll
        for (int t = 0; t < kBatch; ++t) {
          const int i = i0 + t * kThreads + tid;
          if (i < nw) {
            const int r = i / (m4 / 4), u = (i % (m4 / 4)) * 4;
            float4 v;
            v.x = (bits[t] & 0x000000ffu) && u < m ? a.w2[u] : 0.f;
            v.y = (bits[t] & 0x0000ff00u) && u + 1 < m ? a.w2[u + 1] : 0.f;
            v.z = (bits[t] & 0x00ff0000u) && u + 2 < m ? a.w2[u + 2] : 0.f;
            v.w = (bits[t] & 0xff000000u) && u + 3 < m ? a.w2[u + 3] : 0.f;
            *reinterpret_cast<float4*>(cs + r * wp + u) = v;
          }
        }
      }
      __syncthreads();
      {
        const int c = tid % ds, part = tid / ds;
        const int ub0 = part * upart, ub1 = cmin(m4, ub0 + upart);
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] = 0.f;
        for (int u = ub0; u < ub1; u += 4) {
          const float4 w = *reinterpret_cast<const float4*>(wt + c * wp + u);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const float4 cv = *reinterpret_cast<const float4*>(cs + r * wp + u);
            acc[r] = fmaf(cv.x, w.x, acc[r]);
            acc[r] = fmaf(cv.y, w.y, acc[r]);
            acc[r] = fmaf(cv.z, w.z, acc[r]);
            acc[r] = fmaf(cv.w, w.w, acc[r]);
          }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) red[(part * R + r) * ds + c] = acc[r];
      }
      __syncthreads();
      for (int i = tid; i < R * ds; i += kThreads) {
        const int r = i / ds, c = i % ds;
        if (rb + r < B && c < nc) {
          float g = 0.f;
          for (int part = 0; part < P; ++part) g += red[(part * R + r) * ds + c];
          float* xp = p.x + static_cast<int64_t>(rb + r) * d + c0 + c;
          *xp = __fadd_rn(*xp, __fmul_rn(a.step_size, g));
        }
      }
      __syncthreads();
    }
  };

  const unsigned nb = static_cast<unsigned>(p.nblk);
  forward();
  grid_barrier(p.bar_count, p.bar_gen, nb);
  reduce(true);
  grid_barrier(p.bar_count, p.bar_gen, nb);
  apply_steering();
  for (int s = 0; s < a.n_steps; ++s) {
    forward();
    grid_barrier(p.bar_count, p.bar_gen, nb);
    reduce(false);
    grid_barrier(p.bar_count, p.bar_gen, nb);
    backward();
  }

  for (int i = tid; i < B * nc; i += kThreads) {
    const int b = i / nc, c = i % nc;
    const int64_t o = static_cast<int64_t>(b) * d + c0 + c;
    store_any(a.out, a.h_dtype, o, p.x[o]);
  }
}

struct Plan {
  int R, ds, nblk, ub, mp, wp;
  size_t smem;
  size_t x_bytes, z_bytes, mask_bytes, r_bytes;
};

// The part of a plan that does not depend on B (beyond R), cached per device.
struct PlanKey {
  int dev, wdt, R, d, m;
  bool operator==(const PlanKey& o) const {
    return dev == o.dev && wdt == o.wdt && R == o.R && d == o.d && m == o.m;
  }
};
struct PlanVal {
  cudaError_t err;  // cudaSuccess or cudaErrorNotSupported (cached refusals too)
  int ds, nblk, ub, mp, wp;
  size_t smem;
};

template <class W, int R>
cudaError_t fit(const RgkArgreArgs& a, int dev, const DeviceInfo& info, PlanVal* pv) {
  auto kernel = argre_refine_kernel<W, R>;
  cudaError_t err = allow_max_dynamic_smem(reinterpret_cast<const void*>(kernel), dev, info.smem_optin);
  if (err != cudaSuccess) return err;
  const int wp = static_cast<int>((a.m + 31) / 32 * 32 + 4);
  pv->err = cudaErrorNotSupported;
  for (int pass = 0; pass < 2; ++pass) {  // first try one block per SM, then any co-resident count
    for (int ds = RGK_ARGRE_MIN_COLS; ds <= RGK_ARGRE_MAX_COLS; ds *= 2) {
      const int nblk = static_cast<int>(ceil_div(a.d, ds));
      const int ub = static_cast<int>((ceil_div(a.m, nblk) + 3) / 4 * 4);
      const size_t smem = Smem<R>::floats(ds, wp, ub) * sizeof(float);
      if (smem > static_cast<size_t>(info.smem_optin)) break;  // larger ds only needs more
      int occ = 0;
      err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, kThreads, smem);
      if (err != cudaSuccess) return err;
      const int64_t cap = static_cast<int64_t>(occ) * info.sms;
      if (nblk <= cap && (pass == 1 || nblk <= info.sms)) {
        pv->err = cudaSuccess;
        pv->ds = ds; pv->nblk = nblk; pv->ub = ub; pv->wp = wp;
        pv->mp = (a.m + 3) / 4 * 4;
        pv->smem = smem;
        return cudaSuccess;
      }
    }
  }
  return cudaSuccess;  // pv->err says whether it fits
}

bool valid_dtype(RgkDType t) { return t == RGK_F32 || t == RGK_BF16 || t == RGK_F16; }

cudaError_t check_shapes(int64_t B, int64_t d, int64_t m, RgkDType hdt, RgkDType wdt) {
  if (B < 0 || d < 1 || m < 1 || !valid_dtype(hdt) || !valid_dtype(wdt)) return cudaErrorInvalidValue;
  if (d > 2147483647LL || B > 2147483647LL || m > 2147483647LL || B * d > 2147483647LL) return cudaErrorNotSupported;
  return cudaSuccess;
}

// Columns per block, block count and shared memory for (B class, d, m, W1 dtype) on the
// current device; cudaErrorNotSupported when W1 cannot be kept on chip by co-resident blocks.
cudaError_t plan_shape(int64_t B, int d, int m, RgkDType wdt, Plan* pl) {
  int dev = 0;
  DeviceInfo info;
  cudaError_t err = current_device(&dev, &info);
  if (err != cudaSuccess) return err;
  if (!info.coop) return cudaErrorNotSupported;
  const int R = B <= 1 ? 1 : kRows;
  static PlanCache<PlanKey, PlanVal, 64> cache;
  const PlanKey key{dev, static_cast<int>(wdt), R, d, m};
  PlanVal pv{};
  if (!cache.find(key, &pv)) {
    RgkArgreArgs a{};
    a.d = d;
    a.m = m;
    switch (wdt) {
      case RGK_F32: err = R == 1 ? fit<float, 1>(a, dev, info, &pv) : fit<float, kRows>(a, dev, info, &pv); break;
      case RGK_BF16:
        err = R == 1 ? fit<__nv_bfloat16, 1>(a, dev, info, &pv) : fit<__nv_bfloat16, kRows>(a, dev, info, &pv);
        break;
      case RGK_F16: err = R == 1 ? fit<__half, 1>(a, dev, info, &pv) : fit<__half, kRows>(a, dev, info, &pv); break;
      default: return cudaErrorInvalidValue;
    }
    if (err != cudaSuccess) return err;  // a failed query: not cached
    cache.insert(key, pv);
  }
  if (pv.err != cudaSuccess) return pv.err;
  pl->R = R; pl->ds = pv.ds; pl->nblk = pv.nblk; pl->ub = pv.ub; pl->mp = pv.mp; pl->wp = pv.wp;
  pl->smem = pv.smem;
  const size_t Bz = static_cast<size_t>(B);
  pl->x_bytes = align_up(Bz * d * sizeof(float), 256);
  pl->z_bytes = align_up(static_cast<size_t>(pl->nblk) * Bz * pl->mp * sizeof(float), 256);
  pl->mask_bytes = align_up(Bz * pl->mp, 256);
  pl->r_bytes = align_up(static_cast<size_t>(pl->nblk) * Bz * sizeof(float), 256);
  return cudaSuccess;
}

cudaError_t make_plan(const RgkArgreArgs& a, Plan* pl) {
  cudaError_t err = check_shapes(a.B, a.d, a.m, a.h_dtype, a.w1_dtype);
  if (err != cudaSuccess) return err;
  if (a.n_steps < 0 || !(a.beta > 0.f)) return cudaErrorInvalidValue;
  return plan_shape(a.B, a.d, a.m, a.w1_dtype, pl);
}

template <class W>
cudaError_t launch_w(const Plan& pl, const ArgreParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(pl.nblk)), block(kThreads);
  if (pl.R == 1) return launch_cooperative(argre_refine_kernel<W, 1>, grid, block, pl.smem, stream, p);
  return launch_cooperative(argre_refine_kernel<W, kRows>, grid, block, pl.smem, stream, p);
}

}  // namespace
}  // namespace rgk

bool rgk_argre_refine_supported(int64_t B, int64_t d, int64_t m, RgkDType h_dtype, RgkDType w1_dtype) {
  using namespace rgk;
  if (check_shapes(B, d, m, h_dtype, w1_dtype) != cudaSuccess) return false;
  Plan pl;
  return plan_shape(B, static_cast<int>(d), static_cast<int>(m), w1_dtype, &pl) == cudaSuccess;
}

cudaError_t rgk_argre_refine_plan(const RgkArgreArgs& args, RgkArgrePlan* plan) {
  rgk::Plan pl;
  const cudaError_t err = rgk::make_plan(args, &pl);
  if (err != cudaSuccess) return err;
  plan->workspace_bytes = pl.x_bytes + pl.z_bytes + pl.mask_bytes + pl.r_bytes;
  plan->sync_ints = RGK_SYNC_RESERVED;
  plan->blocks = pl.nblk;
  plan->cols_per_block = pl.ds;
  return cudaSuccess;
}

cudaError_t rgk_argre_refine_launch(const RgkArgreArgs& args, void* workspace, int* sync, cudaStream_t stream) {
  using namespace rgk;
  Plan pl;
  cudaError_t err = make_plan(args, &pl);
  if (err != cudaSuccess) return err;
  if (args.B == 0) return cudaSuccess;
  if (workspace == nullptr || sync == nullptr) return cudaErrorInvalidValue;
  ArgreParams p;
  p.a = args;
  p.ds = pl.ds;
  p.nblk = pl.nblk;
  p.ub = pl.ub;
  p.mp = pl.mp;
  p.wp = pl.wp;
  p.w_vec = args.d % 4 == 0 && reinterpret_cast<uintptr_t>(args.w1) % 16 == 0;
  char* w = static_cast<char*>(workspace);
  p.x = reinterpret_cast<float*>(w);
  w += pl.x_bytes;
  p.zpart = reinterpret_cast<float*>(w);
  w += pl.z_bytes;
  p.mask = reinterpret_cast<unsigned char*>(w);
  w += pl.mask_bytes;
  p.rpart = reinterpret_cast<float*>(w);
  p.bar_count = reinterpret_cast<unsigned*>(sync);
  p.bar_gen = reinterpret_cast<unsigned*>(sync + 1);
  switch (args.w1_dtype) {
    case RGK_F32: return launch_w<float>(pl, p, stream);
    case RGK_BF16: return launch_w<__nv_bfloat16>(pl, p, stream);
    case RGK_F16: return launch_w<__half>(pl, p, stream);
  }
  return cudaErrorInvalidValue;
}

// Device helpers shared by the rgk kernels: dtype conversion, order-preserving float keys,
// warp/block reductions, the "last block merges" ticket, a grid barrier, and thin wrappers
// of cp.async / ldmatrix / mma.sync.  CUDA headers only (no torch), like every csrc/*.cu.
//
// All conversions are explicit: torch builds .cu files with __CUDA_NO_HALF_CONVERSIONS__,
// __CUDA_NO_BFLOAT16_CONVERSIONS__ and __CUDA_NO_HALF_OPERATORS__.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "rgk_kernels.h"

namespace rgk {

constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFull = 0xffffffffu;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
template <class T> __host__ __device__ constexpr T cmin(T a, T b) { return a < b ? a : b; }
template <class T> __host__ __device__ constexpr T cmax(T a, T b) { return a > b ? a : b; }

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// The largest finite fp32 (3.4028234663852886e38): where +inf is clamped to (RULES: a +inf
// logit takes all the probability, a +inf score is the best finite score).
constexpr float kFltMax = 3.4028234663852886e38f;

// A logit as the ops read it: NaN -> -inf (masked), +inf -> FLT_MAX, anything else unchanged
// except -0 -> +0 (the two compare equal, so they must tie in the order-preserving keys too;
// x + 0 is not folded away without fast-math, since it is no identity for x = -0).
__device__ __forceinline__ float sanitize(float x) { return x != x ? neg_inf() : fminf(x, kFltMax) + 0.f; }

// ------------------------------------------------------------------ conversions
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// Elements per 16-byte vector.
template <class T> struct Vec16 { static constexpr int N = 16 / static_cast<int>(sizeof(T)); };

__device__ __forceinline__ void bf16x2_to_float(uint32_t w, float* out) {
  out[0] = __uint_as_float(w << 16);
  out[1] = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ void half2_to_float(uint32_t w, float* out) {
  out[0] = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
  out[1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
}

// Loads Vec16<T>::N consecutive elements from a 16-byte aligned address, as floats.
__device__ __forceinline__ void load16(const float* p, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
__device__ __forceinline__ void load16(const __nv_bfloat16* p, float* out) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  bf16x2_to_float(v.x, out); bf16x2_to_float(v.y, out + 2);
  bf16x2_to_float(v.z, out + 4); bf16x2_to_float(v.w, out + 6);
}
__device__ __forceinline__ void load16(const __half* p, float* out) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  half2_to_float(v.x, out); half2_to_float(v.y, out + 2);
  half2_to_float(v.z, out + 4); half2_to_float(v.w, out + 6);
}

// Loads element i of a tensor whose dtype is only known at run time.
__device__ __forceinline__ float load_any(const void* p, RgkDType t, int64_t i) {
  if (t == RGK_F32) return static_cast<const float*>(p)[i];
  if (t == RGK_BF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return __half2float(static_cast<const __half*>(p)[i]);
}
__device__ __forceinline__ void store_any(void* p, RgkDType t, int64_t i, float v) {
  if (t == RGK_F32) static_cast<float*>(p)[i] = v;
  else if (t == RGK_BF16) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<__half*>(p)[i] = __float2half_rn(v);
}

// ------------------------------------------------------------------ float <-> ordered key
// Monotone map of floats onto uint32 (larger float -> larger key); NaNs land at the ends.
__device__ __forceinline__ uint32_t float_key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// ------------------------------------------------------------------ reductions
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Block-wide reductions; `red` is shared scratch of NT/32 floats.  Every thread gets the
// result.  The leading barrier lets callers reuse `red` back to back.
template <int NT>
__device__ __forceinline__ float block_max(float v, float* red) {
  v = warp_max(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int i = 1; i < NT / 32; ++i) r = fmaxf(r, red[i]);
  return r;
}
template <int NT>
__device__ __forceinline__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int i = 1; i < NT / 32; ++i) r += red[i];
  return r;
}

// ------------------------------------------------------------------ cross-block sync
// "Last block merges": every block of a group calls this once after writing its partial
// results.  Returns true (in all threads) only in the block that arrived last; that block
// has reset the counter to zero and may read the other blocks' results with __ldcg.
__device__ __forceinline__ bool last_block_arrives(int* counter, int expected, int* s_flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int ticket = atomicAdd(counter, 1);
    const int last = ticket == expected - 1;
    if (last) atomicExch(counter, 0);
    *s_flag = last;
  }
  __syncthreads();
  const bool last = *s_flag != 0;
  if (last) __threadfence();
  return last;
}

// Grid-wide barrier for a grid whose blocks are all resident: launch it cooperatively
// (launch_cooperative below), so that a grid that cannot be co-resident is refused by the
// driver instead of spinning forever.  count returns to zero after every barrier; gen only
// ever increments (each barrier waits for gen to move past the value it read on arrival).
__device__ __forceinline__ void grid_barrier(unsigned* count, unsigned* gen, unsigned nblocks) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned* vgen = gen;
    const unsigned g = *vgen;
    __threadfence();
    const unsigned arrived = atomicAdd(count, 1u);
    if (arrived == nblocks - 1) {
      atomicExch(count, 0u);
      __threadfence();
      atomicAdd(gen, 1u);
    } else {
      while (*vgen == g) __nanosleep(32);
    }
    __threadfence();
  }
  __syncthreads();
}

// ------------------------------------------------------------------ async copy / tensor cores
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte global->shared copy; when !valid the destination is zero-filled and src unread.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and register i
// receives matrix i (lane l holds row l/4, columns 2(l%4), 2(l%4)+1; .trans: transposed).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// D[16x8] += A[16x16] * B[16x8], fp32 accumulators.  Fragments (g = lane/4, t = lane%4):
// A regs {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)}, B regs {(k 2t..2t+1, n g),
// (k 2t+8.., n g)}, C {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}; lower column in the low half.
template <class T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};

// ------------------------------------------------------------------ host helpers
inline size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Kernel files include CUDA headers only (no <mutex>/<atomic>), so the static launch-plan
// tables are guarded by a tiny spinlock built on the GCC/Clang __atomic builtins.  Critical
// sections only copy a few words: driver queries run outside them (two threads may then
// compute the same entry twice, which is harmless: the results are equal).
class SpinLock {
 public:
  constexpr SpinLock() = default;
  void lock() {
    while (__atomic_exchange_n(&v_, 1, __ATOMIC_ACQUIRE) != 0) {
      while (__atomic_load_n(&v_, __ATOMIC_RELAXED) != 0) {
      }
    }
  }
  void unlock() { __atomic_store_n(&v_, 0, __ATOMIC_RELEASE); }

 private:
  int v_ = 0;
};
class SpinGuard {
 public:
  explicit SpinGuard(SpinLock& l) : l_(l) { l_.lock(); }
  ~SpinGuard() { l_.unlock(); }
  SpinGuard(const SpinGuard&) = delete;
  SpinGuard& operator=(const SpinGuard&) = delete;

 private:
  SpinLock& l_;
};

// A small fixed-size map (round-robin replacement when full).  Key needs operator==.
template <class Key, class Val, int N>
class PlanCache {
 public:
  bool find(const Key& k, Val* v) {
    SpinGuard g(lock_);
    for (int i = 0; i < n_; ++i) {
      if (keys_[i] == k) {
        *v = vals_[i];
        return true;
      }
    }
    return false;
  }
  void insert(const Key& k, const Val& v) {
    SpinGuard g(lock_);
    for (int i = 0; i < n_; ++i) {
      if (keys_[i] == k) {
        vals_[i] = v;
        return;
      }
    }
    const int slot = n_ < N ? n_++ : (next_++ % N);
    keys_[slot] = k;
    vals_[slot] = v;
  }

 private:
  SpinLock lock_;
  Key keys_[N] = {};
  Val vals_[N] = {};
  int n_ = 0;
  int next_ = 0;
};

// Properties of a device, read once per device and cached.
struct DeviceInfo {
  int sms = 0;          // multiprocessors
  int smem_optin = 0;   // shared memory per block after the cudaFuncSetAttribute opt-in, bytes
  int smem_per_sm = 0;  // shared memory per multiprocessor, bytes
  int coop = 0;         // cooperative launches supported
};
constexpr int kMaxDevices = 64;

inline cudaError_t query_device_info(int dev, DeviceInfo* info) {
  const cudaDeviceAttr attrs[] = {cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                  cudaDevAttrMaxSharedMemoryPerMultiprocessor, cudaDevAttrCooperativeLaunch};
  int* dst[] = {&info->sms, &info->smem_optin, &info->smem_per_sm, &info->coop};
  for (int i = 0; i < 4; ++i) {
    const cudaError_t e = cudaDeviceGetAttribute(dst[i], attrs[i], dev);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

// The current device and its (cached) properties.  The per-call cost is cudaGetDevice.
inline cudaError_t current_device(int* dev, DeviceInfo* info) {
  static SpinLock lock;
  static DeviceInfo table[kMaxDevices];
  static bool ready[kMaxDevices] = {};
  cudaError_t e = cudaGetDevice(dev);
  if (e != cudaSuccess) return e;
  const int d = *dev;
  if (d < 0 || d >= kMaxDevices) return query_device_info(d, info);
  {
    SpinGuard g(lock);
    if (ready[d]) {
      *info = table[d];
      return cudaSuccess;
    }
  }
  DeviceInfo fresh;
  e = query_device_info(d, &fresh);
  if (e != cudaSuccess) return e;
  SpinGuard g(lock);
  table[d] = fresh;
  ready[d] = true;
  *info = fresh;
  return cudaSuccess;
}

// Raises `kernel`'s dynamic shared-memory limit to the device's opt-in maximum, once per
// (device, kernel): later launches of any size up to that maximum need no further call.
struct FuncDevKey {
  const void* fn = nullptr;
  int dev = -1;
  bool operator==(const FuncDevKey& o) const { return fn == o.fn && dev == o.dev; }
};
inline cudaError_t allow_max_dynamic_smem(const void* kernel, int dev, int smem_optin) {
  static PlanCache<FuncDevKey, int, 256> done;
  const FuncDevKey key{kernel, dev};
  int v = 0;
  if (done.find(key, &v)) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin);
  if (e != cudaSuccess) return e;
  done.insert(key, 1);
  return cudaSuccess;
}

// One cooperative launch (all blocks co-resident, or cudaErrorCooperativeLaunchTooLarge and
// nothing runs).  Capturable in CUDA graphs (CUDA 12+).
template <class... Params, class... Args>
inline cudaError_t launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                      cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1] = {};
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Args&&>(args)...);
}

}  // namespace rgk

// Torch binding of the rgk CUDA kernels: op schemas (TORCH_LIBRARY), CUDA implementations
// (argument checks, current stream, scratch memory, launcher call) and the Python module
// rgk._C, which also exposes the same functions directly (bypassing the dispatcher; used to
// measure dispatch overhead).  The kernels themselves live in csrc/<op>.cu and know nothing
// about torch.
#include <torch/extension.h>

// Only c10's stream and guard headers: ATen/cuda/CUDAContext.h would pull in cuBLAS, cuSPARSE
// and cuSOLVER headers that a plain CUDA toolkit may not carry (tests/test_csrc_compile.py
// compile-checks this file against the CPU wheel's headers plus the toolkit's).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <string>
#include <utility>
#include <vector>

#include "rgk_kernels.h"

namespace {

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

RgkDType rgk_dtype(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return RGK_F32;
    case at::kBFloat16: return RGK_BF16;
    case at::kHalf: return RGK_F16;
    default: break;
  }
  TORCH_CHECK(false, op, ": ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  return RGK_F32;
}

void check_cuda(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the other inputs are on ",
              ref.device());
}

void check_dim(const at::Tensor& t, int64_t ndim, const char* op, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == ndim, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

void check_shape(const at::Tensor& t, at::IntArrayRef want, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", want, ", got ", t.sizes());
}

// Unit stride along the last dimension (the kernels' only layout requirement).
at::Tensor unit_last(const at::Tensor& t) { return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous(); }

at::Tensor as_float_contig(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// Per-device properties, read once per device (cudaDeviceGetAttribute) and cached: nothing
// on the per-call path queries the driver for them again.
struct DeviceProps {
  int sms = 0;         // multiprocessors
  int smem_optin = 0;  // shared memory per block after cudaFuncSetAttribute opt-in, bytes
  int major = 0, minor = 0;
};

const DeviceProps& device_props(int dev) {
  static std::mutex mu;
  static auto* cache = new std::map<int, DeviceProps>();  // leaked on purpose (used at exit)
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(dev);
  if (it != cache->end()) return it->second;
  DeviceProps p;
  const cudaDeviceAttr attrs[] = {cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                  cudaDevAttrComputeCapabilityMajor, cudaDevAttrComputeCapabilityMinor};
  int* dst[] = {&p.sms, &p.smem_optin, &p.major, &p.minor};
  for (int i = 0; i < 4; ++i) {
    const cudaError_t err = cudaDeviceGetAttribute(dst[i], attrs[i], dev);
    TORCH_CHECK(err == cudaSuccess, "rgk: cannot read the properties of CUDA device ", dev, ": ",
                cudaGetErrorString(err));
  }
  return cache->emplace(dev, p).first->second;
}

// ---- Zeroed int32 scratch: the ticket counters and the grid barrier of the split kernels.
// The kernels leave it as they found it, so one buffer per (device, stream) serves every launch
// on that stream (launches on one stream never overlap).  Buffers are never freed: a CUDA graph
// keeps using the address it captured.
//
// CAPTURE RULE (CUDA side; the Triton kernels' rule is stated in kernels/_workspace.py): these
// buffers are allocated and zeroed only OUTSIDE CUDA-graph capture, so no graph carries their
// zeroing and none lives in a graph's private memory pool.  Every call made outside capture
// also keeps a per-device reserve of kSpares zeroed spare buffers (each of at least kSpareInts
// ints and twice the largest request seen); a stream first met during a capture (e.g. the
// side stream torch.cuda.graph captures on) takes one of them.  So: call the op once outside
// capture on that device before capturing (the usual warm-up, on any stream).  If no spare is
// there or none is large enough, the op raises a RuntimeError saying exactly that.  Graphs
// captured on one stream share that stream's buffer: replay them one at a time.
constexpr int64_t kMinSyncInts = 4096;
constexpr int64_t kSpareInts = int64_t{1} << 16;  // 256 KiB: far above any shape's needs
constexpr size_t kSpares = 2;

struct SyncState {
  std::mutex mu;
  std::map<std::pair<int, cudaStream_t>, at::Tensor> current;  // per (device, stream)
  std::map<int, std::vector<at::Tensor>> spares;                // per device, zeroed, unused
  std::map<int, int64_t> largest;                               // largest request per device
  std::vector<at::Tensor> retired;                              // may still be in a graph
};

SyncState& sync_state() {
  static auto* s = new SyncState();  // leaked on purpose: graphs may outlive static destructors
  return *s;
}

// True while `stream` is being captured.  A failed query (the legacy stream while another
// stream captures in global mode) counts as capturing: allocating then would be unsafe too.
bool stream_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();  // the query's error is not sticky; do not leave it for a later check
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

int* sync_buffer(const at::Tensor& like, cudaStream_t stream, int64_t n_ints, const char* op = "rgk") {
  SyncState& s = sync_state();
  const int dev = static_cast<int>(like.get_device());
  std::lock_guard<std::mutex> lock(s.mu);
  at::Tensor& cur = s.current[{dev, stream}];
  std::vector<at::Tensor>& spares = s.spares[dev];
  const bool fits = cur.defined() && cur.numel() >= n_ints;
  if (fits && spares.size() >= kSpares) return cur.data_ptr<int>();  // the per-call path: no driver call

  const bool capturing = stream_capturing(stream);
  if (capturing) {
    if (fits) return cur.data_ptr<int>();  // the reserve is refilled by the next call outside capture
    auto it = std::find_if(spares.begin(), spares.end(), [&](const at::Tensor& t) { return t.numel() >= n_ints; });
    TORCH_CHECK(it != spares.end(), op, ": the op needs a zeroed counter buffer of ", n_ints,
                " int32 for this stream, and such buffers are never allocated during CUDA-graph capture; ",
                spares.empty() ? "no spare is reserved on this device yet. "
                               : "the reserved spares are too small for these shapes. ",
                "Run the op once outside capture on this device before capturing (a warm-up call, with "
                "shapes at least as large as the captured ones)");
    if (cur.defined()) s.retired.push_back(cur);
    cur = *it;
    spares.erase(it);
    return cur.data_ptr<int>();
  }

  int64_t& big = s.largest[dev];
  big = std::max(big, n_ints);
  if (!fits) {
    if (cur.defined()) s.retired.push_back(cur);
    cur = at::zeros({std::max(kMinSyncInts, 2 * n_ints)}, like.options().dtype(at::kInt));
  }
  const int64_t spare_ints = std::max(kSpareInts, 2 * big);
  spares.erase(std::remove_if(spares.begin(), spares.end(),
                              [&](const at::Tensor& t) { return t.numel() < spare_ints; }),
               spares.end());  // never handed out, so safe to free
  if (spares.size() < kSpares) {
    while (spares.size() < kSpares) spares.push_back(at::zeros({spare_ints}, like.options().dtype(at::kInt)));
    // A spare may serve a capture on another stream: its zeroing must be complete by then.
    const cudaError_t err = cudaStreamSynchronize(stream);
    TORCH_CHECK(err == cudaSuccess, op, ": zeroing the counter buffers failed: ", cudaGetErrorString(err));
  }
  return cur.data_ptr<int>();
}

at::Tensor workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, like.options().dtype(at::kByte));
}

}  // namespace

// ------------------------------------------------------------------ topk_logprobs
std::tuple<at::Tensor, at::Tensor> topk_logprobs_cuda(const at::Tensor& logits, int64_t k) {
  constexpr const char* op = "topk_logprobs";
  check_cuda(logits, logits, op, "logits");
  check_dim(logits, 2, op, "logits", "[B, V]");
  const RgkDType dt = rgk_dtype(logits, op, "logits");
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V >= 1, op, ": logits must have at least one column, got shape ", logits.sizes());
  TORCH_CHECK(k >= 1 && k <= 64 && k <= V, op, ": k must be in [1, min(64, V=", V, ")], got ", k);
  const at::Tensor x = unit_last(logits);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor logp = at::empty({B, k}, x.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({B, k}, x.options().dtype(at::kLong));
  if (B == 0) return {logp, ids};
  RgkTopkPlan plan;
  const cudaError_t perr = rgk_topk_logprobs_plan(B, V, k, &plan);
  TORCH_CHECK(perr == cudaSuccess, op, ": vocabulary of ", V, " entries with k=", k,
              " is too large for the fused kernel (", cudaGetErrorString(perr), ")");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor ws = workspace(x, plan.workspace_bytes);
  int* sync = sync_buffer(x, stream, plan.sync_ints, op);
  check_launch(rgk_topk_logprobs_launch(x.data_ptr(), dt, B, V, x.stride(0), static_cast<int>(k),
                                        logp.data_ptr<float>(), ids.data_ptr<int64_t>(), ws.data_ptr(), sync, stream),
               op);
  return {logp, ids};
}

// ------------------------------------------------------------------ fork_attention
at::Tensor fork_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_cache_in, const at::Tensor& v_cache_in,
                               const at::Tensor& k_new_in, const at::Tensor& v_new_in, const at::Tensor& cache_start,
                               const at::Tensor& cache_end, double scale, int64_t max_valid_len) {
  constexpr const char* op = "fork_attention";
  check_cuda(q_in, q_in, op, "q");
  check_cuda(k_cache_in, q_in, op, "k_cache");
  check_cuda(v_cache_in, q_in, op, "v_cache");
  check_cuda(k_new_in, q_in, op, "k_new");
  check_cuda(v_new_in, q_in, op, "v_new");
  check_cuda(cache_start, q_in, op, "cache_start");
  check_cuda(cache_end, q_in, op, "cache_end");
  check_dim(q_in, 4, op, "q", "[B, Hq, K, D]");
  check_dim(k_cache_in, 4, op, "k_cache", "[B, Hkv, L, D]");
  const RgkDType dt = rgk_dtype(q_in, op, "q");
  const int64_t B = q_in.size(0), Hq = q_in.size(1), K = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_cache_in.size(1), L = k_cache_in.size(2);
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, op, ": the number of query heads (", Hq,
              ") must be a multiple of the number of kv heads (", Hkv, ")");
  TORCH_CHECK(D >= 1 && D <= 256, op, ": head size D must be in [1, 256], got ", D);
  check_shape(k_cache_in, {B, Hkv, L, D}, op, "k_cache");
  check_shape(v_cache_in, {B, Hkv, L, D}, op, "v_cache");
  check_shape(k_new_in, {B, Hkv, K, D}, op, "k_new");
  check_shape(v_new_in, {B, Hkv, K, D}, op, "v_new");
  auto same_dtype = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == q_in.scalar_type(), op, ": ", name, " must have q's dtype ", q_in.scalar_type(),
                ", got ", t.scalar_type());
  };
  same_dtype(k_cache_in, "k_cache");
  same_dtype(v_cache_in, "v_cache");
  same_dtype(k_new_in, "k_new");
  same_dtype(v_new_in, "v_new");
  auto int_rows = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == at::kInt, op, ": ", name, " must be int32, got ", t.scalar_type());
    check_shape(t, {B}, op, name);
  };
  int_rows(cache_start, "cache_start");
  int_rows(cache_end, "cache_end");
  TORCH_CHECK(B * Hq * K <= INT32_MAX && L <= INT32_MAX, op, ": tensors too large for the fused kernel");
  TORCH_CHECK(max_valid_len >= 0 && max_valid_len <= L, op, ": max_valid_len must be in [0, L = ", L,
              "] (0: the capacity L), got ", max_valid_len);
  const at::Tensor q = unit_last(q_in), kc = unit_last(k_cache_in), vc = unit_last(v_cache_in);
  const at::Tensor kn = unit_last(k_new_in), vn = unit_last(v_new_in);
  const at::Tensor cs = cache_start.contiguous(), ce = cache_end.contiguous();
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({B, Hq, K, D}, q.options());
  if (out.numel() == 0) return out;

  RgkForkArgs a;
  a.q = q.data_ptr();
  a.q_s0 = q.stride(0); a.q_s1 = q.stride(1); a.q_s2 = q.stride(2);
  a.k_cache = kc.data_ptr();
  a.kc_s0 = kc.stride(0); a.kc_s1 = kc.stride(1); a.kc_s2 = kc.stride(2);
  a.v_cache = vc.data_ptr();
  a.vc_s0 = vc.stride(0); a.vc_s1 = vc.stride(1); a.vc_s2 = vc.stride(2);
  a.k_new = kn.data_ptr();
  a.kn_s0 = kn.stride(0); a.kn_s1 = kn.stride(1); a.kn_s2 = kn.stride(2);
  a.v_new = vn.data_ptr();
  a.vn_s0 = vn.stride(0); a.vn_s1 = vn.stride(1); a.vn_s2 = vn.stride(2);
  a.cache_start = cs.data_ptr<int>();
  a.cache_end = ce.data_ptr<int>();
  a.out = out.data_ptr();
  a.B = static_cast<int>(B); a.Hq = static_cast<int>(Hq); a.Hkv = static_cast<int>(Hkv);
  a.K = static_cast<int>(K); a.D = static_cast<int>(D); a.L = static_cast<int>(L);
  a.scale = static_cast<float>(scale);
  a.dtype = dt;

  RgkForkPlan plan;
  // max_valid_len: the caller's host-side bound of every cache_end[b] (hence of
  // cache_end[b] - cache_start[b]), 0 for the capacity L; it sizes the KV splits only (the
  // kernel covers each row's whole [start, end) whatever it is).  Plan and launch must get
  // the same value: it sizes the workspace.
  const int valid_len = static_cast<int>(max_valid_len);
  check_launch(rgk_fork_attention_plan(a, valid_len, &plan), op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor ws = workspace(q, plan.workspace_bytes);
  int* sync = sync_buffer(q, stream, plan.sync_ints, op);
  check_launch(rgk_fork_attention_launch(a, valid_len, ws.data_ptr(), sync, stream), op);
  return out;
}

// ------------------------------------------------------------------ reward_select
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> reward_select_cuda(
    const at::Tensor& hidden_in, const at::Tensor& logp_in, const at::Tensor& ids_in, const at::Tensor& w1_in,
    const at::Tensor& b1_in, const std::optional<at::Tensor>& w2_in, const std::optional<at::Tensor>& b2_in,
    double reward_weight, double temperature, const std::optional<at::Tensor>& uniform_in) {
  constexpr const char* op = "reward_select";
  check_cuda(hidden_in, hidden_in, op, "hidden");
  check_cuda(logp_in, hidden_in, op, "logp");
  check_cuda(ids_in, hidden_in, op, "ids");
  check_cuda(w1_in, hidden_in, op, "w1");
  check_cuda(b1_in, hidden_in, op, "b1");
  check_dim(hidden_in, 3, op, "hidden", "[B, K, d]");
  const RgkDType hdt = rgk_dtype(hidden_in, op, "hidden");
  const int64_t B = hidden_in.size(0), K = hidden_in.size(1), d = hidden_in.size(2);
  TORCH_CHECK(K >= 1 && K <= 64, op, ": the fused kernel takes 1 to 64 candidates per row, got K=", K);
  TORCH_CHECK(d >= 1, op, ": hidden size must be >= 1, got ", d);
  check_shape(logp_in, {B, K}, op, "logp");
  check_shape(ids_in, {B, K}, op, "ids");
  TORCH_CHECK(ids_in.scalar_type() == at::kLong || ids_in.scalar_type() == at::kInt, op,
              ": ids must be int64 or int32, got ", ids_in.scalar_type());
  check_dim(w1_in, 2, op, "w1", "[m, d]");
  const RgkDType wdt = rgk_dtype(w1_in, op, "w1");
  const int64_t m = w1_in.size(0);
  TORCH_CHECK(w1_in.size(1) == d, op, ": w1 must have shape [m, ", d, "] (hidden size ", d, "), got ", w1_in.sizes());
  check_shape(b1_in, {m}, op, "b1");
  TORCH_CHECK(w2_in.has_value() == b2_in.has_value(), op, ": w2 and b2 must be given together (MLP head) or both omitted");
  if (w2_in.has_value()) {
    check_cuda(*w2_in, hidden_in, op, "w2");
    check_cuda(*b2_in, hidden_in, op, "b2");
    check_shape(*w2_in, {1, m}, op, "w2");
    check_shape(*b2_in, {1}, op, "b2");
  } else {
    TORCH_CHECK(m == 1, op, ": a linear head has w1 of shape [1, ", d, "], got ", w1_in.sizes(),
                " (pass w2 and b2 for an MLP head)");
  }
  TORCH_CHECK(std::isfinite(reward_weight), op, ": reward_weight must be finite, got ", reward_weight);
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0, op, ": temperature must be finite and >= 0, got ",
              temperature);
  if (temperature > 0) {
    TORCH_CHECK(uniform_in.has_value(), op, ": uniform [B] is required when temperature > 0");
    check_cuda(*uniform_in, hidden_in, op, "uniform");
    check_shape(*uniform_in, {B}, op, "uniform");
  }
  TORCH_CHECK(B * K <= INT32_MAX && m <= INT32_MAX && d <= INT32_MAX, op, ": tensors too large for the fused kernel");

  const at::Tensor hidden = unit_last(hidden_in);
  const at::Tensor logp = as_float_contig(logp_in);
  const at::Tensor ids = ids_in.to(at::kLong).contiguous();
  const at::Tensor w1 = w1_in.contiguous();
  const at::Tensor b1 = as_float_contig(b1_in);
  const at::Tensor w2 = w2_in.has_value() ? as_float_contig(*w2_in) : at::Tensor();
  const at::Tensor b2 = b2_in.has_value() ? as_float_contig(*b2_in) : at::Tensor();
  const at::Tensor uniform = (temperature > 0) ? as_float_contig(*uniform_in) : at::Tensor();
  const c10::cuda::CUDAGuard guard(hidden.device());
  at::Tensor token = at::empty({B}, hidden.options().dtype(at::kLong));
  at::Tensor index = at::empty({B}, hidden.options().dtype(at::kLong));
  at::Tensor score = at::empty({B, K}, hidden.options().dtype(at::kFloat));
  at::Tensor reward = at::empty({B, K}, hidden.options().dtype(at::kFloat));
  if (B == 0) return {token, index, score, reward};

  RgkRewardSelectArgs a;
  a.hidden = hidden.data_ptr();
  a.h_s0 = hidden.stride(0); a.h_s1 = hidden.stride(1);
  a.hidden_dtype = hdt;
  a.logp = logp.data_ptr<float>();
  a.ids = ids.data_ptr<int64_t>();
  a.w1 = w1.data_ptr();
  a.w1_dtype = wdt;
  a.b1 = b1.data_ptr<float>();
  a.w2 = w2.defined() ? w2.data_ptr<float>() : nullptr;
  a.b2 = b2.defined() ? b2.data_ptr<float>() : nullptr;
  a.uniform = uniform.defined() ? uniform.data_ptr<float>() : nullptr;
  a.reward_weight = static_cast<float>(reward_weight);
  a.temperature = static_cast<float>(temperature);
  a.B = static_cast<int>(B); a.K = static_cast<int>(K); a.d = static_cast<int>(d); a.m = static_cast<int>(m);
  a.token = token.data_ptr<int64_t>();
  a.index = index.data_ptr<int64_t>();
  a.score = score.data_ptr<float>();
  a.reward = reward.data_ptr<float>();

  RgkRewardSelectPlan plan;
  check_launch(rgk_reward_select_plan(a, &plan), op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor ws = workspace(hidden, plan.workspace_bytes);
  int* sync = sync_buffer(hidden, stream, plan.sync_ints, op);
  check_launch(rgk_reward_select_launch(a, ws.data_ptr(), sync, stream), op);
  return {token, index, score, reward};
}

// ------------------------------------------------------------------ argre_refine
at::Tensor argre_refine_cuda(const at::Tensor& h_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
                             const at::Tensor& w2_in, const at::Tensor& b2_in, const at::Tensor& direction_in,
                             double r_plus, double beta, int64_t n_steps, double step_size) {
  constexpr const char* op = "argre_refine";
  check_cuda(h_in, h_in, op, "h");
  check_cuda(w1_in, h_in, op, "w1");
  check_cuda(b1_in, h_in, op, "b1");
  check_cuda(w2_in, h_in, op, "w2");
  check_cuda(b2_in, h_in, op, "b2");
  check_cuda(direction_in, h_in, op, "direction");
  check_dim(h_in, 2, op, "h", "[B, d]");
  const RgkDType hdt = rgk_dtype(h_in, op, "h");
  const int64_t B = h_in.size(0), d = h_in.size(1);
  check_dim(w1_in, 2, op, "w1", "[m, d]");
  const RgkDType wdt = rgk_dtype(w1_in, op, "w1");
  const int64_t m = w1_in.size(0);
  TORCH_CHECK(w1_in.size(1) == d, op, ": w1 must have shape [m, ", d, "] (hidden size ", d, "), got ", w1_in.sizes());
  check_shape(b1_in, {m}, op, "b1");
  check_shape(w2_in, {1, m}, op, "w2");
  check_shape(b2_in, {1}, op, "b2");
  check_shape(direction_in, {d}, op, "direction");
  TORCH_CHECK(std::isfinite(r_plus), op, ": r_plus must be finite, got ", r_plus);
  TORCH_CHECK(std::isfinite(beta) && beta > 0, op, ": beta must be finite and > 0, got ", beta);
  TORCH_CHECK(std::isfinite(step_size), op, ": step_size must be finite, got ", step_size);
  TORCH_CHECK(n_steps >= 0 && n_steps <= INT32_MAX, op, ": n_steps must be >= 0, got ", n_steps);
  TORCH_CHECK(B * d <= INT32_MAX && m <= INT32_MAX, op, ": tensors too large for the fused kernel");

  const at::Tensor h = unit_last(h_in);
  const at::Tensor w1 = w1_in.contiguous();
  const at::Tensor b1 = as_float_contig(b1_in), w2 = as_float_contig(w2_in), b2 = as_float_contig(b2_in);
  const at::Tensor dir = as_float_contig(direction_in);
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor out = at::empty({B, d}, h.options());
  if (B == 0 || d == 0) return out;

  RgkArgreArgs a;
  a.h = h.data_ptr();
  a.h_s0 = h.stride(0);
  a.h_dtype = hdt;
  a.w1 = w1.data_ptr();
  a.w1_dtype = wdt;
  a.b1 = b1.data_ptr<float>();
  a.w2 = w2.data_ptr<float>();
  a.b2 = b2.data_ptr<float>();
  a.direction = dir.data_ptr<float>();
  a.r_plus = static_cast<float>(r_plus);
  a.beta = static_cast<float>(beta);
  a.step_size = static_cast<float>(step_size);
  a.n_steps = static_cast<int>(n_steps);
  a.B = static_cast<int>(B); a.d = static_cast<int>(d); a.m = static_cast<int>(m);
  a.out = out.data_ptr();

  RgkArgrePlan plan;
  const cudaError_t perr = rgk_argre_refine_plan(a, &plan);
  TORCH_CHECK(perr != cudaErrorNotSupported, op, ": w1 [", m, ", ", d,
              "] does not fit in this GPU's shared memory (the fused kernel keeps it on chip, ~4*m*d = ",
              4 * m * d, " bytes, across the co-resident blocks; this GPU has ", device_props(h.get_device()).sms,
              " SMs with ", device_props(h.get_device()).smem_optin,
              " bytes per block); use RGK_BACKEND=triton or RGK_BACKEND=torch for this size");
  check_launch(perr, op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor ws = workspace(h, plan.workspace_bytes);
  int* sync = sync_buffer(h, stream, plan.sync_ints, op);
  check_launch(rgk_argre_refine_launch(a, ws.data_ptr(), sync, stream), op);
  return out;
}

// ------------------------------------------------------------------ registration
// The architectures this library carries, in rgk.ops._build.arch_token's form (sm80_sm90a_ptx90),
// passed by the build as -DRGK_ARCHS=<token>; rgk.ops._backend reads it to decide, per device,
// whether this library can serve it (else Triton, never "no kernel image").
#ifndef RGK_ARCHS
#define RGK_ARCHS unknown
#endif
#define RGK_STR2(x) #x
#define RGK_STR(x) RGK_STR2(x)

TORCH_LIBRARY(rgk, m) {
  m.def("topk_logprobs(Tensor logits, int k) -> (Tensor, Tensor)");
  m.def("fork_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor k_new, Tensor v_new, Tensor cache_start, "
        "Tensor cache_end, float scale, int max_valid_len=0) -> Tensor");
  m.def("reward_select(Tensor hidden, Tensor logp, Tensor ids, Tensor w1, Tensor b1, Tensor? w2, Tensor? b2, "
        "float reward_weight, float temperature, Tensor? uniform) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("argre_refine(Tensor h, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor direction, float r_plus, "
        "float beta, int n_steps, float step_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(rgk, CUDA, m) {
  m.impl("topk_logprobs", &topk_logprobs_cuda);
  m.impl("fork_attention", &fork_attention_cuda);
  m.impl("reward_select", &reward_select_cuda);
  m.impl("argre_refine", &argre_refine_cuda);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rgk CUDA kernels; the ops are registered as torch.ops.rgk.*, the functions below call the same "
            "implementations without the dispatcher";
  m.def("cuda_arch_list", []() { return std::string(RGK_STR(RGK_ARCHS)); },
        "the architectures compiled in (rgk.ops._build.arch_token form, or 'unknown')");
  m.def("topk_logprobs", &topk_logprobs_cuda, "topk_logprobs(logits, k) -> (logp, ids)");
  m.def("fork_attention", &fork_attention_cuda,
        "fork_attention(q, k_cache, v_cache, k_new, v_new, cache_start, cache_end, scale, max_valid_len=0) -> out",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("k_new"), py::arg("v_new"),
        py::arg("cache_start"), py::arg("cache_end"), py::arg("scale"), py::arg("max_valid_len") = 0);
  m.def("reward_select", &reward_select_cuda,
        "reward_select(hidden, logp, ids, w1, b1, w2, b2, reward_weight, temperature, uniform) -> "
        "(token, index, score, reward)");
  m.def("argre_refine", &argre_refine_cuda,
        "argre_refine(h, w1, b1, w2, b2, direction, r_plus, beta, n_steps, step_size) -> out");
}

// bench_model: a model-shaped run. A stack of transformer-shaped layers runs on the GPU with cuBLAS
// (attention and MoE or dense FFN matrix products; shapes below), with Engram modules at the layout's
// layers that consume engram's BF16 output: key and value projections, the gate (RMSNorm dot product,
// signed square root, sigmoid) and the residual add, as in the reference. Tokens come from the real
// trace, batched as many sequences (engram/prefetch/workload.hpp). The same workload runs under each
// configuration:
//   none  the backbone alone, its Engram modules reading a zero buffer (the model's compute time)
//   a     every table region whole in HBM (the device pipeline): the baseline
//   b     tables resident in pinned host memory, an HBM cache of --hbm-cache bytes (path chosen by measurement)
//   c     tables in the store on disk, a host row cache of --host-cache bytes, an HBM cache of --hbm-cache
//   d     (c) on an emulated small GPU: everything engram holds on the device within --small-gpu bytes
//   a2    (a) again, last: its loss against (a) is the run's noise (clocks, heat, the host), the floor under
//         which a configuration's loss is not a measurement
// Reported per configuration and phase (prefill, decode): tokens/s, the loss against (a), per Engram layer
// the stall (device time the compute stream waited for the layer's rows, from events around the wait)
// p50/p95/p99, tier shares, and per step the time of each resource engram used (disk, host gather, PCIe
// copy) so a loss can be attributed.
//
// Decode is synchronous as in an engine that samples on the host: step k+1 is submitted when step k's
// logits are done, so the rows of the first Engram layer must arrive within the layers before it; its
// tokens/s are by the wall clock (host work between steps included). Prefill looks one chunk ahead: chunk
// k+1 is submitted while chunk k computes, the first counted chunk behind an uncounted lead-in chunk; its
// tokens/s are by device time (events), the host's work overlapping the chunk before.
//
//   bench_model --store DIR [--model v4.1-flash|dense-4b|dense-8b] [--layers N] [--width-scale F]
//               [--configs none,a,b,c,d,a2] [--prefill S,C] [--decode B] [--ctx N] [--prefill-steps 4]
//               [--decode-steps 48] [--warmup-prefill 2] [--warmup-decode 128] [--hbm-cache BYTES]
//               [--host-cache BYTES] [--small-gpu BYTES] [--threads 16] [--json FILE]
//
// SIGUSR1 prints the stack of the thread that receives it (bench_stacks.hpp): for a hang, send it to each
// thread (tgkill) and resolve the frames with addr2line against the same build.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../core/percentile.hpp"
#include "bench_cuda.hpp"
#include "bench_data.hpp"
#include "bench_stacks.hpp"
#include "engram/gpu/device.hpp"
#include "engram/gpu/host_memory.hpp"
#include "engram/gpu/working_set.hpp"
#include "engram/prefetch/workload.hpp"

namespace {

using engram::bench::Clock;
using engram::bench::Must;
using engram::bench::Since;
using engram::detail::Percentile;
namespace gpu = engram::gpu;
namespace memory = engram::memory;
namespace prefetch = engram::prefetch;
using bf16 = __nv_bfloat16;

#define CB(expr)                                                                                               \
  do {                                                                                                         \
    const cublasStatus_t e_ = (expr);                                                                          \
    if (e_ != CUBLAS_STATUS_SUCCESS) {                                                                         \
      std::fprintf(stderr, "%s: cuBLAS status %d (%s:%d)\n", #expr, static_cast<int>(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                                            \
    }                                                                                                          \
  } while (0)

// ---- the model's shape ----

struct ModelShape {
  std::string name;
  int layers = 40;
  int hidden = 4096;
  int heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int experts = 0;  // 0: a dense FFN of ffn columns
  int top_k = 0;
  int shared = 0;  // shared experts (MoE)
  int ffn = 0;     // per expert (MoE) or the dense FFN's width
};

// The reference gives the Engram tables' shapes only. v4.1-flash is an assumed MoE backbone of V4.1's 40
// layers (hidden 4096, 32 query and 8 KV heads of 128, 256 experts of 1024 with 8 routed + 1 shared);
// dense-4b and dense-8b are dense backbones of the sizes the Engram paper's 4B and 8B models had.
ModelShape Preset(const std::string& name) {
  if (name == "dense-4b") return {name, 36, 2560, 32, 8, 128, 0, 0, 0, 9728};
  if (name == "dense-8b") return {name, 36, 4096, 32, 8, 128, 0, 0, 0, 12288};
  if (name == "v4.1-flash") return {name, 40, 4096, 32, 8, 128, 256, 8, 1, 1024};
  std::fprintf(stderr, "unknown --model %s (v4.1-flash, dense-4b, dense-8b)\n", name.c_str());
  std::exit(2);
}

// ---- kernels ----

__global__ void FillKernel(bf16* p, std::size_t n, std::uint64_t seed, float scale) {
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    std::uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ seed;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 29;
    const float u = static_cast<float>(x >> 40) / static_cast<float>(1ULL << 24) - 0.5f;
    p[i] = __float2bfloat16(u * scale);
  }
}

__device__ float BlockSum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffU, v, o);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) shared[warp] = v;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) total += shared[w];
  __syncthreads();
  return total;
}

// x = RMSNorm(h), one block per token.
__global__ void RmsNormKernel(const bf16* h, bf16* x, int d) {
  __shared__ float s[32];
  const bf16* row = h + static_cast<std::size_t>(blockIdx.x) * d;
  float ss = 0;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = __bfloat162float(row[i]);
    ss += v * v;
  }
  const float r = rsqrtf(BlockSum(ss, s) / static_cast<float>(d) + 1e-6f);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    x[static_cast<std::size_t>(blockIdx.x) * d + i] = __float2bfloat16(__bfloat162float(row[i]) * r);
  }
}

// The Engram gate and residual, one block per token: score = <RMSNorm(h), RMSNorm(k)> / sqrt(d);
// gate = sigmoid(sign(score) sqrt|score|); h += gate * v.
__global__ void EngramGateKernel(bf16* h, const bf16* k, const bf16* v, int d) {
  __shared__ float s[32];
  const std::size_t base = static_cast<std::size_t>(blockIdx.x) * d;
  float hh = 0, kk = 0, hk = 0;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float a = __bfloat162float(h[base + i]);
    const float b = __bfloat162float(k[base + i]);
    hh += a * a;
    kk += b * b;
    hk += a * b;
  }
  hh = BlockSum(hh, s);
  kk = BlockSum(kk, s);
  hk = BlockSum(hk, s);
  const float fd = static_cast<float>(d);
  const float score = hk * rsqrtf(hh / fd + 1e-6f) * rsqrtf(kk / fd + 1e-6f) / sqrtf(fd);
  const float g = 1.0f / (1.0f + expf(-copysignf(sqrtf(fabsf(score)), score)));
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    h[base + i] = __float2bfloat16(__bfloat162float(h[base + i]) + g * __bfloat162float(v[base + i]));
  }
}

// Softmax of each row of n scores in place, one block per row.
__global__ void SoftmaxKernel(bf16* p, int n, float scale) {
  __shared__ float s[32];
  bf16* row = p + static_cast<std::size_t>(blockIdx.x) * n;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, __bfloat162float(row[i]) * scale);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffU, m, o));
  if (threadIdx.x % 32 == 0) s[threadIdx.x / 32] = m;
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) mx = fmaxf(mx, s[w]);
  __syncthreads();
  float sum = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sum += expf(__bfloat162float(row[i]) * scale - mx);
  const float inv = 1.0f / BlockSum(sum, s);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    row[i] = __float2bfloat16(expf(__bfloat162float(row[i]) * scale - mx) * inv);
  }
}

// ---- row-major GEMMs on cuBLAS (column-major): C[M,N] = A[M,K] * B, B given as [K,N] or, with
// trans_b, as [N,K]; lda/ldb/ldc are the row strides of the row-major views. ----

struct Blas {
  cublasHandle_t h = nullptr;
  void Gemm(int m, int n, int k, const bf16* a, int lda, const bf16* b, int ldb, bool trans_b, bf16* c, int ldc,
            float beta = 0) const {
    const float alpha = 1;
    CB(cublasGemmEx(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b, CUDA_R_16BF, ldb, a,
                    CUDA_R_16BF, lda, &beta, c, CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  void Strided(int m, int n, int k, const bf16* a, int lda, long long sa, const bf16* b, int ldb, long long sb, bf16* c,
               int ldc, long long sc, int batch) const {
    const float alpha = 1, beta = 0;
    CB(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b, CUDA_R_16BF, ldb, sb, a, CUDA_R_16BF,
                                  lda, sa, &beta, c, CUDA_R_16BF, ldc, sc, batch, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
  }
  void Batched(int m, int n, int k, const void* const* a, int lda, const void* const* b, int ldb, bool trans_b,
               void* const* c, int ldc, int batch) const {
    const float alpha = 1, beta = 0;
    CB(cublasGemmBatchedEx(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b, CUDA_R_16BF, ldb, a,
                           CUDA_R_16BF, lda, &beta, c, CUDA_R_16BF, ldc, batch, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT));
  }
};

bf16* Alloc(std::size_t elems, std::uint64_t seed, float scale, cudaStream_t s) {
  bf16* p = nullptr;
  CK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<std::size_t>(elems, 1) * sizeof(bf16)));
  FillKernel<<<1024, 256, 0, s>>>(p, elems, seed, scale);
  CK(cudaGetLastError());
  return p;
}

// The backbone: one layer's weights (shared by every layer: the same bytes are read per layer, far more
// than L2 holds, so every layer pays its weight traffic), activations for up to max_tokens tokens, the
// attention's KV cache for decode, and the Engram modules' projections.
class Model {
 public:
  Model(const ModelShape& m, int engram_width, int engram_modules, std::size_t max_tokens, std::size_t decode_batch,
        std::size_t ctx, std::size_t prefill_seqs, std::size_t prefill_chunk, cudaStream_t s)
      : m_(m), ew_(engram_width), s_(s) {
    CB(cublasCreate(&blas_.h));
    CB(cublasSetStream(blas_.h, s));
    CB(cublasSetMathMode(blas_.h, CUBLAS_DEFAULT_MATH));
    const std::size_t d = m.hidden, qd = static_cast<std::size_t>(m.heads) * m.head_dim,
                      kvd = static_cast<std::size_t>(m.kv_heads) * m.head_dim, f = m.ffn;
    const float ws = 1.0f / std::sqrt(static_cast<float>(d));
    wq_ = Alloc(d * qd, 1, ws, s);
    wk_ = Alloc(d * kvd, 2, ws, s);
    wv_ = Alloc(d * kvd, 3, ws, s);
    wo_ = Alloc(qd * d, 4, ws, s);
    const std::size_t ne = m.experts > 0 ? static_cast<std::size_t>(m.experts) : 1;
    wup_ = Alloc(ne * d * 2 * f, 5, ws, s);
    wdown_ = Alloc(ne * f * d, 6, 1.0f / std::sqrt(static_cast<float>(f)), s);
    if (m.experts > 0) {
      wsup_ = Alloc(static_cast<std::size_t>(m.shared) * d * 2 * f, 7, ws, s);
      wsdown_ = Alloc(static_cast<std::size_t>(m.shared) * f * d, 8, 1.0f / std::sqrt(static_cast<float>(f)), s);
    }
    for (int e = 0; e < engram_modules; ++e) {
      const float es = 1.0f / std::sqrt(static_cast<float>(ew_));
      ewk_.push_back(Alloc(static_cast<std::size_t>(ew_) * d, 10 + 2 * e, es, s));
      ewv_.push_back(Alloc(static_cast<std::size_t>(ew_) * d, 11 + 2 * e, es, s));
    }
    const std::size_t t = max_tokens;
    h_ = Alloc(t * d, 20, 1, s);
    x_ = Alloc(t * d, 21, 1, s);
    q_ = Alloc(t * qd, 22, 1, s);
    k_ = Alloc(t * kvd, 23, 1, s);
    v_ = Alloc(t * kvd, 24, 1, s);
    ao_ = Alloc(t * qd, 25, 1, s);
    ek_ = Alloc(t * d, 26, 1, s);
    ev_ = Alloc(t * d, 27, 1, s);
    zeros_ = Alloc(t * static_cast<std::size_t>(ew_), 28, 0, s);
    // MoE: the largest routed batch (every expert touched by at most max_tokens * top_k tokens).
    const std::size_t routed = std::max<std::size_t>(t * std::max(m.top_k, 1), t) + ne;
    moe_in_ = Alloc(routed * d, 29, 1, s);
    mid_ = Alloc(routed * 2 * f, 30, 0.1f, s);
    moe_out_ = Alloc(routed * d, 31, 0, s);
    // Attention scores: decode [B * heads, ctx]; prefill [heads, chunk, chunk] for one sequence at a time.
    scores_ =
        Alloc(std::max(decode_batch * m.heads * ctx, static_cast<std::size_t>(m.heads) * prefill_chunk * prefill_chunk),
              32, 0, s);
    kc_ = Alloc(decode_batch * kvd * ctx, 33, 1, s);
    vc_ = Alloc(decode_batch * kvd * ctx, 34, 1, s);
    ctx_ = ctx;
    decode_batch_ = decode_batch;
    BuildDecodePointers();
    if (prefill_chunk > 0) BuildPrefillPointers(prefill_seqs, prefill_chunk);
    CK(cudaStreamSynchronize(s));
  }
  ~Model() {
    for (void* p : owned_) cudaFree(p);
    cublasDestroy(blas_.h);
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelShape& shape() const { return m_; }

  // Layer `l` of a step of `tokens` tokens (decode: one per sequence, attention over the KV cache;
  // prefill: `seqs` sequences of `chunk` tokens, attention within each chunk).
  void Layer(std::size_t tokens, bool decode, std::size_t seqs, std::size_t chunk) {
    const int t = static_cast<int>(tokens);
    const int d = m_.hidden, qd = m_.heads * m_.head_dim, kvd = m_.kv_heads * m_.head_dim;
    RmsNormKernel<<<t, 256, 0, s_>>>(h_, x_, d);
    blas_.Gemm(t, qd, d, x_, d, wq_, qd, false, q_, qd);
    blas_.Gemm(t, kvd, d, x_, d, wk_, kvd, false, k_, kvd);
    blas_.Gemm(t, kvd, d, x_, d, wv_, kvd, false, v_, kvd);
    const int group = m_.heads / m_.kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(m_.head_dim));
    if (decode) {
      // Per (sequence, KV head): S[group, ctx] = Q K^T; softmax; O[group, hd] = P V.
      const int batch = t * m_.kv_heads;
      const int c = static_cast<int>(ctx_);
      blas_.Batched(group, c, m_.head_dim, dq_, m_.head_dim, dk_, m_.head_dim, true, ds_, c, batch);
      SoftmaxKernel<<<t * m_.heads, 256, 0, s_>>>(scores_, c, scale);
      blas_.Batched(group, m_.head_dim, c, dsc_, c, dv_, m_.head_dim, false, dout_, m_.head_dim, batch);
    } else {
      const int c = static_cast<int>(chunk);
      for (std::size_t q = 0; q < seqs; ++q) {
        const std::size_t o = q * static_cast<std::size_t>(m_.heads);
        blas_.Batched(c, c, m_.head_dim, pq_ + o, qd, pk_ + o, kvd, true, ps_, c, m_.heads);
        SoftmaxKernel<<<m_.heads * c, 256, 0, s_>>>(scores_, c, scale);
        blas_.Batched(c, m_.head_dim, c, psc_, c, pv_ + o, kvd, false, pout_ + o, qd, m_.heads);
      }
    }
    blas_.Gemm(t, d, qd, ao_, qd, wo_, d, false, h_, d, 1);
    RmsNormKernel<<<t, 256, 0, s_>>>(h_, x_, d);
    const int f = m_.ffn;
    if (m_.experts > 0) {
      // Routed experts: the expected number of experts the step's tokens touch, each with an equal share
      // of the token-expert pairs (routing's gather and scatter are left out: they move little).
      const double e = m_.experts;
      const double touched_d = e * (1.0 - std::pow(1.0 - m_.top_k / e, static_cast<double>(t)));
      const int touched = std::clamp(static_cast<int>(std::lround(touched_d)), 1, m_.experts);
      const int per = static_cast<int>((static_cast<long long>(t) * m_.top_k + touched - 1) / touched);
      blas_.Strided(per, 2 * f, d, moe_in_, d, static_cast<long long>(per) * d, wup_, 2 * f,
                    static_cast<long long>(d) * 2 * f, mid_, 2 * f, static_cast<long long>(per) * 2 * f, touched);
      blas_.Strided(per, d, f, mid_, 2 * f, static_cast<long long>(per) * 2 * f, wdown_, d,
                    static_cast<long long>(f) * d, moe_out_, d, static_cast<long long>(per) * d, touched);
      for (int sh = 0; sh < m_.shared; ++sh) {
        blas_.Gemm(t, 2 * f, d, x_, d, wsup_ + static_cast<std::size_t>(sh) * d * 2 * f, 2 * f, false, mid_, 2 * f);
        blas_.Gemm(t, d, f, mid_, 2 * f, wsdown_ + static_cast<std::size_t>(sh) * f * d, d, false, h_, d, 1);
      }
    } else {
      blas_.Gemm(t, 2 * f, d, x_, d, wup_, 2 * f, false, mid_, 2 * f);
      blas_.Gemm(t, d, f, mid_, 2 * f, wdown_, d, false, h_, d, 1);
    }
  }

  // The Engram module `e` on its rows (BF16 [tokens, width], device), or on zeros when rows is null.
  void Engram(int e, std::size_t tokens, const std::uint16_t* rows) {
    const int t = static_cast<int>(tokens);
    const int d = m_.hidden;
    const bf16* r = rows != nullptr ? reinterpret_cast<const bf16*>(rows) : zeros_;
    blas_.Gemm(t, d, ew_, r, ew_, ewk_[static_cast<std::size_t>(e)], d, false, ek_, d);
    blas_.Gemm(t, d, ew_, r, ew_, ewv_[static_cast<std::size_t>(e)], d, false, ev_, d);
    EngramGateKernel<<<t, 256, 0, s_>>>(h_, ek_, ev_, d);
  }

 private:
  bf16* Alloc(std::size_t elems, std::uint64_t seed, float scale, cudaStream_t s) {
    bf16* p = ::Alloc(elems, seed, scale, s);
    owned_.push_back(p);
    return p;
  }
  template <typename T>
  T* Upload(const std::vector<T>& v) {
    T* p = nullptr;
    CK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<std::size_t>(v.size(), 1) * sizeof(T)));
    CK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    owned_.push_back(p);
    return p;
  }
  void BuildDecodePointers() {
    const std::size_t group = m_.heads / m_.kv_heads, hd = m_.head_dim;
    std::vector<const void*> q, k, v, sc;
    std::vector<void*> s, out;
    for (std::size_t b = 0; b < decode_batch_; ++b) {
      for (int g = 0; g < m_.kv_heads; ++g) {
        const std::size_t i = b * m_.kv_heads + g;
        q.push_back(q_ + i * group * hd);
        k.push_back(kc_ + i * ctx_ * hd);
        v.push_back(vc_ + i * ctx_ * hd);
        s.push_back(scores_ + i * group * ctx_);
        sc.push_back(scores_ + i * group * ctx_);
        out.push_back(ao_ + i * group * hd);
      }
    }
    dq_ = Upload(q);
    dk_ = Upload(k);
    dv_ = Upload(v);
    ds_ = Upload(s);
    dsc_ = Upload(sc);
    dout_ = Upload(out);
  }
  // Per (sequence, head) of a prefill step of sequences of `chunk` tokens.
  void BuildPrefillPointers(std::size_t seqs, std::size_t chunk) {
    const std::size_t hd = m_.head_dim, qd = m_.heads * hd, kvd = m_.kv_heads * hd;
    const std::size_t group = m_.heads / m_.kv_heads;
    std::vector<const void*> q, k, v, sc;
    std::vector<void*> s, out;
    for (std::size_t sq = 0; sq < seqs; ++sq) {
      for (int h = 0; h < m_.heads; ++h) {
        const std::size_t g = h / group;
        const std::size_t row0 = sq * chunk;
        q.push_back(q_ + row0 * qd + h * hd);
        k.push_back(k_ + row0 * kvd + g * hd);
        v.push_back(v_ + row0 * kvd + g * hd);
        s.push_back(scores_ + static_cast<std::size_t>(h) * chunk * chunk);
        sc.push_back(scores_ + static_cast<std::size_t>(h) * chunk * chunk);
        out.push_back(ao_ + row0 * qd + h * hd);
      }
    }
    pq_ = Upload(q);
    pk_ = Upload(k);
    pv_ = Upload(v);
    psc_ = Upload(sc);
    ps_ = Upload(s);
    pout_ = Upload(out);
  }

  ModelShape m_;
  int ew_;
  cudaStream_t s_;
  Blas blas_;
  std::vector<void*> owned_;
  bf16 *wq_{}, *wk_{}, *wv_{}, *wo_{}, *wup_{}, *wdown_{}, *wsup_{}, *wsdown_{};
  std::vector<bf16*> ewk_, ewv_;
  bf16 *h_{}, *x_{}, *q_{}, *k_{}, *v_{}, *ao_{}, *ek_{}, *ev_{}, *zeros_{}, *moe_in_{}, *mid_{}, *moe_out_{};
  bf16 *scores_{}, *kc_{}, *vc_{};
  std::size_t ctx_ = 0, decode_batch_ = 0;
  const void** dq_{};
  const void** dk_{};
  const void** dv_{};
  const void** dsc_{};
  void** ds_{};
  void** dout_{};
  const void** pq_{};
  const void** pk_{};
  const void** pv_{};
  const void** psc_{};
  void** ps_{};
  void** pout_{};
};

// ---- configurations ----

struct Args {
  std::string store;
  std::string model = "v4.1-flash";
  int layers = 0;            // 0: the preset's
  double width_scale = 1.0;  // hidden, FFN widths and heads scaled by this
  std::string configs = "none,a,b,c,d,a2";
  std::size_t prefill_seqs = 4, prefill_chunk = 4096;
  std::size_t decode_batch = 64;
  std::size_t ctx = 4096;
  std::size_t prefill_steps = 4, decode_steps = 48;
  std::size_t warmup_prefill = 2, warmup_decode = 128;
  std::uint64_t hbm_cache = 0;   // 0: an eighth of the tables
  std::uint64_t host_cache = 0;  // 0: a quarter of the tables
  // (d)'s budget for everything engram holds on the device. 0: what a 16 GiB card running V4.1's full
  // tables (188.8 GiB) would give its HBM cache, scaled to these tables: the working set's fixed buffers
  // (outputs, device staging, descriptors; measured) plus (16 GiB - those buffers) x tables / 188.8 GiB.
  std::uint64_t small_gpu = 0;
  std::uint32_t threads = 16;
  std::string json;
  gpu::MissPath b_path = gpu::MissPath::kAuto;  // (b)'s path
  bool verbose = false;                         // every step's time, as it runs
};

bool g_verbose = false;

struct Config {
  std::string name;
  std::string what;
};

struct PhaseResult {
  std::string phase;  // prefill | decode
  std::size_t steps = 0;
  std::size_t row_steps = 0;  // steps the row counters (before/after) cover: prefill's lead-in chunk too
  std::size_t tokens = 0;
  double seconds = 0;
  std::vector<double> step_ms;                // device time of each step (events)
  std::vector<std::vector<double>> stall_us;  // per Engram module, per step
  gpu::WorkingSetStats before, after;
};

struct ConfigResult {
  std::string name;
  std::string path;
  std::uint64_t hbm_cache = 0, host_cache = 0, device_budget = 0, device_bytes = 0, hbm_slots = 0, host_rows = 0;
  PhaseResult prefill, decode;
};

// The host side's counters over a phase (after - before), summed over the Engram layers.
struct HostDelta {
  std::uint64_t lookups = 0, distinct = 0, resident = 0, cached = 0, disk = 0, reads = 0;
  double disk_s = 0, gather_s = 0, hash_s = 0, lookup_s = 0;
};

HostDelta HostDeltaOf(const PhaseResult& p) {
  HostDelta d;
  const auto& a = p.after.host.layers;
  const auto& b = p.before.host.layers;
  for (std::size_t l = 0; l < a.size() && l < b.size(); ++l) {
    d.lookups += a[l].lookups - b[l].lookups;
    d.distinct += a[l].distinct - b[l].distinct;
    d.resident += a[l].resident_hits - b[l].resident_hits;
    d.cached += a[l].cache_hits - b[l].cache_hits;
    d.disk += a[l].disk_rows - b[l].disk_rows;
    d.reads += a[l].disk_reads - b[l].disk_reads;
    d.disk_s += a[l].disk_seconds - b[l].disk_seconds;
    d.gather_s += a[l].gather_seconds - b[l].gather_seconds;
    d.hash_s += a[l].hash_seconds - b[l].hash_seconds;
    d.lookup_s += a[l].lookup_seconds - b[l].lookup_seconds;
  }
  return d;
}

double TokensPerSecond(const PhaseResult& p) {
  return p.seconds > 0 ? static_cast<double>(p.tokens) / p.seconds : 0;
}

// Runs one phase. `ws` null: the backbone alone. Warm-up steps go through engram only (Wait and Done on
// the compute stream, no model), to bring the caches to where a long run would have them.
PhaseResult RunPhase(Model& model, gpu::WorkingSet* ws, std::span<const std::int32_t> trace,
                     const prefetch::WorkloadShape& shape, std::size_t warmup, std::size_t steps,
                     const std::vector<int>& engram_at, cudaStream_t cs) {
  PhaseResult r;
  r.phase = shape.decode() ? "decode" : "prefill";
  const std::size_t modules = engram_at.size();
  r.stall_us.resize(modules);
  const int layers = model.shape().layers;
  std::vector<engram::SequenceId> seqs;
  auto new_sequences = [&] {
    if (ws == nullptr) return;
    for (auto s : seqs) Must(ws->Release(s), "release");
    seqs.clear();
    for (std::size_t q = 0; q < shape.sequences; ++q) seqs.push_back(Must(ws->CreateSequence(), "sequence"));
  };
  auto submit = [&](std::size_t k) -> prefetch::StepId {
    if (ws == nullptr) return 0;
    if (!shape.decode()) new_sequences();
    std::vector<prefetch::SequenceInput> batch;
    for (std::size_t q = 0; q < shape.sequences; ++q) {
      batch.push_back({seqs[q], prefetch::WorkloadTokens(trace, shape, k, q), {}});
    }
    return Must(ws->Submit(batch), "submit");
  };
  if (shape.decode()) new_sequences();
  // Warm-up: engram only.
  for (std::size_t k = 0; k < warmup && ws != nullptr; ++k) {
    const auto tw = Clock::now();
    const auto sid = submit(k);
    for (std::size_t e = 0; e < modules; ++e) {
      Must(ws->Wait(sid, static_cast<int>(e), cs), "wait");
      Must(ws->Done(sid, static_cast<int>(e), cs), "done");
    }
    CK(cudaStreamSynchronize(cs));
    Must(ws->Finish(sid), "finish");
    if (g_verbose) std::printf("  %s warm-up step %zu: %.1f ms\n", r.phase.c_str(), k, 1e3 * Since(tw));
  }
  struct Ev {
    cudaEvent_t start, end;
    std::vector<cudaEvent_t> w0, w1;
  };
  std::vector<Ev> ev(2);
  for (auto& e : ev) {
    CK(cudaEventCreate(&e.start));
    CK(cudaEventCreate(&e.end));
    e.w0.resize(modules);
    e.w1.resize(modules);
    for (std::size_t i = 0; i < modules; ++i) {
      CK(cudaEventCreate(&e.w0[i]));
      CK(cudaEventCreate(&e.w1[i]));
    }
  }
  CK(cudaStreamSynchronize(cs));
  if (ws != nullptr) r.before = ws->stats();
  const std::size_t t_step = shape.step_tokens();
  auto enqueue = [&](std::size_t k, prefetch::StepId sid) {
    Ev& e = ev[k % 2];
    CK(cudaEventRecord(e.start, cs));
    std::size_t mod = 0;
    for (int l = 0; l < layers; ++l) {
      if (mod < modules && engram_at[mod] == l) {
        const std::uint16_t* rows = nullptr;
        CK(cudaEventRecord(e.w0[mod], cs));
        if (ws != nullptr) {
          Must(ws->Wait(sid, static_cast<int>(mod), cs), "wait");
          rows = Must(ws->Output(sid, static_cast<int>(mod)), "output").bf16;
        }
        CK(cudaEventRecord(e.w1[mod], cs));
        model.Engram(static_cast<int>(mod), t_step, rows);
        if (ws != nullptr) Must(ws->Done(sid, static_cast<int>(mod), cs), "done");
        ++mod;
      }
      model.Layer(t_step, shape.decode(), shape.sequences, shape.tokens);
    }
    CK(cudaEventRecord(e.end, cs));
  };
  // A step's device time and stalls go into the results unless it is the prefill's lead-in chunk.
  auto collect = [&](std::size_t k, prefetch::StepId sid, bool record = true) {
    Ev& e = ev[k % 2];
    CK(cudaEventSynchronize(e.end));
    if (!record) {
      if (ws != nullptr) Must(ws->Finish(sid), "finish");
      return;
    }
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e.start, e.end));
    r.step_ms.push_back(ms);
    for (std::size_t i = 0; i < modules; ++i) {
      CK(cudaEventElapsedTime(&ms, e.w0[i], e.w1[i]));
      r.stall_us[i].push_back(1e3 * ms);
    }
    if (ws != nullptr) Must(ws->Finish(sid), "finish");
    if (g_verbose) {
      std::printf("  %s step %zu: %.1f ms on the device, stalls", r.phase.c_str(), k, r.step_ms.back());
      for (std::size_t i = 0; i < modules; ++i) std::printf(" %.1f us", r.stall_us[i].back());
      std::printf("\n");
    }
  };
  cudaEvent_t phase_start = nullptr, phase_end = nullptr;
  CK(cudaEventCreate(&phase_start));
  CK(cudaEventCreate(&phase_end));
  double device_seconds = 0;
  const auto t0 = Clock::now();
  if (shape.decode()) {
    // Synchronous: the next step's tokens are known when this step's logits are.
    for (std::size_t k = warmup; k < warmup + steps; ++k) {
      const auto sid = submit(k);
      enqueue(k, sid);
      collect(k, sid);
    }
  } else {
    // One chunk ahead: chunk k + 1 is submitted as soon as chunk k is enqueued. A lead-in chunk (chunk
    // `warmup`, computed but not counted) is what the first counted chunk is submitted behind; the phase's
    // time is the device's, from the first counted chunk's start to the last one's end.
    const std::size_t first = warmup + 1, end = warmup + 1 + steps;
    prefetch::StepId next = submit(warmup);
    prefetch::StepId prev = 0;
    for (std::size_t k = warmup; k < end; ++k) {
      const prefetch::StepId sid = next;
      if (k == first) CK(cudaEventRecord(phase_start, cs));
      enqueue(k, sid);
      if (k > warmup) collect(k - 1, prev, k - 1 >= first);
      if (k + 1 < end) next = submit(k + 1);
      prev = sid;
    }
    CK(cudaEventRecord(phase_end, cs));
    collect(end - 1, prev);
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, phase_start, phase_end));
    device_seconds = 1e-3 * ms;
  }
  r.seconds = shape.decode() ? Since(t0) : device_seconds;
  r.steps = steps;
  r.row_steps = shape.decode() ? steps : steps + 1;
  r.tokens = steps * t_step;
  if (ws != nullptr) {
    for (auto s : seqs) Must(ws->Release(s), "release");
    r.after = ws->stats();
  }
  cudaEventDestroy(phase_start);
  cudaEventDestroy(phase_end);
  for (auto& e : ev) {
    cudaEventDestroy(e.start);
    cudaEventDestroy(e.end);
    for (std::size_t i = 0; i < modules; ++i) {
      cudaEventDestroy(e.w0[i]);
      cudaEventDestroy(e.w1[i]);
    }
  }
  return r;
}

void PrintPhase(const ConfigResult& c, const PhaseResult& p, const PhaseResult* base) {
  const double tps = TokensPerSecond(p);
  const double loss = base != nullptr && TokensPerSecond(*base) > 0 ? 100 * (1 - tps / TokensPerSecond(*base)) : 0;
  auto step = p.step_ms;
  std::printf("%-4s %-8s %6zu %11.0f %7.2f%% %9.2f", c.name.c_str(), p.phase.c_str(), p.steps, tps, loss,
              Percentile(step, 0.5));
  for (const auto& s : p.stall_us) {
    auto v = s;
    std::printf("  %7.1f/%7.1f/%7.1f", Percentile(v, 0.5), Percentile(v, 0.95), Percentile(v, 0.99));
  }
  const auto& a = p.after;
  const auto& b = p.before;
  const double n = static_cast<double>(std::max<std::size_t>(p.row_steps, 1));  // per step of the counters
  const HostDelta d = HostDeltaOf(p);
  const std::uint64_t hbm = (a.cache_hits - b.cache_hits) + (a.hbm_region_hits - b.hbm_region_hits);
  std::printf(
      "  | per step: hbm %.0f host %.0f zc %.0f disk %.0f rows (%.0f reads), staged %.2f MiB; host us: hash %.0f "
      "lookup %.0f io %.0f gather %.0f\n",
      static_cast<double>(hbm) / n, static_cast<double>(d.resident + d.cached) / n,
      static_cast<double>(a.zero_copy_rows - b.zero_copy_rows) / n, static_cast<double>(d.disk) / n,
      static_cast<double>(d.reads) / n, static_cast<double>(a.staged_bytes - b.staged_bytes) / n / (1 << 20),
      1e6 * d.hash_s / n, 1e6 * d.lookup_s / n, 1e6 * d.disk_s / n, 1e6 * d.gather_s / n);
}

void JsonPhase(std::FILE* f, const PhaseResult& p, double base_tps) {
  const double tps = TokensPerSecond(p);
  std::fprintf(f,
               "{\"steps\":%zu,\"row_steps\":%zu,\"tokens\":%zu,\"seconds\":%.6f,\"tokens_per_s\":%.3f,\"loss\":%.6f,",
               p.steps, p.row_steps, p.tokens, p.seconds, tps, base_tps > 0 ? 1 - tps / base_tps : 0.0);
  auto step = p.step_ms;
  std::fprintf(
      f, "\"step_ms_p50\":%.4f,\"step_ms_mean\":%.4f,\"stall_us\":[", Percentile(step, 0.5), step.empty() ? 0.0 : [&] {
        double s = 0;
        for (double x : step) s += x;
        return s / static_cast<double>(step.size());
      }());
  for (std::size_t i = 0; i < p.stall_us.size(); ++i) {
    auto v = p.stall_us[i];
    double mean = 0;
    for (double x : v) mean += x;
    mean /= static_cast<double>(std::max<std::size_t>(v.size(), 1));
    std::fprintf(f, "%s{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"mean\":%.3f}", i ? "," : "", Percentile(v, 0.5),
                 Percentile(v, 0.95), Percentile(v, 0.99), mean);
  }
  const auto& a = p.after;
  const auto& b = p.before;
  const HostDelta d = HostDeltaOf(p);
  std::fprintf(f,
               "],\"rows\":{\"lookups\":%llu,\"distinct\":%llu,\"hbm_cache\":%llu,\"hbm_region\":%llu,"
               "\"zero_copy\":%llu,\"staged\":%llu,\"host_resident\":%llu,\"host_cache\":%llu,\"disk\":%llu,"
               "\"disk_reads\":%llu,\"staged_bytes\":%llu}}",
               static_cast<unsigned long long>(d.lookups), static_cast<unsigned long long>(d.distinct),
               static_cast<unsigned long long>(a.cache_hits - b.cache_hits),
               static_cast<unsigned long long>(a.hbm_region_hits - b.hbm_region_hits),
               static_cast<unsigned long long>(a.zero_copy_rows - b.zero_copy_rows),
               static_cast<unsigned long long>(a.staged_rows - b.staged_rows),
               static_cast<unsigned long long>(d.resident), static_cast<unsigned long long>(d.cached),
               static_cast<unsigned long long>(d.disk), static_cast<unsigned long long>(d.reads),
               static_cast<unsigned long long>(a.staged_bytes - b.staged_bytes));
}

std::uint64_t ParseBytes(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  const std::string unit = end != nullptr ? end : "";
  const double m = unit == "K" ? 1024.0 : unit == "M" ? 1048576.0 : unit == "G" ? 1073741824.0 : 1.0;
  return static_cast<std::uint64_t>(v * m);
}

}  // namespace

// In the order they run: (a) before the others (their losses are against it), (a2) last.
const char* const kConfigs[] = {"none", "a", "b", "c", "d", "a2"};

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  engram::bench::InstallStackDumper();
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const std::string v = argv[i + 1];
    if (k == "--store")
      a.store = v;
    else if (k == "--model")
      a.model = v;
    else if (k == "--layers")
      a.layers = std::atoi(v.c_str());
    else if (k == "--width-scale")
      a.width_scale = std::atof(v.c_str());
    else if (k == "--configs")
      a.configs = v;
    else if (k == "--prefill") {
      if (std::sscanf(v.c_str(), "%zu,%zu", &a.prefill_seqs, &a.prefill_chunk) != 2 || a.prefill_seqs == 0 ||
          a.prefill_chunk == 0) {
        std::fprintf(stderr, "--prefill %s: SEQUENCES,TOKENS\n", v.c_str());
        return 2;
      }
    } else if (k == "--decode")
      a.decode_batch = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--ctx")
      a.ctx = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--prefill-steps")
      a.prefill_steps = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--decode-steps")
      a.decode_steps = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--warmup-prefill")
      a.warmup_prefill = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--warmup-decode")
      a.warmup_decode = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--hbm-cache")
      a.hbm_cache = ParseBytes(v);
    else if (k == "--host-cache")
      a.host_cache = ParseBytes(v);
    else if (k == "--small-gpu")
      a.small_gpu = ParseBytes(v);
    else if (k == "--threads")
      a.threads = static_cast<std::uint32_t>(std::atoi(v.c_str()));
    else if (k == "--json")
      a.json = v;
    else if (k == "--verbose")
      a.verbose = v == "1";
    else if (k == "--b-path") {
      if (v == "staged")
        a.b_path = gpu::MissPath::kStaged;
      else if (v == "zero-copy")
        a.b_path = gpu::MissPath::kZeroCopy;
      else if (v == "device")
        a.b_path = gpu::MissPath::kDevice;
      else if (v == "auto")
        a.b_path = gpu::MissPath::kAuto;
      else {
        std::fprintf(stderr, "--b-path %s: auto, staged, zero-copy or device\n", v.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (a.store.empty()) {
    std::fprintf(stderr,
                 "usage: bench_model --store DIR [--model v4.1-flash|dense-4b|dense-8b] [--layers N] [--width-scale F] "
                 "[--configs none,a,b,c,d,a2] [--prefill SEQS,CHUNK] [--decode B] [--ctx N] [--prefill-steps N] "
                 "[--decode-steps N] [--warmup-prefill N] [--warmup-decode N] [--hbm-cache BYTES] [--host-cache BYTES] "
                 "[--small-gpu BYTES] [--threads N] [--json FILE] [--b-path auto|staged|zero-copy|device] "
                 "[--verbose 0|1]\n");
    return 2;
  }
  for (std::size_t at = 0; at <= a.configs.size();) {
    const std::size_t comma = std::min(a.configs.find(',', at), a.configs.size());
    const std::string name = a.configs.substr(at, comma - at);
    if (std::find(std::begin(kConfigs), std::end(kConfigs), name) == std::end(kConfigs)) {
      std::fprintf(stderr, "--configs: unknown configuration '%s' (none, a, b, c, d, a2)\n", name.c_str());
      return 2;
    }
    at = comma + 1;
  }
  g_verbose = a.verbose;
  ModelShape m = Preset(a.model);
  if (a.layers > 0) m.layers = a.layers;
  if (a.width_scale != 1.0) {
    auto sc = [&](int x, int mult) {
      return std::max(mult, static_cast<int>(std::lround(x * a.width_scale / mult)) * mult);
    };
    m.hidden = sc(m.hidden, 128);
    m.heads = sc(m.heads, m.kv_heads);
    m.ffn = sc(m.ffn, 128);
  }
  auto store = Must(engram::store::Store::Open(a.store), "open store");
  const engram::Layout& layout = store->layout();
  auto version = Must(store->Pin(Must(store->Latest(), "latest")), "pin");
  const auto ids = engram::bench::LoadTraceCompressed();
  const auto dev = Must(gpu::CurrentDevice(), "GPU");
  // Engram modules at the layout's layer ids (V4.1: 1 and 14).
  std::vector<int> engram_at;
  for (int l = 0; l < layout.num_layers(); ++l) {
    const int id = layout.layer(l).layer_id;
    if (id >= m.layers) {
      std::fprintf(stderr, "the layout's Engram layer %d is past the model's %d layers\n", id, m.layers);
      return 2;
    }
    engram_at.push_back(id);
  }
  std::uint64_t table_bytes = 0;
  for (int l = 0; l < layout.num_layers(); ++l)
    table_bytes += static_cast<std::uint64_t>(layout.layer_rows(l)) * layout.row_bytes();
  const std::uint64_t hbm_cache = a.hbm_cache != 0 ? a.hbm_cache : table_bytes / 8;
  const std::uint64_t host_cache = a.host_cache != 0 ? a.host_cache : table_bytes / 4;
  const int width = layout.columns() * layout.spec().row_dim;
  const prefetch::WorkloadShape prefill{a.prefill_seqs, a.prefill_chunk};
  const prefetch::WorkloadShape decode{a.decode_batch, 1};
  const std::size_t max_tokens = std::max(prefill.step_tokens(), decode.step_tokens());
  std::printf("bench_model: store %s (%s, %.2f GiB of tables, %u B rows, Engram at layers", a.store.c_str(),
              layout.name().c_str(), static_cast<double>(table_bytes) / (1 << 30), layout.row_bytes());
  for (int e : engram_at) std::printf(" %d", e);
  std::printf("), GPU %s\n", dev.name.c_str());
  std::printf(
      "model %s: %d layers, hidden %d, %d/%d heads of %d, %s %d x %d (top %d + %d shared); prefill %zu x %zu tokens "
      "(one chunk ahead), decode %zu sequences (synchronous), KV context %zu\n",
      m.name.c_str(), m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.experts > 0 ? "experts" : "dense FFN",
      std::max(m.experts, 1), m.ffn, m.top_k, m.shared, prefill.sequences, prefill.tokens, decode.sequences, a.ctx);
  std::printf("budgets: HBM cache %.2f GiB (b, c), host cache %.2f GiB (c, d)\n",
              static_cast<double>(hbm_cache) / (1 << 30), static_cast<double>(host_cache) / (1 << 30));

  cudaStream_t cs = nullptr;
  CK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
  Model model(m, width, layout.num_layers(), max_tokens, decode.sequences, a.ctx, prefill.sequences, prefill.tokens,
              cs);
  auto registrar = Must(gpu::MakeCudaHostRegistrar(), "registrar");
  // One forward pass of each shape first: cuBLAS picks and loads its kernels on first use.
  for (int rep = 0; rep < 2; ++rep) {
    for (int l = 0; l < m.layers; ++l) {
      for (std::size_t e = 0; e < engram_at.size(); ++e) {
        if (engram_at[e] == l) {
          model.Engram(static_cast<int>(e), prefill.step_tokens(), nullptr);
          model.Engram(static_cast<int>(e), decode.step_tokens(), nullptr);
        }
      }
      model.Layer(prefill.step_tokens(), false, prefill.sequences, prefill.tokens);
      model.Layer(decode.step_tokens(), true, decode.sequences, 1);
    }
  }
  CK(cudaStreamSynchronize(cs));

  std::vector<ConfigResult> results;
  results.reserve(5);  // `base` points into it
  const ConfigResult* base = nullptr;
  std::printf("\n%-4s %-8s %6s %11s %8s %9s  stall us p50/p95/p99 per Engram layer\n", "cfg", "phase", "steps",
              "tokens/s", "loss", "step ms");
  for (const std::string name : kConfigs) {
    if (("," + a.configs + ",").find("," + name + ",") == std::string::npos) continue;
    ConfigResult c;
    c.name = name;
    const bool all_in_hbm = name == "a" || name == "a2";  // a2: the baseline again
    std::unique_ptr<memory::HostTier> host;
    std::unique_ptr<gpu::WorkingSet> ws;
    if (name != "none") {
      gpu::WorkingSetOptions o;
      o.bf16_output = true;
      o.rows_output = false;
      o.max_tokens = static_cast<std::int64_t>(max_tokens);
      o.prefetch.gather_threads = a.threads;
      o.prefetch.staging_bytes = 1ULL << 30;
      memory::HostTierOptions ho;
      ho.arena.registrar = registrar.get();
      if (all_in_hbm) {
        o.path = gpu::MissPath::kDevice;
        o.cache_bytes = 0;
        for (int l = 0; l < layout.num_layers(); ++l) {
          for (int col = 0; col < layout.columns(); ++col) o.hbm_regions.push_back({l, col});
        }
      } else if (name == "b") {
        ho.resident = memory::ResidentRegions::kAll;
        o.cache_bytes = hbm_cache;
        o.path = a.b_path;
      } else {
        ho.cache_bytes = host_cache;
        o.path = gpu::MissPath::kStaged;
        o.cache_bytes = hbm_cache;
        if (name == "d") {
          // The fixed buffers, measured: a working set of the same shape with no cache.
          gpu::WorkingSetOptions f = o;
          f.cache_bytes = 0;
          auto probe = Must(
              gpu::WorkingSet::Create(*store, Must(store->Pin(Must(store->Latest(), "latest")), "pin"), nullptr, f),
              "working set (fixed buffers)");
          const std::uint64_t fixed = probe->stats().device_bytes;
          probe.reset();
          const double v41 = 188.83 * (1ULL << 30), card = 16.0 * (1ULL << 30);
          o.device_budget_bytes =
              a.small_gpu != 0 ? a.small_gpu
                               : fixed + static_cast<std::uint64_t>(std::max(0.0, card - static_cast<double>(fixed)) *
                                                                    static_cast<double>(table_bytes) / v41);
          o.cache_bytes = o.device_budget_bytes > fixed ? (o.device_budget_bytes - fixed) * 95 / 100 : 0;
          std::printf(
              "d    small GPU: %.2f GiB for everything engram holds (fixed buffers %.2f GiB, HBM cache %.2f GiB)\n",
              static_cast<double>(o.device_budget_bytes) / (1 << 30), static_cast<double>(fixed) / (1 << 30),
              static_cast<double>(o.cache_bytes) / (1 << 30));
        }
      }
      const auto t0 = Clock::now();
      if (!all_in_hbm) {
        host = Must(memory::HostTier::Create(layout, ho), "host tier");
        if (name == "b") Must(host->LoadResident(*store, version), "load resident");
      }
      // The working set pins the version for its life: hand it a copy.
      ws =
          Must(gpu::WorkingSet::Create(*store, Must(store->Pin(Must(store->Latest(), "latest")), "pin"), host.get(), o),
               "working set");
      const auto st = ws->stats();
      c.path = gpu::MissPathName(st.path);
      c.hbm_cache = o.cache_bytes;
      c.host_cache = name == "b" ? table_bytes : (all_in_hbm ? 0 : host_cache);
      c.device_budget = o.device_budget_bytes;
      c.device_bytes = st.device_bytes;
      c.hbm_slots = st.cache_slots;
      c.host_rows = host != nullptr ? host->stats().cache_rows : 0;
      std::printf(
          "%-4s set up in %.1f s: path %s (%s), %.2f GiB on the device, %llu HBM cache slots, %llu host cache rows\n",
          name.c_str(), Since(t0), c.path.c_str(), st.path_reason.c_str(),
          static_cast<double>(st.device_bytes) / (1 << 30), static_cast<unsigned long long>(c.hbm_slots),
          static_cast<unsigned long long>(c.host_rows));
    }
    const auto tp = Clock::now();
    c.prefill = RunPhase(model, ws.get(), ids, prefill, a.warmup_prefill, a.prefill_steps, engram_at, cs);
    const auto td = Clock::now();
    c.decode = RunPhase(model, ws.get(), ids, decode, a.warmup_decode, a.decode_steps, engram_at, cs);
    std::printf("%-4s ran prefill in %.1f s, decode in %.1f s (warm-up included)\n", name.c_str(),
                std::chrono::duration<double>(td - tp).count(), Since(td));
    ws.reset();
    host.reset();
    results.push_back(std::move(c));
    if (results.back().name == "a") base = &results.back();
    const ConfigResult& cr = results.back();
    PrintPhase(cr, cr.prefill, base != nullptr && cr.name != "none" ? &base->prefill : nullptr);
    PrintPhase(cr, cr.decode, base != nullptr && cr.name != "none" ? &base->decode : nullptr);
  }
  for (const ConfigResult& r : results) {
    if (r.name != "a2" || base == nullptr) continue;
    const auto loss = [](const PhaseResult& p, const PhaseResult& q) {
      return TokensPerSecond(q) > 0 ? 100 * (1 - TokensPerSecond(p) / TokensPerSecond(q)) : 0.0;
    };
    std::printf(
        "noise: a2 (the baseline again) differs from a by %.2f%% in prefill and %.2f%% in decode: a loss of that "
        "size is not a measurement\n",
        loss(r.prefill, base->prefill), loss(r.decode, base->decode));
  }
  // Baseline-relative losses once (a) is known (configs run in order none, a, b, c, d, a2).
  if (!a.json.empty()) {
    std::FILE* f = std::fopen(a.json.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", a.json.c_str());
      return 1;
    }
    std::fprintf(f,
                 "{\"bench\":\"bench_model\",\"gpu\":\"%s\",\"store\":\"%s\",\"layout\":\"%s\",\"table_bytes\":%llu,"
                 "\"model\":{\"name\":\"%s\",\"layers\":%d,\"hidden\":%d},\"engram_layers\":[",
                 dev.name.c_str(), a.store.c_str(), layout.name().c_str(), static_cast<unsigned long long>(table_bytes),
                 m.name.c_str(), m.layers, m.hidden);
    for (std::size_t i = 0; i < engram_at.size(); ++i) std::fprintf(f, "%s%d", i ? "," : "", engram_at[i]);
    std::fprintf(
        f,
        "],\"prefill\":{\"sequences\":%zu,\"tokens\":%zu,\"warmup\":%zu,\"lead_in\":1,\"steps\":%zu},"
        "\"decode\":{\"sequences\":%zu,\"tokens\":1,\"warmup\":%zu,\"steps\":%zu},\"threads\":%u,\"configs\":[",
        prefill.sequences, prefill.tokens, a.warmup_prefill, a.prefill_steps, decode.sequences, a.warmup_decode,
        a.decode_steps, a.threads);
    for (std::size_t i = 0; i < results.size(); ++i) {
      const auto& c = results[i];
      std::fprintf(
          f,
          "%s{\"name\":\"%s\",\"path\":\"%s\",\"hbm_cache_bytes\":%llu,\"host_cache_bytes\":%llu,"
          "\"device_budget_bytes\":%llu,\"device_bytes\":%llu,\"hbm_cache_slots\":%llu,\"host_cache_rows\":%llu,"
          "\"prefill\":",
          i ? "," : "", c.name.c_str(), c.path.c_str(), static_cast<unsigned long long>(c.hbm_cache),
          static_cast<unsigned long long>(c.host_cache), static_cast<unsigned long long>(c.device_budget),
          static_cast<unsigned long long>(c.device_bytes), static_cast<unsigned long long>(c.hbm_slots),
          static_cast<unsigned long long>(c.host_rows));
      JsonPhase(f, c.prefill, base != nullptr ? TokensPerSecond(base->prefill) : 0);
      std::fprintf(f, ",\"decode\":");
      JsonPhase(f, c.decode, base != nullptr ? TokensPerSecond(base->decode) : 0);
      std::fprintf(f, "}");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
    std::printf("wrote %s\n", a.json.c_str());
  }
  cudaStreamDestroy(cs);
  return 0;
}

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "engine/kernels/cuda/fused_kernels.h"

namespace lpd::engine::cuda {
namespace {

// Two adjacent elements of type T, loaded and stored as one word.
template <typename T>
struct Pair;
template <>
struct Pair<float> {
  using Vec = float2;
  __device__ static float2 ToFloat(Vec v) { return v; }
  __device__ static Vec FromFloat(float2 f) { return f; }
};
template <>
struct Pair<__nv_bfloat16> {
  using Vec = __nv_bfloat162;
  __device__ static float2 ToFloat(Vec v) { return __bfloat1622float2(v); }
  __device__ static Vec FromFloat(float2 f) { return __float22bfloat162_rn(f); }
};
template <>
struct Pair<__half> {
  using Vec = __half2;
  __device__ static float2 ToFloat(Vec v) { return __half22float2(v); }
  __device__ static Vec FromFloat(float2 f) { return __float22half2_rn(f); }
};

constexpr int kThreads = 256;

// Partial sums per (batch, split, group): the block of (split s, batch b)
// covers rows [s·rows_per_split, ...) of batch b, every channel pair.
template <typename T>
__global__ void GroupNormStatsKernel(const T* __restrict__ x,
                                     const T* __restrict__ add, int64_t hw,
                                     int64_t channels, int64_t groups,
                                     int64_t rows_per_split,
                                     double* __restrict__ partials) {
  extern __shared__ double shared[];  // [groups][2]
  const int64_t b = blockIdx.y, s = blockIdx.x, splits = gridDim.x;
  for (int64_t i = threadIdx.x; i < 2 * groups; i += blockDim.x) shared[i] = 0;
  __syncthreads();
  const int64_t pairs = channels / 2;
  const int64_t group_size = channels / groups;
  const int64_t row_begin = s * rows_per_split;
  const int64_t row_end = min(hw, row_begin + rows_per_split);
  using P = Pair<T>;
  const auto* xv =
      reinterpret_cast<const typename P::Vec*>(x + b * hw * channels);
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    float2 offset = make_float2(0.f, 0.f);
    if (add != nullptr) {
      offset = P::ToFloat(
          reinterpret_cast<const typename P::Vec*>(add + b * channels)[p]);
    }
    float sum = 0.f, sumsq = 0.f;
    for (int64_t r = row_begin; r < row_end; ++r) {
      float2 v = P::ToFloat(xv[r * pairs + p]);
      v.x += offset.x;
      v.y += offset.y;
      sum += v.x + v.y;
      sumsq += v.x * v.x + v.y * v.y;
    }
    const int64_t g = (2 * p) / group_size;
    atomicAdd(&shared[2 * g], static_cast<double>(sum));
    atomicAdd(&shared[2 * g + 1], static_cast<double>(sumsq));
  }
  __syncthreads();
  double* out = partials + ((b * splits + s) * groups) * 2;
  for (int64_t i = threadIdx.x; i < 2 * groups; i += blockDim.x)
    out[i] = shared[i];
}

// mean and rstd per (batch, group) from the partials of every split.
__global__ void GroupNormFinalizeKernel(const double* __restrict__ partials,
                                        int64_t batch, int64_t splits,
                                        int64_t groups, double count, float eps,
                                        float2* __restrict__ stats) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= batch * groups) return;
  const int64_t b = i / groups, g = i % groups;
  double sum = 0, sumsq = 0;
  for (int64_t s = 0; s < splits; ++s) {
    const double* p = partials + ((b * splits + s) * groups + g) * 2;
    sum += p[0];
    sumsq += p[1];
  }
  const double mean = sum / count;
  const double var = max(sumsq / count - mean * mean, 0.0);
  stats[i] = make_float2(static_cast<float>(mean),
                         static_cast<float>(rsqrt(var + eps)));
}

__device__ __forceinline__ float Silu(float v) {
  return v / (1.f + __expf(-v));
}

// dL/dz from dL/dy for y = act(z), z = x̂·w + b (act: SiLU or identity).
__device__ __forceinline__ float GroupNormDz(float dy, float xhat, float w,
                                             float b, bool silu) {
  if (!silu) return dy;
  const float z = xhat * w + b;
  const float sig = 1.f / (1.f + __expf(-z));
  return dy * (sig * (1.f + z * (1.f - sig)));
}

template <typename T>
__global__ void GroupNormApplyKernel(
    const T* __restrict__ x, const T* __restrict__ add,
    const T* __restrict__ weight, const T* __restrict__ bias,
    const float2* __restrict__ stats, T* __restrict__ y, int64_t hw,
    int64_t channels, int64_t groups, bool silu, int64_t total_pairs) {
  using P = Pair<T>;
  const int64_t pairs = channels / 2;
  const int64_t group_size = channels / groups;
  const auto* xv = reinterpret_cast<const typename P::Vec*>(x);
  auto* yv = reinterpret_cast<typename P::Vec*>(y);
  const auto* wv = reinterpret_cast<const typename P::Vec*>(weight);
  const auto* bv = reinterpret_cast<const typename P::Vec*>(bias);
  const auto* av = reinterpret_cast<const typename P::Vec*>(add);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
       i < total_pairs; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t p = i % pairs;
    const int64_t b = i / (pairs * hw);
    float2 v = P::ToFloat(xv[i]);
    if (av != nullptr) {
      const float2 a = P::ToFloat(av[b * pairs + p]);
      v.x += a.x;
      v.y += a.y;
    }
    const float2 st = stats[b * groups + (2 * p) / group_size];
    const float2 w = P::ToFloat(wv[p]);
    const float2 c = P::ToFloat(bv[p]);
    float2 out = make_float2((v.x - st.x) * st.y * w.x + c.x,
                             (v.y - st.x) * st.y * w.y + c.y);
    if (silu) {
      out.x = Silu(out.x);
      out.y = Silu(out.y);
    }
    yv[i] = P::FromFloat(out);
  }
}

template <typename T>
__global__ void GegluKernel(const T* __restrict__ x, T* __restrict__ y,
                            int64_t rows, int64_t n) {
  using P = Pair<T>;
  const int64_t half_pairs = n / 2;
  const int64_t total = rows * half_pairs;
  const auto* xv = reinterpret_cast<const typename P::Vec*>(x);
  auto* yv = reinterpret_cast<typename P::Vec*>(y);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / half_pairs, p = i % half_pairs;
    const float2 a = P::ToFloat(xv[r * 2 * half_pairs + p]);
    const float2 g = P::ToFloat(xv[r * 2 * half_pairs + half_pairs + p]);
    const float kInvSqrt2 = 0.70710678118654752f;
    float2 out;
    out.x = a.x * 0.5f * g.x * (1.f + erff(g.x * kInvSqrt2));
    out.y = a.y * 0.5f * g.y * (1.f + erff(g.y * kInvSqrt2));
    yv[i] = P::FromFloat(out);
  }
}

// Backward of GroupNormApplyKernel. With v = x + add, x̂ = (v − mean)·rstd,
// z = x̂·w + b, y = act(z) and dz = dL/dz, every (batch, split) block sums
// per channel over its rows: v, dz and dz·x̂.
template <typename T>
__global__ void GroupNormBackwardPartialsKernel(
    const T* __restrict__ x, const T* __restrict__ add,
    const T* __restrict__ weight, const T* __restrict__ bias,
    const float2* __restrict__ stats, const T* __restrict__ dy, int64_t hw,
    int64_t channels, int64_t groups, bool silu, int64_t rows_per_split,
    float* __restrict__ partials) {
  using P = Pair<T>;
  const int64_t b = blockIdx.y, s = blockIdx.x, splits = gridDim.x;
  const int64_t pairs = channels / 2;
  const int64_t group_size = channels / groups;
  const int64_t row_begin = s * rows_per_split;
  const int64_t row_end = min(hw, row_begin + rows_per_split);
  const auto* xv =
      reinterpret_cast<const typename P::Vec*>(x + b * hw * channels);
  const auto* dv =
      reinterpret_cast<const typename P::Vec*>(dy + b * hw * channels);
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    float2 offset = make_float2(0.f, 0.f);
    if (add != nullptr) {
      offset = P::ToFloat(
          reinterpret_cast<const typename P::Vec*>(add + b * channels)[p]);
    }
    const float2 st = stats[b * groups + (2 * p) / group_size];
    const float2 w =
        P::ToFloat(reinterpret_cast<const typename P::Vec*>(weight)[p]);
    const float2 c =
        P::ToFloat(reinterpret_cast<const typename P::Vec*>(bias)[p]);
    float sv[2] = {0.f, 0.f}, sdz[2] = {0.f, 0.f}, sdzx[2] = {0.f, 0.f};
    for (int64_t r = row_begin; r < row_end; ++r) {
      const float2 xf = P::ToFloat(xv[r * pairs + p]);
      const float2 gf = P::ToFloat(dv[r * pairs + p]);
      const float v[2] = {xf.x + offset.x, xf.y + offset.y};
      const float g[2] = {gf.x, gf.y};
      const float wc[2] = {w.x, w.y}, bc[2] = {c.x, c.y};
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float xhat = (v[k] - st.x) * st.y;
        const float dz = GroupNormDz(g[k], xhat, wc[k], bc[k], silu);
        sv[k] += v[k];
        sdz[k] += dz;
        sdzx[k] += dz * xhat;
      }
    }
    float* out = partials + ((b * splits + s) * channels + 2 * p) * 3;
    out[0] = sv[0], out[1] = sdz[0], out[2] = sdzx[0];
    out[3] = sv[1], out[4] = sdz[1], out[5] = sdzx[1];
  }
}

// Per (batch, channel): the splits' partial sums added up (one thread each,
// reading consecutive channels).
__global__ void GroupNormBackwardSumSplitsKernel(
    const float* __restrict__ partials, int64_t batch, int64_t splits,
    int64_t channels, float* __restrict__ sums) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= batch * channels) return;
  const int64_t b = i / channels, ch = i % channels;
  float sv = 0.f, sdz = 0.f, sdzx = 0.f;
  for (int64_t s = 0; s < splits; ++s) {
    const float* p = partials + ((b * splits + s) * channels + ch) * 3;
    sv += p[0];
    sdz += p[1];
    sdzx += p[2];
  }
  sums[i * 3] = sv;
  sums[i * 3 + 1] = sdz;
  sums[i * 3 + 2] = sdzx;
}

// Per (batch, group): the sums over the group's channels that dx needs,
// a = Σ w·Σdz / N and c = Σ w·Σdz·x̂ / N, and, with an addend, its gradient
// dadd[b, ch] = Σ_hw dx = rstd·(w·Σdz − HW·a − c·rstd·(Σv − HW·mean)).
template <typename T>
__global__ void GroupNormBackwardGroupKernel(const float* __restrict__ sums,
                                             const T* __restrict__ weight,
                                             const float2* __restrict__ stats,
                                             int64_t batch, int64_t hw,
                                             int64_t channels, int64_t groups,
                                             float2* __restrict__ coefficients,
                                             T* __restrict__ dadd) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= batch * groups) return;
  const int64_t b = i / groups, g = i % groups;
  const int64_t group_size = channels / groups;
  const float2 st = stats[i];
  const float count = static_cast<float>(hw * group_size);
  float a = 0.f, c = 0.f;
  for (int64_t ch = g * group_size; ch < (g + 1) * group_size; ++ch) {
    const float* p = sums + (b * channels + ch) * 3;
    const float w = static_cast<float>(weight[ch]);
    a += w * p[1];
    c += w * p[2];
  }
  a /= count;
  c /= count;
  coefficients[i] = make_float2(a, c);
  if (dadd == nullptr) return;
  for (int64_t ch = g * group_size; ch < (g + 1) * group_size; ++ch) {
    const float* p = sums + (b * channels + ch) * 3;
    const float w = static_cast<float>(weight[ch]);
    const float hwf = static_cast<float>(hw);
    dadd[b * channels + ch] = static_cast<T>(
        st.y * (w * p[1] - hwf * a - c * st.y * (p[0] - hwf * st.x)));
  }
}

// dweight[ch] = Σ_b Σdz·x̂, dbias[ch] = Σ_b Σdz.
template <typename T>
__global__ void GroupNormBackwardParamsKernel(const float* __restrict__ sums,
                                              int64_t batch, int64_t channels,
                                              T* __restrict__ dweight,
                                              T* __restrict__ dbias) {
  const int64_t ch = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (ch >= channels) return;
  float dw = 0.f, db = 0.f;
  for (int64_t b = 0; b < batch; ++b) {
    db += sums[(b * channels + ch) * 3 + 1];
    dw += sums[(b * channels + ch) * 3 + 2];
  }
  dweight[ch] = static_cast<T>(dw);
  dbias[ch] = static_cast<T>(db);
}

// dx = rstd·(dz·w − a − x̂·c).
template <typename T>
__global__ void GroupNormBackwardInputKernel(
    const T* __restrict__ x, const T* __restrict__ add,
    const T* __restrict__ weight, const T* __restrict__ bias,
    const float2* __restrict__ stats, const float2* __restrict__ coefficients,
    const T* __restrict__ dy, T* __restrict__ dx, int64_t hw, int64_t channels,
    int64_t groups, bool silu, int64_t total_pairs) {
  using P = Pair<T>;
  const int64_t pairs = channels / 2;
  const int64_t group_size = channels / groups;
  const auto* xv = reinterpret_cast<const typename P::Vec*>(x);
  const auto* dv = reinterpret_cast<const typename P::Vec*>(dy);
  auto* out = reinterpret_cast<typename P::Vec*>(dx);
  const auto* wv = reinterpret_cast<const typename P::Vec*>(weight);
  const auto* bv = reinterpret_cast<const typename P::Vec*>(bias);
  const auto* av = reinterpret_cast<const typename P::Vec*>(add);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
       i < total_pairs; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t p = i % pairs;
    const int64_t b = i / (pairs * hw);
    float2 xf = P::ToFloat(xv[i]);
    if (av != nullptr) {
      const float2 a = P::ToFloat(av[b * pairs + p]);
      xf.x += a.x;
      xf.y += a.y;
    }
    const int64_t bg = b * groups + (2 * p) / group_size;
    const float2 st = stats[bg], k = coefficients[bg];
    const float2 wf = P::ToFloat(wv[p]), cf = P::ToFloat(bv[p]);
    const float2 gf = P::ToFloat(dv[i]);
    const float v[2] = {xf.x, xf.y}, g[2] = {gf.x, gf.y};
    const float w[2] = {wf.x, wf.y}, c[2] = {cf.x, cf.y};
    float r[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float xhat = (v[j] - st.x) * st.y;
      const float dz = GroupNormDz(g[j], xhat, w[j], c[j], silu);
      r[j] = st.y * (dz * w[j] - k.x - xhat * k.y);
    }
    out[i] = P::FromFloat(make_float2(r[0], r[1]));
  }
}

// Backward of GegluKernel: da = dy·gelu(g), dg = dy·a·gelu'(g).
template <typename T>
__global__ void GegluBackwardKernel(const T* __restrict__ x,
                                    const T* __restrict__ dy,
                                    T* __restrict__ dx, int64_t rows,
                                    int64_t n) {
  using P = Pair<T>;
  const int64_t half_pairs = n / 2;
  const int64_t total = rows * half_pairs;
  const auto* xv = reinterpret_cast<const typename P::Vec*>(x);
  const auto* dv = reinterpret_cast<const typename P::Vec*>(dy);
  auto* out = reinterpret_cast<typename P::Vec*>(dx);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / half_pairs, p = i % half_pairs;
    const float2 af = P::ToFloat(xv[r * 2 * half_pairs + p]);
    const float2 gf = P::ToFloat(xv[r * 2 * half_pairs + half_pairs + p]);
    const float2 df = P::ToFloat(dv[i]);
    const float a[2] = {af.x, af.y}, g[2] = {gf.x, gf.y}, d[2] = {df.x, df.y};
    float da[2], dg[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float kInvSqrt2 = 0.70710678118654752f;
      const float kInvSqrt2Pi = 0.39894228040143268f;
      const float cdf = 0.5f * (1.f + erff(g[j] * kInvSqrt2));
      const float pdf = kInvSqrt2Pi * __expf(-0.5f * g[j] * g[j]);
      da[j] = d[j] * g[j] * cdf;
      dg[j] = d[j] * a[j] * (cdf + g[j] * pdf);
    }
    out[r * 2 * half_pairs + p] = P::FromFloat(make_float2(da[0], da[1]));
    out[r * 2 * half_pairs + half_pairs + p] =
        P::FromFloat(make_float2(dg[0], dg[1]));
  }
}

// Eight 16-bit elements of T as one 16-byte word, widened to float.
template <typename T>
struct Octet {
  uint4 raw;
  __device__ void ToFloat(float* out) const {
    const auto* v = reinterpret_cast<const typename Pair<T>::Vec*>(&raw);
    for (int i = 0; i < 4; ++i) {
      float2 f = Pair<T>::ToFloat(v[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
  __device__ void FromFloat(const float* in) {
    auto* v = reinterpret_cast<typename Pair<T>::Vec*>(&raw);
    for (int i = 0; i < 4; ++i) {
      v[i] = Pair<T>::FromFloat(make_float2(in[2 * i], in[2 * i + 1]));
    }
  }
};

// GegluKernel with eight 16-bit elements per thread (16-byte loads and
// stores): n must be a multiple of 8 and the pointers 16-byte aligned.
template <typename T>
__global__ void GegluVecKernel(const T* __restrict__ x, T* __restrict__ y,
                               int64_t rows, int64_t n) {
  const int64_t octets = n / 8;
  const int64_t total = rows * octets;
  const auto* xv = reinterpret_cast<const uint4*>(x);
  auto* yv = reinterpret_cast<uint4*>(y);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / octets, j = i % octets;
    float a[8], g[8], out[8];
    Octet<T>{xv[r * 2 * octets + j]}.ToFloat(a);
    Octet<T>{xv[r * 2 * octets + octets + j]}.ToFloat(g);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      out[k] = a[k] * 0.5f * g[k] * (1.f + erff(g[k] * 0.70710678118654752f));
    }
    Octet<T> o;
    o.FromFloat(out);
    yv[i] = o.raw;
  }
}

// out = a + b + bias[c] over [rows, channels] row-major 16-bit data (a
// channels-last feature map), eight elements per thread: channels a multiple
// of 8, pointers 16-byte aligned.
template <typename T>
__global__ void AddChannelBiasVecKernel(const T* __restrict__ a,
                                        const T* __restrict__ b,
                                        const T* __restrict__ bias,
                                        T* __restrict__ out,
                                        int64_t total_octets,
                                        int64_t channel_octets) {
  const auto* av = reinterpret_cast<const uint4*>(a);
  const auto* bv = reinterpret_cast<const uint4*>(b);
  const auto* biasv = reinterpret_cast<const uint4*>(bias);
  auto* ov = reinterpret_cast<uint4*>(out);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
       i < total_octets; i += int64_t{gridDim.x} * blockDim.x) {
    float x[8], y[8], c[8];
    Octet<T>{av[i]}.ToFloat(x);
    Octet<T>{bv[i]}.ToFloat(y);
    Octet<T>{biasv[i % channel_octets]}.ToFloat(c);
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = x[k] + y[k] + c[k];
    Octet<T> o;
    o.FromFloat(x);
    ov[i] = o.raw;
  }
}

// GegluBackwardKernel, eight elements per thread (as GegluVecKernel).
template <typename T>
__global__ void GegluBackwardVecKernel(const T* __restrict__ x,
                                       const T* __restrict__ dy,
                                       T* __restrict__ dx, int64_t rows,
                                       int64_t n) {
  const int64_t octets = n / 8;
  const int64_t total = rows * octets;
  const auto* xv = reinterpret_cast<const uint4*>(x);
  const auto* dv = reinterpret_cast<const uint4*>(dy);
  auto* out = reinterpret_cast<uint4*>(dx);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / octets, j = i % octets;
    float a[8], g[8], d[8], da[8], dg[8];
    Octet<T>{xv[r * 2 * octets + j]}.ToFloat(a);
    Octet<T>{xv[r * 2 * octets + octets + j]}.ToFloat(g);
    Octet<T>{dv[i]}.ToFloat(d);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float cdf = 0.5f * (1.f + erff(g[k] * 0.70710678118654752f));
      const float pdf = 0.39894228040143268f * __expf(-0.5f * g[k] * g[k]);
      da[k] = d[k] * g[k] * cdf;
      dg[k] = d[k] * a[k] * (cdf + g[k] * pdf);
    }
    Octet<T> oa, og;
    oa.FromFloat(da);
    og.FromFloat(dg);
    out[r * 2 * octets + j] = oa.raw;
    out[r * 2 * octets + octets + j] = og.raw;
  }
}

// Column sums of a row-major [rows, cols] matrix, first per (row split,
// column tile): each lane of a block owns eight adjacent columns of the
// block's 256, its 8 warps take every 8th row of the split, and the warps'
// sums meet in shared memory. partials: float [splits, cols].
template <typename T>
__global__ void ColumnSumPartialsKernel(const T* __restrict__ x, int64_t rows,
                                        int64_t cols, int64_t rows_per_split,
                                        float* __restrict__ partials) {
  __shared__ float shared[8][256];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t octets = cols / 8;
  const int64_t octet = blockIdx.x * int64_t{32} + lane;
  const int64_t row_begin = blockIdx.y * rows_per_split;
  const int64_t row_end = min(rows, row_begin + rows_per_split);
  float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (octet < octets) {
    const auto* xv = reinterpret_cast<const uint4*>(x);
    for (int64_t r = row_begin + warp; r < row_end; r += 8) {
      float v[8];
      Octet<T>{xv[r * octets + octet]}.ToFloat(v);
#pragma unroll
      for (int k = 0; k < 8; ++k) sum[k] += v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) shared[warp][lane * 8 + k] = sum[k];
  __syncthreads();
  const int64_t col = blockIdx.x * int64_t{256} + threadIdx.x;
  if (col < cols) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < 8; ++w) total += shared[w][threadIdx.x];
    partials[blockIdx.y * cols + col] = total;
  }
}

template <typename T>
__global__ void ColumnSumFinishKernel(const float* __restrict__ partials,
                                      int64_t splits, int64_t cols,
                                      T* __restrict__ out) {
  const int64_t col = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (col >= cols) return;
  float total = 0.f;
  for (int64_t s = 0; s < splits; ++s) total += partials[s * cols + col];
  out[col] = static_cast<T>(total);
}

// Backward of AddLayerNormKernel for dx, one warp per row, reading the row
// twice (the second time from cache): with x̂ = (s − mean)·rstd and
// g = dy·w, dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) + dsum (dsum: the
// gradient of the sum output, may be null).
template <typename T>
__global__ void LayerNormBackwardInputKernel(const T* __restrict__ s,
                                             const T* __restrict__ dy,
                                             const T* __restrict__ dsum,
                                             const T* __restrict__ weight,
                                             const float2* __restrict__ stats,
                                             T* __restrict__ dx, int64_t rows,
                                             int64_t dim) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t vecs = dim / 8;
  const uint4* sr = reinterpret_cast<const uint4*>(s + row * dim);
  const uint4* dr = reinterpret_cast<const uint4*>(dy + row * dim);
  const uint4* wr = reinterpret_cast<const uint4*>(weight);
  const float2 st = stats[row];
  float sum_g = 0.f, sum_gx = 0.f;
  for (int64_t j = lane; j < vecs; j += 32) {
    float v[8], d[8], w[8];
    Octet<T>{sr[j]}.ToFloat(v);
    Octet<T>{dr[j]}.ToFloat(d);
    Octet<T>{wr[j]}.ToFloat(w);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float g = d[k] * w[k];
      sum_g += g;
      sum_gx += g * (v[k] - st.x) * st.y;
    }
  }
  for (int off = 16; off > 0; off /= 2) {
    sum_g += __shfl_xor_sync(0xffffffff, sum_g, off);
    sum_gx += __shfl_xor_sync(0xffffffff, sum_gx, off);
  }
  const float a = sum_g / static_cast<float>(dim);
  const float c = sum_gx / static_cast<float>(dim);
  const uint4* pr = dsum != nullptr
                        ? reinterpret_cast<const uint4*>(dsum + row * dim)
                        : nullptr;
  uint4* out = reinterpret_cast<uint4*>(dx + row * dim);
  for (int64_t j = lane; j < vecs; j += 32) {
    float v[8], d[8], w[8], p[8] = {0, 0, 0, 0, 0, 0, 0, 0}, r[8];
    Octet<T>{sr[j]}.ToFloat(v);
    Octet<T>{dr[j]}.ToFloat(d);
    Octet<T>{wr[j]}.ToFloat(w);
    if (pr != nullptr) Octet<T>{pr[j]}.ToFloat(p);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float xhat = (v[k] - st.x) * st.y;
      r[k] = st.y * (d[k] * w[k] - a - xhat * c) + p[k];
    }
    Octet<T> o;
    o.FromFloat(r);
    out[j] = o.raw;
  }
}

// dweight = Σ_rows dy·x̂ and dbias = Σ_rows dy, first per (row split,
// column tile) as ColumnSumPartialsKernel. partials: float [splits, 2, cols].
template <typename T>
__global__ void LayerNormParamsPartialsKernel(const T* __restrict__ s,
                                              const T* __restrict__ dy,
                                              const float2* __restrict__ stats,
                                              int64_t rows, int64_t cols,
                                              int64_t rows_per_split,
                                              float* __restrict__ partials) {
  __shared__ float shared[8][2][256];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t octets = cols / 8;
  const int64_t octet = blockIdx.x * int64_t{32} + lane;
  const int64_t row_begin = blockIdx.y * rows_per_split;
  const int64_t row_end = min(rows, row_begin + rows_per_split);
  float dw[8] = {0, 0, 0, 0, 0, 0, 0, 0}, db[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (octet < octets) {
    const auto* sv = reinterpret_cast<const uint4*>(s);
    const auto* dv = reinterpret_cast<const uint4*>(dy);
    for (int64_t r = row_begin + warp; r < row_end; r += 8) {
      const float2 st = stats[r];
      float v[8], d[8];
      Octet<T>{sv[r * octets + octet]}.ToFloat(v);
      Octet<T>{dv[r * octets + octet]}.ToFloat(d);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        dw[k] += d[k] * (v[k] - st.x) * st.y;
        db[k] += d[k];
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    shared[warp][0][lane * 8 + k] = dw[k];
    shared[warp][1][lane * 8 + k] = db[k];
  }
  __syncthreads();
  const int64_t col = blockIdx.x * int64_t{256} + threadIdx.x;
  if (col < cols) {
    float tw = 0.f, tb = 0.f;
#pragma unroll
    for (int w = 0; w < 8; ++w) {
      tw += shared[w][0][threadIdx.x];
      tb += shared[w][1][threadIdx.x];
    }
    partials[(blockIdx.y * 2) * cols + col] = tw;
    partials[(blockIdx.y * 2 + 1) * cols + col] = tb;
  }
}

template <typename T>
__global__ void LayerNormParamsFinishKernel(const float* __restrict__ partials,
                                            int64_t splits, int64_t cols,
                                            T* __restrict__ dweight,
                                            T* __restrict__ dbias) {
  const int64_t col = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (col >= cols) return;
  float tw = 0.f, tb = 0.f;
  for (int64_t s = 0; s < splits; ++s) {
    tw += partials[(s * 2) * cols + col];
    tb += partials[(s * 2 + 1) * cols + col];
  }
  dweight[col] = static_cast<T>(tw);
  dbias[col] = static_cast<T>(tb);
}

// GroupNormApplyKernel with eight channels per thread (16-byte loads and
// stores; channels a multiple of 8, aligned data, any group size).
template <typename T>
__global__ void GroupNormApplyVecKernel(
    const T* __restrict__ x, const T* __restrict__ add,
    const T* __restrict__ weight, const T* __restrict__ bias,
    const float2* __restrict__ stats, T* __restrict__ y, int64_t hw,
    int64_t channels, int64_t groups, bool silu, int64_t total_octets) {
  const int64_t octets = channels / 8;
  const int64_t group_size = channels / groups;
  const auto* xv = reinterpret_cast<const uint4*>(x);
  const auto* av = reinterpret_cast<const uint4*>(add);
  const auto* wv = reinterpret_cast<const uint4*>(weight);
  const auto* bv = reinterpret_cast<const uint4*>(bias);
  auto* yv = reinterpret_cast<uint4*>(y);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
       i < total_octets; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t o = i % octets;
    const int64_t b = i / (octets * hw);
    float v[8], w[8], c[8], a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, out[8];
    Octet<T>{xv[i]}.ToFloat(v);
    if (av != nullptr) Octet<T>{av[b * octets + o]}.ToFloat(a);
    Octet<T>{wv[o]}.ToFloat(w);
    Octet<T>{bv[o]}.ToFloat(c);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float2 st = stats[b * groups + (8 * o + k) / group_size];
      out[k] = (v[k] + a[k] - st.x) * st.y * w[k] + c[k];
      if (silu) out[k] = Silu(out[k]);
    }
    Octet<T> r;
    r.FromFloat(out);
    yv[i] = r.raw;
  }
}

// GroupNormBackwardInputKernel with eight channels per thread.
template <typename T>
__global__ void GroupNormBackwardInputVecKernel(
    const T* __restrict__ x, const T* __restrict__ add,
    const T* __restrict__ weight, const T* __restrict__ bias,
    const float2* __restrict__ stats, const float2* __restrict__ coefficients,
    const T* __restrict__ dy, T* __restrict__ dx, int64_t hw, int64_t channels,
    int64_t groups, bool silu, int64_t total_octets) {
  const int64_t octets = channels / 8;
  const int64_t group_size = channels / groups;
  const auto* xv = reinterpret_cast<const uint4*>(x);
  const auto* av = reinterpret_cast<const uint4*>(add);
  const auto* wv = reinterpret_cast<const uint4*>(weight);
  const auto* bv = reinterpret_cast<const uint4*>(bias);
  const auto* dv = reinterpret_cast<const uint4*>(dy);
  auto* out = reinterpret_cast<uint4*>(dx);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
       i < total_octets; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t o = i % octets;
    const int64_t b = i / (octets * hw);
    float v[8], w[8], c[8], g[8], a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, r[8];
    Octet<T>{xv[i]}.ToFloat(v);
    if (av != nullptr) Octet<T>{av[b * octets + o]}.ToFloat(a);
    Octet<T>{wv[o]}.ToFloat(w);
    Octet<T>{bv[o]}.ToFloat(c);
    Octet<T>{dv[i]}.ToFloat(g);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int64_t bg = b * groups + (8 * o + k) / group_size;
      const float2 st = stats[bg], coef = coefficients[bg];
      const float xhat = (v[k] + a[k] - st.x) * st.y;
      const float dz = GroupNormDz(g[k], xhat, w[k], c[k], silu);
      r[k] = st.y * (dz * w[k] - coef.x - xhat * coef.y);
    }
    Octet<T> o8;
    o8.FromFloat(r);
    out[i] = o8.raw;
  }
}

// GroupNormBackwardPartialsKernel for channels a multiple of 8 with more
// parallelism: a block takes a tile of 256 channels (eight per lane) of one
// (batch, split), its 8 warps every 8th row, and the warps' sums meet in
// shared memory. Same partials layout.
template <typename T>
__global__ void GroupNormBackwardPartialsVecKernel(
    const T* __restrict__ x, const T* __restrict__ add,
    const T* __restrict__ weight, const T* __restrict__ bias,
    const float2* __restrict__ stats, const T* __restrict__ dy, int64_t hw,
    int64_t channels, int64_t groups, bool silu, int64_t rows_per_split,
    float* __restrict__ partials) {
  __shared__ float shared[8][3][256];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t s = blockIdx.x, b = blockIdx.y, splits = gridDim.x;
  const int64_t octets = channels / 8;
  const int64_t o = blockIdx.z * int64_t{32} + lane;
  const int64_t group_size = channels / groups;
  const int64_t row_begin = s * rows_per_split;
  const int64_t row_end = min(hw, row_begin + rows_per_split);
  float sv[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sdz[8] = {0, 0, 0, 0, 0, 0, 0, 0},
        sdzx[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (o < octets) {
    const auto* xv = reinterpret_cast<const uint4*>(x + b * hw * channels);
    const auto* dv = reinterpret_cast<const uint4*>(dy + b * hw * channels);
    float w[8], c[8], a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float2 st[8];
    Octet<T>{reinterpret_cast<const uint4*>(weight)[o]}.ToFloat(w);
    Octet<T>{reinterpret_cast<const uint4*>(bias)[o]}.ToFloat(c);
    if (add != nullptr) {
      Octet<T>{reinterpret_cast<const uint4*>(add)[b * octets + o]}.ToFloat(a);
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      st[k] = stats[b * groups + (8 * o + k) / group_size];
    }
    for (int64_t r = row_begin + warp; r < row_end; r += 8) {
      float v[8], g[8];
      Octet<T>{xv[r * octets + o]}.ToFloat(v);
      Octet<T>{dv[r * octets + o]}.ToFloat(g);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float val = v[k] + a[k];
        const float xhat = (val - st[k].x) * st[k].y;
        const float dz = GroupNormDz(g[k], xhat, w[k], c[k], silu);
        sv[k] += val;
        sdz[k] += dz;
        sdzx[k] += dz * xhat;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    shared[warp][0][lane * 8 + k] = sv[k];
    shared[warp][1][lane * 8 + k] = sdz[k];
    shared[warp][2][lane * 8 + k] = sdzx[k];
  }
  __syncthreads();
  const int64_t ch = blockIdx.z * int64_t{256} + threadIdx.x;
  if (ch < channels) {
    float t[3] = {0.f, 0.f, 0.f};
#pragma unroll
    for (int w = 0; w < 8; ++w) {
      t[0] += shared[w][0][threadIdx.x];
      t[1] += shared[w][1][threadIdx.x];
      t[2] += shared[w][2][threadIdx.x];
    }
    float* out = partials + ((b * splits + s) * channels + ch) * 3;
    out[0] = t[0], out[1] = t[1], out[2] = t[2];
  }
}

// GroupNormStatsKernel for channels a multiple of 8: a block takes a tile
// of 256 channels (eight per lane) of one (batch, split), its 8 warps every
// 8th row; per channel Σv and Σv² (float) go to partials [B, splits, C, 2].
template <typename T>
__global__ void GroupNormStatsVecKernel(const T* __restrict__ x,
                                        const T* __restrict__ add, int64_t hw,
                                        int64_t channels,
                                        int64_t rows_per_split,
                                        float* __restrict__ partials) {
  __shared__ float shared[8][2][256];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t s = blockIdx.x, b = blockIdx.y, splits = gridDim.x;
  const int64_t octets = channels / 8;
  const int64_t o = blockIdx.z * int64_t{32} + lane;
  const int64_t row_begin = s * rows_per_split;
  const int64_t row_end = min(hw, row_begin + rows_per_split);
  float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sq[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (o < octets) {
    const auto* xv = reinterpret_cast<const uint4*>(x + b * hw * channels);
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (add != nullptr) {
      Octet<T>{reinterpret_cast<const uint4*>(add)[b * octets + o]}.ToFloat(a);
    }
    for (int64_t r = row_begin + warp; r < row_end; r += 8) {
      float v[8];
      Octet<T>{xv[r * octets + o]}.ToFloat(v);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float val = v[k] + a[k];
        sum[k] += val;
        sq[k] += val * val;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    shared[warp][0][lane * 8 + k] = sum[k];
    shared[warp][1][lane * 8 + k] = sq[k];
  }
  __syncthreads();
  const int64_t ch = blockIdx.z * int64_t{256} + threadIdx.x;
  if (ch < channels) {
    float t0 = 0.f, t1 = 0.f;
#pragma unroll
    for (int w = 0; w < 8; ++w) {
      t0 += shared[w][0][threadIdx.x];
      t1 += shared[w][1][threadIdx.x];
    }
    float* out = partials + ((b * splits + s) * channels + ch) * 2;
    out[0] = t0;
    out[1] = t1;
  }
}

// mean and rstd of one (batch, group) per block from GroupNormStatsVecKernel's
// partials, summed in double.
__global__ void GroupNormStatsVecFinalizeKernel(
    const float* __restrict__ partials, int64_t splits, int64_t channels,
    int64_t groups, double count, float eps, float2* __restrict__ stats) {
  __shared__ double shared[2][256];
  const int64_t bg = blockIdx.x, b = bg / groups, g = bg % groups;
  const int64_t group_size = channels / groups;
  double sum = 0, sq = 0;
  for (int64_t i = threadIdx.x; i < group_size * splits; i += blockDim.x) {
    const int64_t c = g * group_size + i % group_size, s = i / group_size;
    const float* p = partials + ((b * splits + s) * channels + c) * 2;
    sum += p[0];
    sq += p[1];
  }
  shared[0][threadIdx.x] = sum;
  shared[1][threadIdx.x] = sq;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      shared[0][threadIdx.x] += shared[0][threadIdx.x + half];
      shared[1][threadIdx.x] += shared[1][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double mean = shared[0][0] / count;
    const double var = max(shared[1][0] / count - mean * mean, 0.0);
    stats[bg] = make_float2(static_cast<float>(mean),
                            static_cast<float>(rsqrt(var + eps)));
  }
}

// One warp per row; each lane holds up to kVecs 8-element vectors in
// registers, so the row is read once and the variance is exact two-pass.
template <typename T, int kVecs>
__global__ void AddLayerNormKernel(const T* __restrict__ x,
                                   const T* __restrict__ residual,
                                   const T* __restrict__ weight,
                                   const T* __restrict__ bias,
                                   const T* __restrict__ sum_addend,
                                   T* __restrict__ sum_out, T* __restrict__ y,
                                   float2* __restrict__ stats, int64_t rows,
                                   int64_t dim, float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t vecs = dim / 8;
  const uint4* xr = reinterpret_cast<const uint4*>(x + row * dim);
  const uint4* rr =
      residual ? reinterpret_cast<const uint4*>(residual + row * dim) : nullptr;
  float v[kVecs][8];
  float total = 0.f;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int64_t j = lane + 32 * k;
    if (j < vecs) {
      Octet<T> o{xr[j]};
      o.ToFloat(v[k]);
      if (rr != nullptr) {
        float r[8];
        Octet<T>{rr[j]}.ToFloat(r);
        for (int i = 0; i < 8; ++i) v[k][i] += r[i];
      }
      if (sum_addend != nullptr) {
        float a[8], shifted[8];
        Octet<T>{reinterpret_cast<const uint4*>(sum_addend)[j]}.ToFloat(a);
        for (int i = 0; i < 8; ++i) shifted[i] = v[k][i] + a[i];
        Octet<T> s;
        s.FromFloat(shifted);
        reinterpret_cast<uint4*>(sum_out + row * dim)[j] = s.raw;
      } else if (rr != nullptr) {
        Octet<T> s;
        s.FromFloat(v[k]);
        reinterpret_cast<uint4*>(sum_out + row * dim)[j] = s.raw;
      }
      for (int i = 0; i < 8; ++i) total += v[k][i];
    }
  }
  for (int off = 16; off > 0; off /= 2)
    total += __shfl_xor_sync(0xffffffff, total, off);
  const float mean = total / static_cast<float>(dim);
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    if (lane + 32 * k < vecs) {
      for (int i = 0; i < 8; ++i) {
        const float d = v[k][i] - mean;
        sq += d * d;
      }
    }
  }
  for (int off = 16; off > 0; off /= 2)
    sq += __shfl_xor_sync(0xffffffff, sq, off);
  const float rstd = rsqrtf(sq / static_cast<float>(dim) + eps);
  if (stats != nullptr && lane == 0) stats[row] = make_float2(mean, rstd);
  const uint4* wr = reinterpret_cast<const uint4*>(weight);
  const uint4* br = reinterpret_cast<const uint4*>(bias);
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int64_t j = lane + 32 * k;
    if (j < vecs) {
      float w[8], b[8], out[8];
      Octet<T>{wr[j]}.ToFloat(w);
      Octet<T>{br[j]}.ToFloat(b);
      for (int i = 0; i < 8; ++i)
        out[i] = (v[k][i] - mean) * rstd * w[i] + b[i];
      Octet<T> o;
      o.FromFloat(out);
      reinterpret_cast<uint4*>(y + row * dim)[j] = o.raw;
    }
  }
}

template <typename T, int kVecs>
cudaError_t AddLayerNormTyped(const void* x, const void* residual,
                              const void* weight, const void* bias,
                              const void* sum_addend, void* sum, void* y,
                              void* stats, int64_t rows, int64_t dim, float eps,
                              cudaStream_t stream) {
  constexpr int kRowsPerBlock = 8;  // 8 warps
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  AddLayerNormKernel<T, kVecs>
      <<<static_cast<unsigned>(blocks), 32 * kRowsPerBlock, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(residual),
          static_cast<const T*>(weight), static_cast<const T*>(bias),
          static_cast<const T*>(sum_addend), static_cast<T*>(sum),
          static_cast<T*>(y), static_cast<float2*>(stats), rows, dim, eps);
  return cudaGetLastError();
}

// Whether 16-bit data of rows of n elements can move as 16-byte words.
bool Vectorizable(int64_t n, std::initializer_list<const void*> pointers) {
  if (n % 8 != 0) return false;
  for (const void* p : pointers) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

int GridFor(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(blocks, 132 * 16));
}

template <typename T>
cudaError_t GroupNormTyped(const void* x, const void* add, const void* weight,
                           const void* bias, void* y, int64_t batch, int64_t hw,
                           int64_t channels, int64_t groups, float eps,
                           bool silu, void* workspace, void* stats_out,
                           cudaStream_t stream) {
  // Enough blocks to fill the GPU twice over, rows split evenly.
  const int64_t splits =
      std::max<int64_t>(1, std::min<int64_t>(hw, (264 + batch - 1) / batch));
  const int64_t rows_per_split = (hw + splits - 1) / splits;
  double* partials = static_cast<double*>(workspace);
  float2* stats =
      stats_out != nullptr
          ? static_cast<float2*>(stats_out)
          : reinterpret_cast<float2*>(partials + batch * 264 * groups * 2);
  const int64_t bg = batch * groups;
  const double count = static_cast<double>(hw) * (channels / groups);
  if (!std::is_same_v<T, float> && 264 * groups * 2 >= channels &&
      Vectorizable(channels, {x, add})) {
    // Float partials per (batch, split, channel), as many as fit where the
    // double ones would go.
    const int64_t tiles = (channels + 255) / 256;
    const int64_t vec_splits = std::max<int64_t>(
        1, std::min({hw, 264 * groups * 2 / channels,
                     (528 + batch * tiles - 1) / (batch * tiles)}));
    const int64_t vec_rows = (hw + vec_splits - 1) / vec_splits;
    float* vec_partials = static_cast<float*>(workspace);
    GroupNormStatsVecKernel<T>
        <<<dim3(static_cast<unsigned>(vec_splits), static_cast<unsigned>(batch),
                static_cast<unsigned>(tiles)),
           256, 0, stream>>>(static_cast<const T*>(x),
                             static_cast<const T*>(add), hw, channels, vec_rows,
                             vec_partials);
    GroupNormStatsVecFinalizeKernel<<<static_cast<unsigned>(bg), 256, 0,
                                      stream>>>(
        vec_partials, vec_splits, channels, groups, count, eps, stats);
  } else {
    GroupNormStatsKernel<T>
        <<<dim3(static_cast<unsigned>(splits), static_cast<unsigned>(batch)),
           kThreads, 2 * groups * sizeof(double), stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(add), hw, channels,
            groups, rows_per_split, partials);
    GroupNormFinalizeKernel<<<static_cast<unsigned>((bg + 127) / 128), 128, 0,
                              stream>>>(partials, batch, splits, groups, count,
                                        eps, stats);
  }
  if (!std::is_same_v<T, float> && Vectorizable(channels, {x, add, y})) {
    const int64_t total_octets = batch * hw * channels / 8;
    GroupNormApplyVecKernel<T><<<GridFor(total_octets), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(add),
        static_cast<const T*>(weight), static_cast<const T*>(bias), stats,
        static_cast<T*>(y), hw, channels, groups, silu, total_octets);
    return cudaGetLastError();
  }
  const int64_t total_pairs = batch * hw * channels / 2;
  GroupNormApplyKernel<T><<<GridFor(total_pairs), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(add),
      static_cast<const T*>(weight), static_cast<const T*>(bias), stats,
      static_cast<T*>(y), hw, channels, groups, silu, total_pairs);
  return cudaGetLastError();
}

int64_t GroupNormBackwardSplits(int64_t batch, int64_t hw) {
  return std::max<int64_t>(1, std::min<int64_t>(hw, (264 + batch - 1) / batch));
}

template <typename T>
cudaError_t GroupNormBackwardTyped(const void* x, const void* add,
                                   const void* weight, const void* bias,
                                   const void* stats, const void* dy, void* dx,
                                   void* dadd, void* dweight, void* dbias,
                                   int64_t batch, int64_t hw, int64_t channels,
                                   int64_t groups, bool silu, void* workspace,
                                   cudaStream_t stream) {
  const int64_t splits = GroupNormBackwardSplits(batch, hw);
  const int64_t rows_per_split = (hw + splits - 1) / splits;
  float* partials = static_cast<float*>(workspace);
  float* sums = partials + batch * splits * channels * 3;
  float2* coefficients = reinterpret_cast<float2*>(sums + batch * channels * 3);
  const auto* st = static_cast<const float2*>(stats);
  const bool vec = !std::is_same_v<T, float> &&
                   Vectorizable(channels, {x, add, dy, dx, weight, bias});
  if (vec) {
    GroupNormBackwardPartialsVecKernel<T>
        <<<dim3(static_cast<unsigned>(splits), static_cast<unsigned>(batch),
                static_cast<unsigned>((channels + 255) / 256)),
           256, 0, stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(add),
            static_cast<const T*>(weight), static_cast<const T*>(bias), st,
            static_cast<const T*>(dy), hw, channels, groups, silu,
            rows_per_split, partials);
  } else {
    GroupNormBackwardPartialsKernel<T>
        <<<dim3(static_cast<unsigned>(splits), static_cast<unsigned>(batch)),
           kThreads, 0, stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(add),
            static_cast<const T*>(weight), static_cast<const T*>(bias), st,
            static_cast<const T*>(dy), hw, channels, groups, silu,
            rows_per_split, partials);
  }
  const int64_t bc = batch * channels, bg = batch * groups;
  GroupNormBackwardSumSplitsKernel<<<static_cast<unsigned>((bc + 255) / 256),
                                     256, 0, stream>>>(partials, batch, splits,
                                                       channels, sums);
  GroupNormBackwardGroupKernel<T>
      <<<static_cast<unsigned>((bg + 127) / 128), 128, 0, stream>>>(
          sums, static_cast<const T*>(weight), st, batch, hw, channels, groups,
          coefficients, static_cast<T*>(dadd));
  GroupNormBackwardParamsKernel<T>
      <<<static_cast<unsigned>((channels + 127) / 128), 128, 0, stream>>>(
          sums, batch, channels, static_cast<T*>(dweight),
          static_cast<T*>(dbias));
  if (vec) {
    const int64_t total_octets = batch * hw * channels / 8;
    GroupNormBackwardInputVecKernel<T>
        <<<GridFor(total_octets), kThreads, 0, stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(add),
            static_cast<const T*>(weight), static_cast<const T*>(bias), st,
            coefficients, static_cast<const T*>(dy), static_cast<T*>(dx), hw,
            channels, groups, silu, total_octets);
    return cudaGetLastError();
  }
  const int64_t total_pairs = batch * hw * channels / 2;
  GroupNormBackwardInputKernel<T>
      <<<GridFor(total_pairs), kThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(add),
          static_cast<const T*>(weight), static_cast<const T*>(bias), st,
          coefficients, static_cast<const T*>(dy), static_cast<T*>(dx), hw,
          channels, groups, silu, total_pairs);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchAddLayerNorm(ElementType type, const void* x,
                               const void* residual, const void* weight,
                               const void* bias, void* sum, void* y,
                               int64_t rows, int64_t dim, float eps,
                               cudaStream_t stream, void* stats,
                               const void* sum_addend) {
  if (dim % 8 != 0 || dim > kMaxLayerNormDim) return cudaErrorInvalidValue;
  // Registers per lane: ceil(dim / 8 / 32) vectors of 8 16-bit elements.
  const int64_t vecs_per_lane = (dim / 8 + 31) / 32;
  auto launch = [&](auto typed) {
    using T = decltype(typed);
    if (vecs_per_lane <= 2)
      return AddLayerNormTyped<T, 2>(x, residual, weight, bias, sum_addend, sum,
                                     y, stats, rows, dim, eps, stream);
    if (vecs_per_lane <= 4)
      return AddLayerNormTyped<T, 4>(x, residual, weight, bias, sum_addend, sum,
                                     y, stats, rows, dim, eps, stream);
    return AddLayerNormTyped<T, 8>(x, residual, weight, bias, sum_addend, sum,
                                   y, stats, rows, dim, eps, stream);
  };
  switch (type) {
    case ElementType::kBFloat16:
      return launch(__nv_bfloat16{});
    case ElementType::kFloat16:
      return launch(__half{});
    case ElementType::kFloat32:
      return cudaErrorInvalidValue;
  }
  return cudaErrorInvalidValue;
}

size_t GroupNormWorkspaceBytes(int64_t batch, int64_t groups) {
  // Partials for up to 264 splits per batch, then the float2 stats.
  return static_cast<size_t>(batch * 264 * groups * 2) * sizeof(double) +
         static_cast<size_t>(batch * groups) * sizeof(float2);
}

cudaError_t LaunchGroupNormNhwc(ElementType type, const void* x,
                                const void* add, const void* weight,
                                const void* bias, void* y, int64_t batch,
                                int64_t hw, int64_t channels, int64_t groups,
                                float eps, bool silu, void* workspace,
                                void* stats, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32:
      return GroupNormTyped<float>(x, add, weight, bias, y, batch, hw, channels,
                                   groups, eps, silu, workspace, stats, stream);
    case ElementType::kBFloat16:
      return GroupNormTyped<__nv_bfloat16>(x, add, weight, bias, y, batch, hw,
                                           channels, groups, eps, silu,
                                           workspace, stats, stream);
    case ElementType::kFloat16:
      return GroupNormTyped<__half>(x, add, weight, bias, y, batch, hw,
                                    channels, groups, eps, silu, workspace,
                                    stats, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchGeglu(ElementType type, const void* x, void* y, int64_t rows,
                        int64_t n, cudaStream_t stream) {
  const int64_t total = rows * n / 2;
  if (type != ElementType::kFloat32 && Vectorizable(n, {x, y})) {
    const int grid = GridFor(rows * n / 8);
    if (type == ElementType::kBFloat16) {
      GegluVecKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y),
          rows, n);
    } else {
      GegluVecKernel<__half><<<grid, kThreads, 0, stream>>>(
          static_cast<const __half*>(x), static_cast<__half*>(y), rows, n);
    }
    return cudaGetLastError();
  }
  switch (type) {
    case ElementType::kFloat32:
      GegluKernel<float><<<GridFor(total), kThreads, 0, stream>>>(
          static_cast<const float*>(x), static_cast<float*>(y), rows, n);
      break;
    case ElementType::kBFloat16:
      GegluKernel<__nv_bfloat16><<<GridFor(total), kThreads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y),
          rows, n);
      break;
    case ElementType::kFloat16:
      GegluKernel<__half><<<GridFor(total), kThreads, 0, stream>>>(
          static_cast<const __half*>(x), static_cast<__half*>(y), rows, n);
      break;
  }
  return cudaGetLastError();
}

size_t GroupNormBackwardWorkspaceBytes(int64_t batch, int64_t hw,
                                       int64_t channels, int64_t groups) {
  const int64_t splits = GroupNormBackwardSplits(batch, hw);
  return static_cast<size_t>((batch * splits + batch) * channels * 3) *
             sizeof(float) +
         static_cast<size_t>(batch * groups) * sizeof(float2);
}

cudaError_t LaunchAddChannelBias(ElementType type, const void* a, const void* b,
                                 const void* bias, void* out, int64_t rows,
                                 int64_t channels, cudaStream_t stream) {
  if (type == ElementType::kFloat32 ||
      !Vectorizable(channels, {a, b, bias, out}))
    return cudaErrorInvalidValue;
  const int64_t total_octets = rows * channels / 8;
  const int grid = GridFor(total_octets);
  if (type == ElementType::kBFloat16) {
    AddChannelBiasVecKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(a),
        static_cast<const __nv_bfloat16*>(b),
        static_cast<const __nv_bfloat16*>(bias),
        static_cast<__nv_bfloat16*>(out), total_octets, channels / 8);
  } else {
    AddChannelBiasVecKernel<__half><<<grid, kThreads, 0, stream>>>(
        static_cast<const __half*>(a), static_cast<const __half*>(b),
        static_cast<const __half*>(bias), static_cast<__half*>(out),
        total_octets, channels / 8);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGroupNormNhwcBackward(
    ElementType type, const void* x, const void* add, const void* weight,
    const void* bias, const void* stats, const void* dy, void* dx, void* dadd,
    void* dweight, void* dbias, int64_t batch, int64_t hw, int64_t channels,
    int64_t groups, bool silu, void* workspace, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32:
      return GroupNormBackwardTyped<float>(
          x, add, weight, bias, stats, dy, dx, dadd, dweight, dbias, batch, hw,
          channels, groups, silu, workspace, stream);
    case ElementType::kBFloat16:
      return GroupNormBackwardTyped<__nv_bfloat16>(
          x, add, weight, bias, stats, dy, dx, dadd, dweight, dbias, batch, hw,
          channels, groups, silu, workspace, stream);
    case ElementType::kFloat16:
      return GroupNormBackwardTyped<__half>(
          x, add, weight, bias, stats, dy, dx, dadd, dweight, dbias, batch, hw,
          channels, groups, silu, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchGegluBackward(ElementType type, const void* x, const void* dy,
                                void* dx, int64_t rows, int64_t n,
                                cudaStream_t stream) {
  const int64_t total = rows * n / 2;
  if (type != ElementType::kFloat32 && Vectorizable(n, {x, dy, dx})) {
    const int grid = GridFor(rows * n / 8);
    if (type == ElementType::kBFloat16) {
      GegluBackwardVecKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(x),
          static_cast<const __nv_bfloat16*>(dy),
          static_cast<__nv_bfloat16*>(dx), rows, n);
    } else {
      GegluBackwardVecKernel<__half><<<grid, kThreads, 0, stream>>>(
          static_cast<const __half*>(x), static_cast<const __half*>(dy),
          static_cast<__half*>(dx), rows, n);
    }
    return cudaGetLastError();
  }
  switch (type) {
    case ElementType::kFloat32:
      GegluBackwardKernel<float><<<GridFor(total), kThreads, 0, stream>>>(
          static_cast<const float*>(x), static_cast<const float*>(dy),
          static_cast<float*>(dx), rows, n);
      break;
    case ElementType::kBFloat16:
      GegluBackwardKernel<__nv_bfloat16>
          <<<GridFor(total), kThreads, 0, stream>>>(
              static_cast<const __nv_bfloat16*>(x),
              static_cast<const __nv_bfloat16*>(dy),
              static_cast<__nv_bfloat16*>(dx), rows, n);
      break;
    case ElementType::kFloat16:
      GegluBackwardKernel<__half><<<GridFor(total), kThreads, 0, stream>>>(
          static_cast<const __half*>(x), static_cast<const __half*>(dy),
          static_cast<__half*>(dx), rows, n);
      break;
  }
  return cudaGetLastError();
}

int64_t ColumnSumSplits(int64_t rows, int64_t cols) {
  const int64_t tiles = (cols + 255) / 256;
  return std::max<int64_t>(
      1, std::min<int64_t>((rows + 63) / 64, (528 + tiles - 1) / tiles));
}

size_t ColumnSumWorkspaceBytes(int64_t rows, int64_t cols) {
  return static_cast<size_t>(ColumnSumSplits(rows, cols) * cols) *
         sizeof(float);
}

cudaError_t LaunchColumnSum(ElementType type, const void* x, void* out,
                            int64_t rows, int64_t cols, void* workspace,
                            cudaStream_t stream) {
  if (type == ElementType::kFloat32 || !Vectorizable(cols, {x})) {
    return cudaErrorInvalidValue;
  }
  const int64_t splits = ColumnSumSplits(rows, cols);
  const int64_t rows_per_split = (rows + splits - 1) / splits;
  const dim3 grid(static_cast<unsigned>((cols + 255) / 256),
                  static_cast<unsigned>(splits));
  float* partials = static_cast<float*>(workspace);
  const unsigned finish = static_cast<unsigned>((cols + 255) / 256);
  if (type == ElementType::kBFloat16) {
    ColumnSumPartialsKernel<__nv_bfloat16>
        <<<grid, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), rows,
                                   cols, rows_per_split, partials);
    ColumnSumFinishKernel<__nv_bfloat16><<<finish, 256, 0, stream>>>(
        partials, splits, cols, static_cast<__nv_bfloat16*>(out));
  } else {
    ColumnSumPartialsKernel<__half><<<grid, 256, 0, stream>>>(
        static_cast<const __half*>(x), rows, cols, rows_per_split, partials);
    ColumnSumFinishKernel<__half><<<finish, 256, 0, stream>>>(
        partials, splits, cols, static_cast<__half*>(out));
  }
  return cudaGetLastError();
}

size_t LayerNormBackwardWorkspaceBytes(int64_t rows, int64_t dim) {
  return 2 * ColumnSumWorkspaceBytes(rows, dim);
}

cudaError_t LaunchLayerNormBackward(ElementType type, const void* s,
                                    const void* dy, const void* dsum,
                                    const void* weight, const void* stats,
                                    void* dx, void* dweight, void* dbias,
                                    int64_t rows, int64_t dim, void* workspace,
                                    cudaStream_t stream) {
  if (type == ElementType::kFloat32 || !Vectorizable(dim, {s, dy, dx})) {
    return cudaErrorInvalidValue;
  }
  const int64_t splits = ColumnSumSplits(rows, dim);
  const int64_t rows_per_split = (rows + splits - 1) / splits;
  const dim3 grid(static_cast<unsigned>((dim + 255) / 256),
                  static_cast<unsigned>(splits));
  const unsigned row_blocks = static_cast<unsigned>((rows + 7) / 8);
  const unsigned finish = static_cast<unsigned>((dim + 255) / 256);
  float* partials = static_cast<float*>(workspace);
  auto launch = [&](auto typed) {
    using T = decltype(typed);
    LayerNormBackwardInputKernel<T><<<row_blocks, 256, 0, stream>>>(
        static_cast<const T*>(s), static_cast<const T*>(dy),
        static_cast<const T*>(dsum), static_cast<const T*>(weight),
        static_cast<const float2*>(stats), static_cast<T*>(dx), rows, dim);
    LayerNormParamsPartialsKernel<T><<<grid, 256, 0, stream>>>(
        static_cast<const T*>(s), static_cast<const T*>(dy),
        static_cast<const float2*>(stats), rows, dim, rows_per_split, partials);
    LayerNormParamsFinishKernel<T><<<finish, 256, 0, stream>>>(
        partials, splits, dim, static_cast<T*>(dweight),
        static_cast<T*>(dbias));
    return cudaGetLastError();
  };
  if (type == ElementType::kBFloat16) return launch(__nv_bfloat16{});
  return launch(__half{});
}

}  // namespace lpd::engine::cuda

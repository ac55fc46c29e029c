// Fused forms of the U-Net's memory-bound steps. On a CUDA tensor laid out
// as the kernels expect, and when no gradient is needed, they run the
// engine's own CUDA kernels (engine/cuda/); otherwise the same arithmetic in
// plain LibTorch ops, which is also what the CPU tests check.
#ifndef LPD_ENGINE_FUSED_OPS_H_
#define LPD_ENGINE_FUSED_OPS_H_

#include <torch/types.h>

#include <cstdint>
#include <utility>

namespace lpd::engine {

// act(group_norm(x + add[:, :, None, None])) with affine `weight`, `bias`;
// `add` ([B, C]) may be undefined, `silu` selects the activation.
torch::Tensor GroupNormAct(const torch::Tensor& x, const torch::Tensor& add,
                           int64_t groups, const torch::Tensor& weight,
                           const torch::Tensor& bias, double eps, bool silu);

// s = x + residual and layer_norm(s) over the last dimension, in one pass
// on the GPU. Returns {s, normalized}; without `residual`, s is x.
std::pair<torch::Tensor, torch::Tensor> AddLayerNorm(
    const torch::Tensor& x, const torch::Tensor& residual,
    const torch::Tensor& weight, const torch::Tensor& bias, double eps);

// x [..., 2n] → x[..., :n] · gelu(x[..., n:]) (exact GELU).
torch::Tensor Geglu(const torch::Tensor& x);

// Whether the CUDA kernels are compiled into this build.
bool HasFusedCudaKernels();

// For tests and benchmarks: force the plain-op path even where the fused
// kernels apply.
void SetFusedKernelsEnabled(bool enabled);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_FUSED_OPS_H_

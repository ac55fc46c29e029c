// Fused forms of the U-Net's memory-bound steps. On a CUDA tensor laid out
// as the kernels expect they run the engine's own CUDA kernels
// (engine/kernels/cuda/); otherwise the same arithmetic in plain LibTorch ops,
// which is also what the CPU tests check. When a gradient is needed,
// GroupNormAct, Geglu, AddLayerNorm and LinearOp become one autograd node each
// whose backward is a fused kernel too, saving only their inputs and statistics
// (less memory and fewer kernels than the plain ops' graph).
#ifndef LPD_ENGINE_KERNELS_FUSED_OPS_H_
#define LPD_ENGINE_KERNELS_FUSED_OPS_H_

#include <torch/types.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace lpd::engine {

// act(group_norm(x + add[:, :, None, None])) with affine `weight`, `bias`;
// `add` ([B, C]) may be undefined, `silu` selects the activation.
torch::Tensor GroupNormAct(const torch::Tensor& x, const torch::Tensor& add,
                           int64_t groups, const torch::Tensor& weight,
                           const torch::Tensor& bias, double eps, bool silu);

// s = x + residual and layer_norm(s) over the last dimension, in one pass
// on the GPU. Returns {s, normalized}; without `residual`, s is x. With
// `sum_addend` ([dim]) the first output is s + sum_addend (the layer norm
// still normalizes s): the transformer block hands its feed-forward's bias
// to the GEMM that accumulates onto it this way.
std::pair<torch::Tensor, torch::Tensor> AddLayerNorm(
    const torch::Tensor& x, const torch::Tensor& residual,
    const torch::Tensor& weight, const torch::Tensor& bias, double eps,
    const torch::Tensor& sum_addend = {});

// a + b + bias[None, :, None, None] for [B, C, H, W] maps: a residual add
// that also applies a convolution's bias. One kernel pass on channels-last
// 16-bit CUDA tensors without gradients (instead of LibTorch's broadcast
// bias add after the convolution, plus the add); plain ops otherwise.
torch::Tensor AddChannelBias(const torch::Tensor& a, const torch::Tensor& b,
                             const torch::Tensor& bias);

// x [..., 2n] → x[..., :n] · gelu(x[..., n:]) (exact GELU).
torch::Tensor Geglu(const torch::Tensor& x);

// at::linear(x, weight, bias). Recording a gradient with a bias on the GPU,
// one autograd node: the same GEMMs for dx and dweight (each only when
// needed), the bias gradient summed by the engine's column-sum kernel
// instead of LibTorch's generic reduction.
torch::Tensor LinearOp(const torch::Tensor& x, const torch::Tensor& weight,
                       const torch::Tensor& bias);

// x · [w_0; w_1; …]ᵀ: one GEMM with the weights stacked by rows. When they
// lie side by side in one buffer (AttentionImpl packs its projections so),
// the stack is a view: no concatenation forward, and backward computes the
// stacked weight gradient in one GEMM and hands each weight its rows.
// Otherwise the weights are concatenated.
torch::Tensor LinearOfStacked(const torch::Tensor& x,
                              const std::vector<torch::Tensor>& weights);

// Whether the CUDA kernels are compiled into this build.
bool HasFusedCudaKernels();

// For tests and benchmarks: force the plain-op path even where the fused
// kernels apply (forward and backward).
void SetFusedKernelsEnabled(bool enabled);

// For benchmarks: keep the fused kernels for inference but record plain ops
// for autograd (false), or use the fused autograd nodes (true, the default).
void SetFusedTrainingKernelsEnabled(bool enabled);

// For tests: use the fused autograd nodes on every device; off CUDA their
// forward and backward run as plain-op formulas (the same arithmetic as the
// kernels), so the CPU checks the nodes' gradients against autograd's.
void SetFusedAutogradOnEveryDevice(bool enabled);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_KERNELS_FUSED_OPS_H_

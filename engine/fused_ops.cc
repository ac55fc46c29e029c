#include "engine/fused_ops.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <atomic>
#include <stdexcept>

#ifdef LPD_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "engine/cuda/fused_kernels.h"
#endif

namespace lpd::engine {
namespace {

std::atomic<bool> fused_enabled{true};

#ifdef LPD_WITH_CUDA
// Whether the fused CUDA kernels can take `x`: on the GPU, in a supported
// dtype, with no gradient to record.
bool UseKernel(const torch::Tensor& x) {
  if (!fused_enabled.load(std::memory_order_relaxed) || !x.is_cuda()) {
    return false;
  }
  if (torch::GradMode::is_enabled() && x.requires_grad()) return false;
  const auto t = x.scalar_type();
  return t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16;
}

cuda::ElementType ElementTypeOf(const torch::Tensor& x) {
  switch (x.scalar_type()) {
    case torch::kBFloat16:
      return cuda::ElementType::kBFloat16;
    case torch::kFloat16:
      return cuda::ElementType::kFloat16;
    default:
      return cuda::ElementType::kFloat32;
  }
}

void Check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " +
                             cudaGetErrorString(error));
  }
}
#endif

}  // namespace

bool HasFusedCudaKernels() {
#ifdef LPD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void SetFusedKernelsEnabled(bool enabled) { fused_enabled.store(enabled); }

torch::Tensor GroupNormAct(const torch::Tensor& x, const torch::Tensor& add,
                           int64_t groups, const torch::Tensor& weight,
                           const torch::Tensor& bias, double eps, bool silu) {
#ifdef LPD_WITH_CUDA
  const int64_t channels = x.size(1);
  if (UseKernel(x) && x.dim() == 4 && channels % groups == 0 &&
      (channels / groups) % 2 == 0 &&
      x.is_contiguous(torch::MemoryFormat::ChannelsLast) &&
      weight.scalar_type() == x.scalar_type() && weight.is_contiguous() &&
      bias.is_contiguous() &&
      (!add.defined() ||
       (add.scalar_type() == x.scalar_type() && add.is_contiguous()))) {
    const int64_t batch = x.size(0), hw = x.size(2) * x.size(3);
    torch::Tensor y = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    torch::Tensor workspace = torch::empty(
        {static_cast<int64_t>(cuda::GroupNormWorkspaceBytes(batch, groups))},
        x.options().dtype(torch::kUInt8));
    Check(cuda::LaunchGroupNormNhwc(
              ElementTypeOf(x), x.data_ptr(),
              add.defined() ? add.data_ptr() : nullptr, weight.data_ptr(),
              bias.data_ptr(), y.data_ptr(), batch, hw, channels, groups,
              static_cast<float>(eps), silu, workspace.data_ptr(),
              c10::cuda::getCurrentCUDAStream().stream()),
          "group norm kernel");
    return y;
  }
#endif
  torch::Tensor h = add.defined() ? x + add.unsqueeze(-1).unsqueeze(-1) : x;
  h = at::group_norm(h, groups, weight, bias, eps);
  return silu ? at::silu(h) : h;
}

std::pair<torch::Tensor, torch::Tensor> AddLayerNorm(
    const torch::Tensor& x, const torch::Tensor& residual,
    const torch::Tensor& weight, const torch::Tensor& bias, double eps) {
  const int64_t dim = x.size(-1);
#ifdef LPD_WITH_CUDA
  if (UseKernel(x) && x.scalar_type() != torch::kFloat32 && dim % 8 == 0 &&
      dim <= cuda::kMaxLayerNormDim && x.is_contiguous() &&
      weight.scalar_type() == x.scalar_type() &&
      (!residual.defined() ||
       (residual.is_contiguous() && residual.sizes() == x.sizes() &&
        residual.scalar_type() == x.scalar_type()))) {
    torch::Tensor sum = residual.defined() ? torch::empty_like(x) : x;
    torch::Tensor y = torch::empty_like(x);
    Check(cuda::LaunchAddLayerNorm(
              ElementTypeOf(x), x.data_ptr(),
              residual.defined() ? residual.data_ptr() : nullptr,
              weight.data_ptr(), bias.data_ptr(), sum.data_ptr(), y.data_ptr(),
              x.numel() / dim, dim, static_cast<float>(eps),
              c10::cuda::getCurrentCUDAStream().stream()),
          "layer norm kernel");
    return {sum, y};
  }
#endif
  torch::Tensor sum = residual.defined() ? x + residual : x;
  return {sum, at::layer_norm(sum, {dim}, weight, bias, eps)};
}

torch::Tensor Geglu(const torch::Tensor& x) {
#ifdef LPD_WITH_CUDA
  const int64_t n = x.size(-1) / 2;
  if (UseKernel(x) && x.is_contiguous() && n % 2 == 0) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = n;
    torch::Tensor y = torch::empty(shape, x.options());
    Check(cuda::LaunchGeglu(ElementTypeOf(x), x.data_ptr(), y.data_ptr(),
                            x.numel() / x.size(-1), n,
                            c10::cuda::getCurrentCUDAStream().stream()),
          "geglu kernel");
    return y;
  }
#endif
  auto parts = x.chunk(2, -1);  // hidden, gate
  return parts[0] * at::gelu(parts[1]);
}

}  // namespace lpd::engine

#include "engine/kernels/fused_ops.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef LPD_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "engine/kernels/cuda/fused_kernels.h"
#endif

namespace lpd::engine {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::atomic<bool> fused_enabled{true};
std::atomic<bool> fused_training_enabled{true};
std::atomic<bool> autograd_on_every_device{false};

bool NeedsGradient(std::initializer_list<const torch::Tensor*> tensors) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const torch::Tensor* t : tensors) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// Whether the fused CUDA kernels can take `x`: on the GPU, in a supported
// dtype.
bool KernelTakes(const torch::Tensor& x) {
#ifdef LPD_WITH_CUDA
  if (!fused_enabled.load(std::memory_order_relaxed) || !x.is_cuda()) {
    return false;
  }
  const auto t = x.scalar_type();
  return t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16;
#else
  (void)x;
  return false;
#endif
}

bool GroupNormKernelTakes(const torch::Tensor& x, const torch::Tensor& add,
                          int64_t groups, const torch::Tensor& weight,
                          const torch::Tensor& bias) {
  if (!KernelTakes(x) || x.dim() != 4) return false;
  const int64_t channels = x.size(1);
  return channels % groups == 0 && (channels / groups) % 2 == 0 &&
         x.is_contiguous(torch::MemoryFormat::ChannelsLast) &&
         weight.scalar_type() == x.scalar_type() && weight.is_contiguous() &&
         bias.scalar_type() == x.scalar_type() && bias.is_contiguous() &&
         (!add.defined() ||
          (add.scalar_type() == x.scalar_type() && add.is_contiguous()));
}

bool GegluKernelTakes(const torch::Tensor& x) {
  return KernelTakes(x) && x.is_contiguous() && (x.size(-1) / 2) % 2 == 0;
}

// Whether a gradient-recording call runs as the fused autograd node.
bool UseFusedNode(bool kernel_takes, const torch::Tensor& x) {
  if (!fused_training_enabled.load(std::memory_order_relaxed)) return false;
  return kernel_takes ||
         (autograd_on_every_device.load(std::memory_order_relaxed) &&
          x.dim() >= 2);
}

#ifdef LPD_WITH_CUDA
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

cudaStream_t CurrentStream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}
#endif

// Whether every defined tensor's data starts on a 16-byte boundary (what
// the kernels that move 8 16-bit elements at a time need).
bool Aligned16(std::initializer_list<const torch::Tensor*> tensors) {
  for (const torch::Tensor* t : tensors) {
    if (t->defined() && reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) {
      return false;
    }
  }
  return true;
}

// LibTorch 1.13's custom autograd functions take no undefined tensors: an
// empty one stands for "none" on the way in (AbsentAsEmpty) and is turned
// back on the way out (EmptyAsAbsent).
torch::Tensor AbsentAsEmpty(const torch::Tensor& t, const torch::Tensor& like) {
  return t.defined() ? t : torch::empty({0}, like.options());
}
torch::Tensor EmptyAsAbsent(const torch::Tensor& t) {
  return t.numel() > 0 ? t : torch::Tensor();
}

// The arithmetic dtype of the plain-op formulas: double for double inputs,
// float otherwise (as the kernels).
torch::Dtype ComputeDtype(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// act(group_norm(x + add)) in one kernel (stats: float [B, G, 2], written
// when defined).
torch::Tensor GroupNormActKernel(const torch::Tensor& x,
                                 const torch::Tensor& add, int64_t groups,
                                 const torch::Tensor& weight,
                                 const torch::Tensor& bias, double eps,
                                 bool silu, const torch::Tensor& stats) {
#ifdef LPD_WITH_CUDA
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t hw = x.size(2) * x.size(3);
  torch::Tensor y = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
  torch::Tensor workspace = torch::empty(
      {static_cast<int64_t>(cuda::GroupNormWorkspaceBytes(batch, groups))},
      x.options().dtype(torch::kUInt8));
  Check(cuda::LaunchGroupNormNhwc(
            ElementTypeOf(x), x.data_ptr(),
            add.defined() ? add.data_ptr() : nullptr, weight.data_ptr(),
            bias.data_ptr(), y.data_ptr(), batch, hw, channels, groups,
            static_cast<float>(eps), silu, workspace.data_ptr(),
            stats.defined() ? stats.data_ptr() : nullptr, CurrentStream()),
        "group norm kernel");
  return y;
#else
  (void)x, (void)add, (void)groups, (void)weight, (void)bias, (void)eps,
      (void)silu, (void)stats;
  throw std::logic_error("fused kernels are not in this build");
#endif
}

torch::Tensor GroupNormActPlain(const torch::Tensor& x,
                                const torch::Tensor& add, int64_t groups,
                                const torch::Tensor& weight,
                                const torch::Tensor& bias, double eps,
                                bool silu) {
  torch::Tensor h = add.defined() ? x + add.unsqueeze(-1).unsqueeze(-1) : x;
  h = at::group_norm(h, groups, weight, bias, eps);
  return silu ? at::silu(h) : h;
}

// [B, G] per-group values → [B, C, 1, 1] per channel.
torch::Tensor PerChannel(const torch::Tensor& per_group, int64_t channels,
                         int64_t dims) {
  const int64_t batch = per_group.size(0), groups = per_group.size(1);
  std::vector<int64_t> shape = {batch, channels};
  shape.resize(dims, 1);
  return per_group.unsqueeze(-1)
      .expand({batch, groups, channels / groups})
      .reshape(shape);
}

// The autograd node of GroupNormAct: saves x, add, weight, bias and the
// per-group statistics; its backward is the fused kernel on CUDA, the same
// formula in plain ops elsewhere.
class GroupNormActFunction
    : public torch::autograd::Function<GroupNormActFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& given_add,
                               const torch::Tensor& weight,
                               const torch::Tensor& bias, int64_t groups,
                               double eps, bool silu, bool kernel) {
    const int64_t batch = x.size(0), channels = x.size(1);
    const torch::Tensor add = EmptyAsAbsent(given_add);
    torch::Tensor y, stats;
    if (kernel) {
      stats =
          torch::empty({batch, groups, 2}, x.options().dtype(torch::kFloat32));
      y = GroupNormActKernel(x, add, groups, weight, bias, eps, silu, stats);
    } else {
      torch::Tensor h = add.defined() ? x + add.unsqueeze(-1).unsqueeze(-1) : x;
      auto [out, mean, rstd] =
          at::native_group_norm(h.contiguous(), weight, bias, batch, channels,
                                h.numel() / (batch * channels), groups, eps);
      stats = at::stack(
                  {mean.view({batch, groups}), rstd.view({batch, groups})}, -1)
                  .to(ComputeDtype(x));
      y = silu ? at::silu(out) : out;
      y = y.contiguous(x.suggest_memory_format());
    }
    ctx->save_for_backward({x, given_add, weight, bias, stats});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["kernel"] = kernel;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[2], &bias = saved[3],
                        &stats = saved[4];
    const torch::Tensor add = EmptyAsAbsent(saved[1]);
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool silu = ctx->saved_data["silu"].toBool();
    torch::Tensor dx, dadd, dweight, dbias;
    if (ctx->saved_data["kernel"].toBool()) {
      std::tie(dx, dadd, dweight, dbias) =
          BackwardKernel(x, add, weight, bias, stats, grads[0], groups, silu);
    } else {
      std::tie(dx, dadd, dweight, dbias) =
          BackwardPlain(x, add, weight, bias, stats, grads[0], groups, silu);
    }
    return {dx, dadd, dweight, dbias, {}, {}, {}, {}};
  }

 private:
  using Grads =
      std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>;

  static Grads BackwardKernel(const torch::Tensor& x, const torch::Tensor& add,
                              const torch::Tensor& weight,
                              const torch::Tensor& bias,
                              const torch::Tensor& stats,
                              const torch::Tensor& grad, int64_t groups,
                              bool silu) {
#ifdef LPD_WITH_CUDA
    const int64_t batch = x.size(0), channels = x.size(1);
    const int64_t hw = x.size(2) * x.size(3);
    const torch::Tensor dy = grad.contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor dx = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    torch::Tensor dadd = add.defined() ? torch::empty_like(add) : add;
    torch::Tensor dweight = torch::empty_like(weight);
    torch::Tensor dbias = torch::empty_like(bias);
    torch::Tensor workspace = torch::empty(
        {static_cast<int64_t>(cuda::GroupNormBackwardWorkspaceBytes(
            batch, hw, channels, groups))},
        x.options().dtype(torch::kUInt8));
    Check(cuda::LaunchGroupNormNhwcBackward(
              ElementTypeOf(x), x.data_ptr(),
              add.defined() ? add.data_ptr() : nullptr, weight.data_ptr(),
              bias.data_ptr(), stats.data_ptr(), dy.data_ptr(), dx.data_ptr(),
              dadd.defined() ? dadd.data_ptr() : nullptr, dweight.data_ptr(),
              dbias.data_ptr(), batch, hw, channels, groups, silu,
              workspace.data_ptr(), CurrentStream()),
          "group norm backward kernel");
    return {dx, dadd, dweight, dbias};
#else
    (void)x, (void)add, (void)weight, (void)bias, (void)stats, (void)grad,
        (void)groups, (void)silu;
    throw std::logic_error("fused kernels are not in this build");
#endif
  }

  // With v = x + add, x̂ = (v − mean)·rstd, z = x̂·w + b and dz = dL/dz:
  // dx = rstd·(dz·w − mean_g(dz·w) − x̂·mean_g(dz·w·x̂)), dadd = Σ_hw dx,
  // dw = Σ dz·x̂, db = Σ dz.
  static Grads BackwardPlain(const torch::Tensor& x, const torch::Tensor& add,
                             const torch::Tensor& weight,
                             const torch::Tensor& bias,
                             const torch::Tensor& stats,
                             const torch::Tensor& grad, int64_t groups,
                             bool silu) {
    const torch::Dtype ct = ComputeDtype(x);
    const int64_t batch = x.size(0), channels = x.size(1), dims = x.dim();
    std::vector<int64_t> channel_shape(dims, 1), spatial;
    channel_shape[1] = channels;
    for (int64_t d = 2; d < dims; ++d) spatial.push_back(d);
    const int64_t count = x.numel() / (batch * groups);
    torch::Tensor v = x.to(ct);
    if (add.defined()) v = v + add.to(ct).view(PerBatchChannel(add, dims));
    const torch::Tensor mean = PerChannel(stats.select(-1, 0), channels, dims);
    const torch::Tensor rstd = PerChannel(stats.select(-1, 1), channels, dims);
    const torch::Tensor w = weight.to(ct).view(channel_shape);
    const torch::Tensor xhat = (v - mean) * rstd;
    torch::Tensor dz = grad.to(ct);
    if (silu) {
      const torch::Tensor z = xhat * w + bias.to(ct).view(channel_shape);
      const torch::Tensor s = torch::sigmoid(z);
      dz = dz * s * (1 + z * (1 - s));
    }
    const torch::Tensor sum_dz = dz.sum(spatial);                // [B, C]
    const torch::Tensor sum_dz_xhat = (dz * xhat).sum(spatial);  // [B, C]
    auto group_mean = [&](const torch::Tensor& per_channel) {
      return PerChannel((per_channel * weight.to(ct))
                                .view({batch, groups, channels / groups})
                                .sum(-1) /
                            static_cast<double>(count),
                        channels, dims);
    };
    const torch::Tensor dx =
        rstd * (dz * w - group_mean(sum_dz) - xhat * group_mean(sum_dz_xhat));
    torch::Tensor dadd;
    if (add.defined()) dadd = dx.sum(spatial).to(add.scalar_type());
    return {dx.to(x.scalar_type()).contiguous(x.suggest_memory_format()), dadd,
            sum_dz_xhat.sum(0).to(weight.scalar_type()),
            sum_dz.sum(0).to(bias.scalar_type())};
  }

  static std::vector<int64_t> PerBatchChannel(const torch::Tensor& add,
                                              int64_t dims) {
    std::vector<int64_t> shape = {add.size(0), add.size(1)};
    shape.resize(dims, 1);
    return shape;
  }
};

// The autograd node of Geglu: saves x; backward da = dy·gelu(g),
// dg = dy·a·gelu'(g) (a fused kernel on CUDA).
class GegluFunction : public torch::autograd::Function<GegluFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               bool kernel) {
    ctx->save_for_backward({x});
    ctx->saved_data["kernel"] = kernel;
    if (kernel) return Kernel(x);
    auto parts = x.chunk(2, -1);
    return parts[0] * at::gelu(parts[1]);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const torch::Tensor x = ctx->get_saved_variables()[0];
#ifdef LPD_WITH_CUDA
    if (ctx->saved_data["kernel"].toBool()) {
      const torch::Tensor dy = grads[0].contiguous();
      torch::Tensor dx = torch::empty_like(x);
      Check(cuda::LaunchGegluBackward(
                ElementTypeOf(x), x.data_ptr(), dy.data_ptr(), dx.data_ptr(),
                x.numel() / x.size(-1), x.size(-1) / 2, CurrentStream()),
            "geglu backward kernel");
      return {dx, {}};
    }
#endif
    const torch::Dtype ct = ComputeDtype(x);
    auto parts = x.to(ct).chunk(2, -1);
    const torch::Tensor &a = parts[0], &g = parts[1];
    const torch::Tensor dy = grads[0].to(ct);
    const torch::Tensor cdf = 0.5 * (1 + torch::erf(g * M_SQRT1_2));
    const torch::Tensor pdf =
        torch::exp(-0.5 * g * g) * (M_2_SQRTPI * M_SQRT1_2 * 0.5);
    return {torch::cat({dy * g * cdf, dy * a * (cdf + g * pdf)}, -1)
                .to(x.scalar_type()),
            {}};
  }

  static torch::Tensor Kernel(const torch::Tensor& x) {
#ifdef LPD_WITH_CUDA
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() /= 2;
    torch::Tensor y = torch::empty(shape, x.options());
    Check(cuda::LaunchGeglu(ElementTypeOf(x), x.data_ptr(), y.data_ptr(),
                            x.numel() / x.size(-1), shape.back(),
                            CurrentStream()),
          "geglu kernel");
    return y;
#else
    (void)x;
    throw std::logic_error("fused kernels are not in this build");
#endif
  }
};

// The autograd node of LinearOp: saves x and weight.
class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight,
                               const torch::Tensor& bias, bool kernel) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["kernel"] = kernel;
    return at::linear(x, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1];
    const int64_t out = weight.size(0), in = weight.size(1);
    const torch::Tensor dy = grads[0].reshape({-1, out});
    torch::Tensor dx, dweight, dbias;
    if (ctx->needs_input_grad(0)) {
      dx = dy.mm(weight).view(x.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      dweight = dy.t().mm(x.reshape({-1, in}));
    }
    if (ctx->needs_input_grad(2)) {
      const torch::Tensor rows = dy.contiguous();
      dbias = ctx->saved_data["kernel"].toBool() && Aligned16({&rows})
                  ? ColumnSum(rows)
                  : dy.sum(0);
    }
    return {dx, dweight, dbias, {}};
  }

 private:
  static torch::Tensor ColumnSum(const torch::Tensor& rows) {
#ifdef LPD_WITH_CUDA
    torch::Tensor out = torch::empty({rows.size(1)}, rows.options());
    torch::Tensor workspace =
        torch::empty({static_cast<int64_t>(cuda::ColumnSumWorkspaceBytes(
                         rows.size(0), rows.size(1)))},
                     rows.options().dtype(torch::kUInt8));
    Check(cuda::LaunchColumnSum(ElementTypeOf(rows), rows.data_ptr(),
                                out.data_ptr(), rows.size(0), rows.size(1),
                                workspace.data_ptr(), CurrentStream()),
          "column sum kernel");
    return out;
#else
    return rows.sum(0);
#endif
  }
};

bool LayerNormKernelTakes(const torch::Tensor& x, const torch::Tensor& residual,
                          const torch::Tensor& weight,
                          const torch::Tensor& bias) {
#ifdef LPD_WITH_CUDA
  const int64_t dim = x.size(-1);
  return KernelTakes(x) && x.scalar_type() != torch::kFloat32 && dim % 8 == 0 &&
         dim <= cuda::kMaxLayerNormDim && x.is_contiguous() &&
         Aligned16({&x, &residual, &weight, &bias}) &&
         weight.scalar_type() == x.scalar_type() &&
         bias.scalar_type() == x.scalar_type() &&
         (!residual.defined() ||
          (residual.is_contiguous() && residual.sizes() == x.sizes() &&
           residual.scalar_type() == x.scalar_type()));
#else
  (void)x, (void)residual, (void)weight, (void)bias;
  return false;
#endif
}

// The autograd node of AddLayerNorm: outputs {sum, y} with a residual, {y}
// without; saves the sum (or x), the weight and each row's mean and rstd.
// Backward gives x and the residual the same gradient, dsum plus the
// normalization's.
class AddLayerNormFunction
    : public torch::autograd::Function<AddLayerNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& given_residual,
                               const torch::Tensor& weight,
                               const torch::Tensor& bias, double eps,
                               bool kernel) {
    const torch::Tensor residual = EmptyAsAbsent(given_residual);
    const bool has_residual = residual.defined();
    torch::Tensor sum, y, stats;
    if (kernel) {
      std::tie(sum, y, stats) =
          Kernel(x, residual, weight, bias, eps, /*with_stats=*/true);
    } else {
      sum = has_residual ? x + residual : x;
      const int64_t dim = x.size(-1);
      auto [out, mean, rstd] =
          at::native_layer_norm(sum.contiguous(), {dim}, weight, bias, eps);
      y = out;
      stats = at::stack({mean.reshape({-1}), rstd.reshape({-1})}, -1)
                  .to(ComputeDtype(x));
    }
    ctx->save_for_backward({sum, weight, stats});
    ctx->saved_data["residual"] = has_residual;
    ctx->saved_data["kernel"] = kernel;
    if (has_residual) return {sum, y};
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &sum = saved[0], &weight = saved[1], &stats = saved[2];
    const bool has_residual = ctx->saved_data["residual"].toBool();
    const torch::Tensor dsum = has_residual ? grads[0] : torch::Tensor();
    const torch::Tensor dy = has_residual ? grads[1] : grads[0];
    torch::Tensor dx, dweight, dbias;
    if (ctx->saved_data["kernel"].toBool()) {
      std::tie(dx, dweight, dbias) =
          BackwardKernel(sum, dy, dsum, weight, stats);
    }
    if (!dx.defined()) {  // off CUDA, or data the kernel cannot take
      std::tie(dx, dweight, dbias) =
          BackwardPlain(sum, dy, dsum, weight, stats);
    }
    return {dx, has_residual ? dx : torch::Tensor(), dweight, dbias, {}, {}};
  }

  // {sum, y, stats (float [rows, 2], when asked)} by the forward kernel.
  // With `sum_addend`, the sum output is s + sum_addend.
  static std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> Kernel(
      const torch::Tensor& x, const torch::Tensor& residual,
      const torch::Tensor& weight, const torch::Tensor& bias, double eps,
      bool with_stats, const torch::Tensor& sum_addend = {}) {
#ifdef LPD_WITH_CUDA
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    torch::Tensor sum =
        residual.defined() || sum_addend.defined() ? torch::empty_like(x) : x;
    torch::Tensor y = torch::empty_like(x);
    torch::Tensor stats;
    if (with_stats) {
      stats = torch::empty({rows, 2}, x.options().dtype(torch::kFloat32));
    }
    Check(cuda::LaunchAddLayerNorm(
              ElementTypeOf(x), x.data_ptr(),
              residual.defined() ? residual.data_ptr() : nullptr,
              weight.data_ptr(), bias.data_ptr(), sum.data_ptr(), y.data_ptr(),
              rows, dim, static_cast<float>(eps), CurrentStream(),
              with_stats ? stats.data_ptr() : nullptr,
              sum_addend.defined() ? sum_addend.data_ptr() : nullptr),
          "layer norm kernel");
    return {sum, y, stats};
#else
    (void)x, (void)residual, (void)weight, (void)bias, (void)eps,
        (void)with_stats, (void)sum_addend;
    throw std::logic_error("fused kernels are not in this build");
#endif
  }

 private:
  using Grads = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>;

  static Grads BackwardKernel(const torch::Tensor& sum, const torch::Tensor& dy,
                              const torch::Tensor& dsum,
                              const torch::Tensor& weight,
                              const torch::Tensor& stats) {
#ifdef LPD_WITH_CUDA
    const int64_t dim = sum.size(-1), rows = sum.numel() / dim;
    const torch::Tensor g = dy.contiguous();
    const torch::Tensor p = dsum.defined() ? dsum.contiguous() : dsum;
    if (!Aligned16({&sum, &g, &p})) return {};
    torch::Tensor dx = torch::empty_like(sum);
    torch::Tensor dweight = torch::empty_like(weight);
    torch::Tensor dbias = torch::empty_like(weight);
    torch::Tensor workspace =
        torch::empty({static_cast<int64_t>(
                         cuda::LayerNormBackwardWorkspaceBytes(rows, dim))},
                     sum.options().dtype(torch::kUInt8));
    Check(
        cuda::LaunchLayerNormBackward(
            ElementTypeOf(sum), sum.data_ptr(), g.data_ptr(),
            p.defined() ? p.data_ptr() : nullptr, weight.data_ptr(),
            stats.data_ptr(), dx.data_ptr(), dweight.data_ptr(),
            dbias.data_ptr(), rows, dim, workspace.data_ptr(), CurrentStream()),
        "layer norm backward kernel");
    return {dx, dweight, dbias};
#else
    (void)sum, (void)dy, (void)dsum, (void)weight, (void)stats;
    throw std::logic_error("fused kernels are not in this build");
#endif
  }

  // With x̂ = (s − mean)·rstd and g = dy·w per row:
  // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) + dsum, dw = Σ dy·x̂, db = Σ dy.
  static Grads BackwardPlain(const torch::Tensor& sum, const torch::Tensor& dy,
                             const torch::Tensor& dsum,
                             const torch::Tensor& weight,
                             const torch::Tensor& stats) {
    const torch::Dtype ct = ComputeDtype(sum);
    const int64_t dim = sum.size(-1);
    const torch::Tensor s = sum.to(ct).reshape({-1, dim});
    const torch::Tensor d = dy.to(ct).reshape({-1, dim});
    const torch::Tensor mean = stats.select(-1, 0).to(ct).unsqueeze(-1);
    const torch::Tensor rstd = stats.select(-1, 1).to(ct).unsqueeze(-1);
    const torch::Tensor xhat = (s - mean) * rstd;
    const torch::Tensor g = d * weight.to(ct);
    torch::Tensor dx =
        rstd * (g - g.mean(-1, true) - xhat * (g * xhat).mean(-1, true));
    if (dsum.defined()) dx = dx + dsum.to(ct).reshape({-1, dim});
    return {dx.to(sum.scalar_type()).view(sum.sizes()),
            (d * xhat).sum(0).to(weight.scalar_type()),
            d.sum(0).to(weight.scalar_type())};
  }
};

// `parts` stacked by rows as a view of their common buffer, or an undefined
// tensor when they do not lie side by side in one.
torch::Tensor StackedView(const std::vector<torch::Tensor>& parts) {
  const torch::Tensor& first = parts.front();
  const int64_t cols = first.size(1);
  int64_t rows = 0;
  for (const torch::Tensor& part : parts) {
    if (!part.is_contiguous() || part.dim() != 2 || part.size(1) != cols ||
        part.scalar_type() != first.scalar_type() ||
        part.storage().unsafeGetStorageImpl() !=
            first.storage().unsafeGetStorageImpl() ||
        part.storage_offset() != first.storage_offset() + rows * cols) {
      return {};
    }
    rows += part.size(0);
  }
  return first.as_strided({rows, cols}, {cols, 1}, first.storage_offset());
}

// The autograd node of LinearOfStacked over packed weights (two or three;
// an empty third stands for none).
class StackedLinearFunction
    : public torch::autograd::Function<StackedLinearFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w0, const torch::Tensor& w1,
                               const torch::Tensor& w2) {
    ctx->save_for_backward({x, w0, w1, w2});
    return at::linear(x, StackedView(Weights(w0, w1, w2)));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const std::vector<torch::Tensor> weights =
        Weights(saved[1], saved[2], saved[3]);
    const torch::Tensor stacked = StackedView(weights);
    const torch::Tensor dy = grads[0].reshape({-1, stacked.size(0)});
    torch::Tensor dx;
    if (ctx->needs_input_grad(0)) dx = dy.mm(stacked).view(x.sizes());
    variable_list result = {dx, {}, {}, {}};
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2) ||
        ctx->needs_input_grad(3)) {
      const torch::Tensor dw = dy.t().mm(x.reshape({-1, stacked.size(1)}));
      int64_t row = 0;
      for (size_t i = 0; i < weights.size(); ++i) {
        result[i + 1] = dw.narrow(0, row, weights[i].size(0));
        row += weights[i].size(0);
      }
    }
    return result;
  }

  static std::vector<torch::Tensor> Weights(const torch::Tensor& w0,
                                            const torch::Tensor& w1,
                                            const torch::Tensor& w2) {
    if (!EmptyAsAbsent(w2).defined()) return {w0, w1};
    return {w0, w1, w2};
  }
};

}  // namespace

bool HasFusedCudaKernels() {
#ifdef LPD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void SetFusedKernelsEnabled(bool enabled) { fused_enabled.store(enabled); }

void SetFusedTrainingKernelsEnabled(bool enabled) {
  fused_training_enabled.store(enabled);
}

void SetFusedAutogradOnEveryDevice(bool enabled) {
  autograd_on_every_device.store(enabled);
}

torch::Tensor GroupNormAct(const torch::Tensor& x, const torch::Tensor& add,
                           int64_t groups, const torch::Tensor& weight,
                           const torch::Tensor& bias, double eps, bool silu) {
  const bool kernel = GroupNormKernelTakes(x, add, groups, weight, bias);
  if (NeedsGradient({&x, &add, &weight, &bias})) {
    if (UseFusedNode(kernel, x) && weight.defined() && bias.defined()) {
      return GroupNormActFunction::apply(x, AbsentAsEmpty(add, x), weight, bias,
                                         groups, eps, silu, kernel);
    }
    return GroupNormActPlain(x, add, groups, weight, bias, eps, silu);
  }
  if (kernel) {
    return GroupNormActKernel(x, add, groups, weight, bias, eps, silu, {});
  }
  return GroupNormActPlain(x, add, groups, weight, bias, eps, silu);
}

std::pair<torch::Tensor, torch::Tensor> AddLayerNorm(
    const torch::Tensor& x, const torch::Tensor& residual,
    const torch::Tensor& weight, const torch::Tensor& bias, double eps,
    const torch::Tensor& sum_addend) {
  const int64_t dim = x.size(-1);
  const bool kernel = LayerNormKernelTakes(x, residual, weight, bias);
  // The sum output with the addend applied after normalizing.
  auto shifted = [&](const torch::Tensor& sum) {
    return sum_addend.defined() ? sum + sum_addend : sum;
  };
  if (NeedsGradient({&x, &residual, &weight, &bias, &sum_addend})) {
    if (UseFusedNode(kernel, x)) {
      variable_list out = AddLayerNormFunction::apply(
          x, AbsentAsEmpty(residual, x), weight, bias, eps, kernel);
      if (residual.defined()) return {shifted(out[0]), out[1]};
      return {shifted(x), out[0]};
    }
  } else if (kernel &&
             (!sum_addend.defined() ||
              (sum_addend.is_contiguous() && sum_addend.numel() == dim &&
               sum_addend.scalar_type() == x.scalar_type() &&
               Aligned16({&sum_addend})))) {
    auto [sum, y, stats] = AddLayerNormFunction::Kernel(
        x, residual, weight, bias, eps, false, sum_addend);
    return {sum, y};
  }
  torch::Tensor sum = residual.defined() ? x + residual : x;
  return {shifted(sum), at::layer_norm(sum, {dim}, weight, bias, eps)};
}

torch::Tensor AddChannelBias(const torch::Tensor& a, const torch::Tensor& b,
                             const torch::Tensor& bias) {
#ifdef LPD_WITH_CUDA
  if (KernelTakes(a) && a.scalar_type() != torch::kFloat32 && a.dim() == 4 &&
      !NeedsGradient({&a, &b, &bias}) && b.sizes() == a.sizes() &&
      b.scalar_type() == a.scalar_type() &&
      bias.scalar_type() == a.scalar_type() && bias.is_contiguous() &&
      a.is_contiguous(torch::MemoryFormat::ChannelsLast) &&
      b.is_contiguous(torch::MemoryFormat::ChannelsLast) &&
      a.size(1) % 8 == 0 && Aligned16({&a, &b, &bias})) {
    torch::Tensor out = torch::empty_like(a, torch::MemoryFormat::ChannelsLast);
    const int64_t channels = a.size(1);
    Check(cuda::LaunchAddChannelBias(
              ElementTypeOf(a), a.data_ptr(), b.data_ptr(), bias.data_ptr(),
              out.data_ptr(), a.numel() / channels, channels, CurrentStream()),
          "add-with-bias kernel");
    return out;
  }
#endif
  std::vector<int64_t> shape(a.dim(), 1);
  shape[1] = bias.numel();
  return a + b + bias.view(shape);
}

torch::Tensor Geglu(const torch::Tensor& x) {
  const bool kernel = GegluKernelTakes(x);
  if (NeedsGradient({&x})) {
    if (UseFusedNode(kernel, x)) return GegluFunction::apply(x, kernel);
  } else if (kernel) {
    return GegluFunction::Kernel(x);
  }
  auto parts = x.chunk(2, -1);  // hidden, gate
  return parts[0] * at::gelu(parts[1]);
}

torch::Tensor LinearOp(const torch::Tensor& x, const torch::Tensor& weight,
                       const torch::Tensor& bias) {
  if (bias.defined() && NeedsGradient({&x, &weight, &bias})) {
    // The kernel takes 16-bit data with 8-element rows (bf16, fp16).
    const bool kernel = KernelTakes(x) && x.scalar_type() != torch::kFloat32 &&
                        weight.scalar_type() == x.scalar_type() &&
                        bias.scalar_type() == x.scalar_type() &&
                        weight.size(0) % 8 == 0;
    if (UseFusedNode(kernel, x)) {
      return LinearFunction::apply(x, weight, bias, kernel);
    }
  }
  return at::linear(x, weight, bias);
}

torch::Tensor LinearOfStacked(const torch::Tensor& x,
                              const std::vector<torch::Tensor>& weights) {
  const torch::Tensor stacked = StackedView(weights);
  if (stacked.defined()) {
    if (!torch::GradMode::is_enabled()) return at::linear(x, stacked);
    if (fused_training_enabled.load(std::memory_order_relaxed) &&
        (weights.size() == 2 || weights.size() == 3)) {
      return StackedLinearFunction::apply(
          x, weights[0], weights[1],
          AbsentAsEmpty(weights.size() == 3 ? weights[2] : torch::Tensor(), x));
    }
  }
  return at::linear(x, at::cat(weights));
}

}  // namespace lpd::engine

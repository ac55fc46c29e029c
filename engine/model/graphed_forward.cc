#include "engine/model/graphed_forward.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "engine/core/torch_errors.h"

#ifdef LPD_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace lpd::engine {
namespace {

#ifdef LPD_WITH_CUDA
// Copies every defined tensor of `from` into the buffers of `to`.
void CopyInputs(const UNetInputs& from, UNetInputs& to) {
  auto copy = [](const torch::Tensor& src, torch::Tensor& dst) {
    if (src.defined() && dst.defined()) dst.copy_(src, /*non_blocking=*/true);
  };
  copy(from.sample, to.sample);
  copy(from.timestep, to.timestep);
  copy(from.encoder_hidden_states, to.encoder_hidden_states);
  copy(from.text_embeds, to.text_embeds);
  copy(from.time_ids, to.time_ids);
}
#endif

// A buffer on `device` shaped and typed like `t` (undefined stays undefined).
torch::Tensor BufferLike(const torch::Tensor& t, torch::Device device) {
  return t.defined() ? t.to(device).clone() : torch::Tensor();
}

}  // namespace

struct GraphedForward::Impl {
  UNet2DConditionModel model{nullptr};
  UNetInputs static_inputs;
  torch::Tensor static_output;
#ifdef LPD_WITH_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
#endif
};

GraphedForward::GraphedForward(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
GraphedForward::~GraphedForward() = default;

bool GraphedForward::graphed() const {
#ifdef LPD_WITH_CUDA
  return impl_->graph != nullptr;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<GraphedForward>> GraphedForward::Create(
    UNet2DConditionModel model, const UNetInputs& example,
    bool use_cuda_graph) {
  if (absl::Status valid = model->ValidateInputs(example); !valid.ok()) {
    return valid;
  }
  return GuardTorch(
      "capturing the forward pass",
      [&]() -> absl::StatusOr<std::unique_ptr<GraphedForward>> {
        auto impl = std::make_unique<Impl>();
        impl->model = model;
        const torch::Device device = model->parameters().front().device();
        UNetInputs& in = impl->static_inputs;
        in.sample = BufferLike(example.sample, device);
        in.timestep = BufferLike(example.timestep, device);
        in.encoder_hidden_states =
            BufferLike(example.encoder_hidden_states, device);
        in.text_embeds = BufferLike(example.text_embeds, device);
        in.time_ids = BufferLike(example.time_ids, device);
        torch::NoGradGuard no_grad;
#ifdef LPD_WITH_CUDA
        if (use_cuda_graph && device.is_cuda()) {
          c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
          c10::cuda::CUDAStreamGuard guard(stream);
          // Warm-up on the side stream: cuDNN picks its algorithms and the
          // caching allocator fills before capture.
          for (int i = 0; i < 3; ++i) impl->static_output = model->forward(in);
          stream.synchronize();
          impl->graph = std::make_unique<at::cuda::CUDAGraph>();
          impl->graph->capture_begin();
          impl->static_output = model->forward(in);
          impl->graph->capture_end();
          stream.synchronize();
        }
#endif
        (void)use_cuda_graph;
        return std::unique_ptr<GraphedForward>(
            new GraphedForward(std::move(impl)));
      });
}

absl::StatusOr<torch::Tensor> GraphedForward::Run(const UNetInputs& inputs) {
  if (absl::Status valid = impl_->model->ValidateInputs(inputs); !valid.ok()) {
    return valid;
  }
  const UNetInputs& s = impl_->static_inputs;
  if (inputs.sample.sizes() != s.sample.sizes() ||
      inputs.encoder_hidden_states.sizes() != s.encoder_hidden_states.sizes()) {
    return absl::InvalidArgumentError(
        "graphed forward: input shapes differ from the captured ones");
  }
  return GuardTorch("graphed forward", [&]() -> absl::StatusOr<torch::Tensor> {
    torch::NoGradGuard no_grad;
#ifdef LPD_WITH_CUDA
    if (impl_->graph) {
      CopyInputs(inputs, impl_->static_inputs);
      impl_->graph->replay();
      return impl_->static_output;
    }
#endif
    return impl_->model->forward(inputs);
  });
}

}  // namespace lpd::engine

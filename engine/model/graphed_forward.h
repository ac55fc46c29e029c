// A U-Net forward pass replayed from a captured CUDA graph: one launch per
// call instead of ~1,000 kernel launches, for a fixed input shape. The inputs
// are copied into static buffers, the graph replays, and the caller gets the
// static output (valid until the next Run). On the CPU, or with a LibTorch
// built without CUDA, Run is the plain forward pass, so the same code path is
// testable everywhere.
#ifndef LPD_ENGINE_MODEL_GRAPHED_FORWARD_H_
#define LPD_ENGINE_MODEL_GRAPHED_FORWARD_H_

#include <torch/types.h>

#include <memory>

#include "absl/status/statusor.h"
#include "engine/model/unet.h"

namespace lpd::engine {

class GraphedForward {
 public:
  // Captures `model`'s forward on inputs shaped like `example` (which it also
  // uses for warm-up). Falls back to eager execution off CUDA.
  static absl::StatusOr<std::unique_ptr<GraphedForward>> Create(
      UNet2DConditionModel model, const UNetInputs& example,
      bool use_cuda_graph = true);
  ~GraphedForward();

  // Runs on `inputs` (same shapes as the example). The returned tensor is
  // overwritten by the next call when a graph is in use: clone to keep it.
  absl::StatusOr<torch::Tensor> Run(const UNetInputs& inputs);

  // Whether a CUDA graph is replayed (false: eager).
  bool graphed() const;

 private:
  struct Impl;
  explicit GraphedForward(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lpd::engine

#endif  // LPD_ENGINE_MODEL_GRAPHED_FORWARD_H_

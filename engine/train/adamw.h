// AdamW as the trainer runs it: LibTorch's multi-tensor (or, on CUDA with
// LibTorch 2.x, fused) kernels over torch::optim::AdamW's own state.
#ifndef LPD_ENGINE_TRAIN_ADAMW_H_
#define LPD_ENGINE_TRAIN_ADAMW_H_

#include <torch/optim/adamw.h>
#include <torch/types.h>
#include <torch/version.h>

#include <string>

namespace lpd::engine {

// One AdamW step over every parameter of `optimizer` with gradients, as
// torch::optim::AdamW::step computes it (same state, same arithmetic per
// element) but with LibTorch's multi-tensor kernels: a handful of launches per
// step instead of about seven per parameter tensor. AMSGrad falls back to
// optimizer.step(). On CUDA with LibTorch 2.x, `allow_fused` runs LibTorch's
// fused AdamW kernel instead (one pass over parameter, gradient and state;
// the same update, computed in float); there a defined `found_inf` (float
// scalar on the device) equal to 1 makes it change nothing. A defined
// `grad_scale` (float scalar) divides every gradient first (in place), on
// the device when fused: gradient clipping without a host synchronization.
void MultiTensorAdamWStep(torch::optim::AdamW& optimizer,
                          bool allow_fused = true,
                          const torch::Tensor& found_inf = {},
                          const torch::Tensor& grad_scale = {});

// How LibTorch's optimizers key their per-parameter state: a string of the
// TensorImpl address in 1.x, the address itself in 2.x.
#if TORCH_VERSION_MAJOR >= 2
using AdamWStateKey = void*;
#else
using AdamWStateKey = std::string;
#endif
AdamWStateKey AdamWStateKeyOf(const torch::Tensor& tensor);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_TRAIN_ADAMW_H_

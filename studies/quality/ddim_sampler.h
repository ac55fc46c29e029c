// Deterministic DDIM sampling (η = 0) over the training schedule of
// noise_schedule.h, with classifier-free guidance, as diffusers'
// DDIMScheduler computes it for Stable Diffusion.
//
// Timesteps ("leading" spacing): with T training steps and n inference steps,
// r = T / n (integer division) and t_k = k·r + steps_offset for k = n−1 … 0
// (SD uses steps_offset 1: 961, 921, …, 1 for n = 25). Each step, with ε the
// (guided) noise prediction at (x, t) and t' = t − r:
//   x0̂    = (x − √(1−ᾱ_t)·ε) / √ᾱ_t          (clipped to ±clip_range if asked)
//   x_t'  = √ᾱ_t'·x0̂ + √(1−ᾱ_t')·ε
// where ᾱ_t' for t' < 0 is 1 (set_alpha_to_one) or ᾱ_0 (SD's setting). The
// result is the last x_t'. Guidance, with g the scale:
//   ε = ε_uncond + g·(ε_cond − ε_uncond)
// from one forward over the batch of 2N (conditional rows first).
#ifndef LPD_STUDIES_QUALITY_DDIM_SAMPLER_H_
#define LPD_STUDIES_QUALITY_DDIM_SAMPLER_H_

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/noise_schedule.h"
#include "engine/model/unet.h"

namespace lpd::engine {

// Predicts ε for x [B, C, H, W] at timesteps t (int64 [B]) under the text
// states `context` [B, L, D]; returns a tensor shaped like x.
using NoisePredictor = std::function<absl::StatusOr<torch::Tensor>(
    const torch::Tensor& x, const torch::Tensor& t,
    const torch::Tensor& context)>;

struct DdimOptions {
  int num_inference_steps = 25;
  double guidance_scale = 1.0;  // g; used only with an unconditional context
  int64_t steps_offset = 1;
  bool set_alpha_to_one = false;
  // Clip x0̂ to [−clip_range, clip_range] (diffusers' clip_sample); off for
  // SD, useful for data known to lie in [−1, 1].
  bool clip_sample = false;
  double clip_range = 1.0;
  // Samples per forward (0: all at once); the guided batch is twice this.
  int64_t max_batch = 0;
};

// The timesteps t_{n−1} … t_0 of the header comment. InvalidArgument when
// n < 1, n > T, or the largest timestep is not below T.
absl::StatusOr<std::vector<int64_t>> DdimTimesteps(int num_inference_steps,
                                                   int64_t steps_offset,
                                                   int64_t num_train_timesteps);

// ε_uncond + g·(ε_cond − ε_uncond).
torch::Tensor GuidedNoise(const torch::Tensor& eps_uncond,
                          const torch::Tensor& eps_cond, double guidance_scale);

// Samples from `initial_noise` x_T [N, C, H, W] (any device and float dtype;
// the arithmetic runs in float32 on its device). `cond` [N, L, D] is the
// text; `uncond` [N, L, D] (or [1, L, D], broadcast) the empty prompt, or
// undefined for no guidance (guidance_scale is then ignored). Returns x_0̂'s
// final iterate, float32 [N, C, H, W] on the noise's device.
// InvalidArgument for mismatched shapes or bad options; the predictor's
// errors and LibTorch's exceptions come back as statuses.
absl::StatusOr<torch::Tensor> DdimSample(const NoisePredictor& predict,
                                         const NoiseSchedule& schedule,
                                         const torch::Tensor& initial_noise,
                                         const torch::Tensor& cond,
                                         const torch::Tensor& uncond,
                                         const DdimOptions& options);

// A predictor running `model` (teacher or pruned student) without gradients
// on the model's device and dtype, returning float32 on x's device.
NoisePredictor UNetNoisePredictor(UNet2DConditionModel model);

}  // namespace lpd::engine

#endif  // LPD_STUDIES_QUALITY_DDIM_SAMPLER_H_

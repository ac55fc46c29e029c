#include "studies/quality/ddim_sampler.h"

#include <torch/torch.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
namespace {

std::string Shape(const torch::Tensor& t) {
  return t.defined() ? absl::StrCat("[", absl::StrJoin(t.sizes(), ","), "]")
                     : "undefined";
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> DdimTimesteps(
    int num_inference_steps, int64_t steps_offset,
    int64_t num_train_timesteps) {
  if (num_inference_steps < 1 || num_inference_steps > num_train_timesteps) {
    return absl::InvalidArgumentError(
        absl::StrCat("DDIM: num_inference_steps ", num_inference_steps,
                     " not in [1, ", num_train_timesteps, "]"));
  }
  const int64_t ratio = num_train_timesteps / num_inference_steps;
  std::vector<int64_t> timesteps;
  for (int64_t k = num_inference_steps - 1; k >= 0; --k) {
    timesteps.push_back(k * ratio + steps_offset);
  }
  if (steps_offset < 0 || timesteps.front() >= num_train_timesteps) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DDIM: steps_offset ", steps_offset, " with ", num_inference_steps,
        " steps gives timestep ", timesteps.front(), ", outside [0, ",
        num_train_timesteps, ")"));
  }
  return timesteps;
}

torch::Tensor GuidedNoise(const torch::Tensor& eps_uncond,
                          const torch::Tensor& eps_cond,
                          double guidance_scale) {
  return eps_uncond + guidance_scale * (eps_cond - eps_uncond);
}

absl::StatusOr<torch::Tensor> DdimSample(const NoisePredictor& predict,
                                         const NoiseSchedule& schedule,
                                         const torch::Tensor& initial_noise,
                                         const torch::Tensor& cond,
                                         const torch::Tensor& uncond,
                                         const DdimOptions& options) {
  const int64_t T = schedule.num_train_timesteps();
  ASSIGN_OR_RETURN(
      std::vector<int64_t> timesteps,
      DdimTimesteps(options.num_inference_steps, options.steps_offset, T));
  if (!initial_noise.defined() || initial_noise.dim() != 4 || !cond.defined() ||
      cond.dim() != 3 || cond.size(0) != initial_noise.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DDIM: expected noise [N,C,H,W] and cond [N,L,D], got ",
                     Shape(initial_noise), " and ", Shape(cond)));
  }
  const bool guided = uncond.defined();
  if (guided && (uncond.dim() != 3 || uncond.size(1) != cond.size(1) ||
                 uncond.size(2) != cond.size(2) ||
                 (uncond.size(0) != 1 && uncond.size(0) != cond.size(0)))) {
    return absl::InvalidArgumentError(
        absl::StrCat("DDIM: uncond ", Shape(uncond), " does not fit cond ",
                     Shape(cond), " (expected [N or 1, L, D])"));
  }
  if (options.clip_sample && !(options.clip_range > 0)) {
    return absl::InvalidArgumentError("DDIM: clip_range must be positive");
  }
  const int64_t ratio = T / options.num_inference_steps;
  return GuardTorch("DDIM sampling", [&]() -> absl::StatusOr<torch::Tensor> {
    torch::NoGradGuard no_grad;
    const torch::Device device = initial_noise.device();
    const torch::Tensor alphas = schedule.alphas_cumprod().to(torch::kFloat64);
    auto alpha_at = [&](int64_t t) {
      if (t < 0) {
        return options.set_alpha_to_one ? 1.0 : alphas[0].item<double>();
      }
      return alphas[t].item<double>();
    };
    const int64_t n = initial_noise.size(0);
    const int64_t chunk = options.max_batch > 0 ? options.max_batch : n;
    std::vector<torch::Tensor> results;
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const int64_t count = std::min(chunk, n - begin);
      torch::Tensor x =
          initial_noise.narrow(0, begin, count).to(torch::kFloat32);
      const torch::Tensor c = cond.narrow(0, begin, count).to(device);
      torch::Tensor u;
      if (guided) {
        u = uncond.size(0) == 1 ? uncond.to(device).expand_as(c)
                                : uncond.narrow(0, begin, count).to(device);
      }
      const torch::Tensor context = guided ? torch::cat({c, u}, 0) : c;
      for (const int64_t t : timesteps) {
        const torch::Tensor input = guided ? torch::cat({x, x}, 0) : x;
        const torch::Tensor tt = torch::full(
            {input.size(0)}, t,
            torch::TensorOptions().dtype(torch::kInt64).device(device));
        ASSIGN_OR_RETURN(torch::Tensor out, predict(input, tt, context));
        if (!out.defined() || out.sizes() != input.sizes()) {
          return absl::InvalidArgumentError(
              absl::StrCat("DDIM: the predictor returned ", Shape(out),
                           " for input ", Shape(input)));
        }
        out = out.to(device, torch::kFloat32);
        const torch::Tensor eps =
            guided
                ? GuidedNoise(out.narrow(0, count, count),
                              out.narrow(0, 0, count), options.guidance_scale)
                : out;
        const double a_t = alpha_at(t), a_prev = alpha_at(t - ratio);
        torch::Tensor x0 = (x - std::sqrt(1 - a_t) * eps) / std::sqrt(a_t);
        if (options.clip_sample) {
          x0 = x0.clamp(-options.clip_range, options.clip_range);
        }
        x = std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * eps;
      }
      results.push_back(x);
    }
    return results.size() == 1 ? results[0] : torch::cat(results, 0);
  });
}

NoisePredictor UNetNoisePredictor(UNet2DConditionModel model) {
  return [model](const torch::Tensor& x, const torch::Tensor& t,
                 const torch::Tensor& context) mutable
         -> absl::StatusOr<torch::Tensor> {
    return GuardTorch(
        "U-Net noise prediction", [&]() -> absl::StatusOr<torch::Tensor> {
          torch::NoGradGuard no_grad;
          const auto params = model->parameters();
          torch::TensorOptions to = x.options();
          if (!params.empty()) {
            to = torch::TensorOptions()
                     .dtype(params[0].scalar_type())
                     .device(params[0].device());
          }
          UNetInputs in;
          in.sample = x.to(to);
          in.timestep = t.to(to.device());
          in.encoder_hidden_states = context.to(to);
          RETURN_IF_ERROR(model->ValidateInputs(in));
          return model->forward(in).to(x.device(), torch::kFloat32);
        });
  };
}

}  // namespace lpd::engine

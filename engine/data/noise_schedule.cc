#include "engine/data/noise_schedule.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace lpd::engine {

absl::StatusOr<PredictionType> ParsePredictionType(std::string_view name) {
  if (name == "epsilon") return PredictionType::kEpsilon;
  if (name == "v_prediction") return PredictionType::kVPrediction;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown prediction type \"", absl::string_view(name.data(), name.size()),
      "\" (expected epsilon or v_prediction)"));
}

std::string_view PredictionTypeName(PredictionType type) {
  return type == PredictionType::kEpsilon ? "epsilon" : "v_prediction";
}

NoiseSchedule NoiseSchedule::ScaledLinear(int64_t num_train_timesteps,
                                          double beta_start, double beta_end) {
  // diffusers: torch.linspace(beta_start**0.5, beta_end**0.5, T,
  // dtype=torch.float32) ** 2; alphas_cumprod = torch.cumprod(1 - betas, 0).
  // The endpoints are Python floats (float64) cast by linspace.
  torch::Tensor betas =
      torch::linspace(std::sqrt(beta_start), std::sqrt(beta_end),
                      num_train_timesteps, torch::dtype(torch::kFloat32))
          .pow(2);
  torch::Tensor alphas = 1.0 - betas;
  torch::Tensor alphas_cumprod = torch::cumprod(alphas, 0);
  return NoiseSchedule(std::move(betas), std::move(alphas_cumprod));
}

std::pair<torch::Tensor, torch::Tensor> NoiseSchedule::Coefficients(
    const torch::Tensor& timesteps, const torch::Tensor& like) const {
  // As diffusers' add_noise: cast ᾱ to the sample's dtype and device, index,
  // take square roots, then append singleton dims to broadcast.
  torch::Tensor ac = alphas_cumprod_.to(like.device(), like.scalar_type());
  torch::Tensor t = timesteps.to(like.device(), torch::kLong);
  torch::Tensor sqrt_alpha = ac.index({t}).pow(0.5).flatten();
  torch::Tensor sqrt_one_minus = (1 - ac.index({t})).pow(0.5).flatten();
  while (sqrt_alpha.dim() < like.dim()) {
    sqrt_alpha = sqrt_alpha.unsqueeze(-1);
    sqrt_one_minus = sqrt_one_minus.unsqueeze(-1);
  }
  return {sqrt_alpha, sqrt_one_minus};
}

torch::Tensor NoiseSchedule::AddNoise(const torch::Tensor& x0,
                                      const torch::Tensor& noise,
                                      const torch::Tensor& timesteps) const {
  auto [a, s] = Coefficients(timesteps, x0);
  return a * x0 + s * noise;
}

torch::Tensor NoiseSchedule::Velocity(const torch::Tensor& x0,
                                      const torch::Tensor& noise,
                                      const torch::Tensor& timesteps) const {
  auto [a, s] = Coefficients(timesteps, x0);
  return a * noise - s * x0;
}

torch::Tensor NoiseSchedule::Target(PredictionType type,
                                    const torch::Tensor& x0,
                                    const torch::Tensor& noise,
                                    const torch::Tensor& timesteps) const {
  if (type == PredictionType::kEpsilon) return noise;
  return Velocity(x0, noise, timesteps);
}

torch::Tensor NoiseSchedule::SampleTimesteps(int64_t batch,
                                             at::Generator generator) const {
  return torch::randint(0, num_train_timesteps(), {batch}, generator,
                        torch::dtype(torch::kLong));
}

torch::Tensor NoiseSchedule::SampleTimesteps(int64_t batch,
                                             uint64_t seed) const {
  return SampleTimesteps(batch, at::make_generator<at::CPUGeneratorImpl>(seed));
}

}  // namespace lpd::engine

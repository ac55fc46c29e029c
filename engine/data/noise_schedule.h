// SD's noise schedule for training (DDPM "scaled_linear", 1000 steps), the
// forward noising q(x_t | x_0) and the training targets, as diffusers'
// DDPMScheduler computes them. Includes LibTorch types only.
#ifndef LPD_ENGINE_DATA_NOISE_SCHEDULE_H_
#define LPD_ENGINE_DATA_NOISE_SCHEDULE_H_

#include <torch/types.h>

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace lpd::engine {

// What the model predicts (`model.prediction_type`).
enum class PredictionType { kEpsilon, kVPrediction };

// "epsilon" or "v_prediction"; anything else is InvalidArgument.
absl::StatusOr<PredictionType> ParsePredictionType(std::string_view name);
std::string_view PredictionTypeName(PredictionType type);

class NoiseSchedule {
 public:
  static constexpr int64_t kNumTrainTimesteps = 1000;

  // diffusers' "scaled_linear": betas = linspace(sqrt(beta_start),
  // sqrt(beta_end), T, float32) ** 2, alphas_cumprod = cumprod(1 - betas),
  // all in float32 exactly as diffusers computes them (SD-1.x/2.x/XL all use
  // 0.00085, 0.012, 1000).
  static NoiseSchedule ScaledLinear(
      int64_t num_train_timesteps = kNumTrainTimesteps,
      double beta_start = 0.00085, double beta_end = 0.012);

  int64_t num_train_timesteps() const { return betas_.size(0); }
  // float32 [T] on the CPU.
  const torch::Tensor& betas() const { return betas_; }
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

  // x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε. `timesteps` is an integer tensor
  // [B] (B = x0.size(0)) or a scalar; ᾱ is cast to x0's dtype and device
  // first, as diffusers does.
  torch::Tensor AddNoise(const torch::Tensor& x0, const torch::Tensor& noise,
                         const torch::Tensor& timesteps) const;
  // v = sqrt(ᾱ_t)·ε − sqrt(1−ᾱ_t)·x0 (diffusers' get_velocity).
  torch::Tensor Velocity(const torch::Tensor& x0, const torch::Tensor& noise,
                         const torch::Tensor& timesteps) const;
  // The task target: ε for kEpsilon, v for kVPrediction.
  torch::Tensor Target(PredictionType type, const torch::Tensor& x0,
                       const torch::Tensor& noise,
                       const torch::Tensor& timesteps) const;

  // `batch` timesteps uniform in [0, T), int64 on the CPU, drawn from
  // `generator` (a CPU generator) or from a fresh one seeded with `seed`.
  torch::Tensor SampleTimesteps(int64_t batch, at::Generator generator) const;
  torch::Tensor SampleTimesteps(int64_t batch, uint64_t seed) const;

 private:
  NoiseSchedule(torch::Tensor betas, torch::Tensor alphas_cumprod)
      : betas_(std::move(betas)), alphas_cumprod_(std::move(alphas_cumprod)) {}
  // sqrt(ᾱ_t) and sqrt(1−ᾱ_t), shaped to broadcast against `like`.
  std::pair<torch::Tensor, torch::Tensor> Coefficients(
      const torch::Tensor& timesteps, const torch::Tensor& like) const;

  torch::Tensor betas_;
  torch::Tensor alphas_cumprod_;
};

}  // namespace lpd::engine

#endif  // LPD_ENGINE_DATA_NOISE_SCHEDULE_H_

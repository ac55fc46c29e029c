// Training a U-Net from scratch with the task loss alone (the teacher of the
// quality study, issue 6): ε-prediction (or v) MSE on noised samples of
// noise_schedule.h's DDPM scaled-linear schedule, AdamW, global-norm gradient
// clipping, linear warmup then cosine decay, an optional exponential moving
// average of the weights, and optional bf16 mixed precision (a bf16 working
// copy runs forward and backward; fp32 master weights and AdamW state).
//
// Unlike DistillTrainer there is no teacher and no feature capture, and a
// step never waits for the device: the reported loss is a device tensor, read
// it (which synchronizes) only when logging.
//
// MakeDiffusionBatch draws the noising (t, ε) and the conditioning dropout
// (text states replaced by the empty prompt's, for classifier-free guidance)
// from a CPU generator of a given seed, so a batch does not depend on the
// device.
#ifndef LPD_STUDIES_QUALITY_TRAIN_SCRATCH_H_
#define LPD_STUDIES_QUALITY_TRAIN_SCRATCH_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/data/noise_schedule.h"
#include "engine/model/unet.h"
#include "engine/train/distill.h"

namespace torch::optim {
class AdamW;
}  // namespace torch::optim

namespace lpd::engine {

struct DiffusionBatchOptions {
  // Probability that a row's text states are replaced by `uncond`.
  double cond_dropout = 0.1;
  PredictionType prediction = PredictionType::kEpsilon;
};

// A training batch from clean samples: t uniform in [0, T), ε ~ N(0, 1),
// x_t = AddNoise(x0, ε, t), target ε (or v), and each row's context replaced
// by `uncond` with probability options.cond_dropout. x0 [B, C, H, W] and
// context [B, L, D] on any device (the batch is made there, float32);
// uncond [1, L, D] or [L, D]. Random numbers come from a CPU generator seeded
// with `seed`. InvalidArgument for mismatched shapes or a dropout outside
// [0, 1].
absl::StatusOr<TrainingBatch> MakeDiffusionBatch(
    const torch::Tensor& x0, const torch::Tensor& context,
    const torch::Tensor& uncond, const NoiseSchedule& schedule, uint64_t seed,
    const DiffusionBatchOptions& options = {});

enum class ScratchPrecision {
  kFloat32,        // everything fp32
  kBFloat16Mixed,  // bf16 working copy; fp32 masters, AdamW state, EMA
};

struct ScratchTrainerOptions {
  double learning_rate = 5e-4;  // peak
  // Linear warmup over the first warmup_steps steps (0: none).
  int64_t warmup_steps = 0;
  // With total_steps > 0, cosine decay after the warmup from the peak to
  // min_lr_fraction × peak at total_steps (held there after).
  int64_t total_steps = 0;
  double min_lr_fraction = 0.1;
  double weight_decay = 1e-2;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  // Clip gradients to this global L2 norm (<= 0: no clipping). Done on the
  // device without a host synchronization.
  double max_grad_norm = 1.0;
  // EMA of the fp32 weights with decay min(ema_decay, (1 + k) / (10 + k))
  // after step k (0: no EMA).
  double ema_decay = 0;
  ScratchPrecision precision = ScratchPrecision::kFloat32;
};

struct ScratchStepReport {
  int64_t step = 0;          // the step just taken (0-based)
  double learning_rate = 0;  // used by that step
  torch::Tensor loss;        // float32 scalar on the device, detached
  torch::Tensor grad_norm;   // float32 scalar on the device (before clipping)
};

class ScratchTrainer {
 public:
  // Trains `model` in place: its parameters (float32, on their device) are
  // the master weights. InvalidArgument for a model that is not float32 or
  // has no parameters, or bad options.
  static absl::StatusOr<std::unique_ptr<ScratchTrainer>> Create(
      UNet2DConditionModel model, const ScratchTrainerOptions& options);
  ~ScratchTrainer();

  // One AdamW step on mse(model(x_t), target) (float32 loss), the batch
  // moved to the model's device. Advances step().
  absl::StatusOr<ScratchStepReport> Step(const TrainingBatch& batch);

  // The loss of `batch` for the current weights, without gradients (a host
  // number).
  absl::StatusOr<double> Loss(const TrainingBatch& batch);

  // The learning rate of `step` (warmup and decay included).
  double LearningRateAt(int64_t step) const;
  int64_t step() const { return step_; }

  // The model being trained (master weights, float32).
  UNet2DConditionModel model() const { return model_; }
  // A new float32 model on the model's device holding the EMA weights (the
  // current weights when there is no EMA).
  absl::StatusOr<UNet2DConditionModel> AveragedModel();

 private:
  ScratchTrainer(UNet2DConditionModel model, UNet2DConditionModel working,
                 const ScratchTrainerOptions& options);

  UNet2DConditionModel model_;    // masters
  UNet2DConditionModel working_;  // bf16 copy, or model_ itself
  ScratchTrainerOptions options_;
  std::vector<torch::Tensor> masters_, working_params_, ema_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t step_ = 0;
};

// A new float32 model of `model`'s config and removed units, with its
// weights copied (a plain copy of any model, e.g. for evaluation in fp32).
absl::StatusOr<UNet2DConditionModel> CopyModel(
    UNet2DConditionModelImpl& model, const torch::TensorOptions& options);

// Writes a model folder in the diffusers layout that LoadModel reads:
// `<dir>/config.json` (the text given) and
// `<dir>/diffusion_pytorch_model.safetensors` (every parameter under its
// checkpoint name, in `dtype`). Creates `dir`.
absl::Status SaveModelFolder(UNet2DConditionModelImpl& model,
                             const std::string& config_json,
                             const std::string& dir,
                             torch::Dtype dtype = torch::kFloat32);

}  // namespace lpd::engine

#endif  // LPD_STUDIES_QUALITY_TRAIN_SCRATCH_H_

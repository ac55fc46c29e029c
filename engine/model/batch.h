// What the model is trained and evaluated on: a noised batch and its target.
#ifndef LPD_ENGINE_MODEL_BATCH_H_
#define LPD_ENGINE_MODEL_BATCH_H_

#include <torch/types.h>

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "engine/model/unet.h"

namespace lpd::engine {

// One training batch: the noised inputs (x_t, t, text states ...) and the
// task target (ε or v, as the model's prediction type says).
struct TrainingBatch {
  UNetInputs noised;
  torch::Tensor target;
};
// Must return the same batch for the same step (all randomness keyed by the
// step, e.g. with BatchSeed of engine/train/distill.h): resuming relies on
// it.
using BatchSource = std::function<absl::StatusOr<TrainingBatch>(int64_t step)>;

}  // namespace lpd::engine

#endif  // LPD_ENGINE_MODEL_BATCH_H_

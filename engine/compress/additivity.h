// The additivity check of DESIGN §4.4: removal sets drawn at random, of
// several sizes around the plan's, each measured (the output loss of
// removing the whole set) against the prediction the knapsack relies on (the
// sum of its units' single-unit scores), correlated per set size so that set
// size alone does not inflate the correlation.
#ifndef LPD_ENGINE_COMPRESS_ADDITIVITY_H_
#define LPD_ENGINE_COMPRESS_ADDITIVITY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/compress/scoring.h"
#include "engine/model/unet.h"
#include "selection/correlation.h"

namespace lpd::engine {

struct AdditivityOptions {
  std::vector<int> set_sizes;  // each in [1, number of scored units]
  int sets_per_size = 8;
  uint64_t seed = 0;
};

// Set sizes around a plan of `plan_size` units: about ½, ¾, 1 and 1¼ of it,
// clamped to [1, num_units], without repeats.
std::vector<int> SetSizesAround(int plan_size, int num_units);

// For each size, `sets_per_size` distinct random sets of the scored units
// (seeded), each measured on `calibration` with output_loss's definition
// (mean over elements of (ε_full − ε_without_S)², batches weighted by size).
// The model runs without gradients. Errors: no scores, a size out of range,
// inputs that do not fit.
absl::StatusOr<std::vector<selection::AdditivitySample>> MeasureAdditivity(
    UNet2DConditionModelImpl& model, const Scores& scores,
    const std::vector<UNetInputs>& calibration,
    const AdditivityOptions& options);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_COMPRESS_ADDITIVITY_H_

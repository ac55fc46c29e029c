#include "engine/compress/additivity.h"

#include <torch/torch.h>

#include <algorithm>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {

std::vector<int> SetSizesAround(int plan_size, int num_units) {
  std::vector<int> sizes;
  for (double factor : {0.5, 0.75, 1.0, 1.25}) {
    const int size = std::clamp(static_cast<int>(plan_size * factor + 0.5), 1,
                                std::max(1, num_units));
    if (std::find(sizes.begin(), sizes.end(), size) == sizes.end()) {
      sizes.push_back(size);
    }
  }
  return sizes;
}

absl::StatusOr<std::vector<selection::AdditivitySample>> MeasureAdditivity(
    UNet2DConditionModelImpl& model, const Scores& scores,
    const std::vector<UNetInputs>& calibration,
    const AdditivityOptions& options) {
  const int num_units = static_cast<int>(scores.units.size());
  if (num_units == 0 || calibration.empty()) {
    return absl::InvalidArgumentError(
        "additivity: needs scored units and a calibration set");
  }
  for (int size : options.set_sizes) {
    if (size < 1 || size > num_units) {
      return absl::InvalidArgumentError(absl::StrCat(
          "additivity: set size ", size, " is outside [1, ", num_units, "]"));
    }
  }
  // The sets first (a pure function of the seed), then one pass per batch.
  std::mt19937_64 rng(options.seed);
  std::vector<std::vector<int>> sets;
  for (int size : options.set_sizes) {
    for (int k = 0; k < options.sets_per_size; ++k) {
      std::vector<int> indices(num_units);
      for (int i = 0; i < num_units; ++i) indices[i] = i;
      std::shuffle(indices.begin(), indices.end(), rng);
      indices.resize(size);
      std::sort(indices.begin(), indices.end());
      sets.push_back(std::move(indices));
    }
  }
  std::vector<double> weighted(sets.size(), 0.0);
  int64_t samples = 0;
  RETURN_IF_ERROR(GuardTorch("additivity", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    for (const UNetInputs& inputs : calibration) {
      RETURN_IF_ERROR(model.ValidateInputs(inputs));
      const torch::Tensor full = model.forward(inputs).to(torch::kFloat64);
      for (size_t s = 0; s < sets.size(); ++s) {
        std::set<std::string> removed;
        for (int i : sets[s]) removed.insert(scores.units[i].id);
        const torch::Tensor without =
            model.forward(inputs, removed).to(torch::kFloat64);
        weighted[s] += static_cast<double>(inputs.sample.size(0)) *
                       (full - without).square().mean().item<double>();
      }
      samples += inputs.sample.size(0);
    }
    return absl::OkStatus();
  }));
  std::vector<selection::AdditivitySample> out;
  for (size_t s = 0; s < sets.size(); ++s) {
    selection::AdditivitySample sample;
    sample.set_size = static_cast<int>(sets[s].size());
    for (int i : sets[s]) sample.predicted += scores.units[i].score;
    sample.measured = weighted[s] / static_cast<double>(samples);
    out.push_back(sample);
  }
  return out;
}

}  // namespace lpd::engine

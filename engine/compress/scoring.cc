#include "engine/compress/scoring.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

void FnvUpdate(uint64_t& hash, const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    hash ^= bytes[i];
    hash *= kFnvPrime;
  }
}

void FnvUpdate(uint64_t& hash, const std::string& text) {
  FnvUpdate(hash, text.data(), text.size());
  const unsigned char separator = 0xff;
  FnvUpdate(hash, &separator, 1);
}

std::string Hex64(uint64_t value) { return absl::StrFormat("%016x", value); }

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Mirrors UNet2DConditionModelImpl::Skipped (private there).
bool StepSkipped(const UNetStep& step, const std::vector<bool>& mask) {
  switch (step.op) {
    case UNetStep::Op::kResnet:
    case UNetStep::Op::kUpResnet:
      return mask[step.resnet_unit];
    case UNetStep::Op::kAttnEnter:
    case UNetStep::Op::kAttnExit:
      return mask[step.attention_unit];
    case UNetStep::Op::kTransformerBlock:
      return mask[step.block_unit];
    default:
      return false;
  }
}

const PrunableUnit* FindUnit(const UNet2DConditionModelImpl& model,
                             const std::string& id) {
  for (const PrunableUnit& unit : model.all_units()) {
    if (unit.id == id) return &unit;
  }
  return nullptr;
}

bool RemovedAtBuild(const UNet2DConditionModelImpl& model,
                    const std::string& id) {
  for (const std::string& removed : model.removed_units()) {
    if (id == removed || id.rfind(removed + ".", 0) == 0) return true;
  }
  return false;
}

// The units of the list, validated, in list order.
absl::StatusOr<std::vector<PrunableUnit>> LookUpUnits(
    const UNet2DConditionModelImpl& model,
    const std::vector<std::string>& unit_ids) {
  if (unit_ids.empty()) {
    return absl::InvalidArgumentError("scoring: the unit list is empty");
  }
  std::set<std::string> seen;
  std::vector<PrunableUnit> units;
  for (const std::string& id : unit_ids) {
    if (!seen.insert(id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("scoring: unit listed twice: ", id));
    }
    const PrunableUnit* unit = FindUnit(model, id);
    if (unit == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("scoring: unknown unit: ", id));
    }
    if (!unit->removable) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scoring: unit is not removable (its output changes shape): ", id));
    }
    if (RemovedAtBuild(model, id)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scoring: unit was left out of the model when it was built: ", id));
    }
    units.push_back(*unit);
  }
  return units;
}

// output_loss for `units` (each's mask precomputed), accumulated over the
// calibration set. Returns one L_i per unit.
absl::StatusOr<std::vector<double>> OutputLoss(
    UNet2DConditionModelImpl& model, const std::vector<PrunableUnit>& units,
    const std::vector<UNetInputs>& calibration, const ScoreOptions& options) {
  const std::vector<UNetStep>& steps = model.steps();
  const size_t num_steps = steps.size();
  ASSIGN_OR_RETURN(std::vector<bool> base, model.MaskFor({}));
  std::vector<std::vector<bool>> masks;
  std::vector<size_t> first_step;
  for (const PrunableUnit& unit : units) {
    ASSIGN_OR_RETURN(std::vector<bool> mask, model.MaskFor({unit.id}));
    size_t first = num_steps;
    for (size_t s = 0; s < num_steps; ++s) {
      if (StepSkipped(steps[s], mask) && !StepSkipped(steps[s], base)) {
        first = s;
        break;
      }
    }
    if (first == num_steps) {
      return absl::InvalidArgumentError(
          absl::StrCat("scoring: removing unit ", unit.id, " skips no step"));
    }
    masks.push_back(std::move(mask));
    first_step.push_back(first);
  }
  // Units in the order the full pass reaches them.
  std::vector<size_t> order(units.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return first_step[a] < first_step[b];
  });

  torch::NoGradGuard no_grad;
  std::vector<double> weighted(units.size(), 0.0);
  int64_t samples = 0;
  const int64_t total_items =
      static_cast<int64_t>(units.size() * calibration.size());
  int64_t done_items = 0;
  auto item_done = [&]() -> absl::Status {
    ++done_items;
    if (!options.progress) return absl::OkStatus();
    return options.progress(done_items, total_items);
  };
  for (size_t b = 0; b < calibration.size(); ++b) {
    const UNetInputs& inputs = calibration[b];
    ASSIGN_OR_RETURN(UNetState start, model.Begin(inputs));
    const int64_t batch = inputs.sample.size(0);
    std::vector<torch::Tensor> without(units.size());
    torch::Tensor full;
    if (options.method == OutputLossMethod::kNaive) {
      UNetState state = start;
      model.Run(state, 0, num_steps, base, /*capture=*/false);
      full = state.h;
      for (size_t k = 0; k < units.size(); ++k) {
        UNetState other = start;
        model.Run(other, 0, num_steps, masks[k], /*capture=*/false);
        without[k] = other.h;
        RETURN_IF_ERROR(item_done());
      }
    } else {
      UNetState state = std::move(start);
      size_t cursor = 0;
      std::vector<std::pair<size_t, UNetState>> pending;
      auto flush = [&]() -> absl::Status {
        for (auto& [k, saved] : pending) {
          model.Run(saved, first_step[k], num_steps, masks[k],
                    /*capture=*/false);
          without[k] = saved.h;
          RETURN_IF_ERROR(item_done());
        }
        pending.clear();
        return absl::OkStatus();
      };
      for (size_t k : order) {
        model.Run(state, cursor, first_step[k], base, /*capture=*/false);
        cursor = first_step[k];
        pending.emplace_back(k, state);  // shares the tensor handles
        if (options.max_cached_states > 0 &&
            pending.size() >= static_cast<size_t>(options.max_cached_states)) {
          RETURN_IF_ERROR(flush());
        }
      }
      RETURN_IF_ERROR(flush());
      model.Run(state, cursor, num_steps, base, /*capture=*/false);
      full = state.h;
    }
    const torch::Tensor full64 = full.to(torch::kFloat64);
    for (size_t k = 0; k < units.size(); ++k) {
      if (without[k].sizes() != full.sizes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "scoring: output without ", units[k].id, " has another shape"));
      }
      const double mse = (full64 - without[k].to(torch::kFloat64))
                             .square()
                             .mean()
                             .item<double>();
      weighted[k] += static_cast<double>(batch) * mse;
    }
    samples += batch;
  }
  for (double& w : weighted) w /= static_cast<double>(samples);
  return weighted;
}

absl::StatusOr<double> MeanAbsWeight(const UNet2DConditionModelImpl& model,
                                     const std::string& id) {
  const std::string prefix = id + ".";
  double sum = 0;
  int64_t count = 0;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (item.key().rfind(prefix, 0) != 0) continue;
    sum += item.value().detach().to(torch::kFloat64).abs().sum().item<double>();
    count += item.value().numel();
  }
  if (count == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("scoring: unit ", id, " has no parameters"));
  }
  return sum / static_cast<double>(count);
}

double RandomScore(uint64_t seed, const std::string& id) {
  uint64_t hash = kFnvOffset;
  FnvUpdate(hash, id);
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ hash);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

}  // namespace

std::vector<std::string> ScorableUnitIds(const UNet2DConditionModelImpl& model,
                                         const std::set<UnitKind>& kinds) {
  std::vector<std::string> ids;
  for (const PrunableUnit& unit : model.Units(kinds)) {
    if (unit.removable && !RemovedAtBuild(model, unit.id)) {
      ids.push_back(unit.id);
    }
  }
  return ids;
}

absl::StatusOr<std::string> CalibrationFingerprint(
    const std::vector<UNetInputs>& calibration) {
  return GuardTorch(
      "calibration fingerprint", [&]() -> absl::StatusOr<std::string> {
        uint64_t hash = kFnvOffset;
        auto add = [&](const std::string& name, const torch::Tensor& t) {
          FnvUpdate(hash, name);
          if (!t.defined()) {
            FnvUpdate(hash, std::string("undefined"));
            return;
          }
          FnvUpdate(hash, std::string(c10::toString(t.scalar_type())));
          for (int64_t size : t.sizes()) FnvUpdate(hash, &size, sizeof(size));
          const torch::Tensor cpu = t.detach().to(torch::kCPU).contiguous();
          FnvUpdate(hash, cpu.data_ptr(), cpu.nbytes());
        };
        for (const UNetInputs& in : calibration) {
          add("sample", in.sample);
          add("timestep", in.timestep);
          add("encoder_hidden_states", in.encoder_hidden_states);
          add("text_embeds", in.text_embeds);
          add("time_ids", in.time_ids);
        }
        return Hex64(hash);
      });
}

absl::StatusOr<Scores> ScoreUnits(UNet2DConditionModelImpl& model,
                                  const std::vector<std::string>& unit_ids,
                                  const std::vector<UNetInputs>& calibration,
                                  const ScoreOptions& options) {
  return GuardTorch("scoring", [&]() -> absl::StatusOr<Scores> {
    RETURN_IF_ERROR(selection::CheckScoreShard(options.shard));
    RETURN_IF_ERROR(LookUpUnits(model, unit_ids).status());
    ASSIGN_OR_RETURN(std::vector<std::string> own,
                     ShardUnitIds(unit_ids, options.shard));
    std::vector<PrunableUnit> units;
    for (const std::string& id : own) units.push_back(*FindUnit(model, id));

    Scores scores;
    scores.criterion = ScoreCriterionName(options.criterion);
    scores.seed = options.seed;
    scores.total_units = static_cast<int64_t>(unit_ids.size());
    scores.units_fingerprint = UnitListFingerprint(unit_ids);
    scores.total_params = model.NumParameters();
    scores.shard = options.shard;

    std::vector<double> values(units.size(), 0.0);
    switch (options.criterion) {
      case ScoreCriterion::kOutputLoss: {
        if (calibration.empty()) {
          return absl::InvalidArgumentError(
              "scoring: output_loss needs a non-empty calibration set");
        }
        if (options.max_cached_states < 0) {
          return absl::InvalidArgumentError(
              "scoring: max_cached_states must be >= 0");
        }
        for (size_t b = 0; b < calibration.size(); ++b) {
          absl::Status valid = model.ValidateInputs(calibration[b]);
          if (!valid.ok()) {
            return absl::InvalidArgumentError(absl::StrCat(
                "scoring: calibration batch ", b, ": ", valid.message()));
          }
          scores.calibration_samples += calibration[b].sample.size(0);
        }
        ASSIGN_OR_RETURN(scores.calibration_fingerprint,
                         CalibrationFingerprint(calibration));
        if (!units.empty()) {
          ASSIGN_OR_RETURN(values,
                           OutputLoss(model, units, calibration, options));
        }
        break;
      }
      case ScoreCriterion::kMagnitude: {
        torch::NoGradGuard no_grad;
        for (size_t k = 0; k < units.size(); ++k) {
          ASSIGN_OR_RETURN(values[k], MeanAbsWeight(model, units[k].id));
          if (options.progress) {
            RETURN_IF_ERROR(options.progress(k + 1, units.size()));
          }
        }
        break;
      }
      case ScoreCriterion::kRandom:
        for (size_t k = 0; k < units.size(); ++k) {
          values[k] = RandomScore(options.seed, units[k].id);
          if (options.progress) {
            RETURN_IF_ERROR(options.progress(k + 1, units.size()));
          }
        }
        break;
    }
    for (size_t k = 0; k < units.size(); ++k) {
      scores.units.push_back({.id = units[k].id,
                              .kind = std::string(UnitKindName(units[k].kind)),
                              .params = units[k].num_parameters,
                              .score = values[k]});
    }
    return scores;
  });
}

namespace {

absl::StatusOr<int64_t> EffectiveParams(const UNet2DConditionModelImpl& model,
                                        const std::set<std::string>& remove) {
  ASSIGN_OR_RETURN(std::vector<std::string> effective,
                   model.EffectiveRemoval(remove));
  int64_t params = 0;
  for (const std::string& id : effective) {
    params += FindUnit(model, id)->num_parameters;
  }
  return params;
}

std::vector<std::string> InForwardOrder(const UNet2DConditionModelImpl& model,
                                        const std::set<std::string>& ids) {
  std::vector<std::string> out;
  for (const PrunableUnit& unit : model.all_units()) {
    if (ids.contains(unit.id)) out.push_back(unit.id);
  }
  return out;
}

bool StartsWith(const std::string& text, const std::string& prefix) {
  return text.rfind(prefix, 0) == 0;
}

}  // namespace

absl::StatusOr<HandcraftedRemoval> HandcraftedSelection(
    const UNet2DConditionModelImpl& model, double target_ratio) {
  if (!(target_ratio > 0 && target_ratio < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "handcrafted: target ratio ", target_ratio, " is not in (0, 1)"));
  }
  const UNetConfig& cfg = model.config();
  HandcraftedRemoval result;
  result.total_params = model.NumParameters();
  if (result.total_params <= 0) {
    return absl::InvalidArgumentError("handcrafted: the model is empty");
  }
  using DB = DownBlockType;
  using UB = UpBlockType;
  const bool sd1 =
      !cfg.text_time_embedding &&
      cfg.down_block_types ==
          std::vector<DB>{DB::kCrossAttnDownBlock2D, DB::kCrossAttnDownBlock2D,
                          DB::kCrossAttnDownBlock2D, DB::kDownBlock2D} &&
      cfg.up_block_types ==
          std::vector<UB>{UB::kUpBlock2D, UB::kCrossAttnUpBlock2D,
                          UB::kCrossAttnUpBlock2D, UB::kCrossAttnUpBlock2D};
  const bool sdxl = cfg.text_time_embedding && cfg.down_block_types.size() == 3;
  if (sd1) {
    result.rule = "bk_sdm_base";
    std::set<std::string> remove;
    for (const char* path : {"down_blocks", "up_blocks"}) {
      for (int n = 0; n < 4; ++n) {
        const std::string resnet = absl::StrCat(path, ".", n, ".resnets.1");
        const PrunableUnit* unit = FindUnit(model, resnet);
        if (unit == nullptr || !unit->removable) {
          return absl::InvalidArgumentError(absl::StrCat(
              "handcrafted: BK-SDM-Base needs a removable ", resnet));
        }
        remove.insert(resnet);
        const std::string attention =
            absl::StrCat(path, ".", n, ".attentions.1");
        if (FindUnit(model, attention) != nullptr) remove.insert(attention);
      }
    }
    result.removed = InForwardOrder(model, remove);
    ASSIGN_OR_RETURN(result.removed_params, EffectiveParams(model, remove));
  } else if (sdxl) {
    result.rule = "sdxl_uniform_depth";
    const std::vector<std::string> prefixes = {
        absl::StrCat("down_blocks.", cfg.down_block_types.size() - 1,
                     ".attentions."),
        "mid_block.attentions.", "up_blocks.0.attentions."};
    // The blocks of each deepest attention, in order.
    std::vector<std::vector<std::string>> blocks;
    for (const PrunableUnit& unit : model.all_units()) {
      if (unit.kind != UnitKind::kAttention) continue;
      bool deepest = false;
      for (const std::string& p : prefixes) deepest |= StartsWith(unit.id, p);
      if (!deepest) continue;
      std::vector<std::string> own;
      for (const PrunableUnit& block : model.all_units()) {
        if (block.kind == UnitKind::kTransformerBlock &&
            StartsWith(block.id, unit.id + ".transformer_blocks.")) {
          own.push_back(block.id);
        }
      }
      std::sort(own.begin(), own.end(),
                [](const std::string& a, const std::string& b) {
                  auto index = [](const std::string& s) {
                    return std::stoll(s.substr(s.rfind('.') + 1));
                  };
                  return index(a) < index(b);
                });
      if (own.empty()) continue;
      blocks.push_back(std::move(own));
    }
    if (blocks.empty()) {
      return absl::InvalidArgumentError(
          "handcrafted: no transformer blocks at the deepest level");
    }
    size_t depth = blocks.front().size();
    for (const auto& b : blocks) depth = std::min(depth, b.size());
    double best = 0;
    for (size_t k = 1; k <= depth; ++k) {
      std::set<std::string> remove;
      for (const auto& b : blocks) {
        for (size_t j = b.size() - k; j < b.size(); ++j) remove.insert(b[j]);
      }
      ASSIGN_OR_RETURN(int64_t params, EffectiveParams(model, remove));
      best = static_cast<double>(params) /
             static_cast<double>(result.total_params);
      if (best >= target_ratio) {
        result.removed = InForwardOrder(model, remove);
        result.removed_params = params;
        result.trailing_blocks = static_cast<int>(k);
        break;
      }
    }
    if (result.trailing_blocks == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "handcrafted: target ratio ", target_ratio,
          " cannot be reached by removing trailing transformer blocks of the "
          "deepest attentions (at most ",
          best, " with all ", depth, " removed)"));
    }
  } else {
    return absl::InvalidArgumentError(
        "handcrafted: the model is neither an SD-1.x/2.x layout (4 blocks, "
        "CrossAttnDown x3 + DownBlock2D) nor an SDXL layout (text_time, 3 "
        "blocks)");
  }
  result.achieved_ratio = static_cast<double>(result.removed_params) /
                          static_cast<double>(result.total_params);
  return result;
}

}  // namespace lpd::engine

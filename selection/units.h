// The prunable units of a model as data (units.json), and the pruning rule
// on them: which units a removal takes out in effect (DESIGN §4.2). Written
// once, here: the engine's U-Net (UNet2DConditionModelImpl::EffectiveRemoval)
// and SELECT both ask this rule. No LibTorch.
#ifndef LPD_SELECTION_UNITS_H_
#define LPD_SELECTION_UNITS_H_

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace lpd::selection {

// The kinds of prunable unit (DESIGN §4.2), one table for the whole project:
// units.json, scores.json, the U-Net and the job spec's units all spell them
// "resnet", "attention", "transformer_block".
enum class UnitKind { kResnet, kAttention, kTransformerBlock };
std::string_view UnitKindName(UnitKind kind);
// InvalidArgument naming the expected names for anything else.
absl::StatusOr<UnitKind> ParseUnitKind(std::string_view name);
// Whether ParseUnitKind accepts `name`.
bool IsUnitKindName(absl::string_view name);

// One prunable unit of a model, as units.json records it.
struct ModelUnit {
  std::string id;      // e.g. "down_blocks.1.attentions.0"
  std::string kind;    // "resnet", "attention" or "transformer_block"
  int64_t params = 0;  // parameters under the unit's key prefix, >= 0
  bool removable = false;
  // transformer_block: the id of the attention holding it; else "".
  std::string attention;
};

// units.json: every prunable unit of the teacher in forward order (all
// kinds, whatever the job's granularity) and the teacher's parameter count.
struct ModelUnits {
  int64_t total_params = 0;
  std::vector<ModelUnit> units;
};

// {"version": 1, "total_params", "units": [{"id", "kind", "params",
// "removable", "attention"?}]}.
nlohmann::json ModelUnitsToJson(const ModelUnits& units);
// Checks types, unique ids, known kinds, params >= 0, total_params >= 1,
// that every block names an attention listed before it. InvalidArgument
// naming the field otherwise.
absl::StatusOr<ModelUnits> ModelUnitsFromJson(const nlohmann::json& json);

// The units a removal takes out in effect, sorted by id: `remove`, where an
// attention replaces its blocks when it is removed itself or all of its
// blocks are. InvalidArgument for an unknown or non-removable id.
absl::StatusOr<std::vector<std::string>> EffectiveRemoval(
    const ModelUnits& units, const std::set<std::string>& remove);

// The parameters of EffectiveRemoval(units, remove).
absl::StatusOr<int64_t> EffectiveRemovedParams(
    const ModelUnits& units, const std::set<std::string>& remove);

// The units of the given kinds that can be scored (removable), in forward
// order: engine::ScorableUnitIds of a teacher without removed units.
std::vector<std::string> ScorableUnitIds(const ModelUnits& units,
                                         const std::set<std::string>& kinds);

}  // namespace lpd::selection

#endif  // LPD_SELECTION_UNITS_H_

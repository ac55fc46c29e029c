#include "selection/units.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"

namespace lpd::selection {
namespace {

absl::Status UnitsError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("units.json: ", field, ": ", what));
}

}  // namespace

std::string_view UnitKindName(UnitKind kind) {
  switch (kind) {
    case UnitKind::kResnet:
      return "resnet";
    case UnitKind::kAttention:
      return "attention";
    case UnitKind::kTransformerBlock:
      return "transformer_block";
  }
  return "?";
}

absl::StatusOr<UnitKind> ParseUnitKind(std::string_view name) {
  for (UnitKind kind :
       {UnitKind::kResnet, UnitKind::kAttention, UnitKind::kTransformerBlock}) {
    if (name == UnitKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown unit kind \"", std::string(name),
                   "\" (expected resnet, attention or transformer_block)"));
}

bool IsUnitKindName(absl::string_view name) {
  return ParseUnitKind(std::string_view(name.data(), name.size())).ok();
}

nlohmann::json ModelUnitsToJson(const ModelUnits& units) {
  nlohmann::json list = nlohmann::json::array();
  for (const ModelUnit& u : units.units) {
    nlohmann::json unit = {{"id", u.id},
                           {"kind", u.kind},
                           {"params", u.params},
                           {"removable", u.removable}};
    if (!u.attention.empty()) unit["attention"] = u.attention;
    list.push_back(std::move(unit));
  }
  return {{"version", 1},
          {"total_params", units.total_params},
          {"units", std::move(list)}};
}

absl::StatusOr<ModelUnits> ModelUnitsFromJson(const nlohmann::json& json) {
  if (!json.is_object()) return UnitsError("(top)", "expected an object");
  for (const auto& [key, value] : json.items()) {
    if (key != "version" && key != "total_params" && key != "units") {
      return UnitsError(key, "unknown field");
    }
  }
  if (!json.contains("version") || json["version"] != 1) {
    return UnitsError("version", "expected 1");
  }
  ModelUnits units;
  if (!json.contains("total_params") ||
      !json["total_params"].is_number_integer() ||
      json["total_params"].get<int64_t>() < 1) {
    return UnitsError("total_params", "expected an integer >= 1");
  }
  units.total_params = json["total_params"].get<int64_t>();
  if (!json.contains("units") || !json["units"].is_array()) {
    return UnitsError("units", "expected an array");
  }
  std::map<std::string, std::string> kind_of;
  for (size_t i = 0; i < json["units"].size(); ++i) {
    const nlohmann::json& u = json["units"][i];
    const std::string where = absl::StrCat("units[", i, "]");
    if (!u.is_object()) return UnitsError(where, "expected an object");
    for (const auto& [key, value] : u.items()) {
      if (key != "id" && key != "kind" && key != "params" &&
          key != "removable" && key != "attention") {
        return UnitsError(absl::StrCat(where, ".", key), "unknown field");
      }
    }
    ModelUnit unit;
    if (!u.contains("id") || !u["id"].is_string() ||
        u["id"].get<std::string>().empty()) {
      return UnitsError(where + ".id", "expected a non-empty string");
    }
    unit.id = u["id"].get<std::string>();
    if (!u.contains("kind") || !u["kind"].is_string() ||
        !IsUnitKindName(u["kind"].get<std::string>())) {
      return UnitsError(where + ".kind", "expected a unit kind");
    }
    unit.kind = u["kind"].get<std::string>();
    if (!u.contains("params") || !u["params"].is_number_integer() ||
        u["params"].get<int64_t>() < 0) {
      return UnitsError(where + ".params", "expected an integer >= 0");
    }
    unit.params = u["params"].get<int64_t>();
    if (!u.contains("removable") || !u["removable"].is_boolean()) {
      return UnitsError(where + ".removable", "expected a boolean");
    }
    unit.removable = u["removable"].get<bool>();
    if (u.contains("attention")) {
      if (!u["attention"].is_string()) {
        return UnitsError(where + ".attention", "expected a string");
      }
      unit.attention = u["attention"].get<std::string>();
    }
    if ((unit.kind == UnitKindName(UnitKind::kTransformerBlock)) !=
        !unit.attention.empty()) {
      return UnitsError(where + ".attention",
                        "required for transformer blocks, only for them");
    }
    if (!unit.attention.empty() &&
        kind_of[unit.attention] != UnitKindName(UnitKind::kAttention)) {
      return UnitsError(where + ".attention",
                        "does not name an attention listed before");
    }
    if (!kind_of.emplace(unit.id, unit.kind).second) {
      return UnitsError(where + ".id", absl::StrCat("repeated: ", unit.id));
    }
    units.units.push_back(std::move(unit));
  }
  return units;
}

absl::StatusOr<std::vector<std::string>> EffectiveRemoval(
    const ModelUnits& units, const std::set<std::string>& remove) {
  std::map<std::string, const ModelUnit*> by_id;
  for (const ModelUnit& u : units.units) by_id[u.id] = &u;
  std::set<std::string> effective;
  for (const std::string& id : remove) {
    auto it = by_id.find(id);
    if (it == by_id.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown unit \"", id, "\""));
    }
    if (!it->second->removable) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unit \"", id,
          "\" is not removable: its output has a different shape than its "
          "main-path input"));
    }
    effective.insert(id);
  }
  // Attentions all of whose blocks are removed are removed themselves.
  std::map<std::string, std::vector<std::string>> blocks;
  for (const ModelUnit& u : units.units) {
    if (!u.attention.empty()) blocks[u.attention].push_back(u.id);
  }
  for (const ModelUnit& a : units.units) {
    if (a.kind != UnitKindName(UnitKind::kAttention)) continue;
    const std::vector<std::string>& own = blocks[a.id];
    const bool all_blocks =
        !own.empty() &&
        std::all_of(own.begin(), own.end(), [&](const std::string& b) {
          return effective.contains(b);
        });
    if (!effective.contains(a.id) && !all_blocks) continue;
    effective.insert(a.id);
    for (const std::string& b : own) effective.erase(b);
  }
  return std::vector<std::string>(effective.begin(), effective.end());
}

absl::StatusOr<int64_t> EffectiveRemovedParams(
    const ModelUnits& units, const std::set<std::string>& remove) {
  ASSIGN_OR_RETURN(std::vector<std::string> effective,
                   EffectiveRemoval(units, remove));
  const std::set<std::string> ids(effective.begin(), effective.end());
  int64_t params = 0;
  for (const ModelUnit& u : units.units) {
    if (ids.contains(u.id)) params += u.params;
  }
  return params;
}

std::vector<std::string> ScorableUnitIds(const ModelUnits& units,
                                         const std::set<std::string>& kinds) {
  std::vector<std::string> ids;
  for (const ModelUnit& u : units.units) {
    if (u.removable && kinds.contains(u.kind)) ids.push_back(u.id);
  }
  return ids;
}

}  // namespace lpd::selection

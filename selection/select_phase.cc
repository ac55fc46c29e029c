#include "selection/select_phase.h"

#include <algorithm>
#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "client/job_spec.h"
#include "common/status_macros.h"
#include "storage/object_store.h"

namespace lpd::selection {
namespace {

absl::Status InSelect(const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat("SELECT: ", status.message()));
}

absl::Status UnitsError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("units.json: ", field, ": ", what));
}

// The JSON object `name` under the output: FailedPrecondition when missing
// (`missing_hint` says what should have written it), InvalidArgument when
// it does not parse.
absl::StatusOr<nlohmann::json> GetJson(const storage::StoreLocation& out,
                                       absl::string_view name,
                                       absl::string_view missing_hint) {
  const std::string key = out.Key(name);
  absl::StatusOr<std::string> text = out.store->Get(key);
  if (absl::IsNotFound(text.status())) {
    return absl::FailedPreconditionError(absl::StrCat(
        out.store->UriOf(key), " is missing (", missing_hint, ")"));
  }
  if (!text.ok()) return text.status();
  nlohmann::json json = nlohmann::json::parse(*text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(out.store->UriOf(key), ": not a JSON object"));
  }
  return json;
}

absl::Status PutJson(const storage::StoreLocation& out, absl::string_view name,
                     const nlohmann::json& json) {
  return out.store->Put(out.Key(name), json.dump(2) + "\n");
}

absl::StatusOr<nlohmann::json> Select(
    const lpd::v1::CompressionJob& job, int count,
    const std::function<void(const std::string&)>& log) {
  const auto& spec = job.spec();
  const std::string criterion(client::YamlName(spec.prune().criterion()));
  const double target = spec.prune().target_ratio();
  const bool handcrafted =
      spec.prune().criterion() == lpd::v1::CRITERION_HANDCRAFTED;
  if (count < 1 || (handcrafted && count != 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "score shard count ", count, " is invalid (need >= 1; exactly 1 for ",
        "criterion handcrafted)"));
  }
  ASSIGN_OR_RETURN(storage::StoreLocation out,
                   storage::OpenStoreLocation(spec.output().uri()));
  ASSIGN_OR_RETURN(nlohmann::json units_json,
                   GetJson(out, kUnitsObject, "run SCORE first"));
  absl::StatusOr<ModelUnits> parsed_units = ModelUnitsFromJson(units_json);
  if (!parsed_units.ok()) {
    return absl::Status(parsed_units.status().code(),
                        absl::StrCat(out.store->UriOf(out.Key(kUnitsObject)),
                                     ": ", parsed_units.status().message()));
  }
  const ModelUnits& units = *parsed_units;
  const int64_t total = units.total_params;
  std::map<std::string, int64_t> params;
  for (const ModelUnit& u : units.units) params[u.id] = u.params;

  Plan plan;
  if (handcrafted) {
    ASSIGN_OR_RETURN(nlohmann::json json,
                     GetJson(out, kHandcraftedObject, "run SCORE first"));
    absl::StatusOr<HandcraftedChoice> choice = HandcraftedFromJson(json);
    if (!choice.ok()) {
      return absl::Status(
          choice.status().code(),
          absl::StrCat(out.store->UriOf(out.Key(kHandcraftedObject)), ": ",
                       choice.status().message()));
    }
    if (choice->target_ratio != target) {
      return absl::FailedPreconditionError(
          absl::StrCat(out.store->UriOf(out.Key(kHandcraftedObject)),
                       " was made for target ratio ", choice->target_ratio,
                       ", the job's is ", target, " (re-run SCORE)"));
    }
    std::vector<ScoredUnit> removed;
    for (const std::string& id : choice->removed) {
      auto it = params.find(id);
      if (it == params.end()) {
        return absl::FailedPreconditionError(
            absl::StrCat("handcrafted.json removes ", id,
                         ", which units.json does not list (re-run SCORE)"));
      }
      removed.push_back({.id = id, .params = it->second, .score = 0});
    }
    ASSIGN_OR_RETURN(plan,
                     PlanForRemoval(removed, total, target, choice->removed));
    if (log) log(absl::StrCat("SELECT: handcrafted rule ", choice->rule));
  } else {
    std::vector<std::string> missing;
    for (int i = 0; i < count; ++i) {
      const std::string key = out.Key(ScoreShardObject(i, count));
      ASSIGN_OR_RETURN(bool exists, out.store->Exists(key));
      if (!exists) missing.push_back(out.store->UriOf(key));
    }
    if (!missing.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "score shard", missing.size() > 1 ? "s " : " ",
          absl::StrJoin(missing, ", "), missing.size() > 1 ? " are" : " is",
          " missing (", missing.size(), " of ", count,
          " SCORE tasks have not finished)"));
    }
    std::vector<Scores> shards;
    for (int i = 0; i < count; ++i) {
      const std::string name = ScoreShardObject(i, count);
      ASSIGN_OR_RETURN(nlohmann::json json,
                       GetJson(out, name, "its SCORE task has not finished"));
      absl::StatusOr<Scores> shard = ScoresFromJson(json);
      if (!shard.ok()) {
        return absl::Status(shard.status().code(),
                            absl::StrCat(out.store->UriOf(out.Key(name)), ": ",
                                         shard.status().message()));
      }
      if (shard->shard.index != i || shard->shard.count != count) {
        return absl::InvalidArgumentError(
            absl::StrCat(out.store->UriOf(out.Key(name)), " holds shard ",
                         shard->shard.index, " of ", shard->shard.count));
      }
      shards.push_back(*std::move(shard));
    }
    ASSIGN_OR_RETURN(Scores scores, MergeScores(shards));
    // The scores must be this job's: criterion, seed, model, unit list.
    std::set<std::string> kinds;
    for (int unit : spec.prune().units()) {
      kinds.insert(
          std::string(client::YamlName(static_cast<lpd::v1::PruneUnit>(unit))));
    }
    const std::vector<std::string> ids = ScorableUnitIds(units, kinds);
    std::string stale;
    if (scores.criterion != criterion) {
      stale = absl::StrCat("criterion ", scores.criterion);
    } else if (scores.seed != spec.seed()) {
      stale = absl::StrCat("seed ", scores.seed);
    } else if (scores.total_params != total) {
      stale = absl::StrCat("a model of ", scores.total_params, " parameters");
    } else if (scores.units_fingerprint != UnitListFingerprint(ids)) {
      stale = "another unit list";
    }
    if (!stale.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the scores under ", out.store->UriOf(out.Key("scores/")),
          " were made for ", stale, ", not for this job (re-run SCORE)"));
    }
    RETURN_IF_ERROR(PutJson(out, kScoresObject, ScoresToJson(scores)));
    ASSIGN_OR_RETURN(plan, SelectUnits(ToScoredUnits(scores), total, target));
  }
  plan.criterion = criterion;
  ASSIGN_OR_RETURN(
      plan.removed_params,
      EffectiveRemovedParams(units, std::set<std::string>(plan.removed.begin(),
                                                          plan.removed.end())));
  plan.achieved_ratio =
      static_cast<double>(plan.removed_params) / static_cast<double>(total);
  plan.overshoot = plan.achieved_ratio - plan.target_ratio;
  const nlohmann::json plan_json = PlanToJson(plan);
  RETURN_IF_ERROR(PutJson(out, kPlanObject, plan_json));
  if (log) {
    log(absl::StrFormat(
        "SELECT: remove %d units (%d of %d parameters, ratio %.4f for target "
        "%.4f), predicted loss %.6g; wrote %s",
        plan.removed.size(), plan.removed_params, total, plan.achieved_ratio,
        target, plan.predicted_loss, out.store->UriOf(out.Key(kPlanObject))));
  }
  return nlohmann::json{{"plan", plan_json}, {"score_shards", count}};
}

}  // namespace

std::string ScoreShardObject(int index, int count) {
  return absl::StrCat("scores/shard-", index, "-of-", count, ".json");
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
    if ((unit.kind == "transformer_block") != !unit.attention.empty()) {
      return UnitsError(where + ".attention",
                        "required for transformer blocks, only for them");
    }
    if (!unit.attention.empty() &&
        kind_of[unit.attention] != std::string("attention")) {
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
    if (a.kind != "attention") continue;
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

nlohmann::json HandcraftedToJson(const HandcraftedChoice& choice) {
  return {{"rule", choice.rule},
          {"target_ratio", choice.target_ratio},
          {"removed", choice.removed},
          {"trailing_blocks", choice.trailing_blocks}};
}

absl::StatusOr<HandcraftedChoice> HandcraftedFromJson(
    const nlohmann::json& json) {
  auto error = [](absl::string_view field, absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("handcrafted.json: ", field, ": ", what));
  };
  if (!json.is_object()) return error("(top)", "expected an object");
  for (const auto& [key, value] : json.items()) {
    if (key != "rule" && key != "target_ratio" && key != "removed" &&
        key != "trailing_blocks") {
      return error(key, "unknown field");
    }
  }
  HandcraftedChoice choice;
  if (!json.contains("rule") || !json["rule"].is_string()) {
    return error("rule", "expected a string");
  }
  choice.rule = json["rule"].get<std::string>();
  if (!json.contains("target_ratio") || !json["target_ratio"].is_number()) {
    return error("target_ratio", "expected a number");
  }
  choice.target_ratio = json["target_ratio"].get<double>();
  if (!json.contains("removed") || !json["removed"].is_array()) {
    return error("removed", "expected an array of unit ids");
  }
  for (const auto& id : json["removed"]) {
    if (!id.is_string()) return error("removed", "expected unit ids");
    choice.removed.push_back(id.get<std::string>());
  }
  if (!json.contains("trailing_blocks") ||
      !json["trailing_blocks"].is_number_integer() ||
      json["trailing_blocks"].get<int64_t>() < 0) {
    return error("trailing_blocks", "expected an integer >= 0");
  }
  choice.trailing_blocks = json["trailing_blocks"].get<int>();
  return choice;
}

absl::StatusOr<nlohmann::json> RunSelectTask(
    const lpd::v1::CompressionJob& job, int score_shard_count,
    const std::function<void(const std::string&)>& log) {
  absl::StatusOr<nlohmann::json> result = Select(job, score_shard_count, log);
  if (!result.ok()) return InSelect(result.status());
  return result;
}

}  // namespace lpd::selection

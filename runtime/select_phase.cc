#include "runtime/select_phase.h"

#include <algorithm>
#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "job/spec.h"
#include "storage/object_store.h"

namespace lpd::selection {
namespace {

absl::Status InSelect(const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat("SELECT: ", status.message()));
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
  const std::string criterion(job::YamlName(spec.prune().criterion()));
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
                   GetJson(out, job::kUnitsObject, "run SCORE first"));
  absl::StatusOr<ModelUnits> parsed_units = ModelUnitsFromJson(units_json);
  if (!parsed_units.ok()) {
    return absl::Status(
        parsed_units.status().code(),
        absl::StrCat(out.store->UriOf(out.Key(job::kUnitsObject)), ": ",
                     parsed_units.status().message()));
  }
  const ModelUnits& units = *parsed_units;
  const int64_t total = units.total_params;
  std::map<std::string, int64_t> params;
  for (const ModelUnit& u : units.units) params[u.id] = u.params;

  Plan plan;
  if (handcrafted) {
    ASSIGN_OR_RETURN(nlohmann::json json,
                     GetJson(out, job::kHandcraftedObject, "run SCORE first"));
    absl::StatusOr<HandcraftedChoice> choice = HandcraftedFromJson(json);
    if (!choice.ok()) {
      return absl::Status(
          choice.status().code(),
          absl::StrCat(out.store->UriOf(out.Key(job::kHandcraftedObject)), ": ",
                       choice.status().message()));
    }
    if (choice->target_ratio != target) {
      return absl::FailedPreconditionError(
          absl::StrCat(out.store->UriOf(out.Key(job::kHandcraftedObject)),
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
      const std::string key = out.Key(job::ScoreShardObject(i, count));
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
      const std::string name = job::ScoreShardObject(i, count);
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
          std::string(job::YamlName(static_cast<lpd::v1::PruneUnit>(unit))));
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
    RETURN_IF_ERROR(PutJson(out, job::kScoresObject, ScoresToJson(scores)));
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
  RETURN_IF_ERROR(PutJson(out, job::kPlanObject, plan_json));
  if (log) {
    log(absl::StrFormat(
        "SELECT: remove %d units (%d of %d parameters, ratio %.4f for target "
        "%.4f), predicted loss %.6g; wrote %s",
        plan.removed.size(), plan.removed_params, total, plan.achieved_ratio,
        target, plan.predicted_loss,
        out.store->UriOf(out.Key(job::kPlanObject))));
  }
  return nlohmann::json{{"plan", plan_json}, {"score_shards", count}};
}

}  // namespace

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

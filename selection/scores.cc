#include "selection/scores.h"

#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"

namespace lpd::selection {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

void FnvUpdate(uint64_t& hash, const std::string& text) {
  for (unsigned char c : text) {
    hash ^= c;
    hash *= kFnvPrime;
  }
  hash ^= 0xff;  // separator
  hash *= kFnvPrime;
}

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("scores.json: ", field, ": ", what));
}

absl::Status CheckKeys(const nlohmann::json& object, const std::string& where,
                       const std::set<std::string>& keys) {
  if (!object.is_object()) return FieldError(where, "expected an object");
  for (const std::string& key : keys) {
    if (!object.contains(key)) return FieldError(where + "." + key, "missing");
  }
  for (const auto& [key, value] : object.items()) {
    if (!keys.contains(key)) {
      return FieldError(where + "." + key, "unknown field");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> GetInt(const nlohmann::json& object,
                               const std::string& key, int64_t min) {
  const nlohmann::json& v = object.at(key);
  if (!v.is_number_integer()) return FieldError(key, "expected an integer");
  if (v.is_number_unsigned() &&
      v.get<uint64_t>() >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return FieldError(key, "out of range");
  }
  const int64_t value = v.get<int64_t>();
  if (value < min) return FieldError(key, absl::StrCat("must be >= ", min));
  return value;
}

absl::StatusOr<std::string> GetString(const nlohmann::json& object,
                                      const std::string& key) {
  const nlohmann::json& v = object.at(key);
  if (!v.is_string()) return FieldError(key, "expected a string");
  return v.get<std::string>();
}

}  // namespace

std::string ScoreCriterionName(ScoreCriterion criterion) {
  switch (criterion) {
    case ScoreCriterion::kOutputLoss:
      return "output_loss";
    case ScoreCriterion::kMagnitude:
      return "magnitude";
    case ScoreCriterion::kRandom:
      return "random";
  }
  return "unknown";
}

absl::StatusOr<ScoreCriterion> ParseScoreCriterion(const std::string& name) {
  for (ScoreCriterion c :
       {ScoreCriterion::kOutputLoss, ScoreCriterion::kMagnitude,
        ScoreCriterion::kRandom}) {
    if (ScoreCriterionName(c) == name) return c;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown scoring criterion \"", name,
                   "\" (expected output_loss, magnitude or random)"));
}

bool IsScoreCriterionName(absl::string_view name) {
  return ParseScoreCriterion(std::string(name)).ok();
}

absl::Status CheckScoreShard(ScoreShard shard) {
  if (shard.count < 1 || shard.index < 0 || shard.index >= shard.count) {
    return absl::InvalidArgumentError(
        absl::StrCat("scoring: bad shard ", shard.index, " of ", shard.count,
                     " (need count >= 1 and 0 <= index < count)"));
  }
  return absl::OkStatus();
}

int64_t ShardSize(int64_t total_units, ScoreShard shard) {
  if (shard.index >= total_units) return 0;
  return (total_units - shard.index + shard.count - 1) / shard.count;
}

absl::StatusOr<std::vector<std::string>> ShardUnitIds(
    const std::vector<std::string>& unit_ids, ScoreShard shard) {
  RETURN_IF_ERROR(CheckScoreShard(shard));
  std::vector<std::string> out;
  for (size_t j = static_cast<size_t>(shard.index); j < unit_ids.size();
       j += static_cast<size_t>(shard.count)) {
    out.push_back(unit_ids[j]);
  }
  return out;
}

std::string UnitListFingerprint(const std::vector<std::string>& unit_ids) {
  uint64_t hash = kFnvOffset;
  for (const std::string& id : unit_ids) FnvUpdate(hash, id);
  return absl::StrFormat("%016x", hash);
}

absl::StatusOr<Scores> MergeScores(const std::vector<Scores>& shards) {
  if (shards.empty()) {
    return absl::InvalidArgumentError("merge scores: no shards");
  }
  const Scores& first = shards.front();
  const int count = first.shard.count;
  if (static_cast<int>(shards.size()) != count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "merge scores: the run has ", count, " shards, got ", shards.size()));
  }
  std::vector<const Scores*> by_index(count, nullptr);
  for (const Scores& s : shards) {
    auto differs = [&](const std::string& field) {
      return absl::InvalidArgumentError(absl::StrCat(
          "merge scores: shard ", s.shard.index, " differs in ", field));
    };
    if (s.criterion != first.criterion) return differs("criterion");
    if (s.calibration_samples != first.calibration_samples ||
        s.calibration_fingerprint != first.calibration_fingerprint) {
      return differs("calibration set");
    }
    if (s.seed != first.seed) return differs("seed");
    if (s.total_units != first.total_units ||
        s.units_fingerprint != first.units_fingerprint) {
      return differs("unit list");
    }
    if (s.total_params != first.total_params) return differs("total_params");
    if (s.shard.count != count) return differs("shard count");
    RETURN_IF_ERROR(CheckScoreShard(s.shard));
    if (by_index[s.shard.index] != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge scores: shard ", s.shard.index, " given twice"));
    }
    by_index[s.shard.index] = &s;
  }
  std::set<std::string> seen;
  for (const Scores& s : shards) {
    for (const UnitScore& u : s.units) {
      if (!seen.insert(u.id).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("merge scores: unit ", u.id, " scored twice"));
      }
    }
    const int64_t expected = ShardSize(first.total_units, s.shard);
    if (static_cast<int64_t>(s.units.size()) != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "merge scores: shard ", s.shard.index, " holds ", s.units.size(),
          " units, expected ", expected, " (units missing or extra)"));
    }
  }
  Scores merged = first;
  merged.shard = ScoreShard{};
  merged.units.clear();
  for (int64_t j = 0; j < first.total_units; ++j) {
    merged.units.push_back(by_index[j % count]->units[j / count]);
  }
  std::vector<std::string> ids;
  for (const UnitScore& u : merged.units) ids.push_back(u.id);
  if (UnitListFingerprint(ids) != first.units_fingerprint) {
    return absl::InvalidArgumentError(
        "merge scores: the merged units are not the run's unit list");
  }
  return merged;
}

nlohmann::json ScoresToJson(const Scores& scores) {
  nlohmann::json units = nlohmann::json::array();
  for (const UnitScore& u : scores.units) {
    units.push_back({{"id", u.id},
                     {"kind", u.kind},
                     {"params", u.params},
                     {"score", u.score}});
  }
  return {
      {"criterion", scores.criterion},
      {"calibration_samples", scores.calibration_samples},
      {"seed", scores.seed},
      {"calibration_fingerprint", scores.calibration_fingerprint},
      {"total_units", scores.total_units},
      {"units_fingerprint", scores.units_fingerprint},
      {"total_params", scores.total_params},
      {"shard", {{"index", scores.shard.index}, {"count", scores.shard.count}}},
      {"units", std::move(units)}};
}

absl::StatusOr<Scores> ScoresFromJson(const nlohmann::json& json) {
  RETURN_IF_ERROR(CheckKeys(
      json, "scores",
      {"criterion", "calibration_samples", "seed", "calibration_fingerprint",
       "total_units", "units_fingerprint", "total_params", "shard", "units"}));
  Scores scores;
  ASSIGN_OR_RETURN(scores.criterion, GetString(json, "criterion"));
  if (!IsScoreCriterionName(scores.criterion)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown scoring criterion \"", scores.criterion,
                     "\" (expected output_loss, magnitude or random)"));
  }
  ASSIGN_OR_RETURN(scores.calibration_samples,
                   GetInt(json, "calibration_samples", 0));
  if (!json.at("seed").is_number_integer() ||
      (!json.at("seed").is_number_unsigned() &&
       json.at("seed").get<int64_t>() < 0)) {
    return FieldError("seed", "expected a non-negative integer");
  }
  scores.seed = json.at("seed").get<uint64_t>();
  ASSIGN_OR_RETURN(scores.calibration_fingerprint,
                   GetString(json, "calibration_fingerprint"));
  if (scores.criterion == ScoreCriterionName(ScoreCriterion::kOutputLoss) &&
      (scores.calibration_samples < 1 ||
       scores.calibration_fingerprint.empty())) {
    return FieldError("calibration_samples",
                      "output_loss needs a calibration set (samples >= 1 "
                      "and a fingerprint)");
  }
  ASSIGN_OR_RETURN(scores.total_units, GetInt(json, "total_units", 1));
  ASSIGN_OR_RETURN(scores.units_fingerprint,
                   GetString(json, "units_fingerprint"));
  ASSIGN_OR_RETURN(scores.total_params, GetInt(json, "total_params", 1));
  const nlohmann::json& shard = json.at("shard");
  RETURN_IF_ERROR(CheckKeys(shard, "shard", {"index", "count"}));
  ASSIGN_OR_RETURN(int64_t count, GetInt(shard, "count", 1));
  ASSIGN_OR_RETURN(int64_t index, GetInt(shard, "index", 0));
  if (index >= count || count > std::numeric_limits<int>::max()) {
    return FieldError("shard", "need 0 <= index < count");
  }
  scores.shard = {static_cast<int>(index), static_cast<int>(count)};
  const nlohmann::json& units = json.at("units");
  if (!units.is_array()) return FieldError("units", "expected an array");
  std::set<std::string> seen;
  int64_t params_sum = 0;
  for (size_t i = 0; i < units.size(); ++i) {
    const std::string where = absl::StrCat("units[", i, "]");
    const nlohmann::json& u = units[i];
    RETURN_IF_ERROR(CheckKeys(u, where, {"id", "kind", "params", "score"}));
    UnitScore unit;
    absl::StatusOr<std::string> id = GetString(u, "id");
    if (!id.ok() || id->empty()) return FieldError(where + ".id", "bad id");
    unit.id = *id;
    if (!seen.insert(unit.id).second) {
      return FieldError(where + ".id", absl::StrCat("repeated: ", unit.id));
    }
    if (!u.at("kind").is_string()) {
      return FieldError(where + ".kind", "expected a string");
    }
    unit.kind = u.at("kind").get<std::string>();
    if (!IsUnitKindName(unit.kind)) {
      return FieldError(where + ".kind", "unknown kind");
    }
    absl::StatusOr<int64_t> params = GetInt(u, "params", 1);
    if (!params.ok()) {
      return FieldError(where + ".params", "expected an integer >= 1");
    }
    unit.params = *params;
    if (!u.at("score").is_number()) {
      return FieldError(where + ".score", "expected a number");
    }
    unit.score = u.at("score").get<double>();
    if (!std::isfinite(unit.score) || unit.score < 0) {
      return FieldError(where + ".score", "must be finite and >= 0");
    }
    if (params_sum > scores.total_params - unit.params) {
      return FieldError("units", "params exceed total_params");
    }
    params_sum += unit.params;
    scores.units.push_back(std::move(unit));
  }
  if (static_cast<int64_t>(scores.units.size()) !=
      ShardSize(scores.total_units, scores.shard)) {
    return FieldError(
        "units",
        absl::StrCat("holds ", scores.units.size(), " units; shard ", index,
                     " of ", count, " of ", scores.total_units, " units holds ",
                     ShardSize(scores.total_units, scores.shard)));
  }
  if (scores.shard.count == 1) {
    std::vector<std::string> ids;
    for (const UnitScore& u : scores.units) ids.push_back(u.id);
    if (UnitListFingerprint(ids) != scores.units_fingerprint) {
      return FieldError("units_fingerprint", "does not match the units");
    }
  }
  return scores;
}

std::vector<ScoredUnit> ToScoredUnits(const Scores& scores) {
  std::vector<ScoredUnit> out;
  out.reserve(scores.units.size());
  for (const UnitScore& u : scores.units) {
    out.push_back(
        {.id = u.id, .params = u.params, .score = u.score, .removable = true});
  }
  return out;
}

}  // namespace lpd::selection

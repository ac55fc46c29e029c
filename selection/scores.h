// The result of one-shot unit scoring (DESIGN §4.3) as data: the content of
// `scores.json` and of the per-shard score files, without LibTorch, so that
// the scheduler's SELECT phase can read, check and merge them. The scoring
// itself (which needs the U-Net) is engine/compress/scoring.h, which re-exports
// these names into lpd::engine.
#ifndef LPD_SELECTION_SCORES_H_
#define LPD_SELECTION_SCORES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "selection/knapsack.h"
#include "selection/units.h"

namespace lpd::selection {

// The scoring criteria, one table for the project (scores.json, the engine's
// scoring, the job spec): "output_loss", "magnitude", "random"
// ("handcrafted" selects by rule and makes no scores).
enum class ScoreCriterion { kOutputLoss, kMagnitude, kRandom };
std::string ScoreCriterionName(ScoreCriterion criterion);
// InvalidArgument naming the expected names for anything else.
absl::StatusOr<ScoreCriterion> ParseScoreCriterion(const std::string& name);
// Whether ParseScoreCriterion accepts `name`.
bool IsScoreCriterionName(absl::string_view name);

// A part of the unit list that one worker scores: unit j (in the order of
// the list) belongs to shard j % count (round robin, which spreads the
// expensive early units over the shards). count >= 1, 0 <= index < count.
struct ScoreShard {
  int index = 0;
  int count = 1;
};

// OK for count >= 1 and 0 <= index < count, else InvalidArgument.
absl::Status CheckScoreShard(ScoreShard shard);

// The number of units of a list of `total_units` that `shard` owns.
int64_t ShardSize(int64_t total_units, ScoreShard shard);

// The ids of `unit_ids` that `shard` owns, in list order. InvalidArgument on
// a bad shard.
absl::StatusOr<std::vector<std::string>> ShardUnitIds(
    const std::vector<std::string>& unit_ids, ScoreShard shard);

struct UnitScore {
  std::string id;
  std::string kind;    // IsUnitKindName
  int64_t params = 0;  // parameters removed with the unit alone
  double score = 0;
};

// The result of a scoring run (one shard, or all units), i.e. scores.json.
struct Scores {
  std::string criterion;  // IsScoreCriterionName
  // Calibration samples (sum of batch sizes; 0 for magnitude and random).
  int64_t calibration_samples = 0;
  // The seed the caller made the calibration set with (output_loss) or the
  // random criterion's seed; recorded, not interpreted (but by random).
  uint64_t seed = 0;
  // A fingerprint of the calibration set ("" if none was used).
  std::string calibration_fingerprint;
  // The whole unit list that was sharded: its size and UnitListFingerprint.
  int64_t total_units = 0;
  std::string units_fingerprint;
  int64_t total_params = 0;  // parameters of the model scored
  ScoreShard shard;
  std::vector<UnitScore> units;  // this shard's units, in list order
};

// A 64-bit FNV-1a hash (16 hex digits) of the ids, in order.
std::string UnitListFingerprint(const std::vector<std::string>& unit_ids);

// Joins the shards of one run into the result of an unsharded run (the same
// units in the same order, bit for bit the same scores). InvalidArgument if
// they disagree on criterion, calibration, seed or unit list, if a shard is
// missing or repeated, or if the units do not cover the list exactly once.
absl::StatusOr<Scores> MergeScores(const std::vector<Scores>& shards);

// scores.json: {"criterion", "calibration_samples", "seed",
// "calibration_fingerprint", "total_units", "units_fingerprint",
// "total_params", "shard": {"index", "count"},
// "units": [{"id", "kind", "params", "score"}]}. Doubles read back exactly.
nlohmann::json ScoresToJson(const Scores& scores);
// Checks every field (types, ranges, unique ids, known kinds and criterion,
// finite non-negative scores, params > 0, no unknown fields, shard size
// consistent with total_units). InvalidArgument naming the field otherwise.
absl::StatusOr<Scores> ScoresFromJson(const nlohmann::json& json);

// The knapsack's view of the scores (every unit removable).
std::vector<ScoredUnit> ToScoredUnits(const Scores& scores);

}  // namespace lpd::selection

#endif  // LPD_SELECTION_SCORES_H_

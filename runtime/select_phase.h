// The SELECT phase of a job (DESIGN §3.2) without LibTorch, so that the
// scheduler (or any process) can run it from what the SCORE tasks left in the
// job's output (spec.output.uri):
//
//   units.json                 every prunable unit of the teacher (ModelUnits)
//   scores/shard-I-of-N.json   one per SCORE task (scores.json format), or
//   handcrafted.json           the rule's removal (criterion handcrafted)
//
// It merges the shards into scores.json (the bytes an unsharded run writes),
// solves the knapsack (selection/knapsack.h) and writes plan.json with
// removed_params / achieved_ratio / overshoot of the removal in effect (an
// attention whose blocks are all removed goes with its norm and projections:
// selection::EffectiveRemoval, the rule the U-Net uses too), so that they
// match the student's parameter count exactly.
#ifndef LPD_RUNTIME_SELECT_PHASE_H_
#define LPD_RUNTIME_SELECT_PHASE_H_

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "job/layout.h"
#include "lpd/v1/job_spec.pb.h"
#include "nlohmann/json.hpp"
#include "selection/knapsack.h"
#include "selection/scores.h"
#include "selection/units.h"

namespace lpd::selection {

// handcrafted.json: the removal a handcrafted rule chose for a target.
struct HandcraftedChoice {
  std::string rule;                  // "bk_sdm_base", "sdxl_uniform_depth"
  double target_ratio = 0;           // the job's target it was chosen for
  std::vector<std::string> removed;  // unit ids, in forward order
  int trailing_blocks = 0;           // SDXL: blocks removed per attention
};
// {"rule", "target_ratio", "removed", "trailing_blocks"}.
nlohmann::json HandcraftedToJson(const HandcraftedChoice& choice);
absl::StatusOr<HandcraftedChoice> HandcraftedFromJson(
    const nlohmann::json& json);

// Runs SELECT for `job` (validated, defaults applied) whose SCORE phase ran
// as `score_shard_count` tasks (1 for criterion handcrafted): reads
// units.json and the shard files (or handcrafted.json) under
// spec.output.uri, writes scores.json (not for handcrafted) and plan.json,
// and returns {"plan": plan.json's content, "score_shards": count}. `log`
// receives a line or two (null: none).
//
// Errors start with "SELECT: ". FailedPrecondition (re-run SCORE, retrying
// SELECT does not help): units.json, a shard (named, all missing ones
// listed) or handcrafted.json missing; scores made for another criterion,
// seed, model or unit list than the job's; handcrafted.json made for another
// target. InvalidArgument (the job itself): score_shard_count < 1, not 1 for
// handcrafted; a malformed file; a target the units cannot reach. Storage
// failures keep their codes (Unavailable etc.: retry).
absl::StatusOr<nlohmann::json> RunSelectTask(
    const lpd::v1::CompressionJob& job, int score_shard_count,
    const std::function<void(const std::string&)>& log = nullptr);

}  // namespace lpd::selection

#endif  // LPD_RUNTIME_SELECT_PHASE_H_

// One-shot unit scoring (DESIGN §4.3): how much the U-Net's predicted noise
// changes when one prunable unit is removed, plus the comparison criteria
// (magnitude, random) and the rule-based "handcrafted" removal sets.
//
// output_loss. For unit i and calibration batches b = 1..n with B_b samples:
//   mse_b(i) = mean over all elements of (ε_full − ε_without_i)²
//   L_i      = Σ_b B_b · mse_b(i) / Σ_b B_b
// i.e. the per-element mean squared change, averaged over batches weighted by
// batch size (equal to the mean over every element of the calibration set
// when all batches share H, W). Differences and sums are taken in float64.
// The calibration set comes as ready UNetInputs (x_t, timesteps, encoder
// states already drawn from the job's seed), so scoring is deterministic.
//
// Cached method: per batch, one pass of the full program (the empty mask)
// saves a copy of the UNetState right before the first step that removing
// unit i would skip; unit i then resumes from that state with the mask
// removing only i and runs to the end. UNetState copies share tensor handles
// (the forward never writes a tensor in place, so no clone is needed). The
// states of a batch are what the cache holds: with max_cached_states = 0 all
// of them at once (one state per unit, each holding h plus the skip stack:
// for SDXL at batch 8 on GPU that is a few GB, fine), otherwise the pass
// stops every max_cached_states units, resumes those, drops their states and
// continues, so at most that many states (plus one output-sized tensor per
// unit) are alive. The prefix pass is done once per batch either way, so the
// bound costs no compute, only less overlap. Naive method: one full forward
// per unit and batch (for tests and benchmarks).
#ifndef LPD_ENGINE_COMPRESS_SCORING_H_
#define LPD_ENGINE_COMPRESS_SCORING_H_

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/unet.h"
#include "nlohmann/json.hpp"
#include "selection/knapsack.h"
#include "selection/scores.h"

namespace lpd::engine {

// The scoring criteria and their names are selection's (selection/scores.h).
using selection::ParseScoreCriterion;
using selection::ScoreCriterion;
using selection::ScoreCriterionName;

// The torch-free score data (selection/scores.h), under the engine's names.
using selection::MergeScores;
using selection::Scores;
using selection::ScoresFromJson;
using selection::ScoreShard;
using selection::ScoresToJson;
using selection::ShardUnitIds;
using selection::ToScoredUnits;
using selection::UnitListFingerprint;
using selection::UnitScore;

// The units at granularity `kinds` that can be scored: removable and not
// left out of the model at build time, in forward order.
std::vector<std::string> ScorableUnitIds(const UNet2DConditionModelImpl& model,
                                         const std::set<UnitKind>& kinds);

// A 64-bit FNV-1a hash (16 hex digits) of every input tensor's dtype, shape
// and bytes, batch by batch. Deterministic across runs and devices.
absl::StatusOr<std::string> CalibrationFingerprint(
    const std::vector<UNetInputs>& calibration);

enum class OutputLossMethod { kCached, kNaive };

struct ScoreOptions {
  ScoreCriterion criterion = ScoreCriterion::kOutputLoss;
  ScoreShard shard;
  uint64_t seed = 0;  // see Scores::seed
  OutputLossMethod method = OutputLossMethod::kCached;
  // Cached method: most UNetStates alive at once (0: all units of a batch).
  int max_cached_states = 0;
  // Called as work is done with (items done, items in all): output_loss
  // counts one item per unit and calibration batch, magnitude and random
  // one per unit. A non-OK status stops scoring and is returned. May be
  // null.
  std::function<absl::Status(int64_t done, int64_t total)> progress;
};

// Scores the units of `unit_ids` that options.shard owns.
// - output_loss: needs a non-empty calibration set (batches may differ in
//   size); runs under NoGradGuard in the model's dtype and device.
// - magnitude: mean |w| over the parameters whose name starts with id + ".".
// - random: uniform in [0, 1) from (seed, id), so independent of the list
//   order and of sharding; calibration ignored.
// InvalidArgument for an empty or duplicate unit list, an unknown or
// non-removable unit, a unit left out at build time, an empty calibration
// set, inputs that do not fit the model (shape mismatch), a bad shard.
// LibTorch exceptions become statuses (GuardTorch).
absl::StatusOr<Scores> ScoreUnits(UNet2DConditionModelImpl& model,
                                  const std::vector<std::string>& unit_ids,
                                  const std::vector<UNetInputs>& calibration,
                                  const ScoreOptions& options);

// The "handcrafted" criterion: a removal set by rule, not scores.
struct HandcraftedRemoval {
  std::string rule;                  // "bk_sdm_base" or "sdxl_uniform_depth"
  std::vector<std::string> removed;  // unit ids, in forward order
  int64_t removed_params = 0;        // of the effective removal
  int64_t total_params = 0;
  double achieved_ratio = 0;  // removed_params / total_params
  int trailing_blocks = 0;    // SDXL: blocks removed from each attention
};

// SD-1.x/2.x layout (4 down blocks: CrossAttnDown ×3 + DownBlock2D, 2 layers
// per block): BK-SDM-Base, resnets.1 (+ attentions.1) of every down and up
// block; the ratio is what it is and `target_ratio` is only range-checked.
// SDXL layout (text_time, 3 blocks): the fewest trailing transformer blocks
// k, the same for every attention of the deepest level (down_blocks[-1],
// mid_block, up_blocks.0), such that removed params >= target × total
// (k may reach the full depth, removing those attentions). InvalidArgument
// for target not in (0, 1), another layout, or an unreachable target.
absl::StatusOr<HandcraftedRemoval> HandcraftedSelection(
    const UNet2DConditionModelImpl& model, double target_ratio);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_COMPRESS_SCORING_H_

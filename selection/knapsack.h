// Selection (DESIGN §4.4): which prunable units to remove so that at least a
// target share of the U-Net's parameters goes, at the least predicted output
// loss. The loss of removing a set is predicted as the sum of the units'
// one-shot scores, so this is a 0/1 knapsack, solved exactly on the true
// integer parameter counts. Free of LibTorch: the scheduler links it.
#ifndef LPD_SELECTION_KNAPSACK_H_
#define LPD_SELECTION_KNAPSACK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace lpd::selection {

// One prunable unit as selection sees it (a line of `scores.json`).
struct ScoredUnit {
  std::string id;      // unique and non-empty, e.g. "up_blocks.0.resnets.2"
  int64_t params = 0;  // parameters removed with the unit; > 0 if removable
  // Predicted output loss of removing the unit alone (‖ε_full − ε_without‖²,
  // or whatever the criterion produced); finite and >= 0 if removable. Not
  // looked at for units that are not removable.
  double score = 0;
  bool removable = true;  // false: never selected
};

// What to remove, and what it is predicted to cost.
struct Plan {
  // How the scores were made ("output_loss", "magnitude", ...). Selection
  // leaves it empty; the caller fills it in before writing plan.json.
  std::string criterion;
  double target_ratio = 0;      // in (0, 1)
  int64_t total_params = 0;     // the whole U-Net, > 0
  int64_t required_params = 0;  // RequiredParams(target_ratio, total_params)
  std::vector<std::string> removed;  // ids, in the order of the input units
  int64_t removed_params = 0;        // sum over `removed`
  double predicted_loss = 0;         // sum of the removed units' scores
  double achieved_ratio = 0;         // removed_params / total_params
  double overshoot = 0;              // achieved_ratio − target_ratio
};

// The number of parameters a plan must remove: ⌈t × total_params⌉, where t is
// the decimal that `target_ratio` stands for, i.e. the shortest decimal that
// reads back as the same double (what a job spec writes: 0.1 means one tenth,
// not 0.1000000000000000055…). The product is computed exactly in 128-bit
// integers, so 0.1 of 10 parameters requires 1, 0.5 of 7 requires 4, and
// totals beyond 2^53 lose nothing. Since the double nearest to t is
// target_ratio, a plan that meets this count always has
// achieved_ratio >= target_ratio.
// InvalidArgument if target_ratio is not in (0, 1) or total_params <= 0.
absl::StatusOr<int64_t> RequiredParams(double target_ratio,
                                       int64_t total_params);

struct SelectOptions {
  enum class Method {
    // Branch-and-bound first; if it runs long, meet-in-the-middle when the
    // instance allows it, else branch-and-bound until `node_limit`. Real
    // instances take microseconds. The hard case is a score nearly
    // proportional to size over many distinct sizes (subset sum in
    // disguise): meet-in-the-middle solves up to about 40 distinct sizes in
    // under a second; beyond that such an instance may hit `node_limit`.
    kAuto,
    kBranchAndBound,   // depth-first over size classes, LP-relaxation bound
    kMeetInTheMiddle,  // ResourceExhausted if the instance is too large
  };
  Method method = Method::kAuto;
  // Branch-and-bound nodes before giving up with ResourceExhausted (tens of
  // millions a second; an SDXL-sized instance takes a few hundred).
  int64_t node_limit = int64_t{1} << 30;
};

// Chooses S among the removable units minimizing Σ_{i∈S} score_i subject to
// Σ_{i∈S} params_i >= RequiredParams(target_ratio, total_params), exactly.
//
// Method: units of equal size form a class; taking k units of a class means
// taking its k lowest-score ones, so a solution is a count per class, found
// by branch-and-bound with an LP-relaxation bound or by meet-in-the-middle.
// Costs are compared as exact sums of the scores (each score is turned into
// an integer without loss, in as many bits as the scores' range needs), so
// the result is the true optimum, and ties are true ties.
//
// Among plans of equal predicted loss, the one removing fewer parameters
// wins; then, over classes ordered by unit size (largest first), the one
// taking more units of the first class where they differ (this favours fewer,
// larger units); within a class, lower score and then the smaller id (byte
// order) are taken first. The result depends only on the set of units, not
// on their order in `units`, nor on the method.
//
// Errors (InvalidArgument unless noted): target_ratio not in (0, 1);
// total_params <= 0; an empty or duplicate id; a removable unit with params
// <= 0 or a score that is negative, infinite or NaN; removable units holding
// more than total_params in all, or scores whose sum overflows a double; a
// target that the removable units cannot reach (the message gives the largest
// achievable ratio). ResourceExhausted if the search exceeds options.node_limit
// (or, for kMeetInTheMiddle, its table size).
absl::StatusOr<Plan> SelectUnits(absl::Span<const ScoredUnit> units,
                                 int64_t total_params, double target_ratio,
                                 const SelectOptions& options = {});

// The plan that removes exactly `removed_ids` (for criteria that pick units
// by rule, and for checking a selection). Does not require the target to be
// met: achieved_ratio may fall short of target_ratio (negative overshoot).
// InvalidArgument on the errors SelectUnits checks (but for reachability),
// and for an unknown, non-removable or repeated id in `removed_ids`.
absl::StatusOr<Plan> PlanForRemoval(absl::Span<const ScoredUnit> units,
                                    int64_t total_params, double target_ratio,
                                    absl::Span<const std::string> removed_ids);

// plan.json: {"criterion", "target_ratio", "achieved_ratio", "overshoot",
// "required_params", "removed_params", "total_params", "predicted_loss",
// "removed": [ids]}. Doubles are written so that they read back exactly.
nlohmann::json PlanToJson(const Plan& plan);

// Reads plan.json back, checking every field's type and range and that the
// fields agree: removed ids unique and non-empty, none iff removed_params is
// 0; achieved_ratio = removed_params / total_params and overshoot =
// achieved_ratio − target_ratio (to within 1e-9); required_params (optional,
// for hand-written plans) = RequiredParams(...). Unknown fields are errors.
// It does not require the target to be met (rule-based criteria report what
// they achieve). InvalidArgument naming the field otherwise.
absl::StatusOr<Plan> PlanFromJson(const nlohmann::json& json);

}  // namespace lpd::selection

#endif  // LPD_SELECTION_KNAPSACK_H_

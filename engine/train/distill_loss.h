// The distillation loss (DESIGN §4.5):
//
//   L = w_task·mse(ε_S, target) + w_out·mse(ε_S, ε_T)
//       + w_feat·Σ_l ‖F_S^l − F_T^l‖² / ‖F_T^l‖²
//
// over the outputs of every down block, the mid block and every up block
// (LAPTOP-Diff's normalized feature loss; with normalize_features false the
// per-block term is the plain mean squared error, the BK-SDM loss).
#ifndef LPD_ENGINE_TRAIN_DISTILL_LOSS_H_
#define LPD_ENGINE_TRAIN_DISTILL_LOSS_H_

#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/unet.h"

namespace lpd::engine {

struct DistillLossOptions {
  double task_weight = 1.0;        // w_task
  double output_kd_weight = 1.0;   // w_out
  double feature_kd_weight = 1.0;  // w_feat
  // LAPTOP-Diff's ‖F_S − F_T‖² / ‖F_T‖² per block when true, the mean
  // squared error (BK-SDM) when false.
  bool normalize_features = true;
};

// Whether a block-output capture takes part in the feature loss: every
// "down_blocks.N", "mid_block" and "up_blocks.N" (not "conv_in").
bool IsDistilledFeature(absl::string_view capture_name);

// The loss and its parts. `total` carries the graph; the parts are
// unweighted scalars (float32) also carrying the graph, for tests and logs.
struct DistillLoss {
  torch::Tensor total;
  torch::Tensor task;                                  // mse(ε_S, target)
  torch::Tensor output_kd;                             // mse(ε_S, ε_T)
  torch::Tensor feature_kd;                            // Σ_l term_l
  std::map<std::string, torch::Tensor> feature_terms;  // by capture name
};

// The same as plain numbers, for progress reports.
struct DistillLossValues {
  double total = 0, task = 0, output_kd = 0, feature_kd = 0;
  std::map<std::string, double> feature_terms;
};

// The loss of DESIGN §4.5, computed in float32 whatever the inputs' dtype.
// The feature terms run over the teacher's distilled captures
// (IsDistilledFeature); each must exist in `student_features` with the
// teacher's shape (else InvalidArgument). The teacher's tensors are treated
// as constants (detached). `target` may be undefined when task_weight is 0.
absl::StatusOr<DistillLoss> ComputeDistillLoss(
    const torch::Tensor& student_output, const torch::Tensor& teacher_output,
    const torch::Tensor& target, const BlockOutputs& student_features,
    const BlockOutputs& teacher_features, const DistillLossOptions& options);

// The loss's parts before they are combined: per distilled feature the
// student's ‖F_S − F_T‖² (normalized) or mean squared error, and the
// teacher's ‖F_T‖² (normalized only, a constant), so that data-parallel ranks
// can combine them over the global batch.
struct LossParts {
  torch::Tensor task, output_kd;
  std::vector<std::string> names;
  std::vector<torch::Tensor> values;
  std::vector<torch::Tensor> denominators;
};
// The parts of ComputeDistillLoss before they are combined (the trainer's
// data-parallel ranks sum them over the global batch); the same checks.
absl::StatusOr<LossParts> ComputeLossParts(const torch::Tensor& student_output,
                                           const torch::Tensor& teacher_output,
                                           const torch::Tensor& target,
                                           const BlockOutputs& student_features,
                                           const BlockOutputs& teacher_features,
                                           const DistillLossOptions& options);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_TRAIN_DISTILL_LOSS_H_

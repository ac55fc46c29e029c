#include "engine/train/distill_loss.h"

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
bool IsDistilledFeature(absl::string_view capture_name) {
  return capture_name == "mid_block" ||
         absl::StartsWith(capture_name, "down_blocks.") ||
         absl::StartsWith(capture_name, "up_blocks.");
}

absl::StatusOr<LossParts> ComputeLossParts(const torch::Tensor& student_output,
                                           const torch::Tensor& teacher_output,
                                           const torch::Tensor& target,
                                           const BlockOutputs& student_features,
                                           const BlockOutputs& teacher_features,
                                           const DistillLossOptions& options) {
  if (!student_output.defined() || !teacher_output.defined()) {
    return absl::InvalidArgumentError(
        "distillation loss: undefined student or teacher output");
  }
  if (student_output.sizes() != teacher_output.sizes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("distillation loss: student output ",
                     ShapeString(student_output.sizes()), " vs teacher output ",
                     ShapeString(teacher_output.sizes())));
  }
  const torch::Tensor s_out = student_output.to(torch::kFloat32);
  const torch::Tensor t_out = teacher_output.detach().to(torch::kFloat32);
  LossParts parts;
  if (target.defined()) {
    if (target.sizes() != student_output.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "distillation loss: target ", ShapeString(target.sizes()),
          " vs output ", ShapeString(student_output.sizes())));
    }
    parts.task = torch::mse_loss(s_out, target.detach().to(torch::kFloat32));
  } else if (options.task_weight != 0) {
    return absl::InvalidArgumentError(
        "distillation loss: no target but task_weight != 0");
  } else {
    parts.task = torch::zeros({}, s_out.options());
  }
  parts.output_kd = torch::mse_loss(s_out, t_out);

  for (const auto& [name, teacher_feature] : teacher_features) {
    if (!IsDistilledFeature(name)) continue;
    auto found = student_features.find(name);
    if (found == student_features.end() || !found->second.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat("distillation loss: the student has no feature ", name));
    }
    if (found->second.sizes() != teacher_feature.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("distillation loss: feature ", name, ": student ",
                       ShapeString(found->second.sizes()), " vs teacher ",
                       ShapeString(teacher_feature.sizes())));
    }
    const torch::Tensor f_s = found->second.to(torch::kFloat32);
    const torch::Tensor f_t = teacher_feature.detach().to(torch::kFloat32);
    parts.names.push_back(name);
    if (options.normalize_features) {
      parts.values.push_back((f_s - f_t).square().sum());
      parts.denominators.push_back(f_t.square().sum());
    } else {
      parts.values.push_back(torch::mse_loss(f_s, f_t));
    }
  }
  return parts;
}

absl::StatusOr<DistillLoss> ComputeDistillLoss(
    const torch::Tensor& student_output, const torch::Tensor& teacher_output,
    const torch::Tensor& target, const BlockOutputs& student_features,
    const BlockOutputs& teacher_features, const DistillLossOptions& options) {
  return GuardTorch(
      "computing the distillation loss", [&]() -> absl::StatusOr<DistillLoss> {
        ASSIGN_OR_RETURN(
            LossParts parts,
            ComputeLossParts(student_output, teacher_output, target,
                             student_features, teacher_features, options));
        DistillLoss loss;
        loss.task = parts.task;
        loss.output_kd = parts.output_kd;
        std::vector<torch::Tensor> terms;
        for (size_t i = 0; i < parts.names.size(); ++i) {
          torch::Tensor term = parts.values[i];
          if (options.normalize_features) {
            // ‖F_T‖² is a constant; the clamp only guards an all-zero map.
            term = term / parts.denominators[i].clamp_min(1e-30);
          }
          loss.feature_terms[parts.names[i]] = term;
          terms.push_back(term);
        }
        loss.feature_kd = terms.empty()
                              ? torch::zeros({}, loss.output_kd.options())
                              : torch::stack(terms).sum();
        loss.total = options.task_weight * loss.task +
                     options.output_kd_weight * loss.output_kd +
                     options.feature_kd_weight * loss.feature_kd;
        return loss;
      });
}

}  // namespace lpd::engine

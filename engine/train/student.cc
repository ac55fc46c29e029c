#include "engine/train/student.h"

#include <torch/torch.h>

#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/scratch_folder.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"
#include "job/checkpoints.h"
#include "job/layout.h"
#include "nlohmann/json.hpp"
#include "storage/manifest.h"

namespace lpd::engine {
absl::StatusOr<UNet2DConditionModel> MakeStudent(
    UNet2DConditionModelImpl& teacher,
    const std::set<std::string>& removed_units,
    std::optional<torch::TensorOptions> tensor_options) {
  return GuardTorch(
      "building the student", [&]() -> absl::StatusOr<UNet2DConditionModel> {
        auto teacher_params = teacher.named_parameters(/*recurse=*/true);
        torch::TensorOptions options;
        if (tensor_options.has_value()) {
          options = *tensor_options;
        } else if (teacher_params.size() > 0) {
          const torch::Tensor first = teacher_params[0].value();
          options = torch::TensorOptions()
                        .dtype(first.scalar_type())
                        .device(first.device());
        }
        ASSIGN_OR_RETURN(auto impl,
                         UNet2DConditionModelImpl::Create(UNetOptions{
                             teacher.config(), removed_units, options}));
        UNet2DConditionModel student(impl);
        torch::NoGradGuard no_grad;
        for (auto& item : student->named_parameters(/*recurse=*/true)) {
          const torch::Tensor* source = teacher_params.find(item.key());
          if (source == nullptr) {
            return absl::InvalidArgumentError(
                absl::StrCat("student parameter ", item.key(),
                             " has no teacher parameter of that name"));
          }
          if (source->sizes() != item.value().sizes()) {
            return absl::InvalidArgumentError(
                absl::StrCat("student parameter ", item.key(), " has shape ",
                             ShapeString(item.value().sizes()),
                             ", the teacher's ", ShapeString(source->sizes())));
          }
          item.value().copy_(*source);
        }
        return student;
      });
}

absl::StatusOr<TrainerState> ReadTrainerState(
    const storage::ObjectStore& store, absl::string_view dir,
    const storage::Manifest& manifest) {
  ASSIGN_OR_RETURN(
      std::string text,
      storage::VerifiedGet(store, dir, manifest, job::kTrainerStateName));
  const nlohmann::json trainer =
      nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const std::string where = store.UriOf(dir);
  if (trainer.is_discarded() || !trainer.is_object() ||
      !trainer.contains("step") || !trainer["step"].is_number_integer() ||
      !trainer.contains("removed_units") ||
      !trainer["removed_units"].is_array()) {
    return absl::DataLossError(absl::StrCat(where, job::kTrainerStateName,
                                            ": malformed trainer state"));
  }
  TrainerState state;
  for (const auto& id : trainer["removed_units"]) {
    if (!id.is_string()) {
      return absl::DataLossError(absl::StrCat(where, job::kTrainerStateName,
                                              ": malformed removed_units"));
    }
    state.removed_units.insert(id.get<std::string>());
  }
  state.step = trainer["step"].get<int64_t>();
  state.precision = trainer.value("precision", std::string());
  return state;
}

absl::Status CheckRemovedUnits(const TrainerState& state,
                               const std::set<std::string>& removed_units,
                               absl::string_view where,
                               absl::string_view holder) {
  if (state.removed_units == removed_units) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("checkpoint ", where, " removes {",
                   absl::StrJoin(state.removed_units, ", "), "}, this ", holder,
                   " {", absl::StrJoin(removed_units, ", "), "}"));
}

absl::Status CheckStudentWeights(
    const std::map<std::string, torch::Tensor>& weights,
    const std::vector<std::pair<std::string, torch::Tensor>>& expected,
    absl::string_view where) {
  for (const auto& [name, tensor] : expected) {
    auto found = weights.find(name);
    if (found == weights.end() || found->second.sizes() != tensor.sizes()) {
      return absl::DataLossError(absl::StrCat(
          where, job::kStudentWeightsName, ": missing or mis-shaped ", name));
    }
  }
  if (weights.size() != expected.size()) {
    return absl::DataLossError(absl::StrCat(
        where, job::kStudentWeightsName, ": holds ", weights.size(),
        " tensors, the student ", expected.size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<int64_t>> LoadLatestStudentWeights(
    const storage::ObjectStore& store, absl::string_view prefix,
    UNet2DConditionModelImpl& student) {
  ASSIGN_OR_RETURN(std::optional<int64_t> latest,
                   job::ReadLatestCheckpoint(store, prefix));
  if (!latest.has_value()) return std::optional<int64_t>();
  const std::string dir =
      storage::JoinKey({prefix, job::CheckpointDir(*latest)});
  const std::string where = store.UriOf(dir);
  ASSIGN_OR_RETURN(storage::Manifest manifest,
                   storage::ReadManifest(store, dir));
  ASSIGN_OR_RETURN(TrainerState state, ReadTrainerState(store, dir, manifest));
  RETURN_IF_ERROR(
      CheckRemovedUnits(state, student.removed_units(), where, "student"));
  ASSIGN_OR_RETURN(ScratchFolder scratch, ScratchFolder::Make("lpd-student-"));
  const std::string file = scratch.File(job::kStudentWeightsName);
  RETURN_IF_ERROR(storage::VerifiedGetToFile(store, dir, manifest,
                                             job::kStudentWeightsName, file));
  ASSIGN_OR_RETURN(auto weights, ReadAllTensors(file, torch::kCPU));
  RETURN_IF_ERROR(GuardTorch("loading the student", [&]() -> absl::Status {
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& item : student.named_parameters(/*recurse=*/true)) {
      params.emplace_back(item.key(), item.value());
    }
    // Check everything before changing anything.
    RETURN_IF_ERROR(CheckStudentWeights(weights, params, where));
    torch::NoGradGuard no_grad;
    for (auto& [name, param] : params) param.copy_(weights.at(name));
    return absl::OkStatus();
  }));
  return std::optional<int64_t>(state.step);
}

}  // namespace lpd::engine

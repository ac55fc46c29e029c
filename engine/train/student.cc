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
namespace {

std::string ShapeString(torch::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

}  // namespace

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
  ASSIGN_OR_RETURN(
      std::string trainer_text,
      storage::VerifiedGet(store, dir, manifest, job::kTrainerStateName));
  const nlohmann::json trainer =
      nlohmann::json::parse(trainer_text, nullptr, /*allow_exceptions=*/false);
  if (trainer.is_discarded() || !trainer.is_object() ||
      !trainer.contains("step") || !trainer["step"].is_number_integer() ||
      !trainer.contains("removed_units") ||
      !trainer["removed_units"].is_array()) {
    return absl::DataLossError(absl::StrCat(where, job::kTrainerStateName,
                                            ": malformed trainer state"));
  }
  std::set<std::string> removed;
  for (const auto& id : trainer["removed_units"]) {
    if (!id.is_string()) {
      return absl::DataLossError(absl::StrCat(where, job::kTrainerStateName,
                                              ": malformed removed_units"));
    }
    removed.insert(id.get<std::string>());
  }
  if (removed != student.removed_units()) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", where, " removes {",
                     absl::StrJoin(removed, ", "), "}, this student {",
                     absl::StrJoin(student.removed_units(), ", "), "}"));
  }
  ASSIGN_OR_RETURN(ScratchFolder scratch, ScratchFolder::Make("lpd-student-"));
  const std::string file = scratch.File(job::kStudentWeightsName);
  RETURN_IF_ERROR(storage::VerifiedGetToFile(store, dir, manifest,
                                             job::kStudentWeightsName, file));
  ASSIGN_OR_RETURN(auto weights, ReadAllTensors(file, torch::kCPU));
  RETURN_IF_ERROR(GuardTorch("loading the student", [&]() -> absl::Status {
    auto params = student.named_parameters(/*recurse=*/true);
    // Check everything before changing anything.
    for (const auto& item : params) {
      auto found = weights.find(item.key());
      if (found == weights.end() ||
          found->second.sizes() != item.value().sizes()) {
        return absl::DataLossError(absl::StrCat(where, job::kStudentWeightsName,
                                                ": missing or mis-shaped ",
                                                item.key()));
      }
    }
    if (weights.size() != params.size()) {
      return absl::DataLossError(absl::StrCat(
          where, job::kStudentWeightsName, ": holds ", weights.size(),
          " tensors, the student ", params.size()));
    }
    torch::NoGradGuard no_grad;
    for (auto& item : params) item.value().copy_(weights.at(item.key()));
    return absl::OkStatus();
  }));
  return std::optional<int64_t>(trainer["step"].get<int64_t>());
}

}  // namespace lpd::engine

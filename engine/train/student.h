// The student (DESIGN §4.5): the teacher with the plan's units removed,
// built from the teacher's weights, or read back from a distillation
// checkpoint without the optimizer state (what EVALUATE and EXPORT need).
#ifndef LPD_ENGINE_TRAIN_STUDENT_H_
#define LPD_ENGINE_TRAIN_STUDENT_H_

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/unet.h"
#include "storage/manifest.h"
#include "storage/object_store.h"

namespace lpd::engine {

// Builds the student: a model of the teacher's config without
// `removed_units`, every parameter copied from the teacher's parameter of
// the same name (converted to `tensor_options`' dtype and device; by default
// the teacher's). Errors for unknown or non-removable units and for a
// student parameter the teacher lacks or holds with another shape.
absl::StatusOr<UNet2DConditionModel> MakeStudent(
    UNet2DConditionModelImpl& teacher,
    const std::set<std::string>& removed_units,
    std::optional<torch::TensorOptions> tensor_options = std::nullopt);

// What a checkpoint's trainer.json records.
struct TrainerState {
  int64_t step = 0;
  std::set<std::string> removed_units;
  std::string precision;  // the trainer's precision name; "" if unrecorded
};

// Reads the trainer.json of the checkpoint in `dir`, checked against its
// `manifest`. DataLoss naming the file when it is malformed; storage errors
// keep their codes.
absl::StatusOr<TrainerState> ReadTrainerState(
    const storage::ObjectStore& store, absl::string_view dir,
    const storage::Manifest& manifest);

// FailedPrecondition unless the checkpoint at `where` (its URI) removes
// exactly `removed_units`; `holder` names what it is loaded into ("trainer",
// "student").
absl::Status CheckRemovedUnits(const TrainerState& state,
                               const std::set<std::string>& removed_units,
                               absl::string_view where,
                               absl::string_view holder);

// DataLoss (naming the checkpoint's student.safetensors at `where`) unless
// `weights` holds exactly the tensors of `expected`, by name and shape.
absl::Status CheckStudentWeights(
    const std::map<std::string, torch::Tensor>& weights,
    const std::vector<std::pair<std::string, torch::Tensor>>& expected,
    absl::string_view where);

// Loads the student weights of the newest complete checkpoint under `prefix`
// (job/checkpoints.h) into `student`, converted to its dtype and device;
// reads the checkpoint's trainer.json and student.safetensors only (never
// the optimizer state), each checked against the checkpoint's manifest.
// Returns the checkpoint's step, or nullopt when there is no checkpoint
// (`student` unchanged). FailedPrecondition when the checkpoint removes
// other units than `student`; DataLoss when its files are malformed or its
// weights do not match the student's parameters (then `student` is
// unchanged too); storage errors keep their codes.
absl::StatusOr<std::optional<int64_t>> LoadLatestStudentWeights(
    const storage::ObjectStore& store, absl::string_view prefix,
    UNet2DConditionModelImpl& student);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_TRAIN_STUDENT_H_

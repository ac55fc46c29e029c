#include "engine/compress/export.h"

#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "base/remove_tree.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"
#include "storage/manifest.h"

namespace lpd::engine {

absl::Status ExportStudent(UNet2DConditionModelImpl& student,
                           const ExportOptions& options,
                           storage::ObjectStore& store, absl::string_view dir) {
  ASSIGN_OR_RETURN(std::vector<std::string> removed,
                   student.EffectiveRemoval(student.removed_units()));
  nlohmann::json pruning = {
      {"format", "lpd-pruning"},
      {"version", 1},
      {"removed_units", removed},
      {"teacher_parameters", options.teacher_parameters},
      {"student_parameters", student.NumParameters()},
  };
  // The weights go through a local temporary file: the safetensors writer
  // streams one tensor at a time, then the store uploads the file.
  std::string tmp_dir =
      (std::filesystem::temp_directory_path() / "lpd-export-XXXXXX").string();
  if (mkdtemp(tmp_dir.data()) == nullptr) {
    return absl::InternalError("export: cannot create a temporary folder");
  }
  const std::string weights_path = tmp_dir + "/" + kWeightsFileName;
  absl::Status status = GuardTorch("export: writing weights", [&] {
    std::map<std::string, torch::Tensor> tensors;
    for (const auto& item : student.named_parameters(/*recurse=*/true)) {
      tensors[item.key()] = item.value().detach().to(options.dtype);
    }
    return WriteTensors(weights_path, tensors, {{"format", "pt"}});
  });
  storage::Manifest manifest;
  if (status.ok()) {
    status = storage::PutWithManifest(store, dir, "config.json",
                                      options.config_json, manifest);
  }
  if (status.ok()) {
    status = storage::PutFileWithManifest(store, dir, kWeightsFileName,
                                          weights_path, manifest);
  }
  if (status.ok()) {
    status = storage::PutWithManifest(store, dir, kPruningFileName,
                                      pruning.dump(2) + "\n", manifest);
  }
  RemoveTree(tmp_dir);
  RETURN_IF_ERROR(status);
  return storage::WriteManifest(store, dir, manifest);
}

}  // namespace lpd::engine

// Export of a pruned student (DESIGN §4.6): the student's weights in
// safetensors under their unchanged checkpoint names, the teacher's
// config.json, and lpd_pruning.json naming the removed units, written through
// the storage interface with a SHA-256 manifest. LoadModel (model_loader.h)
// reads lpd_pruning.json back and rebuilds the student.
#ifndef LPD_ENGINE_COMPRESS_EXPORT_H_
#define LPD_ENGINE_COMPRESS_EXPORT_H_

#include <torch/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/model/unet.h"
#include "job/layout.h"
#include "storage/object_store.h"

namespace lpd::engine {

// An export's files are named by job/layout.h.
using job::kPruningFileName;
using job::kWeightsFileName;

struct ExportOptions {
  // The teacher's config.json text, copied unchanged (diffusers cannot
  // express removed units in it; lpd_pruning.json does).
  std::string config_json;
  // Weights are written in this dtype (the teacher's, usually).
  torch::Dtype dtype = torch::kFloat32;
  int64_t teacher_parameters = 0;
};

// Writes `student` (built with its units removed) under `dir` in `store`:
// config.json, diffusion_pytorch_model.safetensors, lpd_pruning.json, then
// manifest.json last. Errors name the object that failed.
absl::Status ExportStudent(UNet2DConditionModelImpl& student,
                           const ExportOptions& options,
                           storage::ObjectStore& store, absl::string_view dir);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_COMPRESS_EXPORT_H_

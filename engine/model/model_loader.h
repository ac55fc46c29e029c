// Loading a U-Net model folder (diffusers layout: config.json plus one
// safetensors file or a sharded set with its index) into the engine.
#ifndef LPD_ENGINE_MODEL_MODEL_LOADER_H_
#define LPD_ENGINE_MODEL_MODEL_LOADER_H_

#include <torch/types.h>

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/unet.h"

namespace lpd::engine {

struct LoadModelOptions {
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat32;
  // Units to leave out of the built model (their weights are skipped), in
  // addition to those an lpd_pruning.json names.
  std::set<std::string> removed_units;
};

// Reads `<dir>/config.json`, and `<dir>/lpd_pruning.json` when present (an
// exported student: its units are left out), builds the model on the requested
// device and dtype, and loads its weights strictly. Errors name the folder and
// the failing part (config field, safetensors file and tensor, or the lists of
// missing / unexpected / mis-shaped keys).
absl::StatusOr<UNet2DConditionModel> LoadModel(const std::string& dir,
                                               const LoadModelOptions& options);

// Builds the model `<dir>/config.json` describes without reading weights
// (parameters allocated but untouched, so even SDXL costs no resident
// memory): for listing units and counting parameters.
absl::StatusOr<UNet2DConditionModel> BuildModelStructure(
    const std::string& dir);

// Parses "cpu", "cuda", "cuda:1" (InvalidArgument otherwise; Unavailable for
// CUDA when this build or machine has none).
absl::StatusOr<torch::Device> ParseTorchDevice(const std::string& name);
// Parses "float32"/"fp32", "float16"/"fp16", "bfloat16"/"bf16".
absl::StatusOr<torch::Dtype> ParseTorchDtype(const std::string& name);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_MODEL_MODEL_LOADER_H_

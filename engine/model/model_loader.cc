#include "engine/model/model_loader.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/core/torch_errors.h"
#include "engine/formats/safetensors.h"
#include "engine/formats/unet_config.h"

namespace lpd::engine {

namespace {

// The units an exported student lacks, from `<dir>/lpd_pruning.json` (none
// when the file is absent: a plain diffusers folder).
absl::StatusOr<std::set<std::string>> ReadPrunedUnits(const std::string& dir) {
  const std::string path = dir + "/lpd_pruning.json";
  if (!std::filesystem::exists(path)) return std::set<std::string>{};
  std::ifstream in(path);
  nlohmann::json json =
      nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() ||
      !json.contains("removed_units") || !json["removed_units"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path,
                     ": not a pruning record (expected an object with a "
                     "\"removed_units\" list)"));
  }
  std::set<std::string> units;
  for (const auto& unit : json["removed_units"]) {
    if (!unit.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": removed_units holds a non-string entry"));
    }
    units.insert(unit.get<std::string>());
  }
  return units;
}

}  // namespace

absl::StatusOr<UNet2DConditionModel> LoadModel(
    const std::string& dir, const LoadModelOptions& options) {
  ASSIGN_OR_RETURN(UNetConfig config, LoadUNetConfig(dir));
  ASSIGN_OR_RETURN(std::set<std::string> removed, ReadPrunedUnits(dir));
  removed.insert(options.removed_units.begin(), options.removed_units.end());
  ASSIGN_OR_RETURN(SafetensorsCheckpoint checkpoint,
                   SafetensorsCheckpoint::Open(dir));
  return GuardTorch(
      absl::StrCat("loading model ", dir),
      [&]() -> absl::StatusOr<UNet2DConditionModel> {
        UNetOptions unet_options;
        unet_options.config = config;
        unet_options.removed_units = removed;
        unet_options.tensor_options =
            torch::TensorOptions().device(options.device).dtype(options.dtype);
        auto impl = UNet2DConditionModelImpl::Create(unet_options);
        if (!impl.ok()) {
          return absl::Status(impl.status().code(),
                              absl::StrCat(dir, ": ", impl.status().message()));
        }
        absl::Status loaded = (*impl)->LoadWeights(
            checkpoint, /*allow_removed_extra=*/!options.removed_units.empty());
        if (!loaded.ok()) {
          return absl::Status(loaded.code(),
                              absl::StrCat(dir, ": ", loaded.message()));
        }
        (*impl)->eval();
        return UNet2DConditionModel(*impl);
      });
}

absl::StatusOr<UNet2DConditionModel> BuildModelStructure(
    const std::string& dir) {
  ASSIGN_OR_RETURN(UNetConfig config, LoadUNetConfig(dir));
  return GuardTorch(absl::StrCat("building model ", dir),
                    [&]() -> absl::StatusOr<UNet2DConditionModel> {
                      UNetOptions unet_options;
                      unet_options.config = config;
                      unet_options.tensor_options =
                          torch::TensorOptions().dtype(torch::kBFloat16);
                      ASSIGN_OR_RETURN(
                          auto impl,
                          UNet2DConditionModelImpl::Create(unet_options));
                      return UNet2DConditionModel(impl);
                    });
}

absl::StatusOr<torch::Device> ParseTorchDevice(const std::string& name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "cpu") return torch::Device(torch::kCPU);
  if (lower.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) {
      return absl::UnavailableError(absl::StrCat(
          "device \"", name,
          "\": no CUDA device is available to this build of LibTorch"));
    }
    return GuardTorch("device \"" + name + "\"",
                      [&]() -> absl::StatusOr<torch::Device> {
                        return torch::Device(lower);
                      });
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device \"", name, "\" (expected cpu or cuda[:N])"));
}

absl::StatusOr<torch::Dtype> ParseTorchDtype(const std::string& name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "float32" || lower == "fp32") return torch::kFloat32;
  if (lower == "float16" || lower == "fp16") return torch::kFloat16;
  if (lower == "bfloat16" || lower == "bf16") return torch::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dtype \"", name, "\" (expected float32, float16 or bfloat16)"));
}

}  // namespace lpd::engine

// Bridges safetensors entries and torch tensors. Includes LibTorch: only
// engine sources include this header.
#ifndef LPD_ENGINE_CORE_TENSOR_IO_H_
#define LPD_ENGINE_CORE_TENSOR_IO_H_

#include <torch/types.h>

#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/formats/safetensors.h"

namespace lpd::engine {

// "[2,4,64,64]": a shape for messages.
std::string ShapeString(torch::IntArrayRef shape);

// torch dtype of a safetensors dtype, and back (Unimplemented for dtypes the
// other side lacks).
torch::Dtype ToTorchDtype(SafetensorsDtype dtype);
absl::StatusOr<SafetensorsDtype> FromTorchDtype(torch::Dtype dtype);

// Copies one entry into a new tensor on `device`, converted to `dtype` when
// given (else the stored dtype). The mapping is read only here.
absl::StatusOr<torch::Tensor> MaterializeTensor(
    const SafetensorsFile& file, const TensorEntry& entry,
    torch::Device device = torch::kCPU,
    std::optional<torch::Dtype> dtype = std::nullopt);

// Reads every tensor of a file (for small files: inputs, test vectors).
absl::StatusOr<std::map<std::string, torch::Tensor>> ReadAllTensors(
    const std::string& path, torch::Device device = torch::kCPU,
    std::optional<torch::Dtype> dtype = std::nullopt);

// Writes tensors (any device; copied to contiguous CPU memory one at a time)
// to `path` atomically, with optional metadata.
absl::Status WriteTensors(
    const std::string& path,
    const std::map<std::string, torch::Tensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});

}  // namespace lpd::engine

#endif  // LPD_ENGINE_CORE_TENSOR_IO_H_

#include "engine/core/tensor_io.h"

#include <bit>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian: a big-endian host would "
              "need byte swapping");

// A tensor name, quoted for a message. (Debian's absl::string_view is not
// std::string_view.)
std::string Quote(std::string_view s) {
  return absl::StrCat(
      "\"", absl::CHexEscape(absl::string_view(s.data(), s.size())), "\"");
}

}  // namespace

torch::Dtype ToTorchDtype(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kF64:
      return torch::kFloat64;
    case SafetensorsDtype::kF32:
      return torch::kFloat32;
    case SafetensorsDtype::kF16:
      return torch::kFloat16;
    case SafetensorsDtype::kBF16:
      return torch::kBFloat16;
    case SafetensorsDtype::kI64:
      return torch::kInt64;
    case SafetensorsDtype::kI32:
      return torch::kInt32;
    case SafetensorsDtype::kI16:
      return torch::kInt16;
    case SafetensorsDtype::kI8:
      return torch::kInt8;
    case SafetensorsDtype::kU8:
      return torch::kUInt8;
    case SafetensorsDtype::kBool:
      return torch::kBool;
  }
  return torch::kFloat32;
}

absl::StatusOr<SafetensorsDtype> FromTorchDtype(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat64:
      return SafetensorsDtype::kF64;
    case torch::kFloat32:
      return SafetensorsDtype::kF32;
    case torch::kFloat16:
      return SafetensorsDtype::kF16;
    case torch::kBFloat16:
      return SafetensorsDtype::kBF16;
    case torch::kInt64:
      return SafetensorsDtype::kI64;
    case torch::kInt32:
      return SafetensorsDtype::kI32;
    case torch::kInt16:
      return SafetensorsDtype::kI16;
    case torch::kInt8:
      return SafetensorsDtype::kI8;
    case torch::kUInt8:
      return SafetensorsDtype::kU8;
    case torch::kBool:
      return SafetensorsDtype::kBool;
    default:
      return absl::UnimplementedError(absl::StrCat(
          "torch dtype ", c10::toString(dtype), " has no safetensors dtype"));
  }
}

absl::StatusOr<torch::Tensor> MaterializeTensor(
    const SafetensorsFile& file, const TensorEntry& entry, torch::Device device,
    std::optional<torch::Dtype> dtype) {
  if (file.Find(entry.name) != &entry) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": tensor ", Quote(entry.name),
                     ": the entry does not come from this file's header"));
  }
  const std::string what =
      absl::StrCat(file.path(), ": tensor ", Quote(entry.name));
  return GuardTorch(what, [&]() -> absl::StatusOr<torch::Tensor> {
    // Copy into a fresh CPU tensor: the mapped bytes may be unaligned for the
    // dtype, and nothing may point into the mapping once this returns.
    const std::span<const std::byte> bytes = file.Bytes(entry);
    torch::Tensor tensor = torch::empty(torch::IntArrayRef(entry.shape),
                                        torch::TensorOptions()
                                            .dtype(ToTorchDtype(entry.dtype))
                                            .device(torch::kCPU));
    if (!bytes.empty()) {
      std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
    }
    // Move first, then convert: a half-precision tensor crosses to an
    // accelerator at half the size and is widened there.
    if (device != tensor.device()) tensor = tensor.to(device);
    const torch::Dtype target = dtype.value_or(tensor.scalar_type());
    if (target != tensor.scalar_type()) tensor = tensor.to(target);
    return tensor;
  });
}

absl::StatusOr<std::map<std::string, torch::Tensor>> ReadAllTensors(
    const std::string& path, torch::Device device,
    std::optional<torch::Dtype> dtype) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::Open(path));
  std::map<std::string, torch::Tensor> tensors;
  for (const TensorEntry& entry : file->header().tensors) {
    ASSIGN_OR_RETURN(tensors[entry.name],
                     MaterializeTensor(*file, entry, device, dtype));
  }
  return tensors;
}

absl::Status WriteTensors(const std::string& path,
                          const std::map<std::string, torch::Tensor>& tensors,
                          const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", Quote(name), " is undefined"));
    }
    absl::StatusOr<SafetensorsDtype> dtype =
        FromTorchDtype(tensor.scalar_type());
    if (!dtype.ok()) {
      return absl::Status(dtype.status().code(),
                          absl::StrCat(path, ": tensor ", Quote(name), ": ",
                                       dtype.status().message()));
    }
    const auto sizes = tensor.sizes();
    specs.push_back(
        {.name = name,
         .dtype = *dtype,
         .shape = std::vector<int64_t>(sizes.begin(), sizes.end())});
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path, specs, metadata));
  // One tensor at a time: at most one contiguous CPU copy is alive.
  for (const TensorEntry& entry : writer->entries()) {
    const std::string what = absl::StrCat(path, ": tensor ", Quote(entry.name));
    RETURN_IF_ERROR(GuardTorch(what, [&]() -> absl::Status {
      torch::Tensor cpu =
          tensors.at(entry.name).detach().to(torch::kCPU).contiguous();
      const size_t size = static_cast<size_t>(cpu.numel()) * cpu.element_size();
      return writer->Write(
          entry.name, std::span<const std::byte>(
                          static_cast<const std::byte*>(cpu.data_ptr()), size));
    }));
  }
  return writer->Finish();
}

std::string ShapeString(torch::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

}  // namespace lpd::engine

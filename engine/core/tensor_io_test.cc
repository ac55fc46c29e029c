#include "engine/core/tensor_io.h"

#include <stdlib.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

const std::string kGolden = std::string(LPD_TESTDATA_DIR) + "/unet-golden";
const std::string kSd15 =
    kGolden + "/tiny-sd15/diffusion_pytorch_model.safetensors";
const std::string kSdxlShard1 =
    kGolden + "/tiny-sdxl/diffusion_pytorch_model-00001-of-00003.safetensors";

// IEEE half precision to float, by hand.
float HalfToFloat(uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  float value;
  if (exponent == 0) {
    value = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    value = mantissa == 0 ? std::numeric_limits<float>::infinity()
                          : std::numeric_limits<float>::quiet_NaN();
  } else {
    value = std::ldexp(static_cast<float>(mantissa + 1024), exponent - 25);
  }
  return sign ? -value : value;
}

// bfloat16 is the top half of a float.
float Bfloat16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

std::vector<uint16_t> Halves(std::span<const std::byte> bytes) {
  std::vector<uint16_t> out(bytes.size() / 2);
  std::memcpy(out.data(), bytes.data(), out.size() * 2);
  return out;
}

TEST(TensorIoTest, DtypesMapBothWays) {
  const SafetensorsDtype all[] = {
      SafetensorsDtype::kF64,  SafetensorsDtype::kF32, SafetensorsDtype::kF16,
      SafetensorsDtype::kBF16, SafetensorsDtype::kI64, SafetensorsDtype::kI32,
      SafetensorsDtype::kI16,  SafetensorsDtype::kI8,  SafetensorsDtype::kU8,
      SafetensorsDtype::kBool};
  for (SafetensorsDtype dtype : all) {
    absl::StatusOr<SafetensorsDtype> back = FromTorchDtype(ToTorchDtype(dtype));
    ASSERT_TRUE(back.ok()) << DtypeName(dtype);
    EXPECT_EQ(*back, dtype);
    EXPECT_EQ(torch::elementSize(ToTorchDtype(dtype)), DtypeSize(dtype));
  }
  EXPECT_EQ(ToTorchDtype(SafetensorsDtype::kBF16), torch::kBFloat16);
}

TEST(TensorIoTest, TorchDtypeWithoutSafetensorsDtypeIsUnimplemented) {
  absl::StatusOr<SafetensorsDtype> dtype = FromTorchDtype(torch::kComplexFloat);
  EXPECT_EQ(dtype.status().code(), absl::StatusCode::kUnimplemented);
}

TEST(TensorIoTest, MaterializesFloat16AsStored) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(kSd15);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorEntry* entry = (*file)->Find("conv_in.weight");
  ASSERT_NE(entry, nullptr);
  absl::StatusOr<torch::Tensor> tensor = MaterializeTensor(**file, *entry);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ(tensor->scalar_type(), torch::kFloat16);
  EXPECT_EQ(tensor->sizes(), torch::IntArrayRef({32, 4, 3, 3}));
  EXPECT_TRUE(tensor->is_contiguous());
  EXPECT_EQ(std::memcmp(tensor->data_ptr(), (*file)->Bytes(*entry).data(),
                        (*file)->Bytes(*entry).size()),
            0);
}

TEST(TensorIoTest, Float16ToFloat32MatchesManualConversion) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(kSd15);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorEntry* entry = (*file)->Find("conv_in.bias");
  ASSERT_NE(entry, nullptr);
  absl::StatusOr<torch::Tensor> tensor =
      MaterializeTensor(**file, *entry, torch::kCPU, torch::kFloat32);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  ASSERT_EQ(tensor->scalar_type(), torch::kFloat32);
  const std::vector<uint16_t> halves = Halves((*file)->Bytes(*entry));
  ASSERT_EQ(static_cast<size_t>(tensor->numel()), halves.size());
  const float* values = tensor->data_ptr<float>();
  for (size_t i = 0; i < halves.size(); ++i) {
    EXPECT_EQ(values[i], HalfToFloat(halves[i])) << i;
  }
  // As Python's struct module reads the first one.
  EXPECT_EQ(values[0], -0.1500244140625f);
}

TEST(TensorIoTest, Bfloat16ToFloat32MatchesManualConversion) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(kSdxlShard1);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorEntry* entry = (*file)->Find("conv_in.weight");
  ASSERT_NE(entry, nullptr);
  absl::StatusOr<torch::Tensor> tensor =
      MaterializeTensor(**file, *entry, torch::kCPU, torch::kFloat32);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  const std::vector<uint16_t> halves = Halves((*file)->Bytes(*entry));
  torch::Tensor flat = tensor->flatten();
  ASSERT_EQ(static_cast<size_t>(flat.numel()), halves.size());
  const float* values = flat.data_ptr<float>();
  for (size_t i = 0; i < halves.size(); ++i) {
    EXPECT_EQ(values[i], Bfloat16ToFloat(halves[i])) << i;
  }
  EXPECT_EQ(values[0], 0.03662109375f);
}

TEST(TensorIoTest, MaterializedTensorOutlivesTheMapping) {
  torch::Tensor tensor;
  std::vector<uint16_t> stored;
  {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(kSdxlShard1);
    ASSERT_TRUE(file.ok()) << file.status();
    const TensorEntry* entry = (*file)->Find("conv_in.weight");
    ASSERT_NE(entry, nullptr);
    stored = Halves((*file)->Bytes(*entry));
    absl::StatusOr<torch::Tensor> result = MaterializeTensor(**file, *entry);
    ASSERT_TRUE(result.ok()) << result.status();
    tensor = *result;
    const auto* begin = static_cast<const std::byte*>(tensor.data_ptr());
    const std::span<const std::byte> mapped = (*file)->Bytes(*entry);
    EXPECT_TRUE(begin + tensor.nbytes() <= mapped.data() ||
                begin >= mapped.data() + mapped.size());
  }
  // The file is unmapped: the tensor's bytes are still there.
  ASSERT_EQ(tensor.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(std::memcmp(tensor.data_ptr(), stored.data(), stored.size() * 2),
            0);
}

TEST(TensorIoTest, EntryFromAnotherFileIsRejected) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(kSd15);
  ASSERT_TRUE(file.ok()) << file.status();
  TensorEntry copy = *(*file)->Find("conv_in.bias");
  absl::StatusOr<torch::Tensor> tensor = MaterializeTensor(**file, copy);
  EXPECT_EQ(tensor.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(tensor.status().message(), "conv_in.bias"));
}

TEST(TensorIoTest, ReadsInt64AndFloat32Vectors) {
  absl::StatusOr<std::map<std::string, torch::Tensor>> tensors =
      ReadAllTensors(kGolden + "/tiny-sd15/vectors.safetensors");
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(tensors->size(), 14u);
  const torch::Tensor& timestep = tensors->at("input.timestep");
  EXPECT_EQ(timestep.scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(timestep, torch::tensor({999, 37}, torch::kInt64)));
  const torch::Tensor& sample = tensors->at("output.sample");
  EXPECT_EQ(sample.scalar_type(), torch::kFloat32);
  EXPECT_EQ(sample.sizes(), torch::IntArrayRef({2, 4, 16, 16}));
  EXPECT_FLOAT_EQ(sample.flatten()[0].item<float>(), 0.24177247285842896f);
  EXPECT_FLOAT_EQ(sample.flatten()[1].item<float>(), 0.1930682361125946f);
}

TEST(TensorIoTest, ReadAllTensorsConvertsToTheRequestedDtype) {
  absl::StatusOr<std::map<std::string, torch::Tensor>> tensors = ReadAllTensors(
      kGolden + "/tiny-sd15/vectors.safetensors", torch::kCPU, torch::kFloat64);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(tensors->at("input.timestep").scalar_type(), torch::kFloat64);
  EXPECT_EQ(tensors->at("input.timestep")[0].item<double>(), 999.0);
}

TEST(TensorIoTest, ReadAllTensorsOfMissingFileNamesIt) {
  absl::StatusOr<std::map<std::string, torch::Tensor>> tensors =
      ReadAllTensors("/nonexistent/x.safetensors");
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(tensors.status().message(),
                                "/nonexistent/x.safetensors"));
}

class TensorIoFileTest : public testing::Test {
 protected:
  test::TempFolder temp_{"tensor_io_test."};
  std::string dir_ = temp_.path();
};

TEST_F(TensorIoFileTest, WriteTensorsRoundTripsEveryDtypeAndLayout) {
  torch::manual_seed(7);
  const torch::Tensor base = torch::randn({4, 6});
  std::map<std::string, torch::Tensor> tensors = {
      {"f32", base},
      {"f32.transposed", base.t()},             // non-contiguous
      {"f32.strided", base.slice(1, 0, 6, 2)},  // non-contiguous
      {"f32.offset", base[2]},                  // storage offset
      {"f64", base.to(torch::kFloat64)},
      {"f16", base.to(torch::kFloat16).t()},
      {"bf16", base.to(torch::kBFloat16)},
      {"i64", torch::arange(-5, 5, torch::kInt64).reshape({2, 5})},
      {"i32", torch::arange(-5, 5, torch::kInt32)},
      {"i16", torch::arange(-5, 5, torch::kInt16)},
      {"i8", torch::arange(-5, 5, torch::kInt8)},
      {"u8", torch::arange(0, 250, 25, torch::kUInt8)},
      {"bool", base > 0},
      {"scalar", torch::tensor(3.25)},
      {"empty", torch::empty({0, 3})},
  };
  ASSERT_FALSE(tensors["f32.transposed"].is_contiguous());
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  const std::string path = dir_ + "/out.safetensors";
  ASSERT_TRUE(WriteTensors(path, tensors, metadata).ok());

  absl::StatusOr<std::map<std::string, torch::Tensor>> read =
      ReadAllTensors(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    const torch::Tensor& actual = read->at(name);
    EXPECT_EQ(actual.scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(actual.sizes(), expected.sizes()) << name;
    EXPECT_TRUE(torch::equal(actual, expected)) << name;
  }
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().metadata, metadata);
}

TEST_F(TensorIoFileTest, WriteTensorsTakesTensorsThatRequireGrad) {
  const torch::Tensor weight = torch::ones({3}, torch::requires_grad());
  const std::string path = dir_ + "/out.safetensors";
  ASSERT_TRUE(WriteTensors(path, {{"w", weight * 2}}).ok());
  absl::StatusOr<std::map<std::string, torch::Tensor>> read =
      ReadAllTensors(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(torch::equal(read->at("w"), torch::full({3}, 2.0f)));
}

TEST_F(TensorIoFileTest, WriteTensorsRejectsUnsupportedDtypeNamingTheTensor) {
  const std::string path = dir_ + "/out.safetensors";
  absl::Status status =
      WriteTensors(path, {{"ok", torch::ones({2})},
                          {"complex", torch::ones({2}, torch::kComplexFloat)}});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(absl::StrContains(status.message(), "\"complex\"")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), path)) << status;
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(TensorIoFileTest, WriteTensorsRejectsUndefinedTensor) {
  absl::Status status =
      WriteTensors(dir_ + "/out.safetensors", {{"nothing", torch::Tensor()}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "\"nothing\"")) << status;
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(TensorIoFileTest, MaterializesUnalignedData) {
  // A header of 61 bytes puts the F32 data at an odd file offset.
  std::string json =
      R"({"v":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  json.append(61 - json.size(), ' ');
  std::string image(8, '\0');
  image[0] = 61;
  image += json;
  const float values[3] = {1.5f, -2.25f, 1e-3f};
  image.append(reinterpret_cast<const char*>(values), sizeof(values));
  const std::string path = dir_ + "/odd.safetensors";
  {
    std::FILE* out = std::fopen(path.c_str(), "wb");
    ASSERT_NE(out, nullptr);
    std::fwrite(image.data(), 1, image.size(), out);
    std::fclose(out);
  }
  absl::StatusOr<std::map<std::string, torch::Tensor>> read =
      ReadAllTensors(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(
      torch::equal(read->at("v"), torch::tensor({1.5f, -2.25f, 1e-3f})));
}

}  // namespace
}  // namespace lpd::engine

// Test helpers over the reference vectors in ../shared/testdata/unet-golden
// (for engine tests only).
#ifndef LPD_ENGINE_MODEL_GOLDEN_TEST_SUPPORT_H_
#define LPD_ENGINE_MODEL_GOLDEN_TEST_SUPPORT_H_

#include <gtest/gtest.h>
#include <torch/types.h>

#include <map>
#include <string>

#include "engine/core/tensor_io.h"
#include "engine/model/forward_runner.h"
#include "engine/model/unet.h"

namespace lpd::engine::testing {

// The folder of a reference model ("tiny-sd15", "tiny-sdxl").
inline std::string GoldenDir(const std::string& name) {
  return std::string(LPD_TESTDATA_DIR) + "/unet-golden/" + name;
}

// Every tensor of a safetensors file (a test failure, and an empty map, if
// it cannot be read).
inline std::map<std::string, torch::Tensor> ReadVectors(
    const std::string& path) {
  auto tensors = ReadAllTensors(path);
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  return tensors.ok() ? *tensors : std::map<std::string, torch::Tensor>{};
}

// The `input.*` tensors of reference vectors as U-Net inputs.
inline UNetInputs InputsFrom(const std::map<std::string, torch::Tensor>& v) {
  auto inputs = InputsFromTensors(v, "reference vectors", false);
  EXPECT_TRUE(inputs.ok()) << inputs.status();
  return inputs.ok() ? *inputs : UNetInputs{};
}

}  // namespace lpd::engine::testing

#endif  // LPD_ENGINE_MODEL_GOLDEN_TEST_SUPPORT_H_

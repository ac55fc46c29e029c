#include "engine/model/graphed_forward.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "engine/core/tensor_io.h"
#include "engine/model/model_loader.h"

namespace lpd::engine {
namespace {

class GraphedForwardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir =
        std::string(LPD_TESTDATA_DIR) + "/unet-golden/tiny-sdxl";
    auto model = LoadModel(dir, {});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
    auto vectors = ReadAllTensors(dir + "/vectors.safetensors");
    ASSERT_TRUE(vectors.ok()) << vectors.status();
    vectors_ = *vectors;
    inputs_.sample = vectors_.at("input.sample");
    inputs_.timestep = vectors_.at("input.timestep");
    inputs_.encoder_hidden_states = vectors_.at("input.encoder_hidden_states");
    inputs_.text_embeds = vectors_.at("input.text_embeds");
    inputs_.time_ids = vectors_.at("input.time_ids");
  }
  UNet2DConditionModel model_{nullptr};
  std::map<std::string, torch::Tensor> vectors_;
  UNetInputs inputs_;
};

TEST_F(GraphedForwardTest, OnCpuRunsTheEagerPassAndMatchesTheReference) {
  auto runner = GraphedForward::Create(model_, inputs_);
  ASSERT_TRUE(runner.ok()) << runner.status();
  EXPECT_FALSE((*runner)->graphed());
  auto out = (*runner)->Run(inputs_);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT((*out - vectors_.at("output.sample")).abs().max().item<double>(),
            1e-4);
  // New inputs give new outputs (nothing is cached between calls).
  UNetInputs other = inputs_;
  other.sample = inputs_.sample * 0.5;
  auto changed = (*runner)->Run(other);
  ASSERT_TRUE(changed.ok());
  EXPECT_GT(
      (*changed - vectors_.at("output.sample")).abs().max().item<double>(),
      1e-3);
}

TEST_F(GraphedForwardTest, RejectsInputsOfAnotherShape) {
  auto runner = GraphedForward::Create(model_, inputs_);
  ASSERT_TRUE(runner.ok()) << runner.status();
  UNetInputs other = inputs_;
  other.sample = torch::zeros({2, 4, 8, 8});
  auto out = (*runner)->Run(other);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lpd::engine

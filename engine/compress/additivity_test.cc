#include "engine/compress/additivity.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "engine/model/golden_test_support.h"
#include "engine/model/model_loader.h"

namespace lpd::engine {
namespace {

using testing::GoldenDir;
using testing::InputsFrom;
using testing::ReadVectors;

class AdditivityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(1);
    auto model = LoadModel(GoldenDir("tiny-sd15"), {});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
    calibration_ = {InputsFrom(
        ReadVectors(GoldenDir("tiny-sd15") + "/vectors.safetensors"))};
    auto scores = ScoreUnits(
        *model_,
        ScorableUnitIds(*model_, {UnitKind::kResnet, UnitKind::kAttention}),
        calibration_, {});
    ASSERT_TRUE(scores.ok()) << scores.status();
    scores_ = *scores;
  }
  UNet2DConditionModel model_{nullptr};
  std::vector<UNetInputs> calibration_;
  Scores scores_;
};

TEST_F(AdditivityTest, SingleUnitSetsMeasureExactlyTheirScore) {
  auto samples = MeasureAdditivity(*model_, scores_, calibration_,
                                   {.set_sizes = {1}, .sets_per_size = 5});
  ASSERT_TRUE(samples.ok()) << samples.status();
  ASSERT_EQ(samples->size(), 5u);
  for (const auto& s : *samples) {
    EXPECT_EQ(s.set_size, 1);
    EXPECT_NEAR(s.measured, s.predicted, 1e-9 * s.predicted);
  }
}

TEST_F(AdditivityTest, ReportsOneRowPerSizeAndIsSeeded) {
  AdditivityOptions options{
      .set_sizes = SetSizesAround(8, 25), .sets_per_size = 4, .seed = 11};
  EXPECT_EQ(options.set_sizes, (std::vector<int>{4, 6, 8, 10}));
  auto a = MeasureAdditivity(*model_, scores_, calibration_, options);
  auto b = MeasureAdditivity(*model_, scores_, calibration_, options);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), 16u);
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].measured, (*b)[i].measured);
    EXPECT_GT((*a)[i].measured, 0);
  }
  auto rows = selection::AdditivityReport(*a);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 4u);
  for (const auto& row : *rows) {
    EXPECT_EQ(row.samples, 4);
    ASSERT_TRUE(row.pearson.has_value()) << row.note;
    EXPECT_GE(*row.pearson, -1.0);
    EXPECT_LE(*row.pearson, 1.0);
  }
}

TEST_F(AdditivityTest, RejectsSizesOutsideTheUnitList) {
  auto samples =
      MeasureAdditivity(*model_, scores_, calibration_, {.set_sizes = {1000}});
  EXPECT_EQ(samples.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lpd::engine

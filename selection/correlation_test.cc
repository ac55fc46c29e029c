#include "selection/correlation.h"

#include <cmath>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lpd::selection {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(PearsonTest, MatchesHandComputedValue) {
  // Deviations (-2,-1,0,1,2) and (-2,0,1,0,1): r = 6 / sqrt(10 × 6).
  EXPECT_NEAR(PearsonCorrelation({1, 2, 3, 4, 5}, {2, 4, 5, 4, 5}).value(),
              6 / std::sqrt(60.0), 1e-15);
  // y = x^3: deviations (-1.5,-.5,.5,1.5), (-24,-17,2,39): r = 104/√11950.
  EXPECT_NEAR(PearsonCorrelation({1, 2, 3, 4}, {1, 8, 27, 64}).value(),
              104 / std::sqrt(11950.0), 1e-15);
}

TEST(PearsonTest, PerfectCorrelations) {
  EXPECT_DOUBLE_EQ(PearsonCorrelation({1, 2, 3}, {6, 4, 2}).value(), -1);
  EXPECT_DOUBLE_EQ(PearsonCorrelation({1, 2, 3}, {10, 20, 30}).value(), 1);
  EXPECT_DOUBLE_EQ(PearsonCorrelation({0.1, 0.2}, {-5, 7}).value(), 1);
}

TEST(PearsonTest, StaysWithinBoundsForHugeAndTinyValues) {
  const double r =
      PearsonCorrelation({1e300, 2e300, 3e300}, {1e-300, 2e-300, 3e-300})
          .value();
  EXPECT_NEAR(r, 1, 1e-15);
  EXPECT_LE(r, 1);
}

TEST(SpearmanTest, UsesAverageRanksForTies) {
  // Ranks of y: (1, 2.5, 4.5, 2.5, 4.5); rho = 7 / sqrt(10 × 9).
  EXPECT_NEAR(SpearmanCorrelation({1, 2, 3, 4, 5}, {2, 4, 5, 4, 5}).value(),
              7 / std::sqrt(90.0), 1e-15);
}

TEST(SpearmanTest, MonotoneRelationsAreOneOrMinusOne) {
  EXPECT_DOUBLE_EQ(SpearmanCorrelation({1, 2, 3, 4}, {1, 8, 27, 64}).value(),
                   1);
  EXPECT_DOUBLE_EQ(
      SpearmanCorrelation({1, 2, 3, 4}, {100, 10, 1, 0.001}).value(), -1);
}

TEST(SpearmanTest, HandComputedWithTiesOnBothSides) {
  // x ranks (1.5, 1.5, 3, 4), y ranks (1, 3, 3, 3): deviations
  // (-1, -1, .5, 1.5) and (-1.5, .5, .5, .5); sxy = 1.5 - .5 + .25 + .75 = 2,
  // sxx = 1 + 1 + .25 + 2.25 = 4.5, syy = 2.25 + .75 = 3.
  EXPECT_NEAR(SpearmanCorrelation({1, 1, 2, 3}, {0, 5, 5, 5}).value(),
              2 / std::sqrt(4.5 * 3), 1e-15);
}

TEST(AverageRanksTest, TiesShareTheMeanRank) {
  EXPECT_THAT(AverageRanks({10, 20, 20, 5}), ElementsAre(2, 3.5, 3.5, 1));
  EXPECT_THAT(AverageRanks({7, 7, 7}), ElementsAre(2, 2, 2));
  EXPECT_THAT(AverageRanks({}), ElementsAre());
  EXPECT_THAT(AverageRanks({-1}), ElementsAre(1));
}

TEST(CorrelationTest, RejectsDegenerateInput) {
  for (auto* correlation : {&PearsonCorrelation, &SpearmanCorrelation}) {
    EXPECT_THAT(correlation({1, 2}, {1, 2, 3}).status().message(),
                HasSubstr("x has 2 values but y has 3"));
    EXPECT_THAT(correlation({1}, {1}).status().message(),
                HasSubstr("at least 2 pairs, got 1"));
    EXPECT_THAT(correlation({}, {}).status().message(),
                HasSubstr("at least 2 pairs, got 0"));
    EXPECT_THAT(correlation({3, 3, 3}, {1, 2, 3}).status().message(),
                HasSubstr("x is constant"));
    EXPECT_THAT(correlation({1, 2, 3}, {0.5, 0.5, 0.5}).status().message(),
                HasSubstr("y is constant"));
    EXPECT_THAT(correlation({1, std::nan(""), 3}, {1, 2, 3}).status().message(),
                HasSubstr("pair #1 is not finite"));
    EXPECT_EQ(correlation({1, 2}, {1, std::numeric_limits<double>::infinity()})
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(CorrelationTest, ConstantWithRoundingIsStillConstant) {
  // 0.1 three times has a mean that is not exactly 0.1; still undefined.
  EXPECT_FALSE(PearsonCorrelation({0.1, 0.1, 0.1}, {1, 2, 3}).ok());
}

TEST(AdditivityReportTest, CorrelatesWithinEachSetSize) {
  const std::vector<AdditivitySample> samples = {
      {4, 1, 2},
      {2, 1, 2},
      {4, 2, 4},
      {2, 2, 4},
      {2, 3, 5},
      {4, 3, 5},
      {2, 4, 4},
      {4, 4, 4},
      {2, 5, 5},
      {4, 5, 5},
      {3, 1, 1},  // one sample:
                  // undefined
      {6, 1, 3},
      {6, 2, 3},
      {6, 9, 3},  // constant measured: undefined
  };
  const std::vector<AdditivityRow> rows = AdditivityReport(samples).value();
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0].set_size, 2);
  EXPECT_EQ(rows[0].samples, 5);
  EXPECT_THAT(*rows[0].pearson, DoubleNear(6 / std::sqrt(60.0), 1e-15));
  EXPECT_THAT(*rows[0].spearman, DoubleNear(7 / std::sqrt(90.0), 1e-15));
  EXPECT_TRUE(rows[0].note.empty());
  EXPECT_EQ(rows[1].set_size, 3);
  EXPECT_FALSE(rows[1].pearson.has_value());
  EXPECT_FALSE(rows[1].spearman.has_value());
  EXPECT_THAT(rows[1].note, HasSubstr("at least 2 pairs"));
  EXPECT_EQ(rows[2].set_size, 4);
  EXPECT_EQ(rows[2].pearson, rows[0].pearson);
  EXPECT_EQ(rows[3].set_size, 6);
  EXPECT_THAT(rows[3].note, HasSubstr("y is constant"));

  const nlohmann::json json = AdditivityReportToJson(rows);
  ASSERT_TRUE(json["by_set_size"].is_array());
  ASSERT_EQ(json["by_set_size"].size(), 4u);
  EXPECT_EQ(json["by_set_size"][0]["set_size"], 2);
  EXPECT_EQ(json["by_set_size"][0]["samples"], 5);
  EXPECT_EQ(json["by_set_size"][0]["pearson"].get<double>(), *rows[0].pearson);
  EXPECT_EQ(json["by_set_size"][0]["spearman"].get<double>(),
            *rows[0].spearman);
  EXPECT_FALSE(json["by_set_size"][0].contains("note"));
  EXPECT_TRUE(json["by_set_size"][1]["pearson"].is_null());
  EXPECT_TRUE(json["by_set_size"][1]["spearman"].is_null());
  EXPECT_EQ(json["by_set_size"][1]["note"], rows[1].note);
}

TEST(AdditivityReportTest, SetSizeAloneDoesNotInflateIt) {
  // Pooled, predicted and measured both grow with set size (r near 1);
  // within each size they are unrelated.
  std::vector<AdditivitySample> samples;
  for (int size : {2, 8}) {
    const double base = size;
    samples.push_back({size, base + 1, base + 2});
    samples.push_back({size, base + 2, base + 1});
    samples.push_back({size, base + 3, base + 3});
    samples.push_back({size, base + 4, base + 1.5});
  }
  const std::vector<AdditivityRow> rows = AdditivityReport(samples).value();
  ASSERT_EQ(rows.size(), 2u);
  for (const AdditivityRow& row : rows) {
    EXPECT_LT(*row.pearson, 0.5) << row.set_size;
  }
}

TEST(AdditivityReportTest, EmptyInputGivesNoRows) {
  EXPECT_TRUE(AdditivityReport({}).value().empty());
  EXPECT_EQ(AdditivityReportToJson({})["by_set_size"].size(), 0u);
}

TEST(AdditivityReportTest, RejectsBadSamples) {
  EXPECT_THAT(AdditivityReport({{2, 1, 1}, {0, 1, 1}}).status().message(),
              HasSubstr("sample #1: set size must be >= 1, got 0"));
  EXPECT_THAT(AdditivityReport({{2, std::nan(""), 1}}).status().message(),
              HasSubstr("sample #0: values must be finite"));
}

}  // namespace
}  // namespace lpd::selection

#include "job/names.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "job/spec.h"

namespace lpd::job {
namespace {

using ::testing::ElementsAre;

TEST(PhaseTableTest, PhasesRunInTheDesignOrder) {
  std::vector<std::string> order;
  for (lpd::v1::Phase p = FirstPhase(); p != lpd::v1::PHASE_UNSPECIFIED;
       p = NextPhase(p)) {
    order.push_back(std::string(PhaseName(p)));
  }
  EXPECT_THAT(order,
              ElementsAre("SCORE", "SELECT", "DISTILL", "EVALUATE", "EXPORT"));
  EXPECT_EQ(NextPhase(lpd::v1::PHASE_UNSPECIFIED), lpd::v1::PHASE_UNSPECIFIED);
}

TEST(PhaseTableTest, WeightsSumToOneAndOnlySelectRunsOnTheScheduler) {
  double sum = 0;
  for (const PhaseInfo& info : kPhases) {
    sum += info.progress_weight;
    EXPECT_EQ(info.runs_on_workers, info.phase != lpd::v1::PHASE_SELECT)
        << info.name;
  }
  EXPECT_DOUBLE_EQ(sum, 1.0);
  EXPECT_DOUBLE_EQ(PhaseWeight(lpd::v1::PHASE_DISTILL), 0.75);
  EXPECT_EQ(PhaseWeight(lpd::v1::PHASE_UNSPECIFIED), 0);
}

TEST(PhaseTableTest, NamesLabelsAndEveryProtoValue) {
  EXPECT_EQ(PhaseName(lpd::v1::PHASE_EVALUATE), "EVALUATE");
  EXPECT_EQ(PhaseLabel(lpd::v1::PHASE_EVALUATE), "evaluate");
  EXPECT_EQ(PhaseName(lpd::v1::PHASE_UNSPECIFIED), "UNSPECIFIED");
  // Every Phase value of the proto but UNSPECIFIED is in the table, under
  // the proto's own name.
  const auto* descriptor = lpd::v1::Phase_descriptor();
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const auto phase =
        static_cast<lpd::v1::Phase>(descriptor->value(i)->number());
    if (phase == lpd::v1::PHASE_UNSPECIFIED) continue;
    EXPECT_EQ(absl::StrCat("PHASE_", PhaseName(phase)),
              descriptor->value(i)->name());
  }
}

TEST(PhaseTableTest, InPhasePrefixesOnce) {
  const absl::Status plain = absl::NotFoundError("no plan.json");
  const absl::Status once = InPhase(lpd::v1::PHASE_DISTILL, plain);
  EXPECT_EQ(once.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(once.message(), "DISTILL: no plan.json");
  EXPECT_EQ(InPhase(lpd::v1::PHASE_DISTILL, once).message(),
            "DISTILL: no plan.json");
  EXPECT_TRUE(InPhase(lpd::v1::PHASE_DISTILL, absl::OkStatus()).ok());
}

// The spec's YAML names of PruneUnit and Criterion are the names selection
// gives the same kinds and criteria (units.json, scores.json).
TEST(VocabularyTest, UnitKindsMatchTheSpecsYamlNames) {
  const auto* descriptor = lpd::v1::PruneUnit_descriptor();
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const auto unit =
        static_cast<lpd::v1::PruneUnit>(descriptor->value(i)->number());
    auto kind = UnitKindOf(unit);
    if (unit == lpd::v1::PRUNE_UNIT_UNSPECIFIED) {
      EXPECT_FALSE(kind.ok());
      continue;
    }
    ASSERT_TRUE(kind.ok()) << kind.status();
    EXPECT_EQ(std::string(selection::UnitKindName(*kind)),
              std::string(YamlName(unit)));
  }
}

TEST(VocabularyTest, CriteriaMatchTheSpecsYamlNames) {
  const auto* descriptor = lpd::v1::Criterion_descriptor();
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const auto criterion =
        static_cast<lpd::v1::Criterion>(descriptor->value(i)->number());
    auto score = ScoreCriterionOf(criterion);
    if (criterion == lpd::v1::CRITERION_UNSPECIFIED) {
      EXPECT_FALSE(score.ok());
      continue;
    }
    ASSERT_TRUE(score.ok()) << score.status();
    if (criterion == lpd::v1::CRITERION_HANDCRAFTED) {
      EXPECT_FALSE(score->has_value());
      continue;
    }
    ASSERT_TRUE(score->has_value());
    EXPECT_EQ(selection::ScoreCriterionName(**score),
              std::string(YamlName(criterion)));
  }
}

}  // namespace
}  // namespace lpd::job

#include "runtime/select_phase.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lpd/v1/job_spec.pb.h"
#include "nlohmann/json.hpp"
#include "selection/knapsack.h"
#include "selection/scores.h"
#include "selection/units_test_support.h"
#include "testing/temp_folder.h"

namespace lpd::selection {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class SelectPhaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = temp_.path();
    job_.mutable_metadata()->set_name("select-test");
    auto* spec = job_.mutable_spec();
    spec->set_seed(7);
    spec->mutable_prune()->set_target_ratio(0.13);
    spec->mutable_prune()->set_criterion(lpd::v1::CRITERION_OUTPUT_LOSS);
    spec->mutable_prune()->add_units(lpd::v1::PRUNE_UNIT_RESNET);
    spec->mutable_prune()->add_units(lpd::v1::PRUNE_UNIT_TRANSFORMER_BLOCK);
    spec->mutable_output()->set_uri("file://" + dir_ + "/out/");
  }

  void Write(const std::string& name, const nlohmann::json& json) {
    const std::filesystem::path path = dir_ + "/out/" + name;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << json.dump(2) << "\n";
  }
  std::string Read(const std::string& name) {
    std::ifstream in(dir_ + "/out/" + name);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  }

  // The unsharded scores of the job's scorable units (resnet +
  // transformer_block): r0, the two blocks, up.r0.
  Scores WholeScores() {
    Scores scores;
    scores.criterion = "output_loss";
    scores.calibration_samples = 4;
    scores.seed = 7;
    scores.calibration_fingerprint = "0123456789abcdef";
    const std::vector<std::string> ids =
        ScorableUnitIds(TinyUnits(), {"resnet", "transformer_block"});
    scores.total_units = static_cast<int64_t>(ids.size());
    scores.units_fingerprint = UnitListFingerprint(ids);
    scores.total_params = 1000;
    const double values[] = {0.5, 0.01, 0.02, 0.25};
    const int64_t params[] = {100, 20, 20, 100};
    for (size_t j = 0; j < ids.size(); ++j) {
      const std::string kind =
          j == 1 || j == 2 ? "transformer_block" : "resnet";
      scores.units.push_back({ids[j], kind, params[j], values[j]});
    }
    return scores;
  }
  // Shard `index` of `count` of WholeScores().
  Scores Shard(int index, int count) {
    Scores whole = WholeScores();
    Scores shard = whole;
    shard.shard = {index, count};
    shard.units.clear();
    for (size_t j = index; j < whole.units.size(); j += count) {
      shard.units.push_back(whole.units[j]);
    }
    return shard;
  }

  test::TempFolder temp_{"lpd_select_"};
  std::string dir_;
  lpd::v1::CompressionJob job_;
};

TEST_F(SelectPhaseTest, MergesShardsIntoTheUnshardedScoresAndPlans) {
  Write(job::kUnitsObject, ModelUnitsToJson(TinyUnits()));
  for (int i = 0; i < 3; ++i)
    Write(job::ScoreShardObject(i, 3), ScoresToJson(Shard(i, 3)));
  auto result = RunSelectTask(job_, 3);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Read(job::kScoresObject),
            ScoresToJson(WholeScores()).dump(2) + "\n");

  // 130 parameters needed: the two blocks (40, loss 0.03) do not reach it;
  // up.r0 + a block (120) neither; up.r0 + both blocks (loss 0.28) does, and
  // takes the attention's shell with them: 150 removed in effect.
  auto plan = PlanFromJson(nlohmann::json::parse(Read(job::kPlanObject)));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->criterion, "output_loss");
  EXPECT_THAT(plan->removed,
              ElementsAre("down.a0.transformer_blocks.0",
                          "down.a0.transformer_blocks.1", "up.r0"));
  EXPECT_EQ(plan->removed_params, 150);
  EXPECT_DOUBLE_EQ(plan->achieved_ratio, 0.15);
  EXPECT_NEAR(plan->overshoot, 0.02, 1e-12);
  EXPECT_EQ((*result)["plan"], PlanToJson(*plan));

  // One shard gives the same bytes.
  const std::string three = Read(job::kPlanObject);
  Write(job::ScoreShardObject(0, 1), ScoresToJson(WholeScores()));
  ASSERT_TRUE(RunSelectTask(job_, 1).ok());
  EXPECT_EQ(Read(job::kPlanObject), three);
  EXPECT_EQ(Read(job::kScoresObject),
            ScoresToJson(WholeScores()).dump(2) + "\n");
}

TEST_F(SelectPhaseTest, MissingShardIsFailedPreconditionNamingIt) {
  Write(job::kUnitsObject, ModelUnitsToJson(TinyUnits()));
  Write(job::ScoreShardObject(0, 3), ScoresToJson(Shard(0, 3)));
  Write(job::ScoreShardObject(2, 3), ScoresToJson(Shard(2, 3)));
  auto result = RunSelectTask(job_, 3);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("SELECT: "));
  EXPECT_THAT(result.status().message(), HasSubstr("scores/shard-1-of-3.json"));
  EXPECT_THAT(result.status().message(),
              ::testing::Not(HasSubstr("shard-0-of-3")));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/out/" + job::kPlanObject));
}

TEST_F(SelectPhaseTest, MissingUnitsAndStaleScoresAreFailedPrecondition) {
  Write(job::ScoreShardObject(0, 1), ScoresToJson(WholeScores()));
  auto result = RunSelectTask(job_, 1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("units.json"));

  Write(job::kUnitsObject, ModelUnitsToJson(TinyUnits()));
  job_.mutable_spec()->set_seed(8);
  result = RunSelectTask(job_, 1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("seed 7"));

  job_.mutable_spec()->set_seed(7);
  job_.mutable_spec()->mutable_prune()->add_units(
      lpd::v1::PRUNE_UNIT_ATTENTION);
  result = RunSelectTask(job_, 1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("unit list"));

  Write(job::ScoreShardObject(0, 1), nlohmann::json{{"criterion", 1}});
  result = RunSelectTask(job_, 1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(RunSelectTask(job_, 0).ok());
}

TEST_F(SelectPhaseTest, HandcraftedPlansTheRulesRemoval) {
  job_.mutable_spec()->mutable_prune()->set_criterion(
      lpd::v1::CRITERION_HANDCRAFTED);
  Write(job::kUnitsObject, ModelUnitsToJson(TinyUnits()));
  HandcraftedChoice choice{.rule = "sdxl_uniform_depth",
                           .target_ratio = 0.13,
                           .removed = {"down.a0.transformer_blocks.1"},
                           .trailing_blocks = 1};
  Write(job::kHandcraftedObject, HandcraftedToJson(choice));
  EXPECT_EQ(RunSelectTask(job_, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto result = RunSelectTask(job_, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  auto plan = PlanFromJson(nlohmann::json::parse(Read(job::kPlanObject)));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->criterion, "handcrafted");
  EXPECT_THAT(plan->removed, ElementsAre("down.a0.transformer_blocks.1"));
  EXPECT_EQ(plan->removed_params, 20);
  EXPECT_LT(plan->overshoot, 0);  // a rule reports what it achieves
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/out/" + job::kScoresObject));

  choice.target_ratio = 0.5;
  Write(job::kHandcraftedObject, HandcraftedToJson(choice));
  EXPECT_EQ(RunSelectTask(job_, 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace lpd::selection

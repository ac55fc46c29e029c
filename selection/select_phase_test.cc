#include "selection/select_phase.h"

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

namespace lpd::selection {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

ModelUnit Unit(const std::string& id, const std::string& kind, int64_t params,
               bool removable, const std::string& attention = "") {
  ModelUnit unit;
  unit.id = id;
  unit.kind = kind;
  unit.params = params;
  unit.removable = removable;
  unit.attention = attention;
  return unit;
}

// A model of three resnets (one not removable) and one attention of two
// transformer blocks; the attention's own parameters are 10 (norm and
// projections) beyond its blocks' 2 × 20.
ModelUnits TinyUnits() {
  ModelUnits units;
  units.total_params = 1000;
  units.units = {
      Unit("down.r0", "resnet", 100, true),
      Unit("down.a0", "attention", 50, true),
      Unit("down.a0.transformer_blocks.0", "transformer_block", 20, true,
           "down.a0"),
      Unit("down.a0.transformer_blocks.1", "transformer_block", 20, true,
           "down.a0"),
      Unit("mid.r0", "resnet", 200, false),
      Unit("up.r0", "resnet", 100, true),
  };
  return units;
}

class SelectPhaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern =
        (std::filesystem::path(::testing::TempDir()) / "lpd_select_XXXXXX")
            .string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    job_.mutable_metadata()->set_name("select-test");
    auto* spec = job_.mutable_spec();
    spec->set_seed(7);
    spec->mutable_prune()->set_target_ratio(0.13);
    spec->mutable_prune()->set_criterion(lpd::v1::CRITERION_OUTPUT_LOSS);
    spec->mutable_prune()->add_units(lpd::v1::PRUNE_UNIT_RESNET);
    spec->mutable_prune()->add_units(lpd::v1::PRUNE_UNIT_TRANSFORMER_BLOCK);
    spec->mutable_output()->set_uri("file://" + dir_ + "/out/");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

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

  std::string dir_;
  lpd::v1::CompressionJob job_;
};

TEST(ModelUnitsTest, EffectiveRemovalTakesTheAttentionShell) {
  const ModelUnits units = TinyUnits();
  auto one = EffectiveRemoval(units, {"down.a0.transformer_blocks.0"});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT(*one, ElementsAre("down.a0.transformer_blocks.0"));
  auto both =
      EffectiveRemovedParams(units, {"down.a0.transformer_blocks.0",
                                     "down.a0.transformer_blocks.1", "up.r0"});
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(*both, 150);  // the attention's 50, not the blocks' 40, + 100
  EXPECT_FALSE(EffectiveRemoval(units, {"mid.r0"}).ok());
  EXPECT_FALSE(EffectiveRemoval(units, {"nope"}).ok());

  auto back =
      ModelUnitsFromJson(nlohmann::json::parse(ModelUnitsToJson(units).dump()));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ModelUnitsToJson(*back), ModelUnitsToJson(units));
  nlohmann::json bad = ModelUnitsToJson(units);
  bad["units"][2]["attention"] = "up.r0";
  EXPECT_FALSE(ModelUnitsFromJson(bad).ok());
}

TEST_F(SelectPhaseTest, MergesShardsIntoTheUnshardedScoresAndPlans) {
  Write(kUnitsObject, ModelUnitsToJson(TinyUnits()));
  for (int i = 0; i < 3; ++i)
    Write(ScoreShardObject(i, 3), ScoresToJson(Shard(i, 3)));
  auto result = RunSelectTask(job_, 3);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Read(kScoresObject), ScoresToJson(WholeScores()).dump(2) + "\n");

  // 130 parameters needed: the two blocks (40, loss 0.03) do not reach it;
  // up.r0 + a block (120) neither; up.r0 + both blocks (loss 0.28) does, and
  // takes the attention's shell with them: 150 removed in effect.
  auto plan = PlanFromJson(nlohmann::json::parse(Read(kPlanObject)));
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
  const std::string three = Read(kPlanObject);
  Write(ScoreShardObject(0, 1), ScoresToJson(WholeScores()));
  ASSERT_TRUE(RunSelectTask(job_, 1).ok());
  EXPECT_EQ(Read(kPlanObject), three);
  EXPECT_EQ(Read(kScoresObject), ScoresToJson(WholeScores()).dump(2) + "\n");
}

TEST_F(SelectPhaseTest, MissingShardIsFailedPreconditionNamingIt) {
  Write(kUnitsObject, ModelUnitsToJson(TinyUnits()));
  Write(ScoreShardObject(0, 3), ScoresToJson(Shard(0, 3)));
  Write(ScoreShardObject(2, 3), ScoresToJson(Shard(2, 3)));
  auto result = RunSelectTask(job_, 3);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("SELECT: "));
  EXPECT_THAT(result.status().message(), HasSubstr("scores/shard-1-of-3.json"));
  EXPECT_THAT(result.status().message(),
              ::testing::Not(HasSubstr("shard-0-of-3")));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/out/" + kPlanObject));
}

TEST_F(SelectPhaseTest, MissingUnitsAndStaleScoresAreFailedPrecondition) {
  Write(ScoreShardObject(0, 1), ScoresToJson(WholeScores()));
  auto result = RunSelectTask(job_, 1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("units.json"));

  Write(kUnitsObject, ModelUnitsToJson(TinyUnits()));
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

  Write(ScoreShardObject(0, 1), nlohmann::json{{"criterion", 1}});
  result = RunSelectTask(job_, 1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(RunSelectTask(job_, 0).ok());
}

TEST_F(SelectPhaseTest, HandcraftedPlansTheRulesRemoval) {
  job_.mutable_spec()->mutable_prune()->set_criterion(
      lpd::v1::CRITERION_HANDCRAFTED);
  Write(kUnitsObject, ModelUnitsToJson(TinyUnits()));
  HandcraftedChoice choice{.rule = "sdxl_uniform_depth",
                           .target_ratio = 0.13,
                           .removed = {"down.a0.transformer_blocks.1"},
                           .trailing_blocks = 1};
  Write(kHandcraftedObject, HandcraftedToJson(choice));
  EXPECT_EQ(RunSelectTask(job_, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto result = RunSelectTask(job_, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  auto plan = PlanFromJson(nlohmann::json::parse(Read(kPlanObject)));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->criterion, "handcrafted");
  EXPECT_THAT(plan->removed, ElementsAre("down.a0.transformer_blocks.1"));
  EXPECT_EQ(plan->removed_params, 20);
  EXPECT_LT(plan->overshoot, 0);  // a rule reports what it achieves
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/out/" + kScoresObject));

  choice.target_ratio = 0.5;
  Write(kHandcraftedObject, HandcraftedToJson(choice));
  EXPECT_EQ(RunSelectTask(job_, 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace lpd::selection

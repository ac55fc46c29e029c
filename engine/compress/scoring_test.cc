#include "engine/compress/scoring.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "engine/core/tensor_io.h"
#include "engine/model/golden_test_support.h"
#include "engine/model/model_loader.h"

namespace lpd::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAreArray;

using testing::GoldenDir;
using testing::InputsFrom;
using testing::ReadVectors;

// The reference inputs, and the same perturbed (a second batch).
std::vector<UNetInputs> Calibration(const std::string& name) {
  UNetInputs in =
      InputsFrom(ReadVectors(GoldenDir(name) + "/vectors.safetensors"));
  torch::manual_seed(7);
  UNetInputs other = in;
  other.sample = in.sample + 0.3 * torch::randn_like(in.sample);
  other.encoder_hidden_states =
      in.encoder_hidden_states +
      0.1 * torch::randn_like(in.encoder_hidden_states);
  other.timestep = in.timestep.to(torch::kFloat64) * 0.5 + 3.0;
  return {in, other};
}

// One intra-op thread: the models are tiny, and on a loaded shared machine
// OpenMP workers spin-waiting for each other slow the test down 100-fold.
UNet2DConditionModel LoadGolden(const std::string& name) {
  torch::set_num_threads(1);
  auto model = LoadModel(GoldenDir(name), LoadModelOptions{});
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : UNet2DConditionModel(nullptr);
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::set<UnitKind> KindsFor(const std::string& name) {
  return name == "tiny-sdxl"
             ? std::set<UnitKind>{UnitKind::kResnet,
                                  UnitKind::kTransformerBlock}
             : std::set<UnitKind>{UnitKind::kResnet, UnitKind::kAttention};
}

class ScoringTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { torch::set_num_threads(1); }
};

TEST_P(ScoringTest, CachedEqualsNaive) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  const std::vector<std::string> ids =
      ScorableUnitIds(*model, KindsFor(GetParam()));
  ASSERT_GT(ids.size(), 5u);
  const std::vector<UNetInputs> calibration = Calibration(GetParam());
  ScoreOptions naive_options;
  naive_options.method = OutputLossMethod::kNaive;
  auto naive = ScoreUnits(*model, ids, calibration, naive_options);
  ASSERT_TRUE(naive.ok()) << naive.status();
  EXPECT_EQ(naive->calibration_samples, 2 * calibration[0].sample.size(0));
  for (int bound : {0, 3}) {
    ScoreOptions options;
    options.max_cached_states = bound;
    auto cached = ScoreUnits(*model, ids, calibration, options);
    ASSERT_TRUE(cached.ok()) << cached.status();
    ASSERT_EQ(cached->units.size(), ids.size());
    for (size_t k = 0; k < ids.size(); ++k) {
      EXPECT_EQ(cached->units[k].id, ids[k]);
      EXPECT_GT(cached->units[k].score, 0) << ids[k];
      EXPECT_NEAR(cached->units[k].score, naive->units[k].score,
                  1e-6 * naive->units[k].score)
          << ids[k] << " bound " << bound;
    }
  }
}

TEST_P(ScoringTest, MatchesReferenceRemovalOutputs) {
  const std::string dir = GoldenDir(GetParam());
  UNet2DConditionModel model = LoadGolden(GetParam());
  auto vectors = ReadVectors(dir + "/vectors.safetensors");
  auto removal = ReadVectors(dir + "/removal.safetensors");
  nlohmann::json sets = ReadJson(dir + "/removal_sets.json");
  const std::vector<std::string> single =
      GetParam() == "tiny-sdxl"
          ? std::vector<std::string>{"transformer_block"}
          : std::vector<std::string>{"down_resnet", "up_resnet", "attention"};
  std::vector<std::string> ids;
  for (const std::string& name : single) {
    ASSERT_EQ(sets.at(name).at("remove").size(), 1u);
    ids.push_back(sets.at(name).at("remove")[0].get<std::string>());
  }
  auto scores = ScoreUnits(*model, ids, {InputsFrom(vectors)}, ScoreOptions{});
  ASSERT_TRUE(scores.ok()) << scores.status();
  for (size_t k = 0; k < ids.size(); ++k) {
    const double expected =
        (vectors.at("output.sample").to(torch::kFloat64) -
         removal.at(single[k] + ".output.sample").to(torch::kFloat64))
            .square()
            .mean()
            .item<double>();
    EXPECT_NEAR(scores->units[k].score, expected, 1e-5 * expected)
        << single[k] << " " << ids[k];
  }
}

TEST_P(ScoringTest, TwoShardsMergedEqualOneRun) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  const std::vector<std::string> ids =
      ScorableUnitIds(*model, KindsFor(GetParam()));
  const std::vector<UNetInputs> calibration = Calibration(GetParam());
  ScoreOptions options;
  options.seed = 11;
  auto whole = ScoreUnits(*model, ids, calibration, options);
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::vector<Scores> shards;
  for (int index : {1, 0}) {
    options.shard = {index, 2};
    auto shard = ScoreUnits(*model, ids, calibration, options);
    ASSERT_TRUE(shard.ok()) << shard.status();
    shards.push_back(*shard);
  }
  auto merged = MergeScores(shards);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(ScoresToJson(*merged), ScoresToJson(*whole));

  // Missing shard, missing unit, duplicate unit, other calibration.
  EXPECT_FALSE(MergeScores({shards[0]}).ok());
  std::vector<Scores> missing = shards;
  missing[0].units.pop_back();
  EXPECT_THAT(MergeScores(missing).status().message(), HasSubstr("missing"));
  std::vector<Scores> duplicate = shards;
  duplicate[0].units.back() = duplicate[1].units.front();
  EXPECT_THAT(MergeScores(duplicate).status().message(), HasSubstr("twice"));
  std::vector<Scores> twice = {shards[0], shards[0]};
  EXPECT_FALSE(MergeScores(twice).ok());
  std::vector<Scores> other = shards;
  other[1].calibration_fingerprint = "0000000000000000";
  EXPECT_THAT(MergeScores(other).status().message(), HasSubstr("calibration"));
}

INSTANTIATE_TEST_SUITE_P(Golden, ScoringTest,
                         ::testing::Values("tiny-sd15", "tiny-sdxl"),
                         [](const auto& info) {
                           return info.param == "tiny-sd15" ? "Sd15" : "Sdxl";
                         });

TEST(ScoringTest, MagnitudeIsMeanAbsoluteWeight) {
  UNet2DConditionModel model = LoadGolden("tiny-sd15");
  const std::string id = "down_blocks.1.attentions.0";
  ScoreOptions options;
  options.criterion = ScoreCriterion::kMagnitude;
  auto scores =
      ScoreUnits(*model, {"down_blocks.0.resnets.1", id}, {}, options);
  ASSERT_TRUE(scores.ok()) << scores.status();
  double sum = 0;
  int64_t count = 0;
  for (const auto& item : model->named_parameters()) {
    if (item.key().rfind(id + ".", 0) == 0) {
      const torch::Tensor w =
          item.value().detach().to(torch::kFloat64).contiguous();
      const double* data = w.data_ptr<double>();
      for (int64_t i = 0; i < w.numel(); ++i) sum += std::abs(data[i]);
      count += w.numel();
    }
  }
  ASSERT_GT(count, 0);
  EXPECT_NEAR(scores->units[1].score, sum / count, 1e-12);
  EXPECT_EQ(scores->units[1].params, count);
}

TEST(ScoringTest, RandomIsReproducibleBySeed) {
  UNet2DConditionModel model = LoadGolden("tiny-sd15");
  const auto ids = ScorableUnitIds(*model, KindsFor("tiny-sd15"));
  ScoreOptions options;
  options.criterion = ScoreCriterion::kRandom;
  options.seed = 5;
  auto a = ScoreUnits(*model, ids, {}, options);
  auto b = ScoreUnits(*model, ids, {}, options);
  options.seed = 6;
  auto c = ScoreUnits(*model, ids, {}, options);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  int differ = 0;
  for (size_t k = 0; k < ids.size(); ++k) {
    EXPECT_EQ(a->units[k].score, b->units[k].score);
    EXPECT_GE(a->units[k].score, 0);
    EXPECT_LT(a->units[k].score, 1);
    differ += a->units[k].score != c->units[k].score;
  }
  EXPECT_EQ(differ, static_cast<int>(ids.size()));
}

TEST(ScoringTest, Errors) {
  UNet2DConditionModel model = LoadGolden("tiny-sd15");
  const auto calibration = Calibration("tiny-sd15");
  auto empty = ScoreUnits(*model, {"down_blocks.0.resnets.1"}, {}, {});
  EXPECT_THAT(empty.status().message(), HasSubstr("calibration"));
  std::string non_removable;
  for (const auto& unit : model->all_units()) {
    if (!unit.removable) non_removable = unit.id;
  }
  ASSERT_FALSE(non_removable.empty());
  EXPECT_THAT(
      ScoreUnits(*model, {non_removable}, calibration, {}).status().message(),
      HasSubstr("not removable"));
  EXPECT_FALSE(ScoreUnits(*model, {"nope"}, calibration, {}).ok());
  EXPECT_FALSE(ScoreUnits(*model, {}, calibration, {}).ok());
  UNetInputs bad = calibration[0];
  bad.sample = bad.sample.narrow(1, 0, 3);
  auto mismatch = ScoreUnits(*model, {"down_blocks.0.resnets.1"}, {bad}, {});
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatch.status().message(), HasSubstr("sample"));
  ScoreOptions options;
  options.shard = {2, 2};
  EXPECT_FALSE(
      ScoreUnits(*model, {"down_blocks.0.resnets.1"}, calibration, options)
          .ok());
}

TEST(ScoringTest, HandcraftedSd15IsBkSdmBase) {
  UNet2DConditionModel model = LoadGolden("tiny-sd15");
  nlohmann::json sets = ReadJson(GoldenDir("tiny-sd15") + "/removal_sets.json");
  auto removal = HandcraftedSelection(*model, 0.3);
  ASSERT_TRUE(removal.ok()) << removal.status();
  EXPECT_EQ(removal->rule, "bk_sdm_base");
  EXPECT_THAT(
      removal->removed,
      UnorderedElementsAreArray(
          sets.at("bk_sdm_base").at("remove").get<std::vector<std::string>>()));
  EXPECT_GT(removal->achieved_ratio, 0.1);
  EXPECT_EQ(removal->total_params, model->NumParameters());
}

TEST(ScoringTest, HandcraftedSdxlRemovesTrailingBlocksUniformly) {
  UNet2DConditionModel model = LoadGolden("tiny-sdxl");
  auto removal = HandcraftedSelection(*model, 0.2);
  ASSERT_TRUE(removal.ok()) << removal.status();
  EXPECT_EQ(removal->rule, "sdxl_uniform_depth");
  EXPECT_GE(removal->achieved_ratio, 0.2);
  const int k = removal->trailing_blocks;
  ASSERT_GE(k, 1);
  // Every deepest attention (depth 3) loses exactly its last k blocks.
  std::set<std::string> expected;
  for (const char* attention :
       {"down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
        "mid_block.attentions.0", "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1", "up_blocks.0.attentions.2"}) {
    for (int j = 3 - k; j < 3; ++j) {
      expected.insert(std::string(attention) + ".transformer_blocks." +
                      std::to_string(j));
    }
  }
  EXPECT_THAT(removal->removed, UnorderedElementsAreArray(expected));
  // One block fewer would not reach the target.
  if (k > 1) {
    auto smaller = HandcraftedSelection(*model, 0.01);
    ASSERT_TRUE(smaller.ok());
    EXPECT_LT(smaller->trailing_blocks, k);
  }
  auto impossible = HandcraftedSelection(*model, 0.95);
  EXPECT_THAT(impossible.status().message(), HasSubstr("cannot be reached"));
  EXPECT_FALSE(HandcraftedSelection(*model, 1.5).ok());
}

TEST(ScoringTest, ScoresJsonRoundTrip) {
  UNet2DConditionModel model = LoadGolden("tiny-sdxl");
  const auto ids = ScorableUnitIds(*model, KindsFor("tiny-sdxl"));
  ScoreOptions options;
  options.seed = 0xfedcba9876543210ULL;
  options.shard = {1, 3};
  auto scores = ScoreUnits(*model, ids, Calibration("tiny-sdxl"), options);
  ASSERT_TRUE(scores.ok()) << scores.status();
  const nlohmann::json json = ScoresToJson(*scores);
  auto back = ScoresFromJson(nlohmann::json::parse(json.dump()));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ScoresToJson(*back), json);
  EXPECT_EQ(back->seed, options.seed);
  for (size_t k = 0; k < scores->units.size(); ++k) {
    EXPECT_EQ(back->units[k].score, scores->units[k].score);
    EXPECT_EQ(back->units[k].kind, scores->units[k].kind);
  }
  const auto scored = ToScoredUnits(*back);
  ASSERT_EQ(scored.size(), scores->units.size());
  EXPECT_EQ(scored[0].id, scores->units[0].id);
  EXPECT_EQ(scored[0].params, scores->units[0].params);

  nlohmann::json bad = json;
  bad["units"][0]["score"] = -1.0;
  EXPECT_FALSE(ScoresFromJson(bad).ok());
  bad = json;
  bad["extra"] = 1;
  EXPECT_THAT(ScoresFromJson(bad).status().message(), HasSubstr("extra"));
  bad = json;
  bad["units"][0]["kind"] = "conv";
  EXPECT_FALSE(ScoresFromJson(bad).ok());
  bad = json;
  bad["units"].erase(0);
  EXPECT_FALSE(ScoresFromJson(bad).ok());
  bad = json;
  bad["units"][1]["id"] = bad["units"][0]["id"];
  EXPECT_THAT(ScoresFromJson(bad).status().message(), HasSubstr("repeated"));
  bad = json;
  bad.erase("criterion");
  EXPECT_FALSE(ScoresFromJson(bad).ok());
}

}  // namespace
}  // namespace lpd::engine

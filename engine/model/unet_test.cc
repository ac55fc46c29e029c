#include "engine/model/unet.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "engine/core/tensor_io.h"
#include "engine/model/golden_test_support.h"
#include "engine/model/model_loader.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr double kTolerance = 1e-4;

using testing::GoldenDir;
using testing::InputsFrom;
using testing::ReadVectors;

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64))
      .abs()
      .max()
      .item<double>();
}

UNet2DConditionModel LoadGolden(const std::string& name,
                                std::set<std::string> removed = {}) {
  LoadModelOptions options;
  options.removed_units = std::move(removed);
  auto model = LoadModel(GoldenDir(name), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : UNet2DConditionModel(nullptr);
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { torch::set_num_threads(2); }
};

TEST_P(GoldenTest, ReproducesEveryBlockOutputAndTheSample) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  ASSERT_TRUE(model);
  auto vectors = ReadVectors(GoldenDir(GetParam()) + "/vectors.safetensors");
  torch::NoGradGuard no_grad;
  BlockOutputs captures;
  torch::Tensor out = model->forward(InputsFrom(vectors), {}, &captures);
  int compared = 0;
  for (const auto& [key, expected] : vectors) {
    if (key.rfind("act.", 0) != 0) continue;
    const std::string block = key.substr(4);
    ASSERT_TRUE(captures.contains(block)) << "no capture for " << key;
    EXPECT_LT(MaxAbsDiff(captures.at(block), expected), kTolerance) << key;
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(captures.size()));
  EXPECT_LT(MaxAbsDiff(out, vectors.at("output.sample")), kTolerance);
}

// The projections each attention multiplies in one GEMM share one buffer,
// and a gradient-free forward (which takes them as one view) equals a
// forward that records gradients (which concatenates them).
TEST_P(GoldenTest, PackedAttentionProjectionsEqualTheirConcatenation) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  ASSERT_TRUE(model);
  auto params = model->named_parameters();
  int packed = 0;
  for (const auto& item : params) {
    const std::string& key = item.key();
    for (const char* attn : {"attn1", "attn2"}) {
      const std::string suffix = std::string(attn) + ".to_v.weight";
      if (key.size() < suffix.size() ||
          key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) {
        continue;
      }
      const std::string prefix =
          key.substr(0, key.size() - std::string("to_v.weight").size());
      const torch::Tensor& k = params[prefix + "to_k.weight"];
      EXPECT_EQ(item.value().storage().unsafeGetStorageImpl(),
                k.storage().unsafeGetStorageImpl())
          << key;
      if (std::string(attn) == "attn1") {
        EXPECT_EQ(
            params[prefix + "to_q.weight"].storage().unsafeGetStorageImpl(),
            k.storage().unsafeGetStorageImpl())
            << key;
      }
      ++packed;
    }
  }
  EXPECT_GT(packed, 0);
  // Every cross-attention's k and v live in one buffer: without gradients
  // the model projects the context for all of them in one GEMM.
  const void* context_storage = nullptr;
  int cross = 0;
  for (const auto& item : params) {
    const std::string& key = item.key();
    if (key.find("attn2.to_k.weight") == std::string::npos &&
        key.find("attn2.to_v.weight") == std::string::npos) {
      continue;
    }
    const void* storage = item.value().storage().unsafeGetStorageImpl();
    if (context_storage == nullptr) context_storage = storage;
    EXPECT_EQ(storage, context_storage) << key;
    ++cross;
  }
  EXPECT_GT(cross, 2);
  auto vectors = ReadVectors(GoldenDir(GetParam()) + "/vectors.safetensors");
  torch::Tensor with_grad = model->forward(InputsFrom(vectors));
  ASSERT_TRUE(with_grad.requires_grad());
  torch::NoGradGuard no_grad;
  torch::Tensor without = model->forward(InputsFrom(vectors));
  // The two paths sum in different orders (one GEMM for every context
  // projection, the feed-forward's residual accumulated by its GEMM):
  // float32 rounding, far below the reference tolerance.
  EXPECT_LT(MaxAbsDiff(with_grad.detach(), without), 1e-5);
  EXPECT_LT(MaxAbsDiff(without, vectors.at("output.sample")), kTolerance);
}

// A weight replaced after packing (as module->to() would) is noticed: the
// model projects the context per attention again, with the new values.
TEST_P(GoldenTest, ReplacedContextProjectionFallsBackToItsOwnGemm) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  ASSERT_TRUE(model);
  auto vectors = ReadVectors(GoldenDir(GetParam()) + "/vectors.safetensors");
  torch::NoGradGuard no_grad;
  auto state = model->Begin(InputsFrom(vectors));
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_TRUE(state->context_kv.defined());
  torch::Tensor to_v;  // shares the parameter's TensorImpl
  for (const auto& item : model->named_parameters()) {
    if (item.key().find("attn2.to_v.weight") != std::string::npos) {
      to_v = item.value();
      break;
    }
  }
  ASSERT_TRUE(to_v.defined());
  const torch::Tensor before = model->forward(InputsFrom(vectors));
  to_v.set_data(to_v.clone() * 2);
  state = model->Begin(InputsFrom(vectors));
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_FALSE(state->context_kv.defined());
  const torch::Tensor after = model->forward(InputsFrom(vectors));
  EXPECT_GT(MaxAbsDiff(before, after), 1e-4);
  to_v.set_data(to_v.clone() / 2);
  EXPECT_LT(MaxAbsDiff(before, model->forward(InputsFrom(vectors))), 1e-5);
}

TEST_P(GoldenTest, ReproducesEveryReferenceRemovalSet) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  ASSERT_TRUE(model);
  const std::string dir = GoldenDir(GetParam());
  auto vectors = ReadVectors(dir + "/vectors.safetensors");
  auto removal = ReadVectors(dir + "/removal.safetensors");
  nlohmann::json sets = ReadJson(dir + "/removal_sets.json");
  ASSERT_FALSE(sets.empty());
  torch::NoGradGuard no_grad;
  for (const auto& [name, set] : sets.items()) {
    std::set<std::string> remove(set["remove"].begin(), set["remove"].end());
    auto effective = model->EffectiveRemoval(remove);
    ASSERT_TRUE(effective.ok()) << effective.status();
    std::vector<std::string> expected_effective = set["removes_effectively"];
    std::sort(expected_effective.begin(), expected_effective.end());
    EXPECT_EQ(*effective, expected_effective) << name;
    torch::Tensor out = model->forward(InputsFrom(vectors), remove);
    const torch::Tensor& expected = removal.at(name + ".output.sample");
    EXPECT_LT(MaxAbsDiff(out, expected), kTolerance) << name;
    // The removal really moved the output as far as the reference says.
    const double change = MaxAbsDiff(out, vectors.at("output.sample"));
    EXPECT_NEAR(change, set["max_abs_change_vs_full"].get<double>(), 1e-3)
        << name;
  }
}

TEST_P(GoldenTest, StudentBuiltWithoutUnitsEqualsMaskedTeacher) {
  const std::string dir = GoldenDir(GetParam());
  nlohmann::json sets = ReadJson(dir + "/removal_sets.json");
  auto vectors = ReadVectors(dir + "/vectors.safetensors");
  auto removal = ReadVectors(dir + "/removal.safetensors");
  const std::string name = "mixed";
  std::set<std::string> remove(sets[name]["remove"].begin(),
                               sets[name]["remove"].end());
  UNet2DConditionModel teacher = LoadGolden(GetParam());
  UNet2DConditionModel student = LoadGolden(GetParam(), remove);
  ASSERT_TRUE(teacher && student);
  EXPECT_LT(student->NumParameters(), teacher->NumParameters());
  torch::NoGradGuard no_grad;
  torch::Tensor out = student->forward(InputsFrom(vectors));
  EXPECT_LT(MaxAbsDiff(out, removal.at(name + ".output.sample")), kTolerance);
}

TEST_P(GoldenTest, RemovingNothingEqualsTheFullModel) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  ASSERT_TRUE(model);
  auto vectors = ReadVectors(GoldenDir(GetParam()) + "/vectors.safetensors");
  torch::NoGradGuard no_grad;
  torch::Tensor full = model->forward(InputsFrom(vectors));
  torch::Tensor none = model->forward(InputsFrom(vectors), {});
  EXPECT_TRUE(torch::equal(full, none));
  EXPECT_LT(MaxAbsDiff(none, vectors.at("output.sample")), kTolerance);
}

TEST_P(GoldenTest, ResumingFromAnyStepEqualsOnePass) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  ASSERT_TRUE(model);
  auto vectors = ReadVectors(GoldenDir(GetParam()) + "/vectors.safetensors");
  torch::NoGradGuard no_grad;
  auto mask = model->MaskFor({});
  ASSERT_TRUE(mask.ok());
  const size_t n = model->steps().size();
  for (size_t split : {n / 4, n / 2, 3 * n / 4}) {
    auto state = model->Begin(InputsFrom(vectors));
    ASSERT_TRUE(state.ok());
    model->Run(*state, 0, split, *mask);
    UNetState saved = *state;  // what a cache holds
    model->Run(saved, split, n, *mask);
    EXPECT_LT(MaxAbsDiff(saved.h, vectors.at("output.sample")), kTolerance)
        << "split at step " << split;
  }
}

TEST_P(GoldenTest, UnitParameterCountsAddUpToTheModelTotal) {
  UNet2DConditionModel model = LoadGolden(GetParam());
  ASSERT_TRUE(model);
  // Each unit's count (computed from shapes) equals what its modules hold.
  std::map<std::string, int64_t> held;
  for (const auto& item : model->named_parameters()) {
    for (const PrunableUnit& unit : model->all_units()) {
      if (item.key().rfind(unit.id + ".", 0) == 0) {
        held[unit.id] += item.value().numel();
      }
    }
  }
  for (const PrunableUnit& unit : model->all_units()) {
    EXPECT_EQ(unit.num_parameters, held[unit.id]) << unit.id;
  }
  // Units at either granularity plus the parameters no unit owns = total.
  for (UnitKind inner : {UnitKind::kAttention, UnitKind::kTransformerBlock}) {
    int64_t in_units = 0;
    std::vector<std::string> prefixes;
    for (const PrunableUnit& unit : model->Units({UnitKind::kResnet, inner})) {
      in_units += unit.num_parameters;
      prefixes.push_back(unit.id + ".");
    }
    int64_t outside = 0;
    for (const auto& item : model->named_parameters()) {
      bool owned = false;
      for (const auto& prefix : prefixes) {
        owned = owned || item.key().rfind(prefix, 0) == 0;
      }
      if (!owned) outside += item.value().numel();
    }
    EXPECT_EQ(in_units + outside, model->NumParameters());
    EXPECT_GT(outside, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(ReferenceModels, GoldenTest,
                         ::testing::Values("tiny-sd15", "tiny-sdxl"));

TEST(UNetTest, TinySdxlWeightsAreBf16AndSharded) {
  auto checkpoint = SafetensorsCheckpoint::Open(GoldenDir("tiny-sdxl"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->files().size(), 3u);
}

UNetConfig RealConfig(const std::string& file) {
  std::ifstream in(std::string(LPD_CONFIGS_DIR) + "/" + file);
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = ParseUNetConfig(text.str(), file);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : UNetConfig{};
}

int CountRemovable(const std::vector<PrunableUnit>& units) {
  int n = 0;
  for (const auto& unit : units) n += unit.removable ? 1 : 0;
  return n;
}

// Builds a full-size model and checks its unit table against its
// parameters. `device` kMeta: shapes without storage (SDXL's 5 GB of bf16
// took 80 s to fill on CI's CPU); kCPU: random bf16 weights, checked too.
void CheckFullSizeModel(const std::string& file, UnitKind inner,
                        int expected_units, int64_t expected_params,
                        torch::DeviceType device = torch::kCPU) {
  UNetOptions options;
  options.config = RealConfig(file);
  options.tensor_options =
      torch::TensorOptions().dtype(torch::kBFloat16).device(device);
  auto model = UNet2DConditionModelImpl::Create(options);
  ASSERT_TRUE(model.ok()) << model.status();
  if (device == torch::kCPU) (*model)->RandomizeParameters(7);
  const auto units = (*model)->Units({UnitKind::kResnet, inner});
  EXPECT_EQ(CountRemovable(units), expected_units);
  EXPECT_EQ((*model)->NumParameters(), expected_params);
  int64_t held_by_units = 0;
  for (const auto& item : (*model)->named_parameters()) {
    for (const auto& unit : units) {
      if (item.key().rfind(unit.id + ".", 0) == 0) {
        held_by_units += item.value().numel();
      }
    }
  }
  int64_t counted = 0;
  for (const auto& unit : units) counted += unit.num_parameters;
  EXPECT_EQ(counted, held_by_units);
  EXPECT_LT(counted, expected_params);
  if (device != torch::kCPU) return;
  // Random weights were really written (not left uninitialized zeros/NaN).
  torch::Tensor w =
      (*model)->named_parameters()["conv_in.weight"].to(torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(w).all().item<bool>());
  EXPECT_GT(w.std().item<double>(), 0.01);
}

TEST(UNetTest, FullSd15ConfigHas34PrunableUnitsAtResnetAttention) {
  // 859,520,964 parameters: the SD-v1.5 U-Net.
  CheckFullSizeModel("sd15-unet.json", UnitKind::kAttention, 34, 859520964);
}

TEST(UNetTest, FullSdxlConfigHas83PrunableUnitsAtResnetTransformerBlock) {
  // 2,567,463,684 parameters: the SDXL base U-Net.
  CheckFullSizeModel("sdxl-base-unet.json", UnitKind::kTransformerBlock, 83,
                     2567463684, torch::kMeta);
}

TEST(UNetTest, RejectsUnknownAndNonRemovableUnits) {
  UNet2DConditionModel model = LoadGolden("tiny-sd15");
  ASSERT_TRUE(model);
  auto unknown = model->EffectiveRemoval({"down_blocks.9.resnets.0"});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("down_blocks.9.resnets.0"));
  // down_blocks.1.resnets.0 changes 32 → 64 channels.
  auto fixed = model->EffectiveRemoval({"down_blocks.1.resnets.0"});
  EXPECT_EQ(fixed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(fixed.status().message(), HasSubstr("not removable"));
}

TEST(UNetTest, RejectsInputsThatDoNotFitTheConfig) {
  UNet2DConditionModel model = LoadGolden("tiny-sdxl");
  ASSERT_TRUE(model);
  auto vectors = ReadVectors(GoldenDir("tiny-sdxl") + "/vectors.safetensors");
  UNetInputs in = InputsFrom(vectors);
  in.time_ids = torch::zeros({2, 5});
  absl::Status status = model->ValidateInputs(in);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("time_ids"));
  in = InputsFrom(vectors);
  in.encoder_hidden_states = torch::zeros({2, 7, 32});
  status = model->ValidateInputs(in);
  EXPECT_THAT(status.message(), HasSubstr("encoder_hidden_states"));
}

TEST(UNetTest, CheckpointWithOtherKeysListsMissingAndUnexpected) {
  // tiny-sd15's weights under tiny-sdxl's config.
  test::TempFolder dir{"unet_test_"};
  fs::copy_file(GoldenDir("tiny-sdxl") + "/config.json",
                dir.path() + "/config.json");
  fs::copy_file(GoldenDir("tiny-sd15") + "/diffusion_pytorch_model.safetensors",
                dir.path() + "/diffusion_pytorch_model.safetensors");
  auto model = LoadModel(dir.path(), {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(model.status().message(), HasSubstr("missing key(s)"));
  EXPECT_THAT(model.status().message(), HasSubstr("unexpected key(s)"));
  EXPECT_THAT(model.status().message(),
              HasSubstr("add_embedding.linear_1.weight"));
  EXPECT_THAT(model.status().message(), HasSubstr(dir.path()));
}

TEST(UNetTest, CheckpointWithWrongShapesListsThem) {
  // tiny-sd15's weights with one channel count changed in its config.
  test::TempFolder dir{"unet_test_"};
  std::ifstream in(GoldenDir("tiny-sd15") + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["cross_attention_dim"] = 64;
  std::ofstream(dir.path() + "/config.json") << config.dump();
  fs::copy_file(GoldenDir("tiny-sd15") + "/diffusion_pytorch_model.safetensors",
                dir.path() + "/diffusion_pytorch_model.safetensors");
  auto model = LoadModel(dir.path(), {});
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(), HasSubstr("mis-shaped key(s)"));
  EXPECT_THAT(model.status().message(), HasSubstr("attn2.to_k.weight"));
}

TEST(UNetTest, TruncatedWeightsFileIsAClearError) {
  test::TempFolder dir{"unet_test_"};
  fs::copy_file(GoldenDir("tiny-sd15") + "/config.json",
                dir.path() + "/config.json");
  const std::string weights =
      dir.path() + "/diffusion_pytorch_model.safetensors";
  fs::copy_file(GoldenDir("tiny-sd15") + "/diffusion_pytorch_model.safetensors",
                weights);
  fs::resize_file(weights, fs::file_size(weights) / 2);
  auto model = LoadModel(dir.path(), {});
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(),
              HasSubstr("diffusion_pytorch_model.safetensors"));
}

TEST(UNetTest, UnsupportedConfigValueIsRejectedByName) {
  test::TempFolder dir{"unet_test_"};
  std::ifstream in(GoldenDir("tiny-sd15") + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["resnet_time_scale_shift"] = "scale_shift";
  std::ofstream(dir.path() + "/config.json") << config.dump();
  fs::copy_file(GoldenDir("tiny-sd15") + "/diffusion_pytorch_model.safetensors",
                dir.path() + "/diffusion_pytorch_model.safetensors");
  auto model = LoadModel(dir.path(), {});
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(), HasSubstr("resnet_time_scale_shift"));
}

}  // namespace
}  // namespace lpd::engine

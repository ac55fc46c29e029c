#include "engine/compress/export.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/core/tensor_io.h"
#include "engine/model/model_loader.h"
#include "storage/local_object_store.h"
#include "storage/manifest.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

std::string Golden(const std::string& name) {
  return std::string(LPD_TESTDATA_DIR) + "/unet-golden/" + name;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class ExportTest : public ::testing::Test {
 protected:
  test::TempFolder temp_{"export_test_"};
  std::string root_ = temp_.path();
};

TEST_F(ExportTest, ReloadedStudentComputesWhatTheInMemoryStudentComputes) {
  const std::set<std::string> removed = {
      "mid_block.resnets.1", "up_blocks.3.attentions.2",
      "down_blocks.2.resnets.1", "up_blocks.0.resnets.0"};
  LoadModelOptions options;
  options.removed_units = removed;
  auto student = LoadModel(Golden("tiny-sd15"), options);
  ASSERT_TRUE(student.ok()) << student.status();
  auto teacher = LoadModel(Golden("tiny-sd15"), {});
  ASSERT_TRUE(teacher.ok());

  auto store = storage::LocalObjectStore::Create(root_);
  ASSERT_TRUE(store.ok()) << store.status();
  ExportOptions export_options;
  export_options.config_json = ReadText(Golden("tiny-sd15") + "/config.json");
  export_options.teacher_parameters = (*teacher)->NumParameters();
  ASSERT_TRUE(ExportStudent(**student, export_options, **store, "final").ok());

  const std::string exported = root_ + "/final";
  auto reloaded = LoadModel(exported, {});
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ((*reloaded)->NumParameters(), (*student)->NumParameters());
  EXPECT_EQ((*reloaded)->removed_units(), removed);

  auto vectors = ReadAllTensors(Golden("tiny-sd15") + "/vectors.safetensors");
  ASSERT_TRUE(vectors.ok());
  UNetInputs in;
  in.sample = vectors->at("input.sample");
  in.timestep = vectors->at("input.timestep");
  in.encoder_hidden_states = vectors->at("input.encoder_hidden_states");
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal((*reloaded)->forward(in), (*student)->forward(in)));
  // And both are the reference's "mixed" removal.
  auto removal = ReadAllTensors(Golden("tiny-sd15") + "/removal.safetensors");
  ASSERT_TRUE(removal.ok());
  EXPECT_LT(((*reloaded)->forward(in) - removal->at("mixed.output.sample"))
                .abs()
                .max()
                .item<double>(),
            1e-4);

  nlohmann::json pruning =
      nlohmann::json::parse(ReadText(exported + "/" + kPruningFileName));
  EXPECT_EQ(pruning["removed_units"].size(), removed.size());
  EXPECT_EQ(pruning["teacher_parameters"].get<int64_t>(),
            (*teacher)->NumParameters());
  // Every artifact is in the manifest, which verifies.
  auto manifest = storage::ReadManifest(**store, "final");
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  for (const char* name : {"config.json", kWeightsFileName, kPruningFileName}) {
    EXPECT_TRUE(storage::VerifiedGet(**store, "final", *manifest, name).ok())
        << name;
  }
}

TEST_F(ExportTest, AMalformedPruningRecordIsAClearError) {
  fs::create_directories(root_ + "/m");
  fs::copy_file(Golden("tiny-sd15") + "/config.json", root_ + "/m/config.json");
  fs::copy_file(Golden("tiny-sd15") + "/diffusion_pytorch_model.safetensors",
                root_ + "/m/diffusion_pytorch_model.safetensors");
  std::ofstream(root_ + "/m/lpd_pruning.json") << "{\"removed_units\": 3}";
  auto model = LoadModel(root_ + "/m", {});
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(),
              ::testing::HasSubstr("lpd_pruning.json"));
}

}  // namespace
}  // namespace lpd::engine

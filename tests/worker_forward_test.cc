// Runs the real `lpd-worker forward` binary on the reference vectors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "engine/core/tensor_io.h"
#include "tests/worker_test_support.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using lpd::testing::CommandResult;
using lpd::testing::Golden;
using lpd::testing::RunCommand;

class WorkerForwardTest : public lpd::testing::TempDirTest {
 protected:
  std::map<std::string, torch::Tensor> Read(const std::string& path) {
    auto tensors = lpd::engine::ReadAllTensors(path);
    EXPECT_TRUE(tensors.ok()) << tensors.status();
    return tensors.ok() ? *tensors : std::map<std::string, torch::Tensor>{};
  }
};

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

TEST_F(WorkerForwardTest, WritesTheReferenceOutputsForBothModels) {
  for (const std::string model : {"tiny-sd15", "tiny-sdxl"}) {
    const std::string out = dir_ + "/" + model + ".safetensors";
    CommandResult r =
        RunCommand(std::string(LPD_WORKER_BIN) + " forward --model " +
                   Golden(model) + " --inputs " + Golden(model) +
                   "/vectors.safetensors --out " + out + " --threads 2");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto expected = Read(Golden(model) + "/vectors.safetensors");
    auto got = Read(out);
    int compared = 0;
    for (const auto& [key, value] : expected) {
      if (key.rfind("act.", 0) != 0 && key != "output.sample") continue;
      ASSERT_TRUE(got.contains(key)) << model << ": " << key;
      EXPECT_LT(MaxAbsDiff(got.at(key), value), 1e-4) << model << ": " << key;
      ++compared;
    }
    EXPECT_EQ(compared, static_cast<int>(got.size())) << model;
  }
}

TEST_F(WorkerForwardTest, RemovesUnitsGivenOnTheCommandLine) {
  const std::string out = dir_ + "/removed.safetensors";
  CommandResult r = RunCommand(
      std::string(LPD_WORKER_BIN) + " forward --model " + Golden("tiny-sdxl") +
      " --inputs " + Golden("tiny-sdxl") + "/vectors.safetensors --out " + out +
      " --remove down_blocks.1.attentions.0.transformer_blocks.0,"
      "down_blocks.1.attentions.0.transformer_blocks.1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto expected = Read(Golden("tiny-sdxl") + "/removal.safetensors");
  EXPECT_LT(MaxAbsDiff(Read(out).at("output.sample"),
                       expected.at("all_blocks_of_attention.output.sample")),
            1e-4);
}

TEST_F(WorkerForwardTest, ReportsBadArgumentsWithExitCode2) {
  CommandResult r = RunCommand(std::string(LPD_WORKER_BIN) +
                               " forward --model " + Golden("tiny-sd15"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("missing required flag --inputs"));
  r = RunCommand(std::string(LPD_WORKER_BIN) + " forward --model " +
                 Golden("tiny-sd15") + " --inputs " + Golden("tiny-sd15") +
                 "/vectors.safetensors --out " + dir_ + "/x.safetensors" +
                 " --remove down_blocks.7.resnets.0");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown unit \"down_blocks.7.resnets.0\""));
  EXPECT_FALSE(fs::exists(dir_ + "/x.safetensors"));
}

TEST_F(WorkerForwardTest, ReportsAMissingModelFolder) {
  CommandResult r =
      RunCommand(std::string(LPD_WORKER_BIN) + " forward --model " + dir_ +
                 "/nothing --inputs " + Golden("tiny-sd15") +
                 "/vectors.safetensors --out " + dir_ + "/x.safetensors");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr(dir_ + "/nothing"));
}

TEST_F(WorkerForwardTest, InputsForAnotherModelAreRejected) {
  // SD-1.5-style inputs lack the text_time conditioning SDXL needs.
  CommandResult r =
      RunCommand(std::string(LPD_WORKER_BIN) + " forward --model " +
                 Golden("tiny-sdxl") + " --inputs " + Golden("tiny-sd15") +
                 "/vectors.safetensors --out " + dir_ + "/x.safetensors");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("input.text_embeds"));
}

}  // namespace

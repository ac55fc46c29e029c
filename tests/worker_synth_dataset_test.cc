// Runs the real `lpd-worker synth-dataset` binary and reads its output back.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "engine/data/dataset.h"
#include "engine/formats/unet_config.h"
#include "tests/worker_test_support.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using lpd::testing::CommandResult;
using lpd::testing::Golden;
using lpd::testing::RunCommand;

class WorkerSynthDatasetTest : public lpd::testing::TempDirTest {};

TEST_F(WorkerSynthDatasetTest, WritesADatasetThatFitsTinySdxl) {
  const std::string out = dir_ + "/set";
  CommandResult r =
      RunCommand(std::string(LPD_WORKER_BIN) + " synth-dataset --model " +
                 Golden("tiny-sdxl") + " --samples 10 --out " + out +
                 " --latent-size 8 --seq-len 7 --shard-size 4 --seed 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("wrote 10 samples in 3 shards"));
  EXPECT_THAT(r.output, HasSubstr("time_ids"));

  auto config = lpd::engine::LoadUNetConfig(Golden("tiny-sdxl"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto dataset = lpd::engine::Dataset::Open(out);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_TRUE((*dataset)->Validate(*config).ok());
  EXPECT_EQ((*dataset)->size(), 10);
  EXPECT_TRUE((*dataset)->has_text_time());
  const std::vector<int64_t> indices = {0, 9};
  auto batch = (*dataset)->GetSamples(indices);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->latents.sizes(), (std::vector<int64_t>{2, 4, 8, 8}));
  EXPECT_EQ(batch->encoder_hidden_states.sizes(),
            (std::vector<int64_t>{2, 7, 48}));
  EXPECT_EQ(batch->time_ids.sizes(), (std::vector<int64_t>{2, 6}));
  EXPECT_EQ(batch->text_embeds.sizes(), (std::vector<int64_t>{2, 40}));
}

TEST_F(WorkerSynthDatasetTest, RejectsBadArguments) {
  CommandResult r =
      RunCommand(std::string(LPD_WORKER_BIN) + " synth-dataset --model " +
                 Golden("tiny-sd15") + " --out " + dir_ + "/x");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--samples"));
  r = RunCommand(std::string(LPD_WORKER_BIN) + " synth-dataset --model " +
                 Golden("tiny-sd15") + " --samples 2 --latent-size 5 --out " +
                 dir_ + "/x");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("divisible"));
  EXPECT_FALSE(fs::exists(dir_ + "/x/dataset.json"));
}

}  // namespace

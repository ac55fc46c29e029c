// Runs a whole compression job with the real `lpd-worker run` binary on the
// tiny SD-v1.5-layout U-Net and a synthetic training set, then checks every
// artifact, a resumed re-run, and the exit codes of bad jobs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/compress/scoring.h"
#include "engine/data/dataset.h"
#include "engine/data/synthetic_dataset.h"
#include "engine/formats/unet_config.h"
#include "engine/model/model_loader.h"
#include "job/checkpoints.h"
#include "nlohmann/json.hpp"
#include "selection/knapsack.h"
#include "tests/worker_test_support.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

using lpd::testing::CommandResult;
using lpd::testing::Golden;
using lpd::testing::RunCommand;

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::json ReadJson(const std::string& path) {
  return nlohmann::json::parse(ReadText(path));
}

class WorkerRunTest : public lpd::testing::TempDirTest {
 protected:
  // A synthetic set of 24 samples (16×16 latents, 7 tokens) for tiny-sd15.
  void WriteDataset() {
    auto config = lpd::engine::LoadUNetConfig(Golden("tiny-sd15"));
    ASSERT_TRUE(config.ok()) << config.status();
    lpd::engine::SyntheticDatasetOptions options;
    options.num_samples = 24;
    options.latent_size = 16;
    options.seq_len = 7;
    options.shard_size = 10;
    options.seed = 5;
    auto manifest =
        lpd::engine::WriteSyntheticDataset(*config, options, dir_ + "/data");
    ASSERT_TRUE(manifest.ok()) << manifest.status();
  }

  // The job's YAML, written to dir_/job-`out`.yaml.
  std::string WriteJob(const std::string& model_dir,
                       const std::string& target_ratio = "0.3", int gpus = 1,
                       const std::string& out = "out",
                       int additivity_sets = 0) {
    const std::string yaml =
        "apiVersion: lpd/v1\n"
        "kind: CompressionJob\n"
        "metadata: {name: tiny-test}\n"
        "spec:\n"
        "  model: {uri: \"file://" +
        model_dir +
        "/\", prediction_type: epsilon}\n"
        "  data:\n"
        "    train: {uri: \"file://" +
        dir_ +
        "/data/\"}\n"
        "    calibration_samples: 4\n"
        "    eval_samples: 4\n"
        "  prune:\n"
        "    target_ratio: " +
        target_ratio +
        "\n"
        "    criterion: output_loss\n"
        "    units: [resnet, attention]\n"
        "    additivity_sets: " +
        std::to_string(additivity_sets) +
        "\n"
        "  distill:\n"
        "    steps: 8\n"
        "    batch_size: 2\n"
        "    learning_rate: 1.0e-4\n"
        "    warmup_steps: 2\n"
        "    precision: fp32\n"
        "    checkpoint_every: 4\n"
        "    gpus: " +
        std::to_string(gpus) +
        "\n"
        "  output: {uri: \"file://" +
        dir_ + "/" + out +
        "/\"}\n"
        "  seed: 7\n"
        "  device: cpu\n";
    const std::string path = dir_ + "/job-" + out + ".yaml";
    std::ofstream(path) << yaml;
    return path;
  }

  CommandResult Run(const std::string& job) {
    return RunCommand(std::string(LPD_WORKER_BIN) + " run " + job +
                      " --threads 1 --log-every 4");
  }

  std::string model_ = fs::canonical(Golden("tiny-sd15")).string();
};

TEST_F(WorkerRunTest, RunsTheWholeJobThenResumesItsCheckpoint) {
  torch::set_num_threads(1);
  WriteDataset();
  const std::string job = WriteJob(model_, "0.3", 1, "out", 3);
  CommandResult r = Run(job);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* line :
       {"SCORE: 36 units by output_loss on 4 calibration samples",
        "SELECT: remove", "DISTILL: step 4/8", "DISTILL: step 8/8",
        "EVALUATE: 4 samples", "EXPORT: wrote"}) {
    EXPECT_THAT(r.output, HasSubstr(line));
  }
  const std::string out = dir_ + "/out";

  auto scores = lpd::engine::ScoresFromJson(ReadJson(out + "/scores.json"));
  ASSERT_TRUE(scores.ok()) << scores.status();
  EXPECT_EQ(scores->units.size(), 36u);
  EXPECT_EQ(scores->criterion, "output_loss");
  EXPECT_EQ(scores->calibration_samples, 4);

  auto plan = lpd::selection::PlanFromJson(ReadJson(out + "/plan.json"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->criterion, "output_loss");
  EXPECT_GE(plan->achieved_ratio, 0.3);
  EXPECT_FALSE(plan->removed.empty());
  const int64_t student_params = plan->total_params - plan->removed_params;

  // The additivity check: spec.prune.additivity_sets (3) sets per size
  // around the plan's size, correlated per size.
  const nlohmann::json additivity = ReadJson(out + "/additivity.json");
  EXPECT_EQ(additivity["plan_set_size"].get<size_t>(), plan->removed.size());
  ASSERT_FALSE(additivity["by_set_size"].empty());
  for (const auto& row : additivity["by_set_size"]) {
    EXPECT_EQ(row["samples"], 3);
  }
  EXPECT_EQ(additivity["samples"].size(), 3 * additivity["by_set_size"].size());

  EXPECT_EQ(ReadText(out + "/checkpoints/LATEST"), lpd::job::CheckpointName(8));
  EXPECT_TRUE(
      fs::exists(out + "/" + lpd::job::CheckpointDir(4) + "manifest.json"));

  const nlohmann::json report = ReadJson(out + "/report.json");
  EXPECT_EQ(report["job"], "tiny-test");
  EXPECT_EQ(report["samples"], 4);
  EXPECT_GT(report["relative_error"].get<double>(), 0.0);
  EXPECT_GT(report["teacher_loss"].get<double>(), 0.0);
  EXPECT_GT(report["student_loss"].get<double>(), 0.0);
  ASSERT_EQ(report["per_timestep_range"].size(), 4u);
  int64_t range_samples = 0;
  for (const auto& range : report["per_timestep_range"]) {
    range_samples += range["samples"].get<int64_t>();
  }
  EXPECT_EQ(range_samples, 4);
  EXPECT_EQ(report["parameters"]["teacher"], plan->total_params);
  EXPECT_EQ(report["parameters"]["student"], student_params);
  EXPECT_GT(report["latency"]["teacher_seconds"].get<double>(), 0.0);
  EXPECT_EQ(report["distill"]["steps"], 8);
  EXPECT_DOUBLE_EQ(report["achieved_ratio"].get<double>(),
                   plan->achieved_ratio);

  auto student = lpd::engine::LoadModel(out + "/final", {});
  ASSERT_TRUE(student.ok()) << student.status();
  EXPECT_EQ((*student)->NumParameters(), student_params);
  EXPECT_FALSE((*student)->removed_units().empty());

  // The same job again: scores reused, distillation resumed at its end.
  const std::string first_plan = ReadText(out + "/plan.json");
  r = Run(job);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("SCORE: reusing"));
  EXPECT_THAT(r.output, HasSubstr("DISTILL: resumed from step 8"));
  EXPECT_THAT(r.output, HasSubstr("8 of 8 steps already done"));
  EXPECT_THAT(r.output, Not(HasSubstr("DISTILL: step ")));
  EXPECT_EQ(ReadText(out + "/plan.json"), first_plan);
  EXPECT_EQ(ReadText(out + "/checkpoints/LATEST"), lpd::job::CheckpointName(8));
  EXPECT_EQ(ReadJson(out + "/report.json")["distill"]["resumed_from"], 8);
}

// spec.distill.gpus: 2 on the CPU runs DISTILL as two gloo processes; the
// result equals the one-process run on the same global batch.
TEST_F(WorkerRunTest, DataParallelRunMatchesOneProcess) {
  WriteDataset();
  const CommandResult one = Run(WriteJob(model_, "0.3", 1, "out-1"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const CommandResult two = Run(WriteJob(model_, "0.3", 2, "out-2"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_THAT(two.output,
              HasSubstr("DISTILL: data-parallel over 2 ranks (gloo), 1 "
                        "samples per rank and step"));
  EXPECT_THAT(two.output, HasSubstr("DISTILL: step 8/8 loss"));
  EXPECT_THAT(one.output, Not(HasSubstr("data-parallel")));
  const nlohmann::json a = ReadJson(dir_ + "/out-1/report.json");
  const nlohmann::json b = ReadJson(dir_ + "/out-2/report.json");
  const double ea = a["relative_error"].get<double>();
  const double eb = b["relative_error"].get<double>();
  EXPECT_GT(ea, 0);
  EXPECT_NEAR(eb, ea, 1e-4 * ea);
  EXPECT_EQ(a["parameters"]["student"], b["parameters"]["student"]);
  EXPECT_EQ(ReadJson(dir_ + "/out-2/distill.json")["final_step"], 8);
  EXPECT_EQ(ReadText(dir_ + "/out-2/checkpoints/LATEST"),
            ReadText(dir_ + "/out-1/checkpoints/LATEST"));
}

TEST_F(WorkerRunTest, BadSpecExitsTwoNamingTheField) {
  const std::string job = WriteJob(model_, "1.5");
  CommandResult r = Run(job);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("spec.prune.target_ratio"));
  EXPECT_FALSE(fs::exists(dir_ + "/out"));

  r = RunCommand(std::string(LPD_WORKER_BIN) + " run");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("JOB.yaml"));
}

TEST_F(WorkerRunTest, FailuresNameThePhase) {
  // No dataset: the model loads, the data does not.
  CommandResult r = Run(WriteJob(model_));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("SCORE: "));
  EXPECT_THAT(r.output, HasSubstr("dataset.json"));
  // A model folder that does not exist.
  r = Run(WriteJob(dir_ + "/no-such-model"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("SCORE: "));
}

}  // namespace

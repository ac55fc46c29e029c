#include "runtime/job_tasks.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/compress/scoring.h"
#include "engine/core/tensor_io.h"
#include "engine/data/synthetic_dataset.h"
#include "engine/formats/unet_config.h"
#include "engine/model/golden_test_support.h"
#include "engine/model/model_loader.h"
#include "job/checkpoints.h"
#include "job/spec.h"
#include "nlohmann/json.hpp"
#include "runtime/select_phase.h"
#include "selection/knapsack.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;
using testing::GoldenDir;
using ::testing::HasSubstr;

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::json ReadJson(const std::string& path) {
  return nlohmann::json::parse(ReadText(path));
}

class JobTasksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // One thread: the model is tiny, and OpenMP workers spin-waiting for
    // each other slow a loaded machine down.
    torch::set_num_threads(1);
    dir_ = temp_.path();
    ctx_.threads = 1;
    ctx_.log = [this](const std::string& line) { log_ += line + "\n"; };
    ctx_.latency_runs = 1;
  }

  // 24 samples (16×16 latents, 7 tokens) for tiny-sd15.
  void WriteDataset() {
    auto config = LoadUNetConfig(GoldenDir("tiny-sd15"));
    ASSERT_TRUE(config.ok()) << config.status();
    SyntheticDatasetOptions options;
    options.num_samples = 24;
    options.latent_size = 16;
    options.seq_len = 7;
    options.shard_size = 10;
    options.seed = 5;
    auto manifest = WriteSyntheticDataset(*config, options, dir_ + "/data");
    ASSERT_TRUE(manifest.ok()) << manifest.status();
  }

  // The job on tiny-sd15 and dir_/data, writing to dir_/`out`.
  lpd::v1::CompressionJob Job(const std::string& out = "out",
                              const std::string& criterion = "output_loss",
                              int steps = 6) {
    const std::string yaml = absl::StrCat(
        "apiVersion: lpd/v1\n"
        "kind: CompressionJob\n"
        "metadata: {name: tasks-test}\n"
        "spec:\n"
        "  model: {uri: \"file://",
        fs::canonical(GoldenDir("tiny-sd15")).string(),
        "/\", prediction_type: epsilon}\n"
        "  data:\n"
        "    train: {uri: \"file://",
        dir_,
        "/data/\"}\n"
        "    calibration_samples: 4\n"
        "    eval_samples: 4\n"
        "  prune:\n"
        "    target_ratio: 0.3\n"
        "    criterion: ",
        criterion,
        "\n"
        "    units: [resnet, attention]\n"
        "    additivity_sets: 0\n"
        "  distill:\n"
        "    steps: ",
        steps,
        "\n"
        "    batch_size: 2\n"
        "    learning_rate: 1.0e-4\n"
        "    warmup_steps: ",
        steps > 0 ? 2 : 0,
        "\n"
        "    precision: fp32\n"
        "    checkpoint_every: ",
        4,
        "\n"
        "  output: {uri: \"file://",
        dir_, "/", out,
        "/\"}\n"
        "  seed: 7\n"
        "  device: cpu\n");
    auto job = job::ParseJobSpecYaml(yaml, "test");
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : lpd::v1::CompressionJob();
  }

  // SCORE with `shards` tasks, then SELECT.
  void ScoreAndSelect(const lpd::v1::CompressionJob& job, int shards) {
    for (int i = 0; i < shards; ++i) {
      auto score = RunScoreTask(job, i, shards, ctx_);
      ASSERT_TRUE(score.ok()) << score.status();
    }
    auto select = selection::RunSelectTask(job, shards);
    ASSERT_TRUE(select.ok()) << select.status();
  }

  std::string Out(const std::string& name, const std::string& out = "out") {
    return dir_ + "/" + out + "/" + name;
  }

  test::TempFolder temp_{"lpd_tasks_"};
  std::string dir_;
  std::string log_;
  TaskContext ctx_;
};

TEST_F(JobTasksTest, ThreeScoreShardsGiveTheOneShardPlan) {
  WriteDataset();
  const auto one = Job("one");
  ScoreAndSelect(one, 1);
  EXPECT_THAT(log_, HasSubstr("SCORE: 36 units by output_loss"));

  const auto three = Job("three");
  double last_fraction = 0;
  int calls = 0;
  TaskContext ctx = ctx_;
  ctx.progress = [&](double fraction, const std::string& line) {
    EXPECT_GE(fraction, 0.0);
    EXPECT_LE(fraction, 1.0);
    EXPECT_THAT(line, HasSubstr("SCORE: "));
    last_fraction = fraction;
    ++calls;
    return absl::OkStatus();
  };
  for (int i : {2, 0}) {
    auto score = RunScoreTask(three, i, 3, ctx);
    ASSERT_TRUE(score.ok()) << score.status();
    EXPECT_EQ((*score)["units_scored"], 12);
    EXPECT_EQ((*score)["reused"], false);
  }
  EXPECT_GE(calls, 12);
  EXPECT_EQ(last_fraction, 1.0);
  EXPECT_TRUE(fs::exists(Out("scores/shard-2-of-3.json", "three")));

  // Shard 1 missing: SELECT says which.
  auto select = selection::RunSelectTask(three, 3);
  ASSERT_FALSE(select.ok());
  EXPECT_EQ(select.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(select.status().message(), HasSubstr("shard-1-of-3.json"));

  ASSERT_TRUE(RunScoreTask(three, 1, 3, ctx_).ok());
  select = selection::RunSelectTask(three, 3);
  ASSERT_TRUE(select.ok()) << select.status();
  EXPECT_EQ(ReadText(Out("plan.json", "three")),
            ReadText(Out("plan.json", "one")));
  EXPECT_EQ(ReadText(Out("scores.json", "three")),
            ReadText(Out("scores.json", "one")));
  EXPECT_EQ(ReadText(Out("units.json", "three")),
            ReadText(Out("units.json", "one")));

  // A retried shard reuses its file.
  auto again = RunScoreTask(three, 1, 3, ctx_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)["reused"], true);

  // The torch-free effective removal agrees with the model's.
  auto plan = selection::PlanFromJson(ReadJson(Out("plan.json", "one")));
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto model = LoadModel(GoldenDir("tiny-sd15"), {});
  ASSERT_TRUE(model.ok()) << model.status();
  auto effective = (*model)->EffectiveRemoval(
      std::set<std::string>(plan->removed.begin(), plan->removed.end()));
  ASSERT_TRUE(effective.ok()) << effective.status();
  std::map<std::string, int64_t> params;
  for (const PrunableUnit& u : (*model)->all_units()) {
    params[u.id] = u.num_parameters;
  }
  int64_t removed = 0;
  for (const std::string& id : *effective) removed += params[id];
  EXPECT_EQ(plan->removed_params, removed);
  EXPECT_EQ(plan->total_params, (*model)->NumParameters());
}

TEST_F(JobTasksTest, CancelledDistillResumesToTheUninterruptedResult) {
  WriteDataset();
  const auto whole = Job("whole", "magnitude");
  ScoreAndSelect(whole, 1);
  auto done = RunDistillTask(whole, ctx_);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)["final_step"], 6);
  EXPECT_EQ((*done)["steps_run"], 6);
  EXPECT_TRUE((*done)["resumed_from"].is_null());

  const auto split = Job("split", "magnitude");
  ScoreAndSelect(split, 1);
  // EVALUATE and EXPORT need a finished distillation.
  auto early = RunEvaluateTask(split, ctx_);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(early.status().message(), HasSubstr("EVALUATE: "));

  TaskContext stop = ctx_;
  stop.progress = [](double fraction, const std::string& line) {
    if (line.find("step 3/6") != std::string::npos) {
      return absl::CancelledError("job cancelled");
    }
    return absl::OkStatus();
  };
  auto cancelled = RunDistillTask(split, stop);
  ASSERT_FALSE(cancelled.ok());
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(cancelled.status().message(), HasSubstr("DISTILL: "));
  EXPECT_EQ(ReadText(Out("checkpoints/LATEST", "split")),
            job::CheckpointName(3));
  EXPECT_EQ(RunExportTask(split, ctx_).status().code(),
            absl::StatusCode::kFailedPrecondition);

  auto resumed = RunDistillTask(split, ctx_);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)["resumed_from"], 3);
  EXPECT_EQ((*resumed)["final_step"], 6);
  EXPECT_EQ((*resumed)["steps_run"], 3);

  const std::string weights =
      job::CheckpointDir(6) + std::string(job::kStudentWeightsName);
  auto a = ReadAllTensors(Out(weights, "whole"));
  auto b = ReadAllTensors(Out(weights, "split"));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(a->size(), b->size());
  for (const auto& [name, tensor] : *a) {
    ASSERT_TRUE(b->contains(name)) << name;
    EXPECT_TRUE(torch::equal(tensor, b->at(name))) << name;
  }

  // EVALUATE and EXPORT from the checkpoint.
  EvaluationReport report;
  auto evaluated = RunEvaluateTask(split, ctx_, &report);
  ASSERT_TRUE(evaluated.ok()) << evaluated.status();
  EXPECT_EQ(report.overall.samples, 4);
  const nlohmann::json json = ReadJson(Out("report.json", "split"));
  EXPECT_EQ(json["distill"]["steps"], 6);
  EXPECT_EQ(json["distill"]["resumed_from"], 3);
  auto exported = RunExportTask(split, ctx_);
  ASSERT_TRUE(exported.ok()) << exported.status();
  auto plan = selection::PlanFromJson(ReadJson(Out("plan.json", "split")));
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto student = LoadModel(Out("final", "split"), {});
  ASSERT_TRUE(student.ok()) << student.status();
  EXPECT_EQ((*student)->NumParameters(),
            plan->total_params - plan->removed_params);
  EXPECT_EQ(json["parameters"]["student"],
            plan->total_params - plan->removed_params);
  EXPECT_EQ((*exported)["student_parameters"],
            plan->total_params - plan->removed_params);
}

TEST_F(JobTasksTest, HandcraftedJobRunsWithoutScores) {
  const auto job = Job("out", "handcrafted", 0);
  EXPECT_EQ(RunScoreTask(job, 0, 2, ctx_).status().code(),
            absl::StatusCode::kInvalidArgument);
  // No dataset needed to score by rule.
  auto score = RunScoreTask(job, 0, 1, ctx_);
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ((*score)["rule"], "bk_sdm_base");
  EXPECT_TRUE(fs::exists(Out("handcrafted.json")));
  EXPECT_FALSE(fs::exists(Out("scores")));
  auto select = selection::RunSelectTask(job, 1);
  ASSERT_TRUE(select.ok()) << select.status();

  auto model = LoadModel(GoldenDir("tiny-sd15"), {});
  ASSERT_TRUE(model.ok()) << model.status();
  auto removal = HandcraftedSelection(**model, 0.3);
  ASSERT_TRUE(removal.ok()) << removal.status();
  auto plan = selection::PlanFromJson(ReadJson(Out("plan.json")));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->criterion, "handcrafted");
  EXPECT_EQ(plan->removed, removal->removed);
  EXPECT_EQ(plan->removed_params, removal->removed_params);

  // steps 0: the pruned teacher is the student.
  WriteDataset();
  auto distill = RunDistillTask(job, ctx_);
  ASSERT_TRUE(distill.ok()) << distill.status();
  EXPECT_EQ((*distill)["final_step"], 0);
  ASSERT_TRUE(RunEvaluateTask(job, ctx_).ok());
  ASSERT_TRUE(RunExportTask(job, ctx_).ok());
  auto student = LoadModel(Out("final"), {});
  ASSERT_TRUE(student.ok()) << student.status();
  EXPECT_EQ((*student)->NumParameters(),
            plan->total_params - plan->removed_params);
}

TEST_F(JobTasksTest, ErrorsNameThePhaseAndKeepTheCode) {
  // No dataset.
  auto score = RunScoreTask(Job(), 0, 1, ctx_);
  ASSERT_FALSE(score.ok());
  EXPECT_THAT(score.status().message(), HasSubstr("SCORE: "));
  EXPECT_THAT(score.status().message(), HasSubstr("dataset.json"));
  // No plan.
  WriteDataset();
  auto distill = RunDistillTask(Job(), ctx_);
  EXPECT_EQ(distill.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(distill.status().message(), HasSubstr("DISTILL: "));
  EXPECT_THAT(distill.status().message(), HasSubstr("plan.json"));
  // Bad shard.
  EXPECT_EQ(RunScoreTask(Job(), 3, 3, ctx_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lpd::engine

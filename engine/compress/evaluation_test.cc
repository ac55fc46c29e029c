#include "engine/compress/evaluation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "engine/model/model_loader.h"

namespace lpd::engine {
namespace {

std::string Golden(const std::string& name) {
  return std::string(LPD_TESTDATA_DIR) + "/unet-golden/" + name;
}

UNet2DConditionModel Load(const std::set<std::string>& removed = {}) {
  LoadModelOptions options;
  options.removed_units = removed;
  auto model = LoadModel(Golden("tiny-sd15"), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

// Two batches of two samples (16×16 latents, 7 tokens), one timestep in
// each default range, plus one in the first range again.
std::vector<TrainingBatch> Batches() {
  at::Generator gen = at::detail::createCPUGenerator(11);
  std::vector<TrainingBatch> batches;
  const std::vector<std::vector<int64_t>> timesteps = {
      {10, 300}, {600, 999}, {249}};
  for (const auto& t : timesteps) {
    const int64_t n = static_cast<int64_t>(t.size());
    TrainingBatch batch;
    batch.noised.sample = torch::randn({n, 4, 16, 16}, gen, torch::kFloat32);
    batch.noised.timestep = torch::tensor(t, torch::kInt64);
    batch.noised.encoder_hidden_states =
        torch::randn({n, 7, 48}, gen, torch::kFloat32);
    batch.target = torch::randn({n, 4, 16, 16}, gen, torch::kFloat32);
    batches.push_back(batch);
  }
  return batches;
}

TEST(EvaluateTest, TeacherAgainstItselfHasNoError) {
  torch::set_num_threads(1);
  UNet2DConditionModel teacher = Load();
  EvaluationOptions options;
  options.latency_runs = 2;
  auto report = Evaluate(*teacher, *teacher, Batches(), options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->overall.samples, 5);
  EXPECT_EQ(report->overall.relative_error, 0.0);
  EXPECT_GT(report->overall.teacher_loss, 0.0);
  EXPECT_EQ(report->overall.teacher_loss, report->overall.student_loss);
  ASSERT_EQ(report->per_range.size(), 4u);
  int64_t samples = 0;
  for (const RangeMetrics& r : report->per_range) {
    samples += r.metrics.samples;
    EXPECT_EQ(r.metrics.relative_error, 0.0);
    EXPECT_EQ(r.metrics.teacher_loss, r.metrics.student_loss);
  }
  EXPECT_EQ(samples, report->overall.samples);
  EXPECT_EQ(report->per_range[0].metrics.samples, 2);  // 10 and 249
  EXPECT_EQ(report->per_range[3].metrics.samples, 1);  // 999
  EXPECT_EQ(report->teacher_parameters, teacher->NumParameters());
  EXPECT_EQ(report->student_parameters, teacher->NumParameters());
  EXPECT_EQ(report->latency.runs, 2);
  EXPECT_GT(report->latency.teacher_seconds, 0.0);
  EXPECT_EQ(report->latency.device, "cpu");
  EXPECT_EQ(report->latency.batch_size, 2);
}

TEST(EvaluateTest, PrunedStudentHasPositiveErrorAndFewerParameters) {
  torch::set_num_threads(1);
  UNet2DConditionModel teacher = Load();
  UNet2DConditionModel student =
      Load({"down_blocks.0.resnets.1", "up_blocks.3.attentions.2"});
  EvaluationOptions options;
  options.latency_runs = 0;
  auto report = Evaluate(*teacher, *student, Batches(), options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->overall.relative_error, 0.0);
  EXPECT_NE(report->overall.teacher_loss, report->overall.student_loss);
  EXPECT_LT(report->student_parameters, report->teacher_parameters);
  EXPECT_EQ(report->latency.runs, 0);
  int64_t samples = 0;
  double weighted = 0;
  for (const RangeMetrics& r : report->per_range) {
    samples += r.metrics.samples;
    weighted += r.metrics.student_loss * r.metrics.samples;
  }
  EXPECT_EQ(samples, 5);
  // Equal-sized samples: the overall MSE is the sample-weighted range mean.
  EXPECT_NEAR(weighted / samples, report->overall.student_loss, 1e-12);

  nlohmann::json json = ReportToJson(*report);
  EXPECT_EQ(json["samples"], 5);
  EXPECT_EQ(json["per_timestep_range"].size(), 4u);
  EXPECT_EQ(json["per_timestep_range"][1]["begin"], 250);
  EXPECT_EQ(json["parameters"]["student"], report->student_parameters);
  EXPECT_FALSE(json.contains("latency"));
  EXPECT_DOUBLE_EQ(json["relative_error"].get<double>(),
                   report->overall.relative_error);
}

TEST(EvaluateTest, RejectsBadInput) {
  UNet2DConditionModel teacher = Load();
  EXPECT_EQ(Evaluate(*teacher, *teacher, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EvaluationOptions options;
  options.ranges = {{500, 500}};
  EXPECT_EQ(Evaluate(*teacher, *teacher, Batches(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<TrainingBatch> bad = Batches();
  bad[0].target = torch::zeros({2, 4, 8, 8});
  options = {};
  options.latency_runs = 0;
  auto status = Evaluate(*teacher, *teacher, bad, options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), ::testing::HasSubstr("target"));
}

}  // namespace
}  // namespace lpd::engine

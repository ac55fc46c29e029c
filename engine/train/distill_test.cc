#include "engine/train/distill.h"

#include <ATen/CPUGeneratorImpl.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/core/tensor_io.h"
#include "engine/model/model_loader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "job/checkpoints.h"
#include "storage/local_object_store.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

std::string GoldenDir() {
  return std::string(LPD_TESTDATA_DIR) + "/unet-golden/tiny-sd15";
}

UNet2DConditionModel LoadTeacher() {
  LoadModelOptions options;
  options.dtype = torch::kFloat32;
  auto model = LoadModel(GoldenDir(), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

using test::TempFolder;

// The golden inputs: batch 2, 16×16 latents, 7 tokens × 48 dims.
TrainingBatch GoldenBatch() {
  auto tensors = ReadAllTensors(GoldenDir() + "/vectors.safetensors");
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  TrainingBatch batch;
  batch.noised.sample = tensors->at("input.sample");
  batch.noised.timestep = tensors->at("input.timestep");
  batch.noised.encoder_hidden_states =
      tensors->at("input.encoder_hidden_states");
  torch::manual_seed(7);
  batch.target = torch::randn_like(batch.noised.sample);
  return batch;
}

// SD's scaled-linear schedule (inline: the trainer itself takes noised
// batches from its caller).
torch::Tensor AlphasCumprod() {
  torch::Tensor betas = torch::linspace(std::sqrt(0.00085), std::sqrt(0.012),
                                        1000, torch::kFloat32)
                            .square();
  return torch::cumprod(1 - betas, 0);
}

// A noised batch from clean latents/states, with noise and timesteps drawn
// from `seed`.
TrainingBatch Noise(const torch::Tensor& x0, const torch::Tensor& states,
                    uint64_t seed) {
  static const torch::Tensor alphas_cumprod = AlphasCumprod();
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t b = x0.size(0);
  torch::Tensor t = torch::randint(0, 1000, {b}, gen, torch::kInt64);
  torch::Tensor noise = torch::randn(x0.sizes(), gen, torch::kFloat32);
  torch::Tensor a = alphas_cumprod.index_select(0, t).view({b, 1, 1, 1});
  TrainingBatch batch;
  batch.noised.sample = a.sqrt() * x0 + (1 - a).sqrt() * noise;
  batch.noised.timestep = t;
  batch.noised.encoder_hidden_states = states;
  batch.target = noise;  // epsilon prediction
  return batch;
}

// A fixed synthetic set of `n` clean samples.
struct SyntheticSet {
  torch::Tensor latents;  // [n, 4, 16, 16]
  torch::Tensor states;   // [n, 7, 48]
};
SyntheticSet MakeSet(int64_t n, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return {torch::randn({n, 4, 16, 16}, gen, torch::kFloat32),
          torch::randn({n, 7, 48}, gen, torch::kFloat32)};
}

// step → batch of 2: samples picked and noised by a generator keyed by step.
BatchSource SourceOver(SyntheticSet set, uint64_t seed) {
  return [set, seed](int64_t step) -> absl::StatusOr<TrainingBatch> {
    const uint64_t s = BatchSeed(seed, step);
    at::Generator gen = at::detail::createCPUGenerator(s);
    torch::Tensor index =
        torch::randint(0, set.latents.size(0), {2}, gen, torch::kInt64);
    return Noise(set.latents.index_select(0, index),
                 set.states.index_select(0, index), s ^ 0x5eed);
  };
}

TEST(MakeStudentTest, TeacherParametersMinusRemovedUnitsInitializedEqual) {
  UNet2DConditionModel teacher = LoadTeacher();
  const std::set<std::string> removed = {"down_blocks.0.resnets.1",
                                         "up_blocks.3.attentions.2",
                                         "mid_block.resnets.1"};
  auto student = MakeStudent(*teacher, removed);
  ASSERT_TRUE(student.ok()) << student.status();
  auto teacher_params = teacher->named_parameters(true);
  auto student_params = (*student)->named_parameters(true);
  int64_t expected = 0, removed_params = 0;
  for (const auto& item : teacher_params) {
    bool of_removed = false;
    for (const auto& id : removed) {
      if (absl::StartsWith(item.key(), id + ".")) of_removed = true;
    }
    const torch::Tensor* s = student_params.find(item.key());
    if (of_removed) {
      EXPECT_EQ(s, nullptr) << item.key();
      removed_params += item.value().numel();
      continue;
    }
    ++expected;
    ASSERT_NE(s, nullptr) << item.key();
    EXPECT_TRUE(torch::equal(*s, item.value())) << item.key();
    EXPECT_NE(s->data_ptr(), item.value().data_ptr()) << "must be a copy";
  }
  EXPECT_EQ(static_cast<int64_t>(student_params.size()), expected);
  EXPECT_GT(removed_params, 0);
  EXPECT_EQ((*student)->NumParameters(),
            teacher->NumParameters() - removed_params);

  EXPECT_FALSE(MakeStudent(*teacher, {"down_blocks.9.resnets.0"}).ok());
}

TEST(DistillTrainerTest, GradientsFlowOnlyToTheStudent) {
  UNet2DConditionModel teacher = LoadTeacher();
  DistillTrainerOptions options;
  options.learning_rate = 1e-3;
  auto trainer =
      DistillTrainer::Create(teacher, {"down_blocks.1.attentions.0"}, options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  auto report = (*trainer)->Step(GoldenBatch());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->loss.total, 0);
  EXPECT_GT(report->grad_norm, 0);
  // 4 down + mid + 4 up blocks.
  EXPECT_EQ(report->loss.feature_terms.size(), 9u);
  for (const auto& item : teacher->named_parameters(true)) {
    EXPECT_FALSE(item.value().grad().defined()) << item.key();
  }
  int64_t with_gradient = 0;
  for (const auto& item : (*trainer)->student()->named_parameters(true)) {
    if (item.value().grad().defined() &&
        item.value().grad().abs().sum().item<double>() > 0) {
      ++with_gradient;
    }
  }
  EXPECT_GT(with_gradient, 0);
  EXPECT_EQ((*trainer)->step(), 1);
  // The teacher is unchanged.
  UNet2DConditionModel fresh = LoadTeacher();
  auto fresh_params = fresh->named_parameters(true);
  for (const auto& item : teacher->named_parameters(true)) {
    EXPECT_TRUE(torch::equal(item.value(), *fresh_params.find(item.key())))
        << item.key();
  }
}

struct LossInputs {
  torch::Tensor s_out, t_out, target;
  BlockOutputs s_feat, t_feat;
};
LossInputs RandomLossInputs() {
  torch::manual_seed(3);
  LossInputs in;
  in.s_out = torch::randn({2, 4, 8, 8});
  in.t_out = torch::randn({2, 4, 8, 8});
  in.target = torch::randn({2, 4, 8, 8});
  for (const char* name : {"conv_in", "down_blocks.0", "down_blocks.1",
                           "mid_block", "up_blocks.0"}) {
    in.t_feat[name] = torch::randn({2, 16, 4, 4});
    in.s_feat[name] = in.t_feat[name] + 0.3 * torch::randn({2, 16, 4, 4});
  }
  return in;
}

TEST(DistillLossTest, NormalizedTermIsScaleInvariantRawTermIsNot) {
  LossInputs in = RandomLossInputs();
  DistillLossOptions normalized, raw;
  raw.normalize_features = false;
  auto base_n = ComputeDistillLoss(in.s_out, in.t_out, in.target, in.s_feat,
                                   in.t_feat, normalized);
  auto base_r = ComputeDistillLoss(in.s_out, in.t_out, in.target, in.s_feat,
                                   in.t_feat, raw);
  ASSERT_TRUE(base_n.ok() && base_r.ok());
  EXPECT_EQ(base_n->feature_terms.count("conv_in"), 0u);
  EXPECT_EQ(base_n->feature_terms.size(), 4u);

  in.s_feat["down_blocks.1"] = in.s_feat["down_blocks.1"] * 1000;
  in.t_feat["down_blocks.1"] = in.t_feat["down_blocks.1"] * 1000;
  auto scaled_n = ComputeDistillLoss(in.s_out, in.t_out, in.target, in.s_feat,
                                     in.t_feat, normalized);
  auto scaled_r = ComputeDistillLoss(in.s_out, in.t_out, in.target, in.s_feat,
                                     in.t_feat, raw);
  ASSERT_TRUE(scaled_n.ok() && scaled_r.ok());
  const double n0 = base_n->feature_terms.at("down_blocks.1").item<double>();
  const double n1 = scaled_n->feature_terms.at("down_blocks.1").item<double>();
  EXPECT_NEAR(n1 / n0, 1.0, 1e-5);
  const double r0 = base_r->feature_terms.at("down_blocks.1").item<double>();
  const double r1 = scaled_r->feature_terms.at("down_blocks.1").item<double>();
  EXPECT_NEAR(r1 / r0, 1e6, 1e6 * 1e-4);
  // Other blocks are untouched.
  EXPECT_DOUBLE_EQ(base_n->feature_terms.at("mid_block").item<double>(),
                   scaled_n->feature_terms.at("mid_block").item<double>());
  // The normalized term is ‖S − T‖² / ‖T‖².
  const torch::Tensor& s = in.s_feat["mid_block"];
  const torch::Tensor& t = in.t_feat["mid_block"];
  EXPECT_NEAR(base_n->feature_terms.at("mid_block").item<double>(),
              ((s - t).square().sum() / t.square().sum()).item<double>(), 1e-6);
}

TEST(DistillLossTest, UnnormalizedIsThePlainSumOfMses) {
  LossInputs in = RandomLossInputs();
  DistillLossOptions options;
  options.normalize_features = false;
  options.task_weight = 0.5;
  options.output_kd_weight = 2.0;
  options.feature_kd_weight = 3.0;
  auto loss = ComputeDistillLoss(in.s_out, in.t_out, in.target, in.s_feat,
                                 in.t_feat, options);
  ASSERT_TRUE(loss.ok()) << loss.status();
  double sum = 0;
  for (const char* name :
       {"down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0"}) {
    const double mse =
        torch::mse_loss(in.s_feat[name], in.t_feat[name]).item<double>();
    EXPECT_NEAR(loss->feature_terms.at(name).item<double>(), mse, 1e-6);
    sum += mse;
  }
  EXPECT_NEAR(loss->feature_kd.item<double>(), sum, 1e-5);
  const double task = torch::mse_loss(in.s_out, in.target).item<double>();
  const double out = torch::mse_loss(in.s_out, in.t_out).item<double>();
  EXPECT_NEAR(loss->task.item<double>(), task, 1e-6);
  EXPECT_NEAR(loss->output_kd.item<double>(), out, 1e-6);
  EXPECT_NEAR(loss->total.item<double>(), 0.5 * task + 2 * out + 3 * sum, 1e-4);

  // Mismatched features are errors.
  in.s_feat.erase("mid_block");
  EXPECT_FALSE(ComputeDistillLoss(in.s_out, in.t_out, in.target, in.s_feat,
                                  in.t_feat, options)
                   .ok());
}

TEST(DistillTrainerTest, ResumedRunMatchesStraightRun) {
  UNet2DConditionModel teacher = LoadTeacher();
  const std::set<std::string> removed = {"down_blocks.0.resnets.1",
                                         "up_blocks.1.attentions.1"};
  DistillTrainerOptions options;
  options.learning_rate = 1e-3;
  options.warmup_steps = 2;
  options.max_grad_norm = 0.5;
  options.seed = 11;
  BatchSource source = SourceOver(MakeSet(8, 5), options.seed);
  constexpr int64_t kSteps = 6;

  auto straight = DistillTrainer::Create(teacher, removed, options);
  ASSERT_TRUE(straight.ok()) << straight.status();
  ASSERT_TRUE((*straight)->Train(kSteps, source).ok());

  TempFolder folder;
  auto store = storage::LocalObjectStore::Create(folder.path());
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string prefix = "jobs/1/";
  {
    auto first = DistillTrainer::Create(teacher, removed, options);
    ASSERT_TRUE(first.ok());
    CheckpointTarget target{store->get(), prefix, 0};
    ASSERT_TRUE((*first)->Train(kSteps / 2, source, nullptr, target).ok());
  }
  auto latest = job::ReadLatestCheckpoint(**store, prefix);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ(**latest, kSteps / 2);

  auto resumed = DistillTrainer::Create(teacher, removed, options);
  ASSERT_TRUE(resumed.ok());
  auto step = (*resumed)->Resume(**store, prefix);
  ASSERT_TRUE(step.ok()) << step.status();
  ASSERT_TRUE(step->has_value());
  EXPECT_EQ(**step, kSteps / 2);
  EXPECT_EQ((*resumed)->step(), kSteps / 2);
  std::vector<double> losses;
  ASSERT_TRUE((*resumed)
                  ->Train(kSteps, source,
                          [&](const StepReport& r) {
                            losses.push_back(r.loss.total);
                            return absl::OkStatus();
                          })
                  .ok());
  EXPECT_EQ(losses.size(), static_cast<size_t>(kSteps / 2));

  auto a = (*straight)->student()->named_parameters(true);
  auto b = (*resumed)->student()->named_parameters(true);
  ASSERT_EQ(a.size(), b.size());
  double max_diff = 0;
  int64_t changed = 0;
  auto t = teacher->named_parameters(true);
  for (const auto& item : a) {
    max_diff = std::max(
        max_diff,
        (item.value() - *b.find(item.key())).abs().max().item<double>());
    if (!torch::equal(item.value(), *t.find(item.key()))) ++changed;
  }
  std::cout << "straight vs resumed: max |diff| = " << max_diff << "\n";
  EXPECT_LE(max_diff, 1e-7);
  EXPECT_GT(changed, 0);  // it did train

  // Another removal set refuses the checkpoint.
  auto other =
      DistillTrainer::Create(teacher, {"down_blocks.0.resnets.1"}, options);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ((*other)->Resume(**store, prefix).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // An empty prefix has no checkpoint.
  auto none = (*other)->Resume(**store, "jobs/2/");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

// ‖ε_S − ε_T‖² / ‖ε_T‖² over a fixed held-out set.
double HeldOutRelativeError(DistillTrainer& trainer,
                            const std::vector<TrainingBatch>& held_out) {
  torch::NoGradGuard no_grad;
  double num = 0, den = 0;
  for (const TrainingBatch& batch : held_out) {
    torch::Tensor s = trainer.student()->forward(batch.noised);
    torch::Tensor t = trainer.teacher()->forward(batch.noised);
    num += (s - t).square().sum().item<double>();
    den += t.square().sum().item<double>();
  }
  return num / den;
}

TEST(DistillTrainerTest, DistillationLearns) {
  UNet2DConditionModel teacher = LoadTeacher();
  // BK-SDM-Base's removal (the second resnet/attention of each block) plus
  // the second mid resnet.
  const std::set<std::string> removed = {
      "down_blocks.0.resnets.1",    "down_blocks.1.resnets.1",
      "down_blocks.2.resnets.1",    "down_blocks.3.resnets.1",
      "down_blocks.0.attentions.1", "down_blocks.1.attentions.1",
      "down_blocks.2.attentions.1", "up_blocks.0.resnets.1",
      "up_blocks.1.resnets.1",      "up_blocks.2.resnets.1",
      "up_blocks.3.resnets.1",      "up_blocks.1.attentions.1",
      "up_blocks.2.attentions.1",   "up_blocks.3.attentions.1",
      "mid_block.resnets.1"};
  int64_t removed_params = 0;
  for (const PrunableUnit& unit : teacher->all_units()) {
    if (removed.count(unit.id)) removed_params += unit.num_parameters;
  }
  const double fraction = static_cast<double>(removed_params) /
                          static_cast<double>(teacher->NumParameters());
  ASSERT_GE(fraction, 0.30) << removed_params;

  DistillTrainerOptions options;
  options.learning_rate = 1e-3;
  options.warmup_steps = 5;
  options.max_grad_norm = 1.0;
  options.weight_decay = 0.0;
  // The tiny teacher has random weights and does not predict the noise:
  // distil only (output and feature terms).
  options.loss.task_weight = 0.0;
  options.seed = 1;
  auto trainer = DistillTrainer::Create(teacher, removed, options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  EXPECT_NEAR(static_cast<double>((*trainer)->student()->NumParameters()),
              static_cast<double>(teacher->NumParameters() - removed_params),
              0.5);

  SyntheticSet train = MakeSet(16, 100);
  SyntheticSet held = MakeSet(8, 200);  // different samples
  std::vector<TrainingBatch> held_out;
  for (int64_t i = 0; i < 8; i += 2) {
    held_out.push_back(Noise(held.latents.slice(0, i, i + 2),
                             held.states.slice(0, i, i + 2), 900 + i));
  }
  const double before = HeldOutRelativeError(**trainer, held_out);
  const auto start = std::chrono::steady_clock::now();
  constexpr int64_t kSteps = 80;
  ASSERT_TRUE((*trainer)->Train(kSteps, SourceOver(train, options.seed)).ok());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const double after = HeldOutRelativeError(**trainer, held_out);
  std::cout << "removed " << fraction * 100 << "% of parameters; held-out "
            << "relative output error " << before << " -> " << after
            << " after " << kSteps << " steps in " << seconds << " s\n";
  EXPECT_LE(after, 0.8 * before);
}

}  // namespace
}  // namespace lpd::engine

namespace lpd::engine {
namespace {

TEST(MultiTensorAdamWTest, EqualsLibTorchAdamWStepByStep) {
  torch::manual_seed(9);
  std::vector<torch::Tensor> a = {torch::randn({3, 4}), torch::randn({5})};
  std::vector<torch::Tensor> b = {a[0].clone(), a[1].clone()};
  for (auto& t : a) t.set_requires_grad(true);
  for (auto& t : b) t.set_requires_grad(true);
  auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1).eps(1e-6);
  torch::optim::AdamW reference(a, options), ours(b, options);
  for (int step = 0; step < 4; ++step) {
    torch::Tensor g0 = torch::randn({3, 4}), g1 = torch::randn({5});
    a[0].mutable_grad() = g0.clone();
    a[1].mutable_grad() = g1.clone();
    b[0].mutable_grad() = g0.clone();
    b[1].mutable_grad() = g1.clone();
    reference.step();
    MultiTensorAdamWStep(ours);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-6, 1e-7))
          << "step " << step << " tensor " << i;
    }
  }
}

// A gradient divisor (how the trainer clips without a host synchronization
// on the GPU) divides the gradients in place before the update.
TEST(MultiTensorAdamWTest, GradScaleDividesTheGradientsFirst) {
  torch::manual_seed(10);
  std::vector<torch::Tensor> a = {torch::randn({3, 4}), torch::randn({5})};
  std::vector<torch::Tensor> b = {a[0].clone(), a[1].clone()};
  for (auto& t : a) t.set_requires_grad(true);
  for (auto& t : b) t.set_requires_grad(true);
  auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1);
  torch::optim::AdamW reference(a, options), ours(b, options);
  for (int step = 0; step < 3; ++step) {
    torch::Tensor g0 = torch::randn({3, 4}), g1 = torch::randn({5});
    a[0].mutable_grad() = g0 / 4.0;
    a[1].mutable_grad() = g1 / 4.0;
    b[0].mutable_grad() = g0.clone();
    b[1].mutable_grad() = g1.clone();
    reference.step();
    MultiTensorAdamWStep(ours, /*allow_fused=*/true, /*found_inf=*/{},
                         /*grad_scale=*/torch::tensor(4.0f));
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-6, 1e-7))
          << "step " << step << " tensor " << i;
      EXPECT_TRUE(torch::allclose(b[i].grad(), a[i].grad(), 1e-6, 1e-7));
    }
  }
}

}  // namespace
}  // namespace lpd::engine

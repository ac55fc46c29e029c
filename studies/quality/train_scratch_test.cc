#include "studies/quality/train_scratch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "engine/formats/unet_config.h"
#include "engine/model/model_loader.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

UNet2DConditionModel TinyModel(uint64_t seed) {
  auto config =
      LoadUNetConfig(std::string(LPD_CONFIGS_DIR) + "/study-sd15-tiny");
  EXPECT_TRUE(config.ok()) << config.status();
  UNetOptions options;
  options.config = *config;
  auto model = UNet2DConditionModelImpl::Create(options);
  EXPECT_TRUE(model.ok()) << model.status();
  (*model)->RandomizeParameters(seed);
  return UNet2DConditionModel(*model);
}

TEST(MakeDiffusionBatchTest, NoisesDeterministicallyAndDropsContext) {
  const NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  const torch::Tensor x0 = torch::rand({64, 4, 8, 8});
  const torch::Tensor ctx = torch::randn({64, 3, 5});
  const torch::Tensor uncond = torch::zeros({1, 3, 5});
  DiffusionBatchOptions o;
  o.cond_dropout = 0.25;
  auto a = MakeDiffusionBatch(x0, ctx, uncond, schedule, 9, o);
  auto b = MakeDiffusionBatch(x0, ctx, uncond, schedule, 9, o);
  auto c = MakeDiffusionBatch(x0, ctx, uncond, schedule, 10, o);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status();
  EXPECT_TRUE(torch::equal(a->noised.sample, b->noised.sample));
  EXPECT_FALSE(torch::equal(a->noised.sample, c->noised.sample));
  // x_t = √ᾱ·x0 + √(1−ᾱ)·ε with ε the target.
  EXPECT_TRUE(torch::allclose(
      a->noised.sample, schedule.AddNoise(x0, a->target, a->noised.timestep),
      1e-6, 1e-6));
  // Each row is either its own context or the empty one.
  const torch::Tensor dropped =
      (a->noised.encoder_hidden_states.abs().sum({1, 2}) == 0);
  const int64_t n = dropped.sum().item<int64_t>();
  EXPECT_GT(n, 4);
  EXPECT_LT(n, 32);
  const torch::Tensor kept = dropped.logical_not();
  EXPECT_TRUE(torch::equal(a->noised.encoder_hidden_states.index({kept}),
                           ctx.index({kept})));
  o.cond_dropout = 1.0;
  auto all = MakeDiffusionBatch(x0, ctx, uncond, schedule, 9, o);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->noised.encoder_hidden_states.abs().sum().item<float>(), 0.0f);
  o.cond_dropout = 1.5;
  EXPECT_FALSE(MakeDiffusionBatch(x0, ctx, uncond, schedule, 9, o).ok());
}

TEST(ScratchTrainerTest, LearningRateWarmsUpAndDecays) {
  ScratchTrainerOptions o;
  o.learning_rate = 1.0;
  o.warmup_steps = 10;
  o.total_steps = 110;
  o.min_lr_fraction = 0.1;
  auto trainer = ScratchTrainer::Create(TinyModel(1), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  EXPECT_DOUBLE_EQ((*trainer)->LearningRateAt(0), 0.1);
  EXPECT_DOUBLE_EQ((*trainer)->LearningRateAt(9), 1.0);
  EXPECT_DOUBLE_EQ((*trainer)->LearningRateAt(10), 1.0);
  EXPECT_NEAR((*trainer)->LearningRateAt(60), 0.55, 1e-12);
  EXPECT_NEAR((*trainer)->LearningRateAt(110), 0.1, 1e-12);
  EXPECT_NEAR((*trainer)->LearningRateAt(500), 0.1, 1e-12);
}

TEST(ScratchTrainerTest, LowersTheLossOnATinyModel) {
  torch::manual_seed(0);
  const NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  const torch::Tensor x0 = torch::rand({8, 4, 16, 16}) * 2 - 1;
  const torch::Tensor ctx = torch::randn({8, 8, 64});
  DiffusionBatchOptions bo;
  bo.cond_dropout = 0;
  auto batch = MakeDiffusionBatch(x0, ctx, {}, schedule, 1, bo);
  ASSERT_TRUE(batch.ok()) << batch.status();
  ScratchTrainerOptions o;
  o.learning_rate = 2e-3;
  o.ema_decay = 0.9;
  auto trainer = ScratchTrainer::Create(TinyModel(2), o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  auto before = (*trainer)->Loss(*batch);
  ASSERT_TRUE(before.ok()) << before.status();
  double last = 0;
  for (int i = 0; i < 25; ++i) {
    auto report = (*trainer)->Step(*batch);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->step, i);
    last = report->loss.item<double>();
    EXPECT_TRUE(std::isfinite(report->grad_norm.item<double>()));
  }
  auto after = (*trainer)->Loss(*batch);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(*after, 0.6 * *before) << "before " << *before << " last " << last;
  // The EMA model lags the trained one but is a working model.
  auto ema = (*trainer)->AveragedModel();
  ASSERT_TRUE(ema.ok()) << ema.status();
  torch::NoGradGuard no_grad;
  const torch::Tensor a = (*trainer)->model()->forward(batch->noised);
  const torch::Tensor b = (*ema)->forward(batch->noised);
  EXPECT_FALSE(torch::allclose(a, b));
  EXPECT_TRUE(torch::isfinite(b).all().item<bool>());
}

TEST(ScratchTrainerTest, MixedPrecisionStepKeepsFloat32Masters) {
  const NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  DiffusionBatchOptions bo;
  bo.cond_dropout = 0;
  auto batch =
      MakeDiffusionBatch(torch::rand({2, 4, 16, 16}), torch::randn({2, 8, 64}),
                         {}, schedule, 1, bo);
  ASSERT_TRUE(batch.ok());
  UNet2DConditionModel model = TinyModel(3);
  const torch::Tensor w0 = model->parameters()[0].clone();
  ScratchTrainerOptions o;
  o.precision = ScratchPrecision::kBFloat16Mixed;
  auto trainer = ScratchTrainer::Create(model, o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  auto report = (*trainer)->Step(*batch);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(std::isfinite(report->loss.item<double>()));
  EXPECT_EQ(model->parameters()[0].scalar_type(), torch::kFloat32);
  EXPECT_FALSE(torch::equal(model->parameters()[0], w0));
}

TEST(SaveModelFolderTest, LoadModelReadsItBack) {
  UNet2DConditionModel model = TinyModel(4);
  const std::string dir = (fs::temp_directory_path() /
                           ("train_scratch_test_" + std::to_string(::getpid())))
                              .string();
  fs::remove_all(dir);
  const std::string config_path =
      std::string(LPD_CONFIGS_DIR) + "/study-sd15-tiny/config.json";
  std::ifstream in(config_path);
  const std::string text((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  ASSERT_TRUE(SaveModelFolder(*model, text, dir).ok());
  auto loaded = LoadModel(dir, {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  UNetInputs in_;
  in_.sample = torch::randn({1, 4, 16, 16});
  in_.timestep = torch::tensor({500});
  in_.encoder_hidden_states = torch::randn({1, 8, 64});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model->forward(in_), (*loaded)->forward(in_)));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lpd::engine

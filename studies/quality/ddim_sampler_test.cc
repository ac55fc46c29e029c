#include "studies/quality/ddim_sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "engine/formats/unet_config.h"

namespace lpd::engine {
namespace {

using ::testing::ElementsAre;

// ε that a perfect model of the single point x0 predicts: the noise that
// makes x_t from x0.
NoisePredictor Oracle(const torch::Tensor& x0, const NoiseSchedule& schedule) {
  return
      [x0, &schedule](const torch::Tensor& x, const torch::Tensor& t,
                      const torch::Tensor&) -> absl::StatusOr<torch::Tensor> {
        const torch::Tensor a = schedule.alphas_cumprod()
                                    .index({t.to(torch::kLong)})
                                    .view({-1, 1, 1, 1});
        return (x - a.sqrt() * x0) / (1 - a).sqrt();
      };
}

TEST(DdimTimestepsTest, LeadingSpacingWithOffset) {
  auto t = DdimTimesteps(25, 1, 1000);
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->size(), 25u);
  EXPECT_EQ(t->front(), 961);
  EXPECT_EQ((*t)[1], 921);
  EXPECT_EQ(t->back(), 1);
  EXPECT_THAT(*DdimTimesteps(4, 0, 10), ElementsAre(6, 4, 2, 0));
  EXPECT_FALSE(DdimTimesteps(1000, 1, 1000).ok());  // 1000 is out of range
  EXPECT_FALSE(DdimTimesteps(0, 1, 1000).ok());
}

TEST(DdimSampleTest, PerfectModelRecoversTheSample) {
  const NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  at::Generator gen = at::detail::createCPUGenerator(3);
  const torch::Tensor x0 = torch::rand({2, 4, 8, 8}, gen) * 2 - 1;
  const torch::Tensor noise = torch::randn({2, 4, 8, 8}, gen);
  const torch::Tensor cond = torch::randn({2, 3, 5}, gen);
  for (int steps : {1000, 25}) {
    DdimOptions o;
    o.num_inference_steps = steps;
    o.steps_offset = steps == 1000 ? 0 : 1;
    o.set_alpha_to_one = true;
    auto x = DdimSample(Oracle(x0, schedule), schedule, noise, cond, {}, o);
    ASSERT_TRUE(x.ok()) << x.status();
    EXPECT_TRUE(torch::allclose(*x, x0, 1e-4, 1e-4))
        << steps << " steps: max error " << (*x - x0).abs().max().item<float>();
  }
  // SD's final step lands on ᾱ_0, not 1: x = √ᾱ0·x0 + √(1−ᾱ0)·ε̂.
  DdimOptions sd;
  auto x = DdimSample(Oracle(x0, schedule), schedule, noise, cond, {}, sd);
  ASSERT_TRUE(x.ok());
  EXPECT_FALSE(torch::allclose(*x, x0, 1e-4, 1e-4));
  EXPECT_TRUE(torch::allclose(*x, x0, 0.0, 0.2));
}

TEST(DdimSampleTest, ZeroNoiseModelScalesTheNoise) {
  // With ε ≡ 0 every step is x ← √(ᾱ_t'/ᾱ_t)·x, so the product telescopes
  // to √(ᾱ_final / ᾱ_first).
  const NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  NoisePredictor zero =
      [](const torch::Tensor& x, const torch::Tensor&,
         const torch::Tensor&) -> absl::StatusOr<torch::Tensor> {
    return torch::zeros_like(x);
  };
  const torch::Tensor noise = torch::randn({1, 4, 8, 8});
  const torch::Tensor cond = torch::randn({1, 2, 3});
  DdimOptions o;  // 25 steps, offset 1, final ᾱ = ᾱ_0
  auto x = DdimSample(zero, schedule, noise, cond, {}, o);
  ASSERT_TRUE(x.ok());
  const double first = schedule.alphas_cumprod()[961].item<double>();
  const double last = schedule.alphas_cumprod()[0].item<double>();
  EXPECT_TRUE(torch::allclose(*x, noise * std::sqrt(last / first), 1e-5, 1e-5));
}

// ε depends on the context, so guidance changes the result.
NoisePredictor ContextModel() {
  return [](const torch::Tensor& x, const torch::Tensor&,
            const torch::Tensor& c) -> absl::StatusOr<torch::Tensor> {
    return 0.1 * x + c.mean({1, 2}).view({-1, 1, 1, 1});
  };
}

TEST(DdimSampleTest, GuidanceScaleOneIsTheConditionalPrediction) {
  const NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  at::Generator gen = at::detail::createCPUGenerator(5);
  const torch::Tensor noise = torch::randn({3, 4, 8, 8}, gen);
  const torch::Tensor cond = torch::randn({3, 2, 6}, gen) + 1;
  const torch::Tensor uncond = torch::zeros({1, 2, 6});
  DdimOptions o;
  auto plain = DdimSample(ContextModel(), schedule, noise, cond, {}, o);
  o.guidance_scale = 1.0;
  auto g1 = DdimSample(ContextModel(), schedule, noise, cond, uncond, o);
  o.guidance_scale = 0.0;
  auto g0 = DdimSample(ContextModel(), schedule, noise, cond, uncond, o);
  auto unconditional = DdimSample(ContextModel(), schedule, noise,
                                  uncond.expand({3, 2, 6}), {}, o);
  o.guidance_scale = 3.0;
  auto g3 = DdimSample(ContextModel(), schedule, noise, cond, uncond, o);
  ASSERT_TRUE(plain.ok() && g1.ok() && g0.ok() && unconditional.ok() &&
              g3.ok());
  EXPECT_TRUE(torch::allclose(*g1, *plain, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(*g0, *unconditional, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(*g3, *plain, 1e-3, 1e-3));
  // In chunks: the same result.
  o.max_batch = 2;
  auto chunked = DdimSample(ContextModel(), schedule, noise, cond, uncond, o);
  ASSERT_TRUE(chunked.ok());
  EXPECT_TRUE(torch::allclose(*chunked, *g3, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(
      GuidedNoise(torch::full({1}, 1.0), torch::full({1}, 3.0), 2.0),
      torch::full({1}, 5.0)));
}

TEST(DdimSampleTest, RejectsMismatchedInputs) {
  const NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  DdimOptions o;
  auto r = DdimSample(ContextModel(), schedule, torch::randn({2, 4, 8, 8}),
                      torch::randn({3, 2, 6}), {}, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = DdimSample(ContextModel(), schedule, torch::randn({2, 4, 8, 8}),
                 torch::randn({2, 2, 6}), torch::randn({1, 2, 5}), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DdimSampleTest, RunsAUNetDeterministically) {
  auto config =
      LoadUNetConfig(std::string(LPD_CONFIGS_DIR) + "/study-sd15-tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  UNetOptions options;
  options.config = *config;
  auto model = UNet2DConditionModelImpl::Create(options);
  ASSERT_TRUE(model.ok()) << model.status();
  (*model)->RandomizeParameters(1);
  const NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  const torch::Tensor noise = torch::randn({2, 4, 16, 16});
  const torch::Tensor cond = torch::randn({2, 8, 64});
  DdimOptions o;
  o.num_inference_steps = 3;
  o.guidance_scale = 2.0;
  NoisePredictor predict = UNetNoisePredictor(UNet2DConditionModel(*model));
  auto a =
      DdimSample(predict, schedule, noise, cond, torch::zeros({1, 8, 64}), o);
  auto b =
      DdimSample(predict, schedule, noise, cond, torch::zeros({1, 8, 64}), o);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status();
  EXPECT_EQ(a->sizes(), noise.sizes());
  EXPECT_TRUE(torch::equal(*a, *b));
  EXPECT_TRUE(torch::isfinite(*a).all().item<bool>());
}

}  // namespace
}  // namespace lpd::engine

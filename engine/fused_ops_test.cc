#include "engine/fused_ops.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace lpd::engine {
namespace {

// The fused ops must compute what the U-Net's plain ops compute; on the CPU
// they take the plain path, which this pins to the reference arithmetic (the
// GPU run checks the CUDA kernels against the same expressions).
TEST(FusedOpsTest, GroupNormActEqualsAddThenGroupNormThenSilu) {
  torch::manual_seed(3);
  torch::Tensor x = torch::randn({2, 20, 5, 6});
  torch::Tensor add = torch::randn({2, 20});
  torch::Tensor w = torch::rand({20}) + 0.5, b = torch::randn({20});
  torch::Tensor expected = torch::silu(
      torch::group_norm(x + add.view({2, 20, 1, 1}), 4, w, b, 1e-5));
  torch::Tensor got = GroupNormAct(x, add, 4, w, b, 1e-5, true);
  EXPECT_TRUE(torch::allclose(got, expected, 1e-5, 1e-6));
  torch::Tensor plain = GroupNormAct(x, {}, 4, w, b, 1e-6, false);
  EXPECT_TRUE(torch::allclose(plain, torch::group_norm(x, 4, w, b, 1e-6)));
}

TEST(FusedOpsTest, GroupNormActKeepsChannelsLastInputsCorrect) {
  torch::manual_seed(4);
  torch::Tensor x =
      torch::randn({2, 8, 3, 3}).contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor w = torch::ones({8}), b = torch::zeros({8});
  torch::Tensor got = GroupNormAct(x, {}, 2, w, b, 1e-5, true);
  torch::Tensor expected =
      torch::silu(torch::group_norm(x.contiguous(), 2, w, b, 1e-5));
  EXPECT_TRUE(torch::allclose(got, expected, 1e-5, 1e-6));
}

TEST(FusedOpsTest, GegluIsFirstHalfTimesGeluOfSecondHalf) {
  torch::manual_seed(5);
  torch::Tensor x = torch::randn({3, 7, 16});
  torch::Tensor expected = x.slice(-1, 0, 8) * torch::gelu(x.slice(-1, 8, 16));
  torch::Tensor got = Geglu(x);
  ASSERT_EQ(got.sizes(), torch::IntArrayRef({3, 7, 8}));
  EXPECT_TRUE(torch::allclose(got, expected, 1e-6, 1e-7));
  // GELU is the exact (erf) form, not the tanh approximation.
  torch::Tensor g = torch::tensor({0.f, 1.f, 1.5f});
  torch::Tensor y = Geglu(torch::cat({torch::ones({3}), g}).view({1, 6}));
  EXPECT_NEAR(y[0][1].item<float>(), 0.8413447f, 1e-6);
}

TEST(FusedOpsTest, GradientsFlowThroughThePlainPath) {
  torch::Tensor x = torch::randn({1, 4, 2, 2}, torch::requires_grad());
  torch::Tensor w = torch::ones({4}, torch::requires_grad());
  torch::Tensor b = torch::zeros({4}, torch::requires_grad());
  GroupNormAct(x, {}, 2, w, b, 1e-5, true).sum().backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_TRUE(w.grad().defined());
  torch::Tensor z = torch::randn({2, 8}, torch::requires_grad());
  Geglu(z).sum().backward();
  EXPECT_GT(z.grad().abs().sum().item<float>(), 0.f);
}

}  // namespace
}  // namespace lpd::engine

namespace lpd::engine {
namespace {

TEST(FusedOpsTest, AddLayerNormReturnsTheSumAndItsNormalization) {
  torch::manual_seed(6);
  torch::Tensor x = torch::randn({2, 5, 16}), r = torch::randn({2, 5, 16});
  torch::Tensor w = torch::rand({16}) + 0.5, b = torch::randn({16});
  auto [sum, normed] = AddLayerNorm(x, r, w, b, 1e-5);
  EXPECT_TRUE(torch::allclose(sum, x + r));
  EXPECT_TRUE(torch::allclose(
      normed, torch::layer_norm(x + r, {16}, w, b, 1e-5), 1e-5, 1e-6));
  auto [same, plain] = AddLayerNorm(x, {}, w, b, 1e-5);
  EXPECT_TRUE(same.is_same(x));
  EXPECT_TRUE(torch::allclose(plain, torch::layer_norm(x, {16}, w, b, 1e-5),
                              1e-5, 1e-6));
}

}  // namespace
}  // namespace lpd::engine

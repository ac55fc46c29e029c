#include "engine/kernels/fused_ops.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

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

// The sum output carries the addend; the normalization does not see it.
TEST(FusedOpsTest, AddLayerNormSumAddendShiftsOnlyTheSum) {
  torch::manual_seed(7);
  torch::Tensor x = torch::randn({2, 5, 16}), r = torch::randn({2, 5, 16});
  torch::Tensor w = torch::rand({16}) + 0.5, b = torch::randn({16});
  torch::Tensor addend = torch::randn({16});
  auto [sum, normed] = AddLayerNorm(x, r, w, b, 1e-5, addend);
  EXPECT_TRUE(torch::allclose(sum, x + r + addend, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(
      normed, torch::layer_norm(x + r, {16}, w, b, 1e-5), 1e-5, 1e-6));
  auto [shifted, plain] = AddLayerNorm(x, {}, w, b, 1e-5, addend);
  EXPECT_FALSE(shifted.is_same(x));
  EXPECT_TRUE(torch::allclose(shifted, x + addend));
  EXPECT_TRUE(torch::allclose(plain, torch::layer_norm(x, {16}, w, b, 1e-5),
                              1e-5, 1e-6));
}

TEST(FusedOpsTest, AddChannelBiasAddsBothMapsAndTheBiasPerChannel) {
  torch::manual_seed(8);
  torch::Tensor a =
      torch::randn({2, 8, 3, 4}).contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor b = torch::randn({2, 8, 3, 4});
  torch::Tensor bias = torch::randn({8});
  torch::Tensor got = AddChannelBias(a, b, bias);
  ASSERT_EQ(got.sizes(), a.sizes());
  for (int64_t c = 0; c < 8; ++c) {
    EXPECT_TRUE(torch::allclose(
        got.select(1, c),
        a.select(1, c) + b.select(1, c) + bias[c].item<float>(), 1e-6, 1e-6))
        << "channel " << c;
  }
  // Gradients reach all three (the training path records plain ops).
  torch::Tensor ga = a.clone().requires_grad_(),
                gb = b.clone().requires_grad_(),
                gbias = bias.clone().requires_grad_();
  AddChannelBias(ga, gb, gbias).sum().backward();
  EXPECT_TRUE(torch::allclose(gbias.grad(), torch::full({8}, 24.f)));
  EXPECT_TRUE(torch::allclose(ga.grad(), torch::ones_like(a)));
  EXPECT_TRUE(torch::allclose(gb.grad(), torch::ones_like(b)));
}

// The fused autograd nodes (what the GPU trains with) run their plain-op
// formulas on the CPU when forced; their gradients must equal autograd's
// through the plain ops.
class FusedAutogradTest : public ::testing::Test {
 protected:
  void SetUp() override { SetFusedAutogradOnEveryDevice(true); }
  void TearDown() override { SetFusedAutogradOnEveryDevice(false); }
};

// Gradients of sum(f(inputs) · probe) with respect to every input.
std::vector<torch::Tensor> Gradients(
    const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& f,
    const std::vector<torch::Tensor>& inputs, const torch::Tensor& probe,
    std::string* grad_fn_name = nullptr) {
  std::vector<torch::Tensor> leaves;
  for (const torch::Tensor& t : inputs) {
    leaves.push_back(t.detach().clone().set_requires_grad(true));
  }
  torch::Tensor y = f(leaves);
  if (grad_fn_name != nullptr) *grad_fn_name = y.grad_fn()->name();
  (y * probe).sum().backward();
  std::vector<torch::Tensor> grads;
  for (const torch::Tensor& t : leaves) grads.push_back(t.grad());
  return grads;
}

TEST_F(FusedAutogradTest, GroupNormActNodeGradientsEqualAutograds) {
  torch::manual_seed(7);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  for (bool silu : {true, false}) {
    for (bool with_add : {true, false}) {
      for (bool channels_last : {true, false}) {
        SCOPED_TRACE(testing::Message() << "silu " << silu << " add "
                                        << with_add << " cl " << channels_last);
        torch::Tensor x = torch::randn({3, 12, 5, 4}, f64) * 2 + 0.5;
        if (channels_last) {
          x = x.contiguous(torch::MemoryFormat::ChannelsLast);
        }
        std::vector<torch::Tensor> inputs = {x, torch::rand({12}, f64) + 0.5,
                                             torch::randn({12}, f64),
                                             torch::randn({3, 12}, f64)};
        const torch::Tensor probe = torch::randn({3, 12, 5, 4}, f64);
        auto f = [&](const std::vector<torch::Tensor>& in) {
          return GroupNormAct(in[0], with_add ? in[3] : torch::Tensor(), 3,
                              in[1], in[2], 1e-5, silu);
        };
        SetFusedTrainingKernelsEnabled(false);
        std::string plain_node;
        std::vector<torch::Tensor> expected =
            Gradients(f, inputs, probe, &plain_node);
        SetFusedTrainingKernelsEnabled(true);
        std::string fused_node;
        std::vector<torch::Tensor> got =
            Gradients(f, inputs, probe, &fused_node);
        EXPECT_NE(fused_node.find("GroupNormActFunction"), std::string::npos)
            << fused_node;
        EXPECT_EQ(plain_node.find("GroupNormActFunction"), std::string::npos);
        for (size_t i = 0; i < (with_add ? 4u : 3u); ++i) {
          SCOPED_TRACE(i);
          ASSERT_TRUE(got[i].defined());
          EXPECT_TRUE(torch::allclose(got[i], expected[i], 1e-9, 1e-10))
              << (got[i] - expected[i]).abs().max().item<double>();
        }
        if (!with_add) {
          EXPECT_FALSE(got[3].defined());
        }
      }
    }
  }
}

TEST_F(FusedAutogradTest, GroupNormActNodeForwardEqualsThePlainOps) {
  torch::manual_seed(8);
  torch::Tensor x = torch::randn({2, 8, 3, 5}, torch::requires_grad());
  torch::Tensor add = torch::randn({2, 8}, torch::requires_grad());
  torch::Tensor w = torch::rand({8}) + 0.5, b = torch::randn({8});
  torch::Tensor got = GroupNormAct(x, add, 2, w, b, 1e-5, true);
  torch::Tensor expected =
      torch::silu(torch::group_norm(x + add.view({2, 8, 1, 1}), 2, w, b, 1e-5));
  EXPECT_TRUE(torch::allclose(got, expected, 1e-5, 1e-6));
}

TEST_F(FusedAutogradTest, GegluNodeGradientsEqualAutograds) {
  torch::manual_seed(9);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  std::vector<torch::Tensor> inputs = {torch::randn({4, 6, 20}, f64) * 2};
  const torch::Tensor probe = torch::randn({4, 6, 10}, f64);
  auto f = [](const std::vector<torch::Tensor>& in) { return Geglu(in[0]); };
  SetFusedTrainingKernelsEnabled(false);
  std::vector<torch::Tensor> expected = Gradients(f, inputs, probe);
  SetFusedTrainingKernelsEnabled(true);
  std::string node;
  std::vector<torch::Tensor> got = Gradients(f, inputs, probe, &node);
  EXPECT_NE(node.find("GegluFunction"), std::string::npos) << node;
  EXPECT_TRUE(torch::allclose(got[0], expected[0], 1e-10, 1e-12))
      << (got[0] - expected[0]).abs().max().item<double>();
}

TEST_F(FusedAutogradTest, LinearNodeGradientsEqualAutograds) {
  torch::manual_seed(10);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  std::vector<torch::Tensor> inputs = {torch::randn({3, 5, 16}, f64),
                                       torch::randn({24, 16}, f64),
                                       torch::randn({24}, f64)};
  const torch::Tensor probe = torch::randn({3, 5, 24}, f64);
  auto f = [](const std::vector<torch::Tensor>& in) {
    return LinearOp(in[0], in[1], in[2]);
  };
  SetFusedTrainingKernelsEnabled(false);
  std::vector<torch::Tensor> expected = Gradients(f, inputs, probe);
  SetFusedTrainingKernelsEnabled(true);
  std::string node;
  std::vector<torch::Tensor> got = Gradients(f, inputs, probe, &node);
  EXPECT_NE(node.find("LinearFunction"), std::string::npos) << node;
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(torch::allclose(got[i], expected[i], 1e-10, 1e-12));
  }
  // An input that needs no gradient gets none (its GEMM is skipped).
  torch::Tensor x = torch::randn({4, 16}, f64);
  torch::Tensor w = torch::randn({24, 16}, f64).set_requires_grad(true);
  torch::Tensor b = torch::randn({24}, f64).set_requires_grad(true);
  LinearOp(x, w, b).sum().backward();
  EXPECT_FALSE(x.grad().defined());
  EXPECT_TRUE(torch::allclose(b.grad(), torch::full({24}, 4.0, f64)));
}

TEST_F(FusedAutogradTest, AddLayerNormNodeGradientsEqualAutograds) {
  torch::manual_seed(11);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  for (bool with_residual : {true, false}) {
    SCOPED_TRACE(with_residual);
    std::vector<torch::Tensor> inputs = {
        torch::randn({3, 5, 16}, f64) * 2 + 1, torch::randn({3, 5, 16}, f64),
        torch::rand({16}, f64) + 0.5, torch::randn({16}, f64)};
    // Both outputs feed the probe, as the sum feeds the next residual.
    const torch::Tensor probe = torch::randn({3, 5, 32}, f64);
    auto f = [&](const std::vector<torch::Tensor>& in) {
      auto [sum, y] = AddLayerNorm(
          in[0], with_residual ? in[1] : torch::Tensor(), in[2], in[3], 1e-5);
      return torch::cat({sum * 1.5, y}, -1);
    };
    SetFusedTrainingKernelsEnabled(false);
    std::vector<torch::Tensor> expected = Gradients(f, inputs, probe);
    SetFusedTrainingKernelsEnabled(true);
    std::vector<torch::Tensor> got = Gradients(f, inputs, probe);
    for (size_t i = 0; i < 4; ++i) {
      if (i == 1 && !with_residual) {
        EXPECT_FALSE(got[i].defined());
        continue;
      }
      SCOPED_TRACE(i);
      ASSERT_TRUE(got[i].defined());
      EXPECT_TRUE(torch::allclose(got[i], expected[i], 1e-9, 1e-10))
          << (got[i] - expected[i]).abs().max().item<double>();
    }
    // The forward values are the plain ones.
    auto [sum, y] = AddLayerNorm(inputs[0].set_requires_grad(true), inputs[1],
                                 inputs[2], inputs[3], 1e-5);
    EXPECT_NE(y.grad_fn()->name().find("AddLayerNormFunction"),
              std::string::npos);
    EXPECT_TRUE(torch::allclose(y,
                                torch::layer_norm(inputs[0] + inputs[1], {16},
                                                  inputs[2], inputs[3], 1e-5),
                                1e-10, 1e-12));
    inputs[0].set_requires_grad(false);
  }
}

// Packed weights (slices of one buffer, as AttentionImpl holds them) are
// multiplied as one view, and each gets its rows of the stacked gradient.
TEST(LinearOfStackedTest, PackedWeightsGetTheGradientsOfTheirConcatenation) {
  torch::manual_seed(12);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  for (int parts : {2, 3}) {
    SCOPED_TRACE(parts);
    torch::Tensor buffer = torch::randn({parts * 6, 8}, f64);
    std::vector<torch::Tensor> packed, separate;
    for (int i = 0; i < parts; ++i) {
      packed.push_back(buffer.narrow(0, 6 * i, 6).set_requires_grad(true));
      separate.push_back(
          buffer.narrow(0, 6 * i, 6).clone().set_requires_grad(true));
    }
    torch::Tensor x = torch::randn({2, 5, 8}, f64).set_requires_grad(true);
    torch::Tensor x2 = x.detach().clone().set_requires_grad(true);
    torch::Tensor probe = torch::randn({2, 5, parts * 6}, f64);
    torch::Tensor y = LinearOfStacked(x, packed);
    EXPECT_NE(y.grad_fn()->name().find("StackedLinearFunction"),
              std::string::npos)
        << y.grad_fn()->name();
    (y * probe).sum().backward();
    torch::Tensor expected = torch::linear(x2, torch::cat(separate));
    EXPECT_TRUE(torch::allclose(y, expected, 1e-12, 1e-12));
    (expected * probe).sum().backward();
    EXPECT_TRUE(torch::allclose(x.grad(), x2.grad(), 1e-12, 1e-12));
    for (int i = 0; i < parts; ++i) {
      EXPECT_TRUE(
          torch::allclose(packed[i].grad(), separate[i].grad(), 1e-12, 1e-12));
    }
    // Weights in separate buffers are concatenated.
    torch::Tensor z = LinearOfStacked(x2, separate);
    EXPECT_EQ(z.grad_fn()->name().find("StackedLinearFunction"),
              std::string::npos);
    EXPECT_TRUE(torch::allclose(z, expected, 1e-12, 1e-12));
  }
}

}  // namespace
}  // namespace lpd::engine

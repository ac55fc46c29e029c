#include "engine/core/cpu_threads.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/types.h>

namespace lpd::engine {
namespace {

TEST(CpuThreadsTest, OneThreadMeansOneForLibTorchAndOpenBlas) {
  // A product first, so that a lazily started BLAS pool exists.
  torch::Tensor a = torch::rand({64, 64});
  (void)torch::mm(a, a);
  SetCpuThreads(1);
  EXPECT_EQ(at::get_num_threads(), 1);
  // 0: this LibTorch does not run on OpenBLAS (a CUDA build with MKL).
  const int blas = OpenBlasThreads();
  EXPECT_TRUE(blas == 0 || blas == 1) << blas;
  SetCpuThreads(2);
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_TRUE(OpenBlasThreads() == 0 || OpenBlasThreads() == 2);
}

TEST(CpuThreadsTest, ZeroLeavesTheCountAsItWas) {
  SetCpuThreads(1);
  SetCpuThreads(0);
  EXPECT_EQ(at::get_num_threads(), 1);
}

}  // namespace
}  // namespace lpd::engine

// Kineto traces for the benchmarks: runs a function under LibTorch's
// profiler (CPU and CUDA activity) and writes the trace as JSON, which
// bench/trace_summary.py summarizes. Needs LibTorch 2.x with CUDA; elsewhere
// it says so and runs nothing.
#ifndef LPD_BENCH_KINETO_TRACE_H_
#define LPD_BENCH_KINETO_TRACE_H_

#include <torch/cuda.h>
#include <torch/version.h>

#include <cstdio>
#include <functional>
#include <set>
#include <string>

#if defined(LPD_WITH_CUDA) && TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/autograd/profiler_kineto.h>
#define LPD_WITH_KINETO 1
#endif

namespace lpd::bench {

// Runs `fn` under the Kineto profiler and writes the trace to `path`, or
// returns false (printing why) where Kineto is not available.
inline bool ProfileToFile(const std::string& path,
                          const std::function<void()>& fn) {
#ifdef LPD_WITH_KINETO
  namespace prof = torch::autograd::profiler;
  namespace impl = torch::profiler::impl;
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  const std::set<impl::ActivityType> activities = {impl::ActivityType::CPU,
                                                   impl::ActivityType::CUDA};
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  fn();
  torch::cuda::synchronize();
  prof::disableProfiler()->save(path);
  std::printf("  profile: %s\n", path.c_str());
  return true;
#else
  (void)path, (void)fn;
  std::printf("  --profile needs LibTorch 2.x with CUDA\n");
  return false;
#endif
}

}  // namespace lpd::bench

#endif  // LPD_BENCH_KINETO_TRACE_H_

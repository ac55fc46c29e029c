#include "engine/core/cpu_threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

namespace lpd::engine {
namespace {

// OpenBLAS's own controls, found at run time: LibTorch may use another BLAS.
template <typename Function>
Function* OpenBlasFunction(const char* name) {
  return reinterpret_cast<Function*>(dlsym(RTLD_DEFAULT, name));
}

}  // namespace

void SetCpuThreads(int threads) {
  if (threads < 1) return;
  at::set_num_threads(threads);
  if (auto* set = OpenBlasFunction<void(int)>("openblas_set_num_threads")) {
    set(threads);
  }
}

int OpenBlasThreads() {
  auto* get = OpenBlasFunction<int()>("openblas_get_num_threads");
  return get != nullptr ? get() : 0;
}

}  // namespace lpd::engine

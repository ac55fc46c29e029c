// How many CPU threads the engine computes with.
#ifndef LPD_ENGINE_CORE_CPU_THREADS_H_
#define LPD_ENGINE_CORE_CPU_THREADS_H_

namespace lpd::engine {

// Sets LibTorch's intra-op threads to `threads` (>= 1) and, where LibTorch
// runs its matrix products through OpenBLAS (Debian's LibTorch does), the
// OpenBLAS pool too: at::set_num_threads leaves that pool at one thread per
// core, and its idle threads spin in sched_yield after every product, which
// on a loaded machine takes a core from every other process (a worker with
// `--threads 1` kept two cores busy).
void SetCpuThreads(int threads);

// The OpenBLAS pool's size, or 0 when OpenBLAS is not loaded.
int OpenBlasThreads();

}  // namespace lpd::engine

#endif  // LPD_ENGINE_CORE_CPU_THREADS_H_

// Data-parallel groups for distillation across GPUs (DESIGN §8): one process
// (or, in tests, one thread) per rank, joined through a rendezvous store, with
// LibTorch's c10d process groups underneath: NCCL on CUDA devices (when
// LibTorch was built with CUDA), gloo on the CPU (when gloo's headers were
// found at build time). A group of one rank needs neither and does nothing.
//
// Every collective is blocking from the caller's point of view: when it
// returns OK, the tensors hold the result (on CUDA, the caller's current
// stream is ordered after the collective). Every rank must call the same
// collectives in the same order with tensors of the same shapes and dtypes.
#ifndef LPD_ENGINE_TRAIN_DATA_PARALLEL_H_
#define LPD_ENGINE_TRAIN_DATA_PARALLEL_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace lpd::engine {

struct DataParallelOptions {
  int rank = 0;
  int world_size = 1;
  // Where the ranks meet: "file:///abs/path" (a c10d FileStore; the file must
  // not exist yet, on a file system every rank sees) or "tcp://host:port" (a
  // c10d TCPStore that rank 0 hosts on `port`). Unused when world_size is 1.
  std::string rendezvous;
  // "gloo", "nccl", or "" for NCCL on a CUDA device and gloo on the CPU.
  std::string backend;
  // For the rendezvous and for each collective.
  absl::Duration timeout = absl::Minutes(10);
  // Collectives on many tensors flatten them into buckets of about this
  // size (one collective each, all in flight together).
  int64_t bucket_bytes = int64_t{25} << 20;
  // Whether a trainer all-reduces gradients while backward() still runs
  // (GradientReducer, which copies each gradient into its bucket) rather
  // than after it (in place, on the flat gradient buffers). Off by default:
  // on 2 H200s (bench/distill_ddp, SD-v1.5) the overlapped all-reduce gave
  // 1.67x over one GPU, the one after backward 2.00x.
  bool overlap_backward = false;
};

// Validated options from the flags a launcher passes to each rank
// (`--rank R --world-size W --rendezvous URL [--backend B]`): InvalidArgument
// unless 0 <= rank < world_size, world_size >= 1, and, for world_size > 1, a
// file:// or tcp://host:port rendezvous.
absl::StatusOr<DataParallelOptions> MakeDataParallelOptions(
    int rank, int world_size, absl::string_view rendezvous,
    absl::string_view backend = "");

// The same from torchrun-style environment variables: RANK, WORLD_SIZE and
// either LPD_RENDEZVOUS or MASTER_ADDR + MASTER_PORT (tcp://); LPD_DP_BACKEND
// for the backend. Without WORLD_SIZE: a single rank.
absl::StatusOr<DataParallelOptions> DataParallelOptionsFromEnv();

// The device a rank trains on, for a job that asked for `requested`: a CUDA
// device without an index becomes cuda:<local rank> when world_size > 1
// (LOCAL_RANK from the environment when set, else rank modulo the number of
// visible GPUs); anything else is kept.
torch::Device DataParallelDevice(const DataParallelOptions& options,
                                 torch::Device requested);

// Whether this build can run a backend ("gloo", "nccl").
bool DataParallelBackendAvailable(absl::string_view backend);

class GradientReducer;

class DataParallelGroup {
 public:
  // Joins the group (blocks until every rank has joined, or fails with
  // DeadlineExceeded after options.timeout). Collective tensors live on
  // `device`; for a CUDA device, it also becomes this thread's current
  // device.
  static absl::StatusOr<std::unique_ptr<DataParallelGroup>> Create(
      const DataParallelOptions& options, torch::Device device);
  ~DataParallelGroup();
  DataParallelGroup(const DataParallelGroup&) = delete;
  DataParallelGroup& operator=(const DataParallelGroup&) = delete;

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  torch::Device device() const { return device_; }
  // "gloo", "nccl", or "none" for a single rank.
  const std::string& backend() const { return backend_; }
  const DataParallelOptions& options() const { return options_; }

  // Sums each tensor over the ranks, in place.
  absl::Status AllReduceSum(std::vector<torch::Tensor>& tensors);
  // Averages each (floating-point) tensor over the ranks, in place.
  absl::Status AllReduceMean(std::vector<torch::Tensor>& tensors);
  // Copies rank `root`'s tensors into every other rank's, in place.
  absl::Status Broadcast(std::vector<torch::Tensor>& tensors, int root = 0);
  // Returns once every rank has called it.
  absl::Status Barrier();

 private:
  friend class GradientReducer;
  struct Impl;
  DataParallelGroup(const DataParallelOptions& options, torch::Device device);
  absl::Status Reduce(std::vector<torch::Tensor>& tensors, bool mean);

  DataParallelOptions options_;
  torch::Device device_;
  std::string backend_ = "none";
  std::unique_ptr<Impl> impl_;
};

// Averages the gradients of a fixed list of parameters over the ranks while
// backward() runs, the way DistributedDataParallel does: each parameter's
// gradient is copied into a persistent bucket (buckets of about
// options.bucket_bytes, filled in reverse parameter order) as autograd
// produces it, and a bucket's all-reduce starts as soon as it is complete
// (buckets start in the same order on every rank). Armed for one backward()
// at a time; a backward() while disarmed is left alone.
class GradientReducer {
 public:
  // Registers gradient hooks on `params` (leaves requiring grad, the same
  // list in the same order on every rank).
  static absl::StatusOr<std::unique_ptr<GradientReducer>> Create(
      DataParallelGroup& group, std::vector<torch::Tensor> params);
  ~GradientReducer();  // removes the hooks
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // The next backward() feeds the buckets.
  void Arm();
  // After that backward(): starts what is left (a parameter that got no
  // gradient counts as zero), waits, and leaves the mean over the ranks in
  // each parameter's grad. Disarms.
  absl::Status Finish();

 private:
  struct State;
  explicit GradientReducer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace lpd::engine

#endif  // LPD_ENGINE_TRAIN_DATA_PARALLEL_H_

// Distillation of a pruned student from its teacher (DESIGN §4.5): the
// student is the teacher with the plan's units removed, initialized from the
// teacher's weights, and trained with
//
//   L = w_task·mse(ε_S, target) + w_out·mse(ε_S, ε_T)
//       + w_feat·Σ_l ‖F_S^l − F_T^l‖² / ‖F_T^l‖²
//
// over the outputs of every down block, the mid block and every up block
// (LAPTOP-Diff's normalized feature loss; with normalize_features false the
// per-block term is the plain mean squared error, the BK-SDM loss).
//
// The trainer draws no random numbers itself: batches come from a callback
// keyed by the step, so a run resumed from a checkpoint (student weights,
// AdamW state, step) continues exactly as the uninterrupted run would.
#ifndef LPD_ENGINE_TRAIN_DISTILL_H_
#define LPD_ENGINE_TRAIN_DISTILL_H_

#include <torch/optim/adamw.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/batch.h"
#include "engine/model/unet.h"
#include "engine/train/adamw.h"
#include "engine/train/distill_loss.h"
#include "engine/train/student.h"
#include "job/layout.h"
#include "storage/object_store.h"

namespace torch::optim {
class AdamW;
}  // namespace torch::optim

namespace lpd::engine {

class DataParallelGroup;
class GradientReducer;

// OK when a global batch of `batch_size` rows splits evenly over
// `world_size` data-parallel ranks; else InvalidArgument naming
// spec.distill.batch_size. Callers can check a job before training starts.
absl::Status CheckDataParallelBatch(int64_t batch_size, int world_size);

// A seed for `step`'s batch derived from the run's seed (SplitMix64 of both),
// so a batch source can draw step-keyed random numbers.
uint64_t BatchSeed(uint64_t seed, int64_t step);

// How the student is held while training.
enum class TrainingPrecision {
  kFloat32,   // fp32 weights and optimizer state (the CPU setting; tested)
  kBFloat16,  // bf16 weights and AdamW state (the GPU default; untested here)
  // bf16 model, fp32 master weights and AdamW state (untested here)
  kBFloat16MasterFloat32,
};

struct DistillTrainerOptions {
  DistillLossOptions loss;
  double learning_rate = 1e-4;  // peak
  // Linear warmup from lr/warmup_steps to lr over the first warmup_steps
  // steps (0: none).
  int64_t warmup_steps = 0;
  double weight_decay = 1e-2;  // AdamW's decoupled decay
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  // Clip gradients to this global L2 norm (<= 0: no clipping).
  double max_grad_norm = 1.0;
  TrainingPrecision precision = TrainingPrecision::kFloat32;
  torch::Device device = torch::kCPU;
  // The run's seed. The trainer itself draws no random numbers; it records
  // the seed in checkpoints and batch sources derive theirs from it
  // (BatchSeed).
  uint64_t seed = 0;
  // Data-parallel training (not owned; must outlive the trainer; nullptr or
  // a group of one rank: single-process). With W ranks every rank gets the
  // same global batch of B rows (B % W == 0) and computes the loss on rows
  // [rank·B/W, (rank+1)·B/W); the gradients are averaged over the ranks
  // before clipping and AdamW, so every rank keeps identical weights and the
  // run equals the single-process run on the global batch (to float
  // rounding). The normalized feature terms use the global ‖F_T‖² (one
  // small all-reduce per step). Reported losses are the global ones.
  // Create broadcasts rank 0's student; SaveCheckpoint writes on rank 0
  // only; Resume reads on every rank and checks they agree. Every rank must
  // make the same calls (Create, Resume, Step/Train, SaveCheckpoint) with the
  // same arguments.
  DataParallelGroup* data_parallel = nullptr;
  // Single-process CUDA with LibTorch 2.x: after `graph_warmup_steps` eager
  // steps, capture the teacher's and student's forward, the loss and the
  // backward pass in one CUDA graph and replay it each step (clipping and
  // AdamW stay eager; nothing waits for the host in between). A batch of
  // other shapes runs eagerly; a capture that fails falls back to eager
  // steps for good.
  bool cuda_graph = true;
  int64_t graph_warmup_steps = 2;
  // With cuda_graph: the teacher's forward runs on a stream of its own,
  // concurrently with the student's.
  bool concurrent_teacher = true;
};

// What a progress callback receives after each step.
struct StepReport {
  int64_t step = 0;  // the step just taken (0-based)
  DistillLossValues loss;
  double learning_rate = 0;
  double grad_norm = 0;  // before clipping
  double seconds = 0;    // wall time of the step, batch included
};
// A non-OK status stops training with that status.
using ProgressCallback = std::function<absl::Status(const StepReport&)>;

// Where and how often Train writes checkpoints: every `every_steps` steps
// (0: only at the end) and after the last step, into
// `prefix`checkpoints/step-N/ of `store` (LATEST written last).
struct CheckpointTarget {
  storage::ObjectStore* store = nullptr;  // nullptr: no checkpoints
  std::string prefix;                     // "" or ending in '/'
  int64_t every_steps = 0;
};

// A checkpoint's objects are named by job/layout.h.
using job::kOptimizerStateName;
using job::kStudentWeightsName;
using job::kTrainerStateName;

class DistillTrainer {
 public:
  // Builds the student from `teacher` (which is only read, never trained),
  // on options.device in the precision's dtype, and its AdamW optimizer. The
  // teacher must already be on options.device.
  static absl::StatusOr<std::unique_ptr<DistillTrainer>> Create(
      UNet2DConditionModel teacher, const std::set<std::string>& removed_units,
      const DistillTrainerOptions& options);
  ~DistillTrainer();

  // The loss of `batch` for the current student, with its graph (the
  // teacher's forward runs without one). For tests and evaluation.
  absl::StatusOr<DistillLoss> ComputeLoss(const TrainingBatch& batch);

  // One optimizer step on `batch` (the global batch when data-parallel:
  // this rank uses its slice); advances step() by one. Gradients are left in
  // the student's parameters (averaged over the ranks, clipped).
  absl::StatusOr<StepReport> Step(const TrainingBatch& batch);

  // Whether Step replays a captured CUDA graph (options.cuda_graph, after
  // the warm-up, unless the capture failed).
  bool replaying_cuda_graph() const;
  // Why capturing the CUDA graph failed (OK when it did not, or was never
  // tried); steps then run eagerly.
  absl::Status cuda_graph_failure() const;

  // Steps from step() until `end_step` with batches(step), reporting each
  // step, writing checkpoints as `checkpoints` says. A progress callback's
  // non-OK status stops training with that status. Data-parallel, the ranks
  // agree after every step whether any rank's callback asked to stop (one
  // small all-reduce): if one did, all stop at that same step, write its
  // checkpoint together (when `checkpoints` names a store) and return: the
  // ranks that asked with their own status, the others Cancelled. So a stop
  // asked of any subset of the ranks never leaves one waiting in a
  // collective.
  absl::Status Train(int64_t end_step, const BatchSource& batches,
                     const ProgressCallback& progress = nullptr,
                     const CheckpointTarget& checkpoints = {});

  // Writes the checkpoint of the current step: student weights, AdamW state
  // (opt.<param>.exp_avg / .exp_avg_sq / .step) and trainer.json, then
  // commits it (manifest, then checkpoints/LATEST). Data-parallel: a
  // collective; rank 0 writes (the checkpoint does not depend on the number
  // of ranks), the others wait for it and fail if it failed.
  absl::Status SaveCheckpoint(storage::ObjectStore& store,
                              absl::string_view prefix = "");

  // Loads the newest complete checkpoint under `prefix` (checks its
  // objects' SHA-256) and continues from its step. Returns that step, or
  // nullopt (nothing changed) when there is none. FailedPrecondition when it
  // was written for another set of removed units or another precision.
  // Data-parallel: a collective; every rank reads the store (which must be
  // the same for all), FailedPrecondition unless all found the same step,
  // and then rank 0's state is broadcast. The number of ranks may differ
  // from the run that wrote the checkpoint.
  absl::StatusOr<std::optional<int64_t>> Resume(
      const storage::ObjectStore& store, absl::string_view prefix = "");

  // The number of steps taken (the next step's index).
  int64_t step() const { return step_; }
  // The learning rate of `step` (warmup included).
  double LearningRateAt(int64_t step) const;

  UNet2DConditionModel student() const { return student_; }
  UNet2DConditionModel teacher() const { return teacher_; }
  const DistillTrainerOptions& options() const { return options_; }
  const std::set<std::string>& removed_units() const { return removed_; }
  // Whether training runs over more than one rank.
  bool distributed() const;

 private:
  DistillTrainer(UNet2DConditionModel teacher, UNet2DConditionModel student,
                 std::set<std::string> removed,
                 const DistillTrainerOptions& options);
  UNetInputs ToModel(const UNetInputs& inputs, torch::Dtype dtype) const;
  absl::StatusOr<StepReport> StepOnStream(const TrainingBatch& batch);
  // Single-process forward and backward of `batch`, eager or replayed from
  // the CUDA graph: the loss values on the device (float64: total, task,
  // output_kd, feature_kd, then the terms of `names`).
  absl::StatusOr<torch::Tensor> LocalForwardBackward(
      const TrainingBatch& batch, std::vector<std::string>* names);
  absl::StatusOr<torch::Tensor> EagerForwardBackward(
      const TrainingBatch& batch, std::vector<std::string>* names);
  // Captures the graph on `batch`'s shapes (nothing runs); on failure
  // records why in cuda_graph_failure() and leaves the trainer eager.
  void CaptureGraph(const TrainingBatch& batch);
  // The captured graph, its stream and its static tensors (CUDA builds).
  struct CudaGraphState;
  class TrainingStreamScope;
  class TeacherStreamScope;
  // The teacher's and student's outputs and features for `batch`.
  struct Forward;
  absl::StatusOr<Forward> RunForward(const TrainingBatch& batch);
  // This rank's rows of the global batch.
  absl::StatusOr<TrainingBatch> LocalSlice(const TrainingBatch& batch) const;
  // Data-parallel loss of the local slice: the tensor to differentiate
  // (whose gradient, averaged over ranks, is the global loss's) and, on the
  // device, the ranks' summed statistics that GlobalLossValues turns into
  // the global loss values once they are read back (no host
  // synchronization between forward and backward).
  struct DistributedLossResult {
    torch::Tensor objective;
    torch::Tensor stats;  // float64 [2 + 2·terms]
    std::vector<std::string> names;
  };
  absl::StatusOr<DistributedLossResult> DistributedLoss(
      const TrainingBatch& batch);
  DistillLossValues GlobalLossValues(const DistributedLossResult& loss,
                                     const torch::Tensor& host_stats) const;
  // Data-parallel without overlap or master weights: every parameter's
  // .grad becomes a view into a few flat buffers (by dtype, about
  // bucket_bytes each, in the parameter's own strides), so that the
  // all-reduce, the norm and the clipping run on the buffers in place (no
  // flattening copies, a few kernels instead of one per parameter).
  void AttachGradientBuffers();
  // Zeroes the buffers and re-attaches any .grad that was replaced.
  void ZeroGradientBuffers();
  // Before a backward pass: the buffers zeroed (when attached), or every
  // gradient cleared.
  void ZeroGradients();
  // Makes every rank hold rank 0's weights and AdamW state, after checking
  // that all are at the same step and hold the same teacher.
  absl::Status SyncReplicas(bool check_teacher);
  // Data-parallel: whether any rank passes stop = true (a collective).
  absl::StatusOr<bool> AnyRankStops(bool stop);
  absl::Status WriteCheckpoint(storage::ObjectStore& store,
                               absl::string_view prefix);
  absl::StatusOr<std::optional<int64_t>> ResumeLocal(
      const storage::ObjectStore& store, absl::string_view prefix);
  // The tensors the optimizer updates (the master copies, or the student's
  // own parameters), by parameter name.
  std::vector<std::pair<std::string, torch::Tensor>> OptimizedTensors() const;

  UNet2DConditionModel teacher_;
  UNet2DConditionModel student_;
  std::set<std::string> removed_;
  DistillTrainerOptions options_;
  torch::Dtype teacher_dtype_;
  torch::Dtype student_dtype_;
  // Student parameters by name, and their fp32 masters (master mode only).
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> masters_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  // Data-parallel with overlap: averages gradients during backward().
  std::unique_ptr<GradientReducer> reducer_;
  // AttachGradientBuffers' buffers and each parameter's view (params_
  // order); empty when not used.
  std::vector<torch::Tensor> grad_buffers_;
  std::vector<torch::Tensor> grad_views_;
  // Set when options.cuda_graph applies (see Create).
  std::unique_ptr<CudaGraphState> cuda_graph_;
  int64_t step_ = 0;
};

}  // namespace lpd::engine

#endif  // LPD_ENGINE_TRAIN_DISTILL_H_

#include "engine/train/distill.h"

#include <ATen/record_function.h>
#include <c10/util/C++17.h>
#include <stdlib.h>
#include <torch/optim/adamw.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#if defined(LPD_WITH_CUDA) && TORCH_VERSION_MAJOR >= 2
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define LPD_DISTILL_CUDA_GRAPHS 1
#endif

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/scratch_folder.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"
#include "engine/train/data_parallel.h"
#include "job/checkpoints.h"
#include "nlohmann/json.hpp"
#include "storage/manifest.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

const char* PrecisionName(TrainingPrecision precision) {
  switch (precision) {
    case TrainingPrecision::kFloat32:
      return "float32";
    case TrainingPrecision::kBFloat16:
      return "bfloat16";
    case TrainingPrecision::kBFloat16MasterFloat32:
      return "bfloat16+fp32-master";
  }
  return "?";
}

}  // namespace

absl::Status CheckDataParallelBatch(int64_t batch_size, int world_size) {
  if (world_size < 1 || batch_size < 1 || batch_size % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "distillation: the global batch size (spec.distill.batch_size) ",
        batch_size,
        " must be a positive multiple of the number of "
        "data-parallel ranks, ",
        world_size));
  }
  return absl::OkStatus();
}

uint64_t BatchSeed(uint64_t seed, int64_t step) {
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  return mix(mix(seed) ^ static_cast<uint64_t>(step));
}

DistillTrainer::DistillTrainer(UNet2DConditionModel teacher,
                               UNet2DConditionModel student,
                               std::set<std::string> removed,
                               const DistillTrainerOptions& options)
    : teacher_(std::move(teacher)),
      student_(std::move(student)),
      removed_(std::move(removed)),
      options_(options) {}

struct DistillTrainer::CudaGraphState {
#ifdef LPD_DISTILL_CUDA_GRAPHS
  CudaGraphState(c10::cuda::CUDAStream s, c10::cuda::CUDAStream t)
      : stream(s), teacher_stream(t) {}
  c10::cuda::CUDAStream stream;
  // Where the teacher's forward runs, beside the student's.
  c10::cuda::CUDAStream teacher_stream;
  bool concurrent_teacher = true;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  TrainingBatch inputs;  // the static tensors each replay reads
  torch::Tensor stats;   // the loss values each replay writes
  std::vector<std::string> names;
  std::vector<torch::Tensor> grads;  // what each replay writes (params_)
#endif
  int64_t eager_steps = 0;
  absl::Status failure;  // why the capture failed, if it did
};

// Runs a scope on the graph's stream, ordered after the caller's stream's
// work so far, and makes the caller's stream wait for it at the end.
class DistillTrainer::TrainingStreamScope {
 public:
#ifdef LPD_DISTILL_CUDA_GRAPHS
  explicit TrainingStreamScope(CudaGraphState& state)
      : side_(state.stream),
        caller_(c10::cuda::getCurrentCUDAStream(state.stream.device_index())) {
    at::cuda::CUDAEvent ready;
    ready.record(caller_);
    ready.block(side_);
    guard_.emplace(side_);
  }
  ~TrainingStreamScope() {
    guard_.reset();
    at::cuda::CUDAEvent done;
    done.record(side_);
    done.block(caller_);
  }

 private:
  c10::cuda::CUDAStream side_, caller_;
  std::optional<c10::cuda::CUDAStreamGuard> guard_;
#else
  explicit TrainingStreamScope(CudaGraphState&) {}
#endif
};

// Runs the teacher's forward on its own stream so that it overlaps the
// student's: the constructor forks from the current stream, Join makes the
// current stream wait for the teacher and marks the teacher's results as
// used there (so their memory is not reused too early).
class DistillTrainer::TeacherStreamScope {
 public:
  explicit TeacherStreamScope(CudaGraphState* state) {
#ifdef LPD_DISTILL_CUDA_GRAPHS
    if (state == nullptr || !state->concurrent_teacher) return;
    main_.emplace(
        c10::cuda::getCurrentCUDAStream(state->teacher_stream.device_index()));
    teacher_.emplace(state->teacher_stream);
    at::cuda::CUDAEvent fork;
    fork.record(*main_);
    fork.block(*teacher_);
    guard_.emplace(*teacher_);
#else
    (void)state;
#endif
  }
  // Back on the caller's stream (the teacher's work keeps running).
  void Leave() {
#ifdef LPD_DISTILL_CUDA_GRAPHS
    guard_.reset();
#endif
  }
  void Join(const std::vector<torch::Tensor>& results) {
#ifdef LPD_DISTILL_CUDA_GRAPHS
    if (!main_) return;
    Leave();
    at::cuda::CUDAEvent join;
    join.record(*teacher_);
    join.block(*main_);
    for (const torch::Tensor& t : results) {
      if (t.defined()) t.record_stream(*main_);
    }
#else
    (void)results;
#endif
  }

 private:
#ifdef LPD_DISTILL_CUDA_GRAPHS
  std::optional<c10::cuda::CUDAStream> main_, teacher_;
  std::optional<c10::cuda::CUDAStreamGuard> guard_;
#endif
};

absl::StatusOr<std::unique_ptr<DistillTrainer>> DistillTrainer::Create(
    UNet2DConditionModel teacher, const std::set<std::string>& removed_units,
    const DistillTrainerOptions& options) {
  if (options.learning_rate < 0 || options.weight_decay < 0 ||
      options.warmup_steps < 0) {
    return absl::InvalidArgumentError(
        "distillation: learning_rate, weight_decay and warmup_steps must be "
        ">= 0");
  }
  return GuardTorch(
      "creating the distillation trainer",
      [&]() -> absl::StatusOr<std::unique_ptr<DistillTrainer>> {
        const torch::Dtype dtype =
            options.precision == TrainingPrecision::kFloat32 ? torch::kFloat32
                                                             : torch::kBFloat16;
        ASSIGN_OR_RETURN(UNet2DConditionModel student,
                         MakeStudent(*teacher, removed_units,
                                     torch::TensorOptions().dtype(dtype).device(
                                         options.device)));
        std::unique_ptr<DistillTrainer> trainer(
            new DistillTrainer(teacher, student, removed_units, options));
        trainer->student_dtype_ = dtype;
        trainer->teacher_dtype_ = torch::kFloat32;
        for (const auto& item : teacher->named_parameters(true)) {
          trainer->teacher_dtype_ = item.value().scalar_type();
          break;
        }
        teacher->eval();
        student->train();
        if (options.device.is_cuda()) {
          // Channels-last convolutions (and, for the teacher, the fused
          // group-norm kernel) are faster on the GPU.
          teacher->ToChannelsLast();
          student->ToChannelsLast();
        }
        for (auto& item : student->named_parameters(/*recurse=*/true)) {
          trainer->params_.emplace_back(item.key(), item.value());
        }
        std::vector<torch::Tensor> optimized;
        if (options.precision == TrainingPrecision::kBFloat16MasterFloat32) {
          torch::NoGradGuard no_grad;
          for (const auto& [name, param] : trainer->params_) {
            torch::Tensor master = param.detach()
                                       .to(torch::kFloat32)
                                       .clone()
                                       .set_requires_grad(true);
            trainer->masters_.push_back(master);
            optimized.push_back(master);
          }
        } else {
          for (const auto& [name, param] : trainer->params_) {
            optimized.push_back(param);
          }
        }
        trainer->optimizer_ = std::make_unique<torch::optim::AdamW>(
            optimized, torch::optim::AdamWOptions(options.learning_rate)
                           .betas(std::make_tuple(options.beta1, options.beta2))
                           .eps(options.eps)
                           .weight_decay(options.weight_decay));
        // Every rank starts from rank 0's student.
        RETURN_IF_ERROR(trainer->SyncReplicas(/*check_teacher=*/true));
        if (trainer->distributed() &&
            options.data_parallel->options().overlap_backward) {
          std::vector<torch::Tensor> params;
          for (const auto& [name, param] : trainer->params_) {
            params.push_back(param);
          }
          ASSIGN_OR_RETURN(trainer->reducer_,
                           GradientReducer::Create(*options.data_parallel,
                                                   std::move(params)));
        } else if (trainer->distributed() && trainer->masters_.empty()) {
          trainer->AttachGradientBuffers();
        }
#ifdef LPD_DISTILL_CUDA_GRAPHS
        if (options.cuda_graph && options.device.is_cuda() &&
            !trainer->distributed()) {
          const c10::DeviceIndex index = options.device.has_index()
                                             ? options.device.index()
                                             : c10::cuda::current_device();
          trainer->cuda_graph_ = std::make_unique<CudaGraphState>(
              c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index),
              c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index));
          trainer->cuda_graph_->concurrent_teacher = options.concurrent_teacher;
        }
#endif
        return trainer;
      });
}

bool DistillTrainer::distributed() const {
  return options_.data_parallel != nullptr &&
         options_.data_parallel->world_size() > 1;
}

double DistillTrainer::LearningRateAt(int64_t step) const {
  if (options_.warmup_steps <= 0 || step >= options_.warmup_steps) {
    return options_.learning_rate;
  }
  return options_.learning_rate * static_cast<double>(step + 1) /
         static_cast<double>(options_.warmup_steps);
}

UNetInputs DistillTrainer::ToModel(const UNetInputs& in,
                                   torch::Dtype dtype) const {
  auto floating = [&](const torch::Tensor& t) {
    return t.defined() ? t.to(options_.device, dtype) : t;
  };
  UNetInputs out;
  out.sample = floating(in.sample);
  out.timestep =
      in.timestep.defined() ? in.timestep.to(options_.device) : in.timestep;
  out.encoder_hidden_states = floating(in.encoder_hidden_states);
  out.text_embeds = floating(in.text_embeds);
  out.time_ids = floating(in.time_ids);
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>>
DistillTrainer::OptimizedTensors() const {
  if (masters_.empty()) return params_;
  std::vector<std::pair<std::string, torch::Tensor>> result;
  for (size_t i = 0; i < params_.size(); ++i) {
    result.emplace_back(params_[i].first, masters_[i]);
  }
  return result;
}

struct DistillTrainer::Forward {
  torch::Tensor student_out, teacher_out, target;
  BlockOutputs student_features, teacher_features;
};

absl::StatusOr<DistillTrainer::Forward> DistillTrainer::RunForward(
    const TrainingBatch& batch) {
  return GuardTorch("distillation forward", [&]() -> absl::StatusOr<Forward> {
    RETURN_IF_ERROR(student_->ValidateInputs(batch.noised));
    Forward f;
    // (The RECORD_USER_SCOPEs name the parts of a step in profiles.)
    TeacherStreamScope teacher_stream(cuda_graph_.get());
    {
      RECORD_USER_SCOPE("distill.teacher_forward");
      torch::NoGradGuard no_grad;
      f.teacher_out = teacher_->forward(ToModel(batch.noised, teacher_dtype_),
                                        {}, &f.teacher_features);
    }
    teacher_stream.Leave();
    {
      RECORD_USER_SCOPE("distill.student_forward");
      f.student_out = student_->forward(ToModel(batch.noised, student_dtype_),
                                        {}, &f.student_features);
    }
    std::vector<torch::Tensor> teacher_results = {f.teacher_out};
    for (const auto& [name, t] : f.teacher_features) {
      teacher_results.push_back(t);
    }
    teacher_stream.Join(teacher_results);
    f.target = batch.target.defined() ? batch.target.to(options_.device)
                                      : batch.target;
    return f;
  });
}

absl::StatusOr<DistillLoss> DistillTrainer::ComputeLoss(
    const TrainingBatch& batch) {
  ASSIGN_OR_RETURN(Forward f, RunForward(batch));
  return ComputeDistillLoss(f.student_out, f.teacher_out, f.target,
                            f.student_features, f.teacher_features,
                            options_.loss);
}

absl::StatusOr<TrainingBatch> DistillTrainer::LocalSlice(
    const TrainingBatch& batch) const {
  const int world = options_.data_parallel->world_size();
  const int rank = options_.data_parallel->rank();
  if (!batch.noised.sample.defined() || batch.noised.sample.dim() == 0) {
    return absl::InvalidArgumentError("distillation: batch without a sample");
  }
  const int64_t rows = batch.noised.sample.size(0);
  RETURN_IF_ERROR(CheckDataParallelBatch(rows, world));
  const int64_t n = rows / world;
  // Per-sample tensors are sliced (views, no copies); anything else (a
  // scalar timestep, say) is shared.
  auto slice = [&](const torch::Tensor& t) {
    if (!t.defined() || t.dim() == 0 || t.size(0) != rows) return t;
    return t.narrow(0, rank * n, n);
  };
  TrainingBatch local;
  local.noised.sample = slice(batch.noised.sample);
  local.noised.timestep = slice(batch.noised.timestep);
  local.noised.encoder_hidden_states =
      slice(batch.noised.encoder_hidden_states);
  local.noised.text_embeds = slice(batch.noised.text_embeds);
  local.noised.time_ids = slice(batch.noised.time_ids);
  local.target = slice(batch.target);
  return local;
}

absl::StatusOr<DistillTrainer::DistributedLossResult>
DistillTrainer::DistributedLoss(const TrainingBatch& batch) {
  ASSIGN_OR_RETURN(TrainingBatch local, LocalSlice(batch));
  ASSIGN_OR_RETURN(Forward f, RunForward(local));
  return GuardTorch(
      "data-parallel distillation loss",
      [&]() -> absl::StatusOr<DistributedLossResult> {
        ASSIGN_OR_RETURN(LossParts parts,
                         ComputeLossParts(f.student_out, f.teacher_out,
                                          f.target, f.student_features,
                                          f.teacher_features, options_.loss));
        const DistillLossOptions& o = options_.loss;
        const size_t n = parts.names.size();
        const double world = options_.data_parallel->world_size();
        // One all-reduce of the slices' sums: the mean-type terms (mean over
        // the global batch = the mean of the equal slices' means), the
        // normalized terms' numerators and ‖F_T‖².
        std::vector<torch::Tensor> list = {parts.task.detach(),
                                           parts.output_kd.detach()};
        for (const auto& v : parts.values) list.push_back(v.detach());
        for (const auto& d : parts.denominators) list.push_back(d.detach());
        std::vector<torch::Tensor> stats = {
            torch::stack(list).to(torch::kFloat64)};
        RETURN_IF_ERROR(options_.data_parallel->AllReduceSum(stats));
        // The slice's share of the loss: the mean over ranks of its gradient
        // is the gradient of the global loss. The global ‖F_T‖² stays on
        // the device (a constant: no gradient flows through it).
        torch::Tensor local_feature;
        for (size_t i = 0; i < n; ++i) {
          torch::Tensor share = parts.values[i];
          if (o.normalize_features) {
            const torch::Tensor scale =
                (world / stats[0][2 + n + i].clamp_min(1e-30))
                    .to(share.scalar_type());
            share = share * scale;
          }
          local_feature =
              local_feature.defined() ? local_feature + share : share;
        }
        torch::Tensor objective =
            o.task_weight * parts.task + o.output_kd_weight * parts.output_kd;
        if (local_feature.defined()) {
          objective = objective + o.feature_kd_weight * local_feature;
        }
        return DistributedLossResult{objective, stats[0],
                                     std::move(parts.names)};
      });
}

DistillLossValues DistillTrainer::GlobalLossValues(
    const DistributedLossResult& loss, const torch::Tensor& host_stats) const {
  const DistillLossOptions& o = options_.loss;
  const size_t n = loss.names.size();
  const double world = options_.data_parallel->world_size();
  auto sum = host_stats.accessor<double, 1>();
  DistillLossValues values;
  values.task = sum[0] / world;
  values.output_kd = sum[1] / world;
  for (size_t i = 0; i < n; ++i) {
    const double global = o.normalize_features
                              ? sum[2 + i] / std::max(sum[2 + n + i], 1e-30)
                              : sum[2 + i] / world;
    values.feature_terms[loss.names[i]] = global;
    values.feature_kd += global;
  }
  values.total = o.task_weight * values.task +
                 o.output_kd_weight * values.output_kd +
                 o.feature_kd_weight * values.feature_kd;
  return values;
}

void DistillTrainer::AttachGradientBuffers() {
  torch::NoGradGuard no_grad;
  const int64_t limit = options_.data_parallel->options().bucket_bytes;
  // Parameters in reverse order (about the order backward produces them),
  // a new buffer when the dtype or device changes or the buffer is full.
  struct Pending {
    torch::TensorOptions options;
    std::vector<size_t> members;
    int64_t numel = 0;
  };
  std::vector<Pending> pending;
  for (size_t k = params_.size(); k-- > 0;) {
    const torch::Tensor& p = params_[k].second;
    const int64_t bytes = p.numel() * p.element_size();
    if (pending.empty() ||
        pending.back().options.dtype() != p.options().dtype() ||
        pending.back().options.device() != p.device() ||
        (pending.back().numel > 0 &&
         (pending.back().numel * p.element_size() + bytes > limit))) {
      pending.push_back({p.options(), {}, 0});
    }
    pending.back().members.push_back(k);
    pending.back().numel += p.numel();
  }
  grad_views_.assign(params_.size(), torch::Tensor());
  for (const Pending& b : pending) {
    torch::Tensor buffer =
        torch::zeros({b.numel}, torch::TensorOptions()
                                    .dtype(b.options.dtype())
                                    .device(b.options.device()));
    int64_t offset = 0;
    for (size_t k : b.members) {
      const torch::Tensor& p = params_[k].second;
      // The parameter's own strides (channels-last included: a dense
      // layout spans exactly numel elements), so the optimizer's
      // multi-tensor kernels see matching layouts.
      grad_views_[k] =
          p.is_non_overlapping_and_dense()
              ? buffer.as_strided(p.sizes(), p.strides(), offset)
              : buffer.narrow(0, offset, p.numel()).view(p.sizes());
      offset += p.numel();
    }
    grad_buffers_.push_back(buffer);
  }
  ZeroGradientBuffers();
}

void DistillTrainer::ZeroGradients() {
  if (!grad_buffers_.empty()) {
    ZeroGradientBuffers();
    return;
  }
  optimizer_->zero_grad();
  for (auto& [name, param] : params_) {
    if (param.grad().defined()) param.mutable_grad().zero_();
  }
}

void DistillTrainer::ZeroGradientBuffers() {
  torch::NoGradGuard no_grad;
  for (torch::Tensor& b : grad_buffers_) b.zero_();
  for (size_t k = 0; k < params_.size(); ++k) {
    torch::Tensor& p = params_[k].second;
    if (!p.grad().defined() || !p.grad().is_same(grad_views_[k])) {
      p.mutable_grad() = grad_views_[k];
    }
  }
}

absl::Status DistillTrainer::SyncReplicas(bool check_teacher) {
  if (!distributed()) return absl::OkStatus();
  DataParallelGroup& group = *options_.data_parallel;
  std::vector<torch::Tensor> tensors;
  std::vector<torch::Tensor> stats(1);
  RETURN_IF_ERROR(GuardTorch("checking the replicas", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    auto& states = optimizer_->state();
    double with_state = 0, state_steps = 0;
    for (const auto& [name, tensor] : OptimizedTensors()) {
      tensors.push_back(tensor);
      auto found = states.find(AdamWStateKeyOf(tensor));
      if (found == states.end()) continue;
      auto& s = static_cast<torch::optim::AdamWParamState&>(*found->second);
      tensors.push_back(s.exp_avg());
      tensors.push_back(s.exp_avg_sq());
      with_state += 1;
      state_steps += static_cast<double>(s.step());
    }
    double teacher_sum = 0;
    if (check_teacher) {
      std::vector<torch::Tensor> sums;
      for (const auto& p : teacher_->parameters()) {
        sums.push_back(p.sum(torch::kFloat64));
      }
      if (!sums.empty()) {
        teacher_sum = torch::stack(sums).sum().to(torch::kCPU).item<double>();
      }
    }
    stats[0] =
        torch::tensor({static_cast<double>(step_), with_state, state_steps,
                       teacher_sum, static_cast<double>(tensors.size())},
                      torch::kFloat64)
            .to(group.device());
    return absl::OkStatus();
  }));
  // Every rank compares its numbers with rank 0's, then all learn whether
  // any differs (so that all fail together rather than hang).
  std::vector<torch::Tensor> rank0 = {stats[0].clone()};
  RETURN_IF_ERROR(group.Broadcast(rank0, 0));
  std::string mismatch;
  RETURN_IF_ERROR(GuardTorch("checking the replicas", [&]() -> absl::Status {
    const torch::Tensor mine = stats[0].to(torch::kCPU);
    const torch::Tensor theirs = rank0[0].to(torch::kCPU);
    auto a = mine.accessor<double, 1>();
    auto b = theirs.accessor<double, 1>();
    if (a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || a[4] != b[4]) {
      mismatch =
          absl::StrCat("step ", a[0], " with AdamW state for ", a[1],
                       " tensors; rank 0: step ", b[0], ", ", b[1], " tensors");
    } else if (std::abs(a[3] - b[3]) >
               1e-6 * std::max({1.0, std::abs(a[3]), std::abs(b[3])})) {
      mismatch = absl::StrCat("teacher checksum ", a[3], ", rank 0's ", b[3]);
    }
    return absl::OkStatus();
  }));
  std::vector<torch::Tensor> flag;
  RETURN_IF_ERROR(GuardTorch("checking the replicas", [&]() -> absl::Status {
    flag.push_back(torch::full(
        {1}, mismatch.empty() ? 0.0 : 1.0,
        torch::TensorOptions().dtype(torch::kFloat32).device(group.device())));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(group.AllReduceSum(flag));
  if (!mismatch.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("data parallel: rank ", group.rank(),
                     " differs from rank 0: ", mismatch));
  }
  double differing = 0;
  RETURN_IF_ERROR(GuardTorch("checking the replicas", [&]() -> absl::Status {
    differing = flag[0].to(torch::kCPU).item<double>();
    return absl::OkStatus();
  }));
  if (differing > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data parallel: ", differing, " rank(s) differ from rank 0"));
  }
  RETURN_IF_ERROR(group.Broadcast(tensors, 0));
  if (!masters_.empty()) {
    return GuardTorch("syncing the replicas", [&]() -> absl::Status {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params_.size(); ++i) {
        params_[i].second.copy_(masters_[i]);
      }
      return absl::OkStatus();
    });
  }
  return absl::OkStatus();
}

namespace {

// The loss values on the device, in one float64 tensor: total, task,
// output_kd, feature_kd, then the feature terms in `names` order.
torch::Tensor PackLossValues(const DistillLoss& loss,
                             std::vector<std::string>* names) {
  const auto& any = loss.total;
  auto value = [&](const torch::Tensor& t) {
    return t.defined() ? t.detach().to(torch::kFloat64).reshape({})
                       : torch::zeros({}, any.options().dtype(torch::kFloat64));
  };
  std::vector<torch::Tensor> values = {value(loss.total), value(loss.task),
                                       value(loss.output_kd),
                                       value(loss.feature_kd)};
  names->clear();
  for (const auto& [name, term] : loss.feature_terms) {
    names->push_back(name);
    values.push_back(value(term));
  }
  return torch::stack(values);
}

DistillLossValues UnpackLossValues(const torch::Tensor& host,
                                   const std::vector<std::string>& names) {
  auto v = host.accessor<double, 1>();
  DistillLossValues values;
  values.total = v[0];
  values.task = v[1];
  values.output_kd = v[2];
  values.feature_kd = v[3];
  for (size_t i = 0; i < names.size(); ++i) {
    values.feature_terms[names[i]] = v[4 + i];
  }
  return values;
}

// Whether AdamW runs as LibTorch's fused kernel (which can skip its update
// on the device when told the gradients are not finite).
bool FusedOptimizerOn(const torch::Device& device) {
#if TORCH_VERSION_MAJOR >= 2
  return device.is_cuda();
#else
  (void)device;
  return false;
#endif
}

// The global 2-norm of `tensors` as a float32 scalar on their device.
torch::Tensor GlobalNormTensor(const std::vector<torch::Tensor>& tensors) {
#if TORCH_VERSION_MAJOR >= 2
  std::vector<torch::Tensor> norms =
      at::_foreach_norm(tensors, 2, torch::kFloat32);
#else
  std::vector<torch::Tensor> norms;
  for (const torch::Tensor& t : tensors) {
    norms.push_back(
        at::linalg_vector_norm(t, 2, c10::nullopt, false, torch::kFloat32));
  }
#endif
  return at::stack(norms).norm();
}

}  // namespace

namespace {

#ifdef LPD_DISTILL_CUDA_GRAPHS
// Applies `fn(dst, src)` to each tensor field of two batches.
template <typename Fn>
void ForEachTensor(TrainingBatch& a, const TrainingBatch& b, Fn fn) {
  fn(a.noised.sample, b.noised.sample);
  fn(a.noised.timestep, b.noised.timestep);
  fn(a.noised.encoder_hidden_states, b.noised.encoder_hidden_states);
  fn(a.noised.text_embeds, b.noised.text_embeds);
  fn(a.noised.time_ids, b.noised.time_ids);
  fn(a.target, b.target);
}

bool SameShapes(const TrainingBatch& a, const TrainingBatch& b) {
  bool same = true;
  ForEachTensor(const_cast<TrainingBatch&>(a), b,
                [&](const torch::Tensor& x, const torch::Tensor& y) {
                  same = same && x.defined() == y.defined() &&
                         (!x.defined() || (x.sizes() == y.sizes() &&
                                           x.scalar_type() == y.scalar_type()));
                });
  return same;
}
#endif

}  // namespace

DistillTrainer::~DistillTrainer() = default;

bool DistillTrainer::replaying_cuda_graph() const {
#ifdef LPD_DISTILL_CUDA_GRAPHS
  return cuda_graph_ != nullptr && cuda_graph_->graph != nullptr;
#else
  return false;
#endif
}

absl::Status DistillTrainer::cuda_graph_failure() const {
  return cuda_graph_ != nullptr ? cuda_graph_->failure : absl::OkStatus();
}

absl::StatusOr<torch::Tensor> DistillTrainer::LocalForwardBackward(
    const TrainingBatch& batch, std::vector<std::string>* names) {
#ifdef LPD_DISTILL_CUDA_GRAPHS
  CudaGraphState* g = cuda_graph_.get();
  if (g != nullptr && g->failure.ok()) {
    if (g->graph == nullptr && g->eager_steps >= options_.graph_warmup_steps) {
      CaptureGraph(batch);
    }
    if (g->graph != nullptr && SameShapes(g->inputs, batch)) {
      return GuardTorch(
          "replaying the distillation step",
          [&]() -> absl::StatusOr<torch::Tensor> {
            ForEachTensor(g->inputs, batch,
                          [](torch::Tensor& dst, const torch::Tensor& src) {
                            if (dst.defined()) dst.copy_(src);
                          });
            // An eager step in between (a batch of other shapes) may have
            // replaced the gradients.
            for (size_t i = 0; i < params_.size(); ++i) {
              torch::Tensor& p = params_[i].second;
              if (g->grads[i].defined() && !p.grad().is_same(g->grads[i])) {
                p.mutable_grad() = g->grads[i];
              }
            }
            g->graph->replay();
            *names = g->names;
            return g->stats;
          });
    }
    ++g->eager_steps;
  }
#endif
  return EagerForwardBackward(batch, names);
}

void DistillTrainer::CaptureGraph(const TrainingBatch& batch) {
#ifdef LPD_DISTILL_CUDA_GRAPHS
  CudaGraphState& g = *cuda_graph_;
  absl::Status status =
      GuardTorch("capturing the distillation step", [&]() -> absl::Status {
        g.inputs = TrainingBatch();
        // On the device: the graph must not copy from the host.
        ForEachTensor(g.inputs, batch,
                      [&](torch::Tensor& dst, const torch::Tensor& src) {
                        if (src.defined())
                          dst = src.to(options_.device).clone();
                      });
        // Backward then creates each gradient inside the graph's memory,
        // where every replay writes it anew.
        optimizer_->zero_grad();
        for (auto& [name, param] : params_) {
          param.mutable_grad() = torch::Tensor();
        }
        // The eager steps' cached activations: the graph's own pool
        // takes their place.
        c10::cuda::CUDACachingAllocator::emptyCache();
        auto graph = std::make_unique<at::cuda::CUDAGraph>();
        graph->capture_begin();
        absl::StatusOr<torch::Tensor> stats =
            [&]() -> absl::StatusOr<torch::Tensor> {
          ASSIGN_OR_RETURN(DistillLoss loss, ComputeLoss(g.inputs));
          return GuardTorch(
              "distillation backward", [&]() -> absl::StatusOr<torch::Tensor> {
                torch::Tensor packed = PackLossValues(loss, &g.names);
                loss.total.backward();
                return packed;
              });
        }();
        graph->capture_end();
        RETURN_IF_ERROR(stats.status());
        g.stats = *stats;
        g.grads.clear();
        for (auto& [name, param] : params_) g.grads.push_back(param.grad());
        g.graph = std::move(graph);
        return absl::OkStatus();
      });
  if (!status.ok()) {
    g.failure = status;
    g.graph.reset();
    g.inputs = TrainingBatch();
    g.grads.clear();
    for (auto& [name, param] : params_) param.mutable_grad() = torch::Tensor();
  }
#else
  (void)batch;
#endif
}

absl::StatusOr<torch::Tensor> DistillTrainer::EagerForwardBackward(
    const TrainingBatch& batch, std::vector<std::string>* names) {
  ASSIGN_OR_RETURN(DistillLoss loss, ComputeLoss(batch));
  return GuardTorch("distillation backward",
                    [&]() -> absl::StatusOr<torch::Tensor> {
                      torch::Tensor stats = PackLossValues(loss, names);
                      ZeroGradients();
                      RECORD_USER_SCOPE("distill.backward");
                      loss.total.backward();
                      return stats;
                    });
}

absl::StatusOr<StepReport> DistillTrainer::Step(const TrainingBatch& batch) {
  // With CUDA graphs every step runs on the graph's capture stream (ordered
  // after and before the caller's stream), so that warm-up and capture see
  // the same stream.
  std::optional<TrainingStreamScope> stream_scope;
  if (cuda_graph_ != nullptr) stream_scope.emplace(*cuda_graph_);
  return StepOnStream(batch);
}

absl::StatusOr<StepReport> DistillTrainer::StepOnStream(
    const TrainingBatch& batch) {
  const auto start = std::chrono::steady_clock::now();
  StepReport report;
  report.step = step_;
  report.learning_rate = LearningRateAt(step_);
  for (auto& group : optimizer_->param_groups()) {
    group.options().set_lr(report.learning_rate);
  }
  // Forward and backward: the gradients land in the parameters, the loss
  // values stay on the device until the step's one read-back at its end.
  torch::Tensor stats;
  std::vector<std::string> names;
  DistributedLossResult distributed_loss;
  if (distributed()) {
    ASSIGN_OR_RETURN(distributed_loss, DistributedLoss(batch));
    RETURN_IF_ERROR(GuardTorch("distillation backward", [&]() -> absl::Status {
      ZeroGradients();
      if (reducer_) reducer_->Arm();
      {
        RECORD_USER_SCOPE("distill.backward");
        distributed_loss.objective.backward();
      }
      // Every rank continues with the mean gradient.
      return reducer_ ? reducer_->Finish() : absl::OkStatus();
    }));
    stats = distributed_loss.stats;
  } else {
    ASSIGN_OR_RETURN(stats, LocalForwardBackward(batch, &names));
  }
  return GuardTorch("distillation step", [&]() -> absl::StatusOr<StepReport> {
    std::vector<torch::Tensor> grads;
    torch::NoGradGuard no_grad;
    {
      RECORD_USER_SCOPE("distill.clip");
      if (!grad_buffers_.empty()) {
        grads = grad_buffers_;  // every gradient, flat
      } else {
        for (size_t i = 0; i < params_.size(); ++i) {
          const torch::Tensor& param = params_[i].second;
          if (!param.grad().defined()) continue;
          if (!masters_.empty()) {
            masters_[i].mutable_grad() = param.grad().to(torch::kFloat32);
            grads.push_back(masters_[i].grad());
          } else {
            grads.push_back(param.grad());
          }
        }
      }
      if (distributed() && !reducer_) {
        RETURN_IF_ERROR(options_.data_parallel->AllReduceMean(grads));
      }
    }
    torch::Tensor norm =
        grads.empty() ? torch::zeros({}, stats.options().dtype(torch::kFloat32))
                      : GlobalNormTensor(grads);
    // The step's one host synchronization: the loss values and the norm.
    auto read_back = [&]() -> absl::Status {
      torch::Tensor host =
          torch::cat({stats, norm.to(torch::kFloat64).reshape({1})})
              .to(torch::kCPU);
      report.grad_norm = host[host.size(0) - 1].item<double>();
      torch::Tensor loss_values = host.narrow(0, 0, host.size(0) - 1);
      report.loss = distributed() ? GlobalLossValues(distributed_loss,
                                                     loss_values.contiguous())
                                  : UnpackLossValues(loss_values, names);
      if (!std::isfinite(report.loss.total)) {
        return absl::InternalError(
            absl::StrCat("distillation: non-finite loss at step ", step_));
      }
      if (!std::isfinite(report.grad_norm)) {
        return absl::InternalError(absl::StrCat(
            "distillation: non-finite gradient norm at step ", step_));
      }
      return absl::OkStatus();
    };
    if (FusedOptimizerOn(options_.device)) {
      // Clip and update without waiting for the host: the clip divisor is
      // computed on the device, and the fused AdamW kernel leaves every
      // tensor untouched when the norm or the loss is not finite (the
      // read-back then reports it).
      // AdamW divides the gradients by this (≥ 1) before using them.
      torch::Tensor clip_divisor;
      if (options_.max_grad_norm > 0 && !grads.empty()) {
        clip_divisor = ((norm + 1e-6) / options_.max_grad_norm).clamp_min(1.0);
      }
      const torch::Tensor not_finite =
          torch::logical_not(torch::isfinite(norm) &
                             torch::isfinite(stats.sum()))
              .to(torch::kFloat32);
      {
        RECORD_USER_SCOPE("distill.adamw");
        MultiTensorAdamWStep(*optimizer_, /*allow_fused=*/true, not_finite,
                             clip_divisor);
      }
      RETURN_IF_ERROR(read_back());
    } else {
      RETURN_IF_ERROR(read_back());
      if (options_.max_grad_norm > 0 &&
          report.grad_norm > options_.max_grad_norm) {
        const double scale = options_.max_grad_norm / (report.grad_norm + 1e-6);
        at::_foreach_mul_(grads, scale);
      }
      RECORD_USER_SCOPE("distill.adamw");
      MultiTensorAdamWStep(*optimizer_, /*allow_fused=*/false);
    }
    if (!masters_.empty()) {
      for (size_t i = 0; i < params_.size(); ++i) {
        params_[i].second.copy_(masters_[i]);
      }
    }
    ++step_;
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    return report;
  });
}

absl::Status DistillTrainer::Train(int64_t end_step, const BatchSource& batches,
                                   const ProgressCallback& progress,
                                   const CheckpointTarget& checkpoints) {
  int64_t saved_at = -1;
  while (step_ < end_step) {
    const auto start = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(TrainingBatch batch, batches(step_));
    ASSIGN_OR_RETURN(StepReport report, Step(batch));
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    const absl::Status asked = progress ? progress(report) : absl::OkStatus();
    if (distributed()) {
      ASSIGN_OR_RETURN(const bool stop, AnyRankStops(!asked.ok()));
      if (stop) {
        if (checkpoints.store != nullptr) {
          RETURN_IF_ERROR(
              SaveCheckpoint(*checkpoints.store, checkpoints.prefix));
        }
        if (!asked.ok()) return asked;
        return absl::CancelledError(absl::StrCat(
            "distillation: another data-parallel rank stopped at step ",
            step_));
      }
    } else if (!asked.ok()) {
      return asked;
    }
    if (checkpoints.store != nullptr && checkpoints.every_steps > 0 &&
        step_ % checkpoints.every_steps == 0) {
      RETURN_IF_ERROR(SaveCheckpoint(*checkpoints.store, checkpoints.prefix));
      saved_at = step_;
    }
  }
  if (checkpoints.store != nullptr && saved_at != step_) {
    RETURN_IF_ERROR(SaveCheckpoint(*checkpoints.store, checkpoints.prefix));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> DistillTrainer::AnyRankStops(bool stop) {
  DataParallelGroup& group = *options_.data_parallel;
  std::vector<torch::Tensor> flag;
  RETURN_IF_ERROR(GuardTorch("stop agreement", [&]() -> absl::Status {
    flag.push_back(torch::full(
        {1}, stop ? 1.0 : 0.0,
        torch::TensorOptions().dtype(torch::kFloat32).device(group.device())));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(group.AllReduceSum(flag));
  return GuardTorch("stop agreement", [&]() -> absl::StatusOr<bool> {
    return flag[0].to(torch::kCPU).item<float>() > 0;
  });
}

absl::Status DistillTrainer::SaveCheckpoint(storage::ObjectStore& store,
                                            absl::string_view prefix) {
  if (!distributed()) return WriteCheckpoint(store, prefix);
  DataParallelGroup& group = *options_.data_parallel;
  const absl::Status written =
      group.rank() == 0 ? WriteCheckpoint(store, prefix) : absl::OkStatus();
  // The barrier after the write also tells the others how it went.
  std::vector<torch::Tensor> flag;
  RETURN_IF_ERROR(GuardTorch("checkpoint barrier", [&]() -> absl::Status {
    flag.push_back(torch::full(
        {1}, written.ok() ? 0.0 : 1.0,
        torch::TensorOptions().dtype(torch::kFloat32).device(group.device())));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(group.AllReduceSum(flag));
  if (!written.ok()) return written;
  return GuardTorch("checkpoint barrier", [&]() -> absl::Status {
    if (flag[0].to(torch::kCPU).item<double>() != 0) {
      return absl::InternalError(absl::StrCat(
          "distillation: rank 0 failed to write the checkpoint of step ",
          step_));
    }
    return absl::OkStatus();
  });
}

absl::Status DistillTrainer::WriteCheckpoint(storage::ObjectStore& store,
                                             absl::string_view prefix) {
  ASSIGN_OR_RETURN(ScratchFolder temp, ScratchFolder::Make("lpd-distill-"));
  const std::string dir = storage::JoinKey({prefix, job::CheckpointDir(step_)});
  storage::Manifest manifest;
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"step", absl::StrCat(step_)}};

  // Student weights (the fp32 masters in master mode, so a resumed run is
  // exact).
  RETURN_IF_ERROR(GuardTorch("saving the student", [&]() -> absl::Status {
    std::map<std::string, torch::Tensor> weights;
    for (const auto& [name, tensor] : OptimizedTensors()) {
      weights[name] = tensor.detach();
    }
    return WriteTensors(temp.File(kStudentWeightsName), weights, metadata);
  }));
  RETURN_IF_ERROR(storage::PutFileWithManifest(store, dir, kStudentWeightsName,
                                               temp.File(kStudentWeightsName),
                                               manifest));

  // AdamW state.
  RETURN_IF_ERROR(GuardTorch("saving the optimizer", [&]() -> absl::Status {
    std::map<std::string, torch::Tensor> state;
    auto& states = optimizer_->state();
    for (const auto& [name, tensor] : OptimizedTensors()) {
      auto found = states.find(AdamWStateKeyOf(tensor));
      if (found == states.end()) continue;
      const auto& s =
          static_cast<const torch::optim::AdamWParamState&>(*found->second);
      state[absl::StrCat("opt.", name, ".step")] =
          torch::full({1}, s.step(), torch::kInt64);
      state[absl::StrCat("opt.", name, ".exp_avg")] = s.exp_avg().detach();
      state[absl::StrCat("opt.", name, ".exp_avg_sq")] =
          s.exp_avg_sq().detach();
    }
    return WriteTensors(temp.File(kOptimizerStateName), state, metadata);
  }));
  RETURN_IF_ERROR(storage::PutFileWithManifest(store, dir, kOptimizerStateName,
                                               temp.File(kOptimizerStateName),
                                               manifest));

  nlohmann::json trainer = {
      {"version", 1},
      {"step", step_},
      {"removed_units",
       std::vector<std::string>(removed_.begin(), removed_.end())},
      {"precision", PrecisionName(options_.precision)},
      {"seed", options_.seed},
      // The trainer draws no random numbers: batches are keyed by step.
      {"rng", nullptr},
      {"learning_rate", options_.learning_rate},
      {"warmup_steps", options_.warmup_steps},
      {"weight_decay", options_.weight_decay},
      {"max_grad_norm", options_.max_grad_norm},
      {"loss",
       {{"task_weight", options_.loss.task_weight},
        {"output_kd_weight", options_.loss.output_kd_weight},
        {"feature_kd_weight", options_.loss.feature_kd_weight},
        {"normalize_features", options_.loss.normalize_features}}},
  };
  RETURN_IF_ERROR(storage::PutWithManifest(store, dir, kTrainerStateName,
                                           trainer.dump(2), manifest));
  return job::CommitCheckpoint(store, step_, manifest, prefix);
}

absl::StatusOr<std::optional<int64_t>> DistillTrainer::Resume(
    const storage::ObjectStore& store, absl::string_view prefix) {
  if (!distributed()) return ResumeLocal(store, prefix);
  DataParallelGroup& group = *options_.data_parallel;
  absl::StatusOr<std::optional<int64_t>> local = ResumeLocal(store, prefix);
  // Every rank learns whether all read a checkpoint, and the same one.
  const double failed = local.ok() ? 0 : 1;
  const double found = local.ok() && local->has_value() ? **local : -1;
  std::vector<torch::Tensor> stats;
  RETURN_IF_ERROR(GuardTorch("resuming", [&]() -> absl::Status {
    stats.push_back(
        torch::tensor({failed, found, found * found}, torch::kFloat64)
            .to(group.device()));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(group.AllReduceSum(stats));
  if (!local.ok()) return local.status();
  double sum_failed = 0, sum = 0, sum_sq = 0;
  RETURN_IF_ERROR(GuardTorch("resuming", [&]() -> absl::Status {
    const torch::Tensor host = stats[0].to(torch::kCPU);
    sum_failed = host[0].item<double>();
    sum = host[1].item<double>();
    sum_sq = host[2].item<double>();
    return absl::OkStatus();
  }));
  if (sum_failed > 0) {
    return absl::AbortedError(absl::StrCat("distillation: ", sum_failed,
                                           " other rank(s) failed to resume"));
  }
  const double world = group.world_size();
  if (sum != world * found || sum_sq != world * found * found) {
    return absl::FailedPreconditionError(absl::StrCat(
        "distillation: the ranks found different checkpoints under \"", prefix,
        "\" (this rank: ",
        found < 0 ? std::string("none") : absl::StrCat("step ", found),
        "); every rank must read the same store"));
  }
  if (local->has_value()) RETURN_IF_ERROR(SyncReplicas(false));
  return local;
}

absl::StatusOr<std::optional<int64_t>> DistillTrainer::ResumeLocal(
    const storage::ObjectStore& store, absl::string_view prefix) {
  ASSIGN_OR_RETURN(std::optional<int64_t> latest,
                   job::ReadLatestCheckpoint(store, prefix));
  if (!latest.has_value()) return std::optional<int64_t>();
  const std::string dir =
      storage::JoinKey({prefix, job::CheckpointDir(*latest)});
  ASSIGN_OR_RETURN(storage::Manifest manifest,
                   storage::ReadManifest(store, dir));

  const std::string where = store.UriOf(dir);
  ASSIGN_OR_RETURN(TrainerState state, ReadTrainerState(store, dir, manifest));
  RETURN_IF_ERROR(CheckRemovedUnits(state, removed_, where, "trainer"));
  if (state.precision != PrecisionName(options_.precision)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", where, " was written in precision \"", state.precision,
        "\", this trainer uses \"", PrecisionName(options_.precision), "\""));
  }
  const int64_t step = state.step;

  ASSIGN_OR_RETURN(ScratchFolder temp, ScratchFolder::Make("lpd-distill-"));
  RETURN_IF_ERROR(storage::VerifiedGetToFile(store, dir, manifest,
                                             kStudentWeightsName,
                                             temp.File(kStudentWeightsName)));
  RETURN_IF_ERROR(storage::VerifiedGetToFile(store, dir, manifest,
                                             kOptimizerStateName,
                                             temp.File(kOptimizerStateName)));
  ASSIGN_OR_RETURN(auto weights, ReadAllTensors(temp.File(kStudentWeightsName),
                                                options_.device));
  ASSIGN_OR_RETURN(
      auto opt_state,
      ReadAllTensors(temp.File(kOptimizerStateName), options_.device));

  RETURN_IF_ERROR(GuardTorch("restoring the checkpoint", [&]() -> absl::Status {
    const auto optimized = OptimizedTensors();
    // Check everything before changing anything.
    RETURN_IF_ERROR(CheckStudentWeights(weights, optimized, where));
    for (const auto& [name, tensor] : optimized) {
      if (!opt_state.count(absl::StrCat("opt.", name, ".step"))) continue;
      auto avg = opt_state.find(absl::StrCat("opt.", name, ".exp_avg"));
      auto avg_sq = opt_state.find(absl::StrCat("opt.", name, ".exp_avg_sq"));
      if (avg == opt_state.end() || avg_sq == opt_state.end() ||
          avg->second.sizes() != tensor.sizes() ||
          avg_sq->second.sizes() != tensor.sizes()) {
        return absl::DataLossError(absl::StrCat(
            where, kOptimizerStateName, ": incomplete state of ", name));
      }
    }
    torch::NoGradGuard no_grad;
    auto& states = optimizer_->state();
    states.clear();
    for (const auto& [name, tensor] : optimized) {
      torch::Tensor t = tensor;
      t.copy_(weights.at(name));
      auto step_it = opt_state.find(absl::StrCat("opt.", name, ".step"));
      if (step_it == opt_state.end()) continue;  // no state yet
      auto avg = opt_state.find(absl::StrCat("opt.", name, ".exp_avg"));
      auto avg_sq = opt_state.find(absl::StrCat("opt.", name, ".exp_avg_sq"));
      auto state = std::make_unique<torch::optim::AdamWParamState>();
      state->step(step_it->second.to(torch::kCPU).item<int64_t>());
      state->exp_avg(avg->second.to(tensor.dtype()).contiguous());
      state->exp_avg_sq(avg_sq->second.to(tensor.dtype()).contiguous());
      states[AdamWStateKeyOf(tensor)] = std::move(state);
    }
    if (!masters_.empty()) {
      for (size_t i = 0; i < params_.size(); ++i) {
        params_[i].second.copy_(masters_[i]);
      }
    }
    return absl::OkStatus();
  }));
  step_ = step;
  return std::optional<int64_t>(step);
}

}  // namespace lpd::engine

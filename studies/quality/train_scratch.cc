#include "studies/quality/train_scratch.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
namespace {

std::string Shape(const torch::Tensor& t) {
  return t.defined() ? absl::StrCat("[", absl::StrJoin(t.sizes(), ","), "]")
                     : "undefined";
}

std::vector<torch::Tensor> Parameters(UNet2DConditionModelImpl& model) {
  std::vector<torch::Tensor> out;
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    out.push_back(item.value());
  }
  return out;
}

}  // namespace

absl::StatusOr<TrainingBatch> MakeDiffusionBatch(
    const torch::Tensor& x0, const torch::Tensor& context,
    const torch::Tensor& uncond, const NoiseSchedule& schedule, uint64_t seed,
    const DiffusionBatchOptions& options) {
  if (!x0.defined() || x0.dim() != 4 || !context.defined() ||
      context.dim() != 3 || context.size(0) != x0.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("diffusion batch: expected x0 [B,C,H,W] and context "
                     "[B,L,D], got ",
                     Shape(x0), " and ", Shape(context)));
  }
  if (!(options.cond_dropout >= 0 && options.cond_dropout <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("diffusion batch: cond_dropout ", options.cond_dropout,
                     " not in [0, 1]"));
  }
  torch::Tensor u = uncond;
  if (options.cond_dropout > 0) {
    if (!u.defined()) {
      return absl::InvalidArgumentError(
          "diffusion batch: conditioning dropout needs an uncond context");
    }
    if (u.dim() == 2) u = u.unsqueeze(0);
    if (u.dim() != 3 || u.size(0) != 1 || u.size(1) != context.size(1) ||
        u.size(2) != context.size(2)) {
      return absl::InvalidArgumentError(
          absl::StrCat("diffusion batch: uncond ", Shape(uncond),
                       " does not fit context ", Shape(context)));
    }
  }
  return GuardTorch(
      "making a diffusion batch", [&]() -> absl::StatusOr<TrainingBatch> {
        at::Generator gen = at::detail::createCPUGenerator(seed);
        const int64_t b = x0.size(0);
        const torch::Device device = x0.device();
        const torch::Tensor t = schedule.SampleTimesteps(b, gen);
        const torch::Tensor noise =
            torch::randn(x0.sizes(), gen, torch::kFloat32).to(device);
        const torch::Tensor clean = x0.to(torch::kFloat32);
        const torch::Tensor td = t.to(device);
        TrainingBatch batch;
        batch.noised.sample = schedule.AddNoise(clean, noise, td);
        batch.noised.timestep = td;
        torch::Tensor ctx = context.to(torch::kFloat32);
        if (options.cond_dropout > 0) {
          const torch::Tensor drop =
              (torch::rand({b}, gen, torch::kFloat32) < options.cond_dropout)
                  .to(device)
                  .view({b, 1, 1});
          ctx = torch::where(drop, u.to(device, torch::kFloat32).expand_as(ctx),
                             ctx);
        }
        batch.noised.encoder_hidden_states = ctx;
        batch.target = schedule.Target(options.prediction, clean, noise, td);
        return batch;
      });
}

ScratchTrainer::ScratchTrainer(UNet2DConditionModel model,
                               UNet2DConditionModel working,
                               const ScratchTrainerOptions& options)
    : model_(std::move(model)),
      working_(std::move(working)),
      options_(options) {}

ScratchTrainer::~ScratchTrainer() = default;

absl::StatusOr<std::unique_ptr<ScratchTrainer>> ScratchTrainer::Create(
    UNet2DConditionModel model, const ScratchTrainerOptions& options) {
  if (!(options.learning_rate > 0) || options.warmup_steps < 0 ||
      options.total_steps < 0 || !(options.min_lr_fraction >= 0) ||
      !(options.ema_decay >= 0 && options.ema_decay < 1)) {
    return absl::InvalidArgumentError(
        "scratch trainer: learning_rate must be > 0, warmup and total steps "
        "≥ 0, min_lr_fraction ≥ 0, ema_decay in [0, 1)");
  }
  return GuardTorch(
      "creating the scratch trainer",
      [&]() -> absl::StatusOr<std::unique_ptr<ScratchTrainer>> {
        std::vector<torch::Tensor> masters = Parameters(*model);
        if (masters.empty()) {
          return absl::InvalidArgumentError(
              "scratch trainer: the model has no parameters");
        }
        for (const torch::Tensor& p : masters) {
          if (p.scalar_type() != torch::kFloat32) {
            return absl::InvalidArgumentError(
                "scratch trainer: the model must hold float32 weights");
          }
        }
        UNet2DConditionModel working = model;
        if (options.precision == ScratchPrecision::kBFloat16Mixed) {
          ASSIGN_OR_RETURN(working,
                           CopyModel(*model, torch::TensorOptions()
                                                 .dtype(torch::kBFloat16)
                                                 .device(masters[0].device())));
        }
        std::unique_ptr<ScratchTrainer> trainer(
            new ScratchTrainer(model, working, options));
        trainer->masters_ = masters;
        trainer->working_params_ = Parameters(*working);
        model->train();
        working->train();
        auto adamw = torch::optim::AdamWOptions(options.learning_rate)
                         .betas({options.beta1, options.beta2})
                         .eps(options.eps)
                         .weight_decay(options.weight_decay);
        trainer->optimizer_ =
            std::make_unique<torch::optim::AdamW>(masters, adamw);
        if (options.ema_decay > 0) {
          torch::NoGradGuard no_grad;
          for (const torch::Tensor& p : masters) {
            trainer->ema_.push_back(p.detach().clone());
          }
        }
        return trainer;
      });
}

double ScratchTrainer::LearningRateAt(int64_t step) const {
  const double peak = options_.learning_rate;
  const int64_t w = options_.warmup_steps;
  if (w > 0 && step < w) return peak * static_cast<double>(step + 1) / w;
  if (options_.total_steps <= w) return peak;
  const double progress =
      std::min(1.0, static_cast<double>(step - w) / (options_.total_steps - w));
  const double floor = options_.min_lr_fraction * peak;
  return floor + (peak - floor) * 0.5 * (1 + std::cos(M_PI * progress));
}

absl::StatusOr<ScratchStepReport> ScratchTrainer::Step(
    const TrainingBatch& batch) {
  return GuardTorch(
      "scratch training step", [&]() -> absl::StatusOr<ScratchStepReport> {
        const torch::Device device = masters_[0].device();
        const torch::Dtype dtype = working_params_[0].scalar_type();
        UNetInputs in = batch.noised;
        in.sample = in.sample.to(device, dtype);
        in.timestep = in.timestep.to(device);
        in.encoder_hidden_states = in.encoder_hidden_states.to(device, dtype);
        RETURN_IF_ERROR(working_->ValidateInputs(in));
        if (!batch.target.defined() ||
            batch.target.sizes() != batch.noised.sample.sizes()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "scratch training: target ", Shape(batch.target),
              " does not match the sample ", Shape(batch.noised.sample)));
        }
        const torch::Tensor target = batch.target.to(device, torch::kFloat32);
        ScratchStepReport report;
        report.step = step_;
        report.learning_rate = LearningRateAt(step_);

        torch::Tensor out = working_->forward(in).to(torch::kFloat32);
        torch::Tensor loss = torch::mse_loss(out, target);
        loss.backward();

        torch::NoGradGuard no_grad;
        std::vector<torch::Tensor> grads;
        for (size_t i = 0; i < masters_.size(); ++i) {
          torch::Tensor& w = working_params_[i];
          if (!w.grad().defined()) continue;
          if (!w.is_same(masters_[i])) {
            masters_[i].mutable_grad() = w.grad().to(torch::kFloat32);
            w.mutable_grad().reset();
          }
          grads.push_back(masters_[i].grad());
        }
        if (grads.empty()) {
          return absl::InternalError(
              "scratch training: no parameter got a "
              "gradient");
        }
        const std::vector<torch::Tensor> norms = at::_foreach_norm(grads);
        report.grad_norm = torch::stack(norms).norm();
        if (options_.max_grad_norm > 0) {
          const torch::Tensor scale =
              (options_.max_grad_norm / (report.grad_norm + 1e-6))
                  .clamp_max(1.0);
          for (torch::Tensor& g : grads) g.mul_(scale);
        }
        for (auto& group : optimizer_->param_groups()) {
          static_cast<torch::optim::AdamWOptions&>(group.options())
              .lr(report.learning_rate);
        }
        MultiTensorAdamWStep(*optimizer_);
        for (torch::Tensor& m : masters_) m.mutable_grad().reset();
        if (!ema_.empty()) {
          const double k = static_cast<double>(step_);
          const double decay = std::min(options_.ema_decay, (1 + k) / (10 + k));
          at::_foreach_mul_(ema_, decay);
          at::_foreach_add_(ema_, masters_, 1 - decay);
        }
        if (!working_params_[0].is_same(masters_[0])) {
          for (size_t i = 0; i < masters_.size(); ++i) {
            working_params_[i].copy_(masters_[i]);
          }
        }
        report.loss = loss.detach();
        ++step_;
        return report;
      });
}

absl::StatusOr<double> ScratchTrainer::Loss(const TrainingBatch& batch) {
  return GuardTorch("scratch training loss", [&]() -> absl::StatusOr<double> {
    torch::NoGradGuard no_grad;
    const torch::Device device = masters_[0].device();
    UNetInputs in = batch.noised;
    in.sample = in.sample.to(device, torch::kFloat32);
    in.timestep = in.timestep.to(device);
    in.encoder_hidden_states =
        in.encoder_hidden_states.to(device, torch::kFloat32);
    RETURN_IF_ERROR(model_->ValidateInputs(in));
    return torch::mse_loss(model_->forward(in),
                           batch.target.to(device, torch::kFloat32))
        .item<double>();
  });
}

absl::StatusOr<UNet2DConditionModel> ScratchTrainer::AveragedModel() {
  ASSIGN_OR_RETURN(UNet2DConditionModel copy,
                   CopyModel(*model_, torch::TensorOptions()
                                          .dtype(torch::kFloat32)
                                          .device(masters_[0].device())));
  if (ema_.empty()) return copy;
  RETURN_IF_ERROR(GuardTorch("copying the EMA weights", [&]() {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> params = Parameters(*copy);
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(ema_[i]);
    return absl::OkStatus();
  }));
  return copy;
}

absl::StatusOr<UNet2DConditionModel> CopyModel(
    UNet2DConditionModelImpl& model, const torch::TensorOptions& options) {
  ASSIGN_OR_RETURN(auto impl,
                   UNet2DConditionModelImpl::Create(UNetOptions{
                       model.config(), model.removed_units(), options}));
  UNet2DConditionModel copy(impl);
  RETURN_IF_ERROR(GuardTorch("copying a model", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    auto source = model.named_parameters(/*recurse=*/true);
    for (auto& item : copy->named_parameters(/*recurse=*/true)) {
      const torch::Tensor* from = source.find(item.key());
      if (from == nullptr || from->sizes() != item.value().sizes()) {
        return absl::InternalError(
            absl::StrCat("copying a model: parameter ", item.key(),
                         " missing or mis-shaped in the source"));
      }
      item.value().copy_(*from);
    }
    return absl::OkStatus();
  }));
  return copy;
}

absl::Status SaveModelFolder(UNet2DConditionModelImpl& model,
                             const std::string& config_json,
                             const std::string& dir, torch::Dtype dtype) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  {
    const std::string path = (fs::path(dir) / "config.json").string();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << config_json;
    if (!out.good()) {
      return absl::InternalError(absl::StrCat("cannot write ", path));
    }
  }
  return GuardTorch("saving the model", [&]() -> absl::Status {
    std::map<std::string, torch::Tensor> tensors;
    for (auto& item : model.named_parameters(/*recurse=*/true)) {
      tensors[item.key()] = item.value().detach().to(torch::kCPU, dtype);
    }
    return WriteTensors(
        (fs::path(dir) / "diffusion_pytorch_model.safetensors").string(),
        tensors, {{"format", "pt"}});
  });
}

}  // namespace lpd::engine

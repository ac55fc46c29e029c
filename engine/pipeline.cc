#include "engine/pipeline.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/job_spec.h"
#include "common/status_macros.h"
#include "engine/additivity.h"
#include "engine/dataset.h"
#include "engine/distill.h"
#include "engine/export.h"
#include "engine/model_loader.h"
#include "engine/noise_schedule.h"
#include "engine/scoring.h"
#include "engine/torch_errors.h"
#include "nlohmann/json.hpp"
#include "storage/checkpoint_layout.h"
#include "storage/object_store.h"

namespace lpd::engine {
namespace {

using lpd::v1::CompressionJob;

// Seeds of the calibration and held-out noise streams, apart from the
// training stream (BatchSeed(seed, step)).
constexpr uint64_t kCalibrationStream = 0xca11b7a7e0000001ULL;
constexpr uint64_t kEvalStream = 0xe7a1e7a1e0000002ULL;

absl::Status InPhase(absl::string_view phase, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(phase, ": ", status.message()));
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The local folder of a file:// URI; `what` names it in errors.
absl::StatusOr<std::string> LocalFolder(const std::string& uri,
                                        absl::string_view what) {
  auto parsed = storage::ParseStorageUri(uri);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", parsed.status().message()));
  }
  if (parsed->scheme != storage::StorageUri::Scheme::kFile) {
    return absl::UnimplementedError(absl::StrCat(
        what, " ", uri, ": only file:// is supported by the local pipeline"));
  }
  return parsed->location;
}

// spec.model.prediction_type, "auto" resolved from
// <model>/../scheduler/scheduler_config.json, else epsilon.
absl::StatusOr<PredictionType> ResolvePredictionType(
    lpd::v1::PredictionType spec, const std::string& model_dir,
    std::string* source) {
  if (spec == lpd::v1::PREDICTION_TYPE_EPSILON) {
    *source = "spec";
    return PredictionType::kEpsilon;
  }
  if (spec == lpd::v1::PREDICTION_TYPE_V_PREDICTION) {
    *source = "spec";
    return PredictionType::kVPrediction;
  }
  std::filesystem::path dir = std::filesystem::path(model_dir);
  if (!dir.has_filename()) dir = dir.parent_path();  // trailing '/'
  const std::filesystem::path config =
      dir.parent_path() / "scheduler" / "scheduler_config.json";
  std::error_code ec;
  if (std::filesystem::is_regular_file(config, ec)) {
    ASSIGN_OR_RETURN(std::string text, ReadText(config.string()));
    nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
    if (json.is_discarded() || !json.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(config.string(), ": not a JSON object"));
    }
    if (json.contains("prediction_type")) {
      if (!json["prediction_type"].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(config.string(), ": prediction_type: not a string"));
      }
      auto type =
          ParsePredictionType(json["prediction_type"].get<std::string>());
      if (!type.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            config.string(), ": prediction_type: ", type.status().message()));
      }
      *source = config.string();
      return *type;
    }
  }
  *source = "default";
  return PredictionType::kEpsilon;
}

// Noised batches over `indices` in chunks of `batch_size`: batch b's
// timesteps and noise come from a generator seeded with BatchSeed(stream, b).
// Inputs on (device, dtype); targets float32 on the CPU.
absl::StatusOr<std::vector<TrainingBatch>> NoisedBatches(
    Dataset& dataset, const std::vector<int64_t>& indices, int64_t batch_size,
    uint64_t stream, const NoiseSchedule& schedule, PredictionType prediction,
    torch::Device device, torch::Dtype dtype);

TrainingBatch Noise(const DatasetBatch& clean, uint64_t seed,
                    const NoiseSchedule& schedule, PredictionType prediction,
                    torch::Device device, torch::Dtype dtype) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t n = clean.latents.size(0);
  torch::Tensor t = schedule.SampleTimesteps(n, gen);
  torch::Tensor noise =
      torch::randn(clean.latents.sizes(), gen, torch::kFloat32);
  torch::Tensor x_t = schedule.AddNoise(clean.latents, noise, t);
  auto floating = [&](const torch::Tensor& x) {
    return x.defined() ? x.to(device, dtype) : x;
  };
  TrainingBatch batch;
  batch.noised.sample = floating(x_t);
  batch.noised.timestep = t.to(device);
  batch.noised.encoder_hidden_states = floating(clean.encoder_hidden_states);
  batch.noised.text_embeds = floating(clean.text_embeds);
  batch.noised.time_ids = floating(clean.time_ids);
  batch.target = schedule.Target(prediction, clean.latents, noise, t);
  return batch;
}

absl::StatusOr<std::vector<TrainingBatch>> NoisedBatches(
    Dataset& dataset, const std::vector<int64_t>& indices, int64_t batch_size,
    uint64_t stream, const NoiseSchedule& schedule, PredictionType prediction,
    torch::Device device, torch::Dtype dtype) {
  std::vector<TrainingBatch> batches;
  for (size_t begin = 0, b = 0; begin < indices.size();
       begin += batch_size, ++b) {
    const size_t end =
        std::min(indices.size(), begin + static_cast<size_t>(batch_size));
    std::vector<int64_t> chunk(indices.begin() + begin, indices.begin() + end);
    ASSIGN_OR_RETURN(DatasetBatch clean, dataset.GetSamples(chunk));
    batches.push_back(Noise(clean, BatchSeed(stream, static_cast<int64_t>(b)),
                            schedule, prediction, device, dtype));
  }
  return batches;
}

std::string FormatSeconds(double seconds) {
  if (!(seconds >= 0) || seconds > 1e9) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

absl::Status PutJson(storage::StoreLocation& out, absl::string_view name,
                     const nlohmann::json& json) {
  return out.store->Put(out.Key(name), json.dump(2) + "\n");
}

// What the phases share.
struct Job {
  Job(const CompressionJob& spec, const PipelineOptions& options)
      : spec(spec), options(options) {}

  const CompressionJob& spec;
  const PipelineOptions& options;
  std::function<void(const std::string&)> log;

  torch::Device device = torch::kCPU;
  TrainingPrecision precision = TrainingPrecision::kFloat32;
  torch::Dtype model_dtype = torch::kFloat32;
  std::string model_dir;
  std::string config_json;
  PredictionType prediction = PredictionType::kEpsilon;
  std::set<UnitKind> kinds;
  storage::StoreLocation out;
  UNet2DConditionModel teacher{nullptr};
  std::unique_ptr<Dataset> dataset;
  DatasetSplit split;
  NoiseSchedule schedule = NoiseSchedule::ScaledLinear();
  std::optional<Scores> scores;         // not for handcrafted
  std::vector<UNetInputs> calibration;  // output_loss only
};

absl::Status Prepare(Job& job) {
  const auto& spec = job.spec.spec();
  // Device and precision.
  std::string device_name = job.options.device;
  if (device_name.empty()) {
    switch (spec.device()) {
      case lpd::v1::DEVICE_CPU:
        device_name = "cpu";
        break;
      case lpd::v1::DEVICE_CUDA:
        device_name = "cuda";
        break;
      default:
        device_name = torch::cuda::is_available() ? "cuda" : "cpu";
    }
  }
  ASSIGN_OR_RETURN(job.device, ParseTorchDevice(device_name));
  const bool bf16 =
      spec.distill().precision() == lpd::v1::PRECISION_BF16 ||
      (spec.distill().precision() == lpd::v1::PRECISION_UNSPECIFIED &&
       job.device.is_cuda());
  job.precision = !bf16 ? TrainingPrecision::kFloat32
                  : spec.distill().master_weights_fp32()
                      ? TrainingPrecision::kBFloat16MasterFloat32
                      : TrainingPrecision::kBFloat16;
  job.model_dtype = bf16 ? torch::kBFloat16 : torch::kFloat32;
  for (int unit : spec.prune().units()) {
    ASSIGN_OR_RETURN(UnitKind kind,
                     ParseUnitKind(std::string(client::YamlName(
                         static_cast<lpd::v1::PruneUnit>(unit)))));
    job.kinds.insert(kind);
  }
  // Output.
  ASSIGN_OR_RETURN(job.out, storage::OpenStoreLocation(spec.output().uri()));
  // Model.
  ASSIGN_OR_RETURN(job.model_dir,
                   LocalFolder(spec.model().uri(), "spec.model.uri"));
  std::string prediction_source;
  ASSIGN_OR_RETURN(job.prediction,
                   ResolvePredictionType(spec.model().prediction_type(),
                                         job.model_dir, &prediction_source));
  ASSIGN_OR_RETURN(job.config_json, ReadText(job.model_dir + "/config.json"));
  LoadModelOptions load;
  load.device = job.device;
  load.dtype = job.model_dtype;
  ASSIGN_OR_RETURN(job.teacher, LoadModel(job.model_dir, load));
  if (!job.teacher->removed_units().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.model.uri ", spec.model().uri(),
                     " is an exported student (it has ", kPruningFileName,
                     "); compress the original U-Net instead"));
  }
  job.teacher->eval();
  // Data.
  ASSIGN_OR_RETURN(std::string data_dir, LocalFolder(spec.data().train().uri(),
                                                     "spec.data.train.uri"));
  ASSIGN_OR_RETURN(job.dataset, Dataset::Open(data_dir));
  RETURN_IF_ERROR(job.dataset->Validate(job.teacher->config()));
  ASSIGN_OR_RETURN(job.split, SplitDataset(job.dataset->size(), spec.seed(),
                                           spec.data().calibration_samples(),
                                           spec.data().eval_samples()));
  job.log(absl::StrFormat(
      "job %s: model %s (%d parameters, prediction %s from %s), data %s "
      "(%d samples: %d calibration, %d eval, %d train), device %s, %s",
      job.spec.metadata().name(), job.model_dir, job.teacher->NumParameters(),
      std::string(PredictionTypeName(job.prediction)), prediction_source,
      data_dir, job.dataset->size(), job.split.calibration.size(),
      job.split.eval.size(), job.split.train.size(), job.device.str(),
      bf16 ? "bf16" : "fp32"));
  return absl::OkStatus();
}

absl::Status Score(Job& job) {
  const auto& spec = job.spec.spec();
  if (spec.prune().criterion() == lpd::v1::CRITERION_HANDCRAFTED) {
    job.log("SCORE: skipped (criterion handcrafted selects by rule)");
    return absl::OkStatus();
  }
  const auto start = std::chrono::steady_clock::now();
  ScoreOptions options;
  ASSIGN_OR_RETURN(options.criterion,
                   ParseScoreCriterion(std::string(
                       client::YamlName(spec.prune().criterion()))));
  options.seed = spec.seed();
  const std::vector<std::string> ids = ScorableUnitIds(*job.teacher, job.kinds);
  std::vector<UNetInputs> calibration;
  std::string fingerprint;
  if (options.criterion == ScoreCriterion::kOutputLoss) {
    ASSIGN_OR_RETURN(
        std::vector<TrainingBatch> batches,
        NoisedBatches(
            *job.dataset, job.split.calibration, job.options.eval_batch_size,
            BatchSeed(spec.seed(), 0) ^ kCalibrationStream, job.schedule,
            job.prediction, job.device, job.model_dtype));
    for (TrainingBatch& b : batches) calibration.push_back(std::move(b.noised));
    ASSIGN_OR_RETURN(fingerprint, CalibrationFingerprint(calibration));
    job.calibration = calibration;
  }
  // A scores.json of an earlier run of this job is reused when it was made
  // from the same calibration set, units and criterion.
  const std::string key = job.out.Key(kScoresObject);
  ASSIGN_OR_RETURN(bool exists, job.out.store->Exists(key));
  if (exists) {
    ASSIGN_OR_RETURN(std::string text, job.out.store->Get(key));
    nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
    if (!json.is_discarded()) {
      auto old = ScoresFromJson(json);
      if (old.ok() && old->criterion == ScoreCriterionName(options.criterion) &&
          old->seed == options.seed &&
          old->calibration_fingerprint == fingerprint &&
          old->units_fingerprint == UnitListFingerprint(ids) &&
          old->shard.count == 1 &&
          old->total_params == job.teacher->NumParameters()) {
        job.scores = *std::move(old);
        job.log(absl::StrFormat(
            "SCORE: reusing %s (%d units, same calibration set and units)", key,
            job.scores->units.size()));
        return absl::OkStatus();
      }
    }
  }
  job.log(absl::StrCat("SCORE: ", ids.size(), " units by ",
                       ScoreCriterionName(options.criterion),
                       options.criterion == ScoreCriterion::kOutputLoss
                           ? absl::StrCat(" on ", job.split.calibration.size(),
                                          " calibration samples")
                           : ""));
  ASSIGN_OR_RETURN(Scores scores,
                   ScoreUnits(*job.teacher, ids, calibration, options));
  RETURN_IF_ERROR(PutJson(job.out, kScoresObject, ScoresToJson(scores)));
  job.scores = std::move(scores);
  job.log(absl::StrFormat(
      "SCORE: wrote %s in %.1fs", job.out.store->UriOf(key),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count()));
  return absl::OkStatus();
}

absl::StatusOr<selection::Plan> Select(Job& job) {
  const auto& spec = job.spec.spec();
  const int64_t total = job.teacher->NumParameters();
  const double target = spec.prune().target_ratio();
  selection::Plan plan;
  if (spec.prune().criterion() == lpd::v1::CRITERION_HANDCRAFTED) {
    ASSIGN_OR_RETURN(HandcraftedRemoval removal,
                     HandcraftedSelection(*job.teacher, target));
    std::map<std::string, int64_t> params;
    for (const PrunableUnit& u : job.teacher->all_units()) {
      params[u.id] = u.num_parameters;
    }
    std::vector<selection::ScoredUnit> units;
    for (const std::string& id : removal.removed) {
      units.push_back({.id = id, .params = params[id], .score = 0});
    }
    ASSIGN_OR_RETURN(
        plan, selection::PlanForRemoval(units, total, target, removal.removed));
    job.log(absl::StrFormat("SELECT: handcrafted rule %s", removal.rule));
  } else {
    ASSIGN_OR_RETURN(plan, selection::SelectUnits(ToScoredUnits(*job.scores),
                                                  total, target));
  }
  plan.criterion = std::string(client::YamlName(spec.prune().criterion()));
  // The parameters the removal takes out in effect (attention shells
  // included), so that the plan matches the student.
  ASSIGN_OR_RETURN(std::vector<std::string> effective,
                   job.teacher->EffectiveRemoval(std::set<std::string>(
                       plan.removed.begin(), plan.removed.end())));
  std::map<std::string, int64_t> params;
  for (const PrunableUnit& u : job.teacher->all_units()) {
    params[u.id] = u.num_parameters;
  }
  int64_t removed_params = 0;
  for (const std::string& id : effective) removed_params += params[id];
  plan.removed_params = removed_params;
  plan.achieved_ratio =
      static_cast<double>(removed_params) / static_cast<double>(total);
  plan.overshoot = plan.achieved_ratio - plan.target_ratio;
  RETURN_IF_ERROR(PutJson(job.out, kPlanObject, selection::PlanToJson(plan)));
  job.log(absl::StrFormat(
      "SELECT: remove %d units (%d of %d parameters, ratio %.4f for target "
      "%.4f), predicted loss %.6g; wrote %s",
      plan.removed.size(), plan.removed_params, total, plan.achieved_ratio,
      target, plan.predicted_loss,
      job.out.store->UriOf(job.out.Key(kPlanObject))));
  return plan;
}

// additivity.json: random sets around the plan's size, measured output loss
// against the sum of single-unit scores, correlated per set size.
absl::Status CheckAdditivity(Job& job, const selection::Plan& plan) {
  const int per_size = job.options.additivity_sets_per_size;
  if (per_size <= 0 || !job.scores || job.calibration.empty() ||
      plan.removed.empty()) {
    return absl::OkStatus();
  }
  AdditivityOptions options;
  options.set_sizes =
      SetSizesAround(static_cast<int>(plan.removed.size()),
                     static_cast<int>(job.scores->units.size()));
  options.sets_per_size = per_size;
  options.seed = job.spec.spec().seed();
  ASSIGN_OR_RETURN(
      std::vector<selection::AdditivitySample> samples,
      MeasureAdditivity(*job.teacher, *job.scores, job.calibration, options));
  ASSIGN_OR_RETURN(std::vector<selection::AdditivityRow> rows,
                   selection::AdditivityReport(samples));
  nlohmann::json json = selection::AdditivityReportToJson(rows);
  json["plan_set_size"] = plan.removed.size();
  json["sets_per_size"] = per_size;
  nlohmann::json list = nlohmann::json::array();
  for (const auto& sample : samples) {
    list.push_back({{"set_size", sample.set_size},
                    {"predicted", sample.predicted},
                    {"measured", sample.measured}});
  }
  json["samples"] = list;
  RETURN_IF_ERROR(PutJson(job.out, kAdditivityObject, json));
  std::string summary;
  for (const auto& row : rows) {
    absl::StrAppend(
        &summary, " n=", row.set_size, ": pearson ",
        row.pearson ? absl::StrFormat("%.3f", *row.pearson) : "-", " spearman ",
        row.spearman ? absl::StrFormat("%.3f", *row.spearman) : "-", ";");
  }
  job.log(absl::StrCat("SELECT: additivity", summary, " wrote ",
                       job.out.store->UriOf(job.out.Key(kAdditivityObject))));
  return absl::OkStatus();
}

struct DistillResult {
  std::unique_ptr<DistillTrainer> trainer;
  std::optional<int64_t> resumed_from;
  int64_t steps_run = 0;
};

absl::StatusOr<DistillResult> Distill(Job& job, const selection::Plan& plan) {
  const auto& spec = job.spec.spec();
  const auto& d = spec.distill();
  DistillTrainerOptions options;
  options.loss.task_weight = d.loss().task();
  options.loss.output_kd_weight = d.loss().output_kd();
  options.loss.feature_kd_weight = d.loss().feature_kd();
  options.loss.normalize_features = d.loss().normalize_features();
  options.learning_rate = d.learning_rate();
  options.warmup_steps = d.warmup_steps();
  options.weight_decay = d.weight_decay();
  options.max_grad_norm = d.grad_clip_norm();
  options.precision = job.precision;
  options.device = job.device;
  options.seed = spec.seed();
  DistillResult result;
  ASSIGN_OR_RETURN(
      result.trainer,
      DistillTrainer::Create(
          job.teacher,
          std::set<std::string>(plan.removed.begin(), plan.removed.end()),
          options));
  const int64_t student_params = result.trainer->student()->NumParameters();
  if (student_params != plan.total_params - plan.removed_params) {
    return absl::InternalError(absl::StrFormat(
        "the student holds %d parameters, the plan says %d", student_params,
        plan.total_params - plan.removed_params));
  }
  const int64_t steps = d.steps();
  if (steps == 0) {
    job.log("DISTILL: skipped (steps: 0); the pruned teacher is the student");
    return result;
  }
  ASSIGN_OR_RETURN(result.resumed_from,
                   result.trainer->Resume(*job.out.store, job.out.prefix));
  if (result.resumed_from.has_value()) {
    job.log(absl::StrFormat(
        "DISTILL: resumed from step %d (%s)", *result.resumed_from,
        job.out.store->UriOf(
            job.out.Key(storage::CheckpointDir(*result.resumed_from)))));
  }
  const int64_t first = result.trainer->step();
  if (first >= steps) {
    job.log(
        absl::StrFormat("DISTILL: %d of %d steps already done", first, steps));
    return result;
  }
  ASSIGN_OR_RETURN(
      BatchSampler sampler_value,
      BatchSampler::Create(job.split.train, d.batch_size(), spec.seed()));
  auto sampler = std::make_shared<BatchSampler>(std::move(sampler_value));
  Dataset* dataset = job.dataset.get();
  const NoiseSchedule schedule = job.schedule;
  const PredictionType prediction = job.prediction;
  const torch::Device device = job.device;
  const uint64_t seed = spec.seed();
  BatchSource source = [=](int64_t step) -> absl::StatusOr<TrainingBatch> {
    const std::vector<int64_t> indices = sampler->BatchIndices(step);
    ASSIGN_OR_RETURN(DatasetBatch clean, dataset->GetSamples(indices));
    return GuardTorch("training batch", [&]() -> absl::StatusOr<TrainingBatch> {
      return Noise(clean, BatchSeed(seed, step), schedule, prediction, device,
                   torch::kFloat32);
    });
  };
  int64_t every = job.options.log_every;
  if (every <= 0) every = std::clamp<int64_t>(steps / 20, 1, 100);
  job.log(absl::StrFormat(
      "DISTILL: steps %d to %d, batch %d, lr %g, checkpoint every %d", first,
      steps, d.batch_size(), d.learning_rate(), d.checkpoint_every()));
  auto window_start = std::chrono::steady_clock::now();
  int64_t window_first = first;
  ProgressCallback progress = [&](const StepReport& r) -> absl::Status {
    const int64_t done = r.step + 1;
    if (done % every != 0 && done != steps) return absl::OkStatus();
    const auto now = std::chrono::steady_clock::now();
    const double elapsed =
        std::chrono::duration<double>(now - window_start).count();
    const double rate = elapsed > 0 ? (done - window_first) / elapsed : 0;
    job.log(absl::StrFormat(
        "DISTILL: step %d/%d loss %.6g (task %.4g, output_kd %.4g, "
        "feature_kd %.4g) lr %.3g grad_norm %.3g, %.2f steps/s, ETA %s",
        done, steps, r.loss.total, r.loss.task, r.loss.output_kd,
        r.loss.feature_kd, r.learning_rate, r.grad_norm, rate,
        FormatSeconds(rate > 0 ? (steps - done) / rate : -1)));
    window_start = now;
    window_first = done;
    return absl::OkStatus();
  };
  CheckpointTarget target{job.out.store.get(), job.out.prefix,
                          d.checkpoint_every()};
  RETURN_IF_ERROR(result.trainer->Train(steps, source, progress, target));
  result.steps_run = result.trainer->step() - first;
  job.log(absl::StrFormat(
      "DISTILL: done, %d steps this run; checkpoint %s", result.steps_run,
      job.out.store->UriOf(
          job.out.Key(storage::CheckpointDir(result.trainer->step())))));
  return result;
}

absl::StatusOr<EvaluationReport> EvaluatePhase(Job& job,
                                               DistillTrainer& trainer,
                                               const selection::Plan& plan,
                                               const DistillResult& distill) {
  const auto& spec = job.spec.spec();
  UNet2DConditionModel student = trainer.student();
  EvaluationReport report;
  if (job.split.eval.empty()) {
    report.teacher_parameters = job.teacher->NumParameters();
    report.student_parameters = student->NumParameters();
    report.per_range.clear();
    job.log(
        "EVALUATE: no held-out samples (eval_samples: 0); parameter "
        "counts only");
  } else {
    ASSIGN_OR_RETURN(
        std::vector<TrainingBatch> batches,
        NoisedBatches(*job.dataset, job.split.eval, job.options.eval_batch_size,
                      BatchSeed(spec.seed(), 0) ^ kEvalStream, job.schedule,
                      job.prediction, job.device, torch::kFloat32));
    EvaluationOptions options;
    options.latency_runs = job.options.latency_runs;
    ASSIGN_OR_RETURN(report,
                     Evaluate(*job.teacher, *student, batches, options));
  }
  nlohmann::json json = ReportToJson(report);
  json["job"] = job.spec.metadata().name();
  json["criterion"] = plan.criterion;
  json["target_ratio"] = plan.target_ratio;
  json["achieved_ratio"] = plan.achieved_ratio;
  json["removed_units"] = plan.removed;
  json["prediction_type"] = std::string(PredictionTypeName(job.prediction));
  json["distill"] = {
      {"steps", trainer.step()},
      {"resumed_from", distill.resumed_from.has_value()
                           ? nlohmann::json(*distill.resumed_from)
                           : nlohmann::json(nullptr)}};
  RETURN_IF_ERROR(PutJson(job.out, kReportObject, json));
  job.log(absl::StrFormat(
      "EVALUATE: %d samples, relative error %.6g, loss teacher %.6g student "
      "%.6g, parameters %d -> %d, latency %.4gs -> %.4gs; wrote %s",
      report.overall.samples, report.overall.relative_error,
      report.overall.teacher_loss, report.overall.student_loss,
      report.teacher_parameters, report.student_parameters,
      report.latency.teacher_seconds, report.latency.student_seconds,
      job.out.store->UriOf(job.out.Key(kReportObject))));
  return report;
}

absl::Status Export(Job& job, DistillTrainer& trainer) {
  ExportOptions options;
  options.config_json = job.config_json;
  options.dtype = job.model_dtype;
  options.teacher_parameters = job.teacher->NumParameters();
  UNet2DConditionModel student = trainer.student();
  RETURN_IF_ERROR(ExportStudent(*student, options, *job.out.store,
                                job.out.Key(kFinalFolder)));
  job.log(absl::StrFormat("EXPORT: wrote %s/",
                          job.out.store->UriOf(job.out.Key(kFinalFolder))));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PipelineResult> RunJob(const CompressionJob& spec,
                                      const PipelineOptions& options) {
  if (options.threads > 0) torch::set_num_threads(options.threads);
  if (options.eval_batch_size < 1 || options.latency_runs < 0) {
    return absl::InvalidArgumentError(
        "pipeline options: eval_batch_size must be >= 1, latency_runs >= 0");
  }
  Job job(spec, options);
  job.log = options.progress;
  if (!job.log) {
    job.log = [](const std::string& line) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    };
  }
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(InPhase(
      "SCORE", GuardTorch("preparing the job", [&] { return Prepare(job); })));
  RETURN_IF_ERROR(
      InPhase("SCORE", GuardTorch("scoring", [&] { return Score(job); })));
  PipelineResult result;
  result.output_uri = job.out.store->UriOf(job.out.prefix);
  {
    auto plan = Select(job);
    if (!plan.ok()) return InPhase("SELECT", plan.status());
    result.plan = *std::move(plan);
    RETURN_IF_ERROR(InPhase("SELECT", GuardTorch("additivity", [&] {
                              return CheckAdditivity(job, result.plan);
                            })));
  }
  auto distill =
      GuardTorch("distillation", [&] { return Distill(job, result.plan); });
  if (!distill.ok()) return InPhase("DISTILL", distill.status());
  result.resumed_from = distill->resumed_from;
  result.steps_run = distill->steps_run;
  result.final_step = distill->trainer->step();
  {
    auto report = GuardTorch("evaluation", [&] {
      return EvaluatePhase(job, *distill->trainer, result.plan, *distill);
    });
    if (!report.ok()) return InPhase("EVALUATE", report.status());
    result.evaluation = *std::move(report);
  }
  RETURN_IF_ERROR(InPhase("EXPORT", GuardTorch("export", [&] {
                            return Export(job, *distill->trainer);
                          })));
  job.log(absl::StrFormat(
      "done in %s: %s",
      FormatSeconds(std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - start)
                        .count()),
      result.output_uri));
  return result;
}

}  // namespace lpd::engine

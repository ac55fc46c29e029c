#include "runtime/job_tasks.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "engine/compress/additivity.h"
#include "engine/compress/export.h"
#include "engine/compress/scoring.h"
#include "engine/core/cpu_threads.h"
#include "engine/core/torch_errors.h"
#include "engine/data/dataset.h"
#include "engine/data/noise_schedule.h"
#include "engine/model/model_loader.h"
#include "engine/train/distill.h"
#include "engine/train/student.h"
#include "job/checkpoints.h"
#include "job/layout.h"
#include "job/names.h"
#include "job/spec.h"
#include "runtime/select_phase.h"
#include "selection/knapsack.h"
#include "storage/object_store.h"

namespace lpd::engine {
namespace {

using lpd::v1::CompressionJob;

// Seeds of the calibration and held-out noise streams, apart from the
// training stream (BatchSeed(seed, step)).
constexpr uint64_t kCalibrationStream = 0xca11b7a7e0000001ULL;
constexpr uint64_t kEvalStream = 0xe7a1e7a1e0000002ULL;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
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
    return absl::UnimplementedError(
        absl::StrCat(what, " ", uri, ": only file:// is supported for now"));
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
  batch.target = floating(schedule.Target(prediction, clean.latents, noise, t));
  return batch;
}

// What a task knows about its job once prepared.
struct Job {
  Job(const CompressionJob& spec, const TaskContext& ctx, lpd::v1::Phase phase)
      : spec(spec), ctx(ctx), phase(phase) {}

  const CompressionJob& spec;
  const TaskContext& ctx;
  lpd::v1::Phase phase;

  torch::Device device = torch::kCPU;
  TrainingPrecision precision = TrainingPrecision::kFloat32;
  torch::Dtype model_dtype = torch::kFloat32;
  std::string model_dir;
  std::string config_json;
  PredictionType prediction = PredictionType::kEpsilon;
  std::set<UnitKind> kinds;
  storage::StoreLocation out;
  UNet2DConditionModel teacher{nullptr};
  std::unique_ptr<Dataset> dataset;  // null when the task needs no data
  DatasetSplit split;
  NoiseSchedule schedule = NoiseSchedule::ScaledLinear();

  // Data-parallel DISTILL: the group (null: one process) and this rank.
  std::unique_ptr<DataParallelGroup> group;
  int rank = 0;

  // Rank 0 alone logs. Lines and progress lines start with the phase
  // ("...").
  void Log(const std::string& line) const {
    if (rank != 0) return;
    const std::string prefixed = job::PhasePrefix(phase) + line;
    if (ctx.log) {
      ctx.log(prefixed);
    } else {
      std::printf("%s\n", prefixed.c_str());
      std::fflush(stdout);
    }
  }
  absl::Status Progress(double fraction, const std::string& line) const {
    if (!ctx.progress) return absl::OkStatus();
    return ctx.progress(std::clamp(fraction, 0.0, 1.0),
                        job::PhasePrefix(phase) + line);
  }
  std::string Uri(absl::string_view name) const {
    return out.store->UriOf(out.Key(name));
  }
  absl::Status PutJson(absl::string_view name,
                       const nlohmann::json& json) const {
    return out.store->Put(out.Key(name), json.dump(2) + "\n");
  }
};

absl::Status CheckContext(const TaskContext& ctx) {
  if (ctx.eval_batch_size < 1 || ctx.latency_runs < 0 || ctx.threads < 0 ||
      ctx.log_every < 0) {
    return absl::InvalidArgumentError(
        "task options: eval_batch_size must be >= 1, latency_runs, threads "
        "and log_every >= 0");
  }
  SetCpuThreads(ctx.threads);
  return absl::OkStatus();
}

// Device, precision, output, teacher; the dataset and its split when
// `need_data`.
absl::Status Prepare(Job& job, bool need_data) {
  const auto& spec = job.spec.spec();
  std::string device_name = job.ctx.device;
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
  if (job.ctx.data_parallel.has_value() &&
      job.ctx.data_parallel->world_size > 1) {
    job.rank = job.ctx.data_parallel->rank;
    job.device = DataParallelDevice(*job.ctx.data_parallel, job.device);
    if (job.device.is_cuda() &&
        job.device.index() >= static_cast<int>(torch::cuda::device_count())) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "data-parallel rank ", job.rank, " of ",
          job.ctx.data_parallel->world_size, " needs ", job.device.str(),
          ", but this machine has ", torch::cuda::device_count(),
          " GPU(s) (spec.distill.gpus asks for one GPU per rank)"));
    }
  }
  const bool bf16 =
      spec.distill().precision() == lpd::v1::PRECISION_BF16 ||
      (spec.distill().precision() == lpd::v1::PRECISION_UNSPECIFIED &&
       job.device.is_cuda());
  job.precision = !bf16 ? TrainingPrecision::kFloat32
                  : spec.distill().master_weights_fp32()
                      ? TrainingPrecision::kBFloat16MasterFloat32
                      : TrainingPrecision::kBFloat16;
  job.model_dtype = bf16 ? torch::kBFloat16 : torch::kFloat32;
  ASSIGN_OR_RETURN(job.kinds, job::UnitKindsOf(spec.prune().units()));
  ASSIGN_OR_RETURN(job.out, storage::OpenStoreLocation(spec.output().uri()));
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
  std::string data_line;
  if (need_data) {
    ASSIGN_OR_RETURN(
        std::string data_dir,
        LocalFolder(spec.data().train().uri(), "spec.data.train.uri"));
    ASSIGN_OR_RETURN(job.dataset, Dataset::Open(data_dir));
    RETURN_IF_ERROR(job.dataset->Validate(job.teacher->config()));
    ASSIGN_OR_RETURN(job.split, SplitDataset(job.dataset->size(), spec.seed(),
                                             spec.data().calibration_samples(),
                                             spec.data().eval_samples()));
    data_line = absl::StrFormat(
        ", data %s (%d samples: %d calibration, %d eval, %d train)", data_dir,
        job.dataset->size(), job.split.calibration.size(),
        job.split.eval.size(), job.split.train.size());
  }
  job.Log(absl::StrFormat(
      "job %s: model %s (%d parameters, prediction %s from %s)%s, device "
      "%s, %s",
      job.spec.metadata().name(), job.model_dir, job.teacher->NumParameters(),
      std::string(PredictionTypeName(job.prediction)), prediction_source,
      data_line, job.device.str(), bf16 ? "bf16" : "fp32"));
  return absl::OkStatus();
}

// Noised batches over `indices` in chunks of `batch_size`: batch b's
// timesteps and noise come from a generator seeded with BatchSeed(stream, b).
// Inputs on (device, dtype); targets float32 on the CPU. `made(b, n)` is
// called after each batch (n batches in all).
absl::StatusOr<std::vector<TrainingBatch>> NoisedBatches(
    const Job& job, const std::vector<int64_t>& indices, uint64_t stream,
    torch::Dtype dtype,
    const std::function<absl::Status(int64_t, int64_t)>& made = nullptr) {
  const int64_t batch_size = job.ctx.eval_batch_size;
  const int64_t count =
      (static_cast<int64_t>(indices.size()) + batch_size - 1) / batch_size;
  std::vector<TrainingBatch> batches;
  for (size_t begin = 0, b = 0; begin < indices.size();
       begin += batch_size, ++b) {
    const size_t end =
        std::min(indices.size(), begin + static_cast<size_t>(batch_size));
    std::vector<int64_t> chunk(indices.begin() + begin, indices.begin() + end);
    ASSIGN_OR_RETURN(DatasetBatch clean, job.dataset->GetSamples(chunk));
    batches.push_back(Noise(clean, BatchSeed(stream, static_cast<int64_t>(b)),
                            job.schedule, job.prediction, job.device, dtype));
    if (made) RETURN_IF_ERROR(made(static_cast<int64_t>(b) + 1, count));
  }
  return batches;
}

// The calibration inputs (output_loss), in the model's dtype.
absl::StatusOr<std::vector<UNetInputs>> Calibration(const Job& job) {
  ASSIGN_OR_RETURN(
      std::vector<TrainingBatch> batches,
      NoisedBatches(job, job.split.calibration,
                    BatchSeed(job.spec.spec().seed(), 0) ^ kCalibrationStream,
                    job.model_dtype));
  std::vector<UNetInputs> calibration;
  for (TrainingBatch& b : batches) calibration.push_back(std::move(b.noised));
  return calibration;
}

selection::ModelUnits UnitsOf(const UNet2DConditionModelImpl& model) {
  selection::ModelUnits units;
  units.total_params = model.NumParameters();
  std::vector<std::string> attentions;
  for (const PrunableUnit& u : model.all_units()) {
    selection::ModelUnit unit;
    unit.id = u.id;
    unit.kind = std::string(UnitKindName(u.kind));
    unit.params = u.num_parameters;
    unit.removable = u.removable;
    if (u.kind == UnitKind::kAttention) attentions.push_back(u.id);
    if (u.kind == UnitKind::kTransformerBlock) {
      for (const std::string& a : attentions) {
        if (u.id.rfind(a + ".transformer_blocks.", 0) == 0) unit.attention = a;
      }
    }
    units.units.push_back(std::move(unit));
  }
  return units;
}

// The job's plan.json; FailedPrecondition when SELECT has not written it.
absl::StatusOr<selection::Plan> ReadPlan(const Job& job) {
  const std::string key = job.out.Key(job::kPlanObject);
  absl::StatusOr<std::string> text = job.out.store->Get(key);
  if (absl::IsNotFound(text.status())) {
    return absl::FailedPreconditionError(absl::StrCat(
        job.out.store->UriOf(key), " is missing (run SELECT first)"));
  }
  if (!text.ok()) return text.status();
  nlohmann::json json = nlohmann::json::parse(*text, nullptr, false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(job.out.store->UriOf(key), ": not JSON"));
  }
  absl::StatusOr<selection::Plan> plan = selection::PlanFromJson(json);
  if (!plan.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(job.out.store->UriOf(key), ": ", plan.status().message()));
  }
  if (plan->total_params != job.teacher->NumParameters()) {
    return absl::FailedPreconditionError(absl::StrCat(
        job.out.store->UriOf(key), " was made for a model of ",
        plan->total_params, " parameters, the teacher has ",
        job.teacher->NumParameters(), " (re-run SCORE and SELECT)"));
  }
  return plan;
}

DistillTrainerOptions TrainerOptions(const Job& job) {
  const auto& d = job.spec.spec().distill();
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
  options.seed = job.spec.spec().seed();
  options.data_parallel = job.group.get();
  return options;
}

// The student's parameter count against the plan's.
absl::Status CheckStudentSize(const UNet2DConditionModelImpl& student,
                              const selection::Plan& plan) {
  const int64_t student_params = student.NumParameters();
  if (student_params != plan.total_params - plan.removed_params) {
    return absl::InternalError(absl::StrFormat(
        "the student holds %d parameters, the plan says %d", student_params,
        plan.total_params - plan.removed_params));
  }
  return absl::OkStatus();
}

// The trainer for the plan's student, its parameter count checked.
absl::StatusOr<std::unique_ptr<DistillTrainer>> MakeTrainer(
    const Job& job, const selection::Plan& plan) {
  ASSIGN_OR_RETURN(
      std::unique_ptr<DistillTrainer> trainer,
      DistillTrainer::Create(
          job.teacher,
          std::set<std::string>(plan.removed.begin(), plan.removed.end()),
          TrainerOptions(job)));
  RETURN_IF_ERROR(CheckStudentSize(*trainer->student(), plan));
  return trainer;
}

// A trained student and the distillation step its weights come from.
struct Trained {
  UNet2DConditionModel student;
  int64_t step = 0;
};

// The trained student: the weights of the newest checkpoint, which must
// have reached spec.distill.steps (steps 0: the pruned teacher, step 0).
// Weights only: no trainer is built and no optimizer state is read. Teacher
// and student are prepared as the trainer prepares them
// (DistillTrainer::Create: the training precision's dtype; channels-last on
// the GPU).
absl::StatusOr<Trained> TrainedStudent(Job& job, const selection::Plan& plan) {
  const torch::Dtype dtype = job.precision == TrainingPrecision::kFloat32
                                 ? torch::kFloat32
                                 : torch::kBFloat16;
  ASSIGN_OR_RETURN(
      UNet2DConditionModel student,
      MakeStudent(
          *job.teacher,
          std::set<std::string>(plan.removed.begin(), plan.removed.end()),
          torch::TensorOptions().dtype(dtype).device(job.device)));
  RETURN_IF_ERROR(CheckStudentSize(*student, plan));
  job.teacher->eval();
  student->train();
  if (job.device.is_cuda()) {
    job.teacher->ToChannelsLast();
    student->ToChannelsLast();
  }
  const int64_t steps = job.spec.spec().distill().steps();
  if (steps == 0) return Trained{student, 0};
  ASSIGN_OR_RETURN(
      std::optional<int64_t> resumed,
      LoadLatestStudentWeights(*job.out.store, job.out.prefix, *student));
  if (!resumed.has_value() || *resumed < steps) {
    return absl::FailedPreconditionError(absl::StrCat(
        "distillation has not finished: ",
        resumed.has_value()
            ? absl::StrCat("the newest checkpoint is at step ", *resumed)
            : std::string("no checkpoint"),
        " under ", job.Uri(job::kCheckpointsFolder), ", the job has ", steps,
        " steps (run DISTILL first)"));
  }
  return Trained{student, *resumed};
}

// --- SCORE ---------------------------------------------------------------

absl::StatusOr<nlohmann::json> Score(Job& job, int index, int count) {
  const auto& spec = job.spec.spec();
  const auto start = std::chrono::steady_clock::now();
  const bool handcrafted =
      spec.prune().criterion() == lpd::v1::CRITERION_HANDCRAFTED;
  if (count < 1 || index < 0 || index >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad score shard ", index, " of ", count,
                     " (need count >= 1 and 0 <= index < count)"));
  }
  if (handcrafted && count != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "criterion handcrafted has exactly one SCORE task, not ", count));
  }
  RETURN_IF_ERROR(Prepare(job, /*need_data=*/!handcrafted));
  RETURN_IF_ERROR(job.PutJson(
      job::kUnitsObject, selection::ModelUnitsToJson(UnitsOf(*job.teacher))));
  if (handcrafted) {
    ASSIGN_OR_RETURN(
        HandcraftedRemoval removal,
        HandcraftedSelection(*job.teacher, spec.prune().target_ratio()));
    selection::HandcraftedChoice choice{
        .rule = removal.rule,
        .target_ratio = spec.prune().target_ratio(),
        .removed = removal.removed,
        .trailing_blocks = removal.trailing_blocks};
    RETURN_IF_ERROR(job.PutJson(job::kHandcraftedObject,
                                selection::HandcraftedToJson(choice)));
    job.Log(absl::StrFormat(
        "handcrafted rule %s removes %d units (ratio %.4f); wrote %s",
        removal.rule, removal.removed.size(), removal.achieved_ratio,
        job.Uri(job::kHandcraftedObject)));
    RETURN_IF_ERROR(job.Progress(1.0, "handcrafted rule applied"));
    return nlohmann::json{{"rule", removal.rule},
                          {"removed_units", removal.removed.size()},
                          {"seconds", SecondsSince(start)},
                          {"object", job.Uri(job::kHandcraftedObject)}};
  }
  ScoreOptions options;
  ASSIGN_OR_RETURN(std::optional<ScoreCriterion> criterion,
                   job::ScoreCriterionOf(spec.prune().criterion()));
  if (!criterion.has_value()) {
    return absl::InternalError("a handcrafted job has no scoring criterion");
  }
  options.criterion = *criterion;
  options.seed = spec.seed();
  options.shard = {index, count};
  const std::vector<std::string> ids = ScorableUnitIds(*job.teacher, job.kinds);
  ASSIGN_OR_RETURN(std::vector<std::string> own,
                   ShardUnitIds(ids, options.shard));
  std::vector<UNetInputs> calibration;
  std::string fingerprint;
  if (options.criterion == ScoreCriterion::kOutputLoss) {
    ASSIGN_OR_RETURN(calibration, Calibration(job));
    ASSIGN_OR_RETURN(fingerprint, CalibrationFingerprint(calibration));
  }
  const std::string name = job::ScoreShardObject(index, count);
  // A shard file of an earlier attempt (or, for one shard, a scores.json of
  // an earlier run) is reused when it was made from the same calibration
  // set, units, criterion, seed and model.
  std::vector<std::string> candidates = {name};
  if (count == 1) candidates.push_back(job::kScoresObject);
  for (const std::string& candidate : candidates) {
    const std::string key = job.out.Key(candidate);
    ASSIGN_OR_RETURN(bool exists, job.out.store->Exists(key));
    if (!exists) continue;
    ASSIGN_OR_RETURN(std::string text, job.out.store->Get(key));
    nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
    if (json.is_discarded()) continue;
    absl::StatusOr<Scores> old = ScoresFromJson(json);
    if (old.ok() && old->criterion == ScoreCriterionName(options.criterion) &&
        old->seed == options.seed &&
        old->calibration_fingerprint == fingerprint &&
        old->units_fingerprint == UnitListFingerprint(ids) &&
        old->shard.index == index && old->shard.count == count &&
        old->total_params == job.teacher->NumParameters()) {
      if (candidate != name) {
        RETURN_IF_ERROR(job.PutJson(name, ScoresToJson(*old)));
      }
      job.Log(absl::StrFormat(
          "reusing %s (%d units, same calibration set and units)",
          job.out.store->UriOf(key), old->units.size()));
      RETURN_IF_ERROR(job.Progress(1.0, "reused earlier scores"));
      return nlohmann::json{{"units_scored", old->units.size()},
                            {"units_total", ids.size()},
                            {"reused", true},
                            {"seconds", SecondsSince(start)},
                            {"object", job.Uri(name)}};
    }
  }
  job.Log(absl::StrCat("",
                       count > 1 ? absl::StrCat("shard ", index, " of ", count,
                                                ": ", own.size(), " of ")
                                 : "",
                       ids.size(), " units by ",
                       ScoreCriterionName(options.criterion),
                       options.criterion == ScoreCriterion::kOutputLoss
                           ? absl::StrCat(" on ", job.split.calibration.size(),
                                          " calibration samples")
                           : ""));
  options.progress = [&](int64_t done, int64_t total) {
    return job.Progress(
        total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1,
        absl::StrFormat("%d/%d unit evaluations", done, total));
  };
  ASSIGN_OR_RETURN(Scores scores,
                   ScoreUnits(*job.teacher, ids, calibration, options));
  RETURN_IF_ERROR(job.PutJson(name, ScoresToJson(scores)));
  if (job.ctx.on_units_scored) {
    job.ctx.on_units_scored(static_cast<int64_t>(scores.units.size()));
  }
  const double seconds = SecondsSince(start);
  job.Log(absl::StrFormat("wrote %s in %.1fs", job.Uri(name), seconds));
  return nlohmann::json{{"units_scored", scores.units.size()},
                        {"units_total", ids.size()},
                        {"reused", false},
                        {"seconds", seconds},
                        {"object", job.Uri(name)}};
}

// --- DISTILL -------------------------------------------------------------

// additivity.json: random sets around the plan's size, measured output loss
// against the sum of single-unit scores, correlated per set size. Skipped
// when not asked for, not output_loss, or already there for this plan size.
absl::Status CheckAdditivity(Job& job, const selection::Plan& plan) {
  const int per_size = job.spec.spec().prune().additivity_sets();
  if (per_size <= 0 || plan.removed.empty() ||
      job.spec.spec().prune().criterion() != lpd::v1::CRITERION_OUTPUT_LOSS ||
      job.split.calibration.empty()) {
    return absl::OkStatus();
  }
  const std::string key = job.out.Key(job::kAdditivityObject);
  ASSIGN_OR_RETURN(bool exists, job.out.store->Exists(key));
  if (exists) {
    ASSIGN_OR_RETURN(std::string text, job.out.store->Get(key));
    nlohmann::json old = nlohmann::json::parse(text, nullptr, false);
    if (!old.is_discarded() && old.is_object() &&
        old.value("plan_set_size", nlohmann::json()) == plan.removed.size() &&
        old.value("sets_per_size", nlohmann::json()) == per_size) {
      return absl::OkStatus();
    }
  }
  const std::string scores_key = job.out.Key(job::kScoresObject);
  absl::StatusOr<std::string> text = job.out.store->Get(scores_key);
  if (absl::IsNotFound(text.status())) {
    return absl::FailedPreconditionError(absl::StrCat(
        job.out.store->UriOf(scores_key), " is missing (run SELECT first)"));
  }
  if (!text.ok()) return text.status();
  nlohmann::json scores_json = nlohmann::json::parse(*text, nullptr, false);
  absl::StatusOr<Scores> scores = scores_json.is_discarded()
                                      ? absl::InvalidArgumentError("not JSON")
                                      : ScoresFromJson(scores_json);
  if (!scores.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        job.out.store->UriOf(scores_key), ": ", scores.status().message()));
  }
  ASSIGN_OR_RETURN(std::vector<UNetInputs> calibration, Calibration(job));
  AdditivityOptions options;
  options.set_sizes = SetSizesAround(static_cast<int>(plan.removed.size()),
                                     static_cast<int>(scores->units.size()));
  options.sets_per_size = per_size;
  options.seed = job.spec.spec().seed();
  RETURN_IF_ERROR(job.Progress(0, "measuring additivity"));
  ASSIGN_OR_RETURN(
      std::vector<selection::AdditivitySample> samples,
      MeasureAdditivity(*job.teacher, *scores, calibration, options));
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
  RETURN_IF_ERROR(job.PutJson(job::kAdditivityObject, json));
  std::string summary;
  for (const auto& row : rows) {
    absl::StrAppend(
        &summary, " n=", row.set_size, ": pearson ",
        row.pearson ? absl::StrFormat("%.3f", *row.pearson) : "-", " spearman ",
        row.spearman ? absl::StrFormat("%.3f", *row.spearman) : "-", ";");
  }
  job.Log(absl::StrCat("additivity", summary, " wrote ",
                       job.Uri(job::kAdditivityObject)));
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> Distill(Job& job) {
  const auto& spec = job.spec.spec();
  const auto& d = spec.distill();
  RETURN_IF_ERROR(Prepare(job, /*need_data=*/true));
  ASSIGN_OR_RETURN(selection::Plan plan, ReadPlan(job));
  const bool data_parallel = job.ctx.data_parallel.has_value() &&
                             job.ctx.data_parallel->world_size > 1;
  if (data_parallel) {
    RETURN_IF_ERROR(CheckDataParallelBatch(d.batch_size(),
                                           job.ctx.data_parallel->world_size));
    ASSIGN_OR_RETURN(job.group, DataParallelGroup::Create(
                                    *job.ctx.data_parallel, job.device));
    job.Log(absl::StrFormat(
        "data-parallel over %d ranks (%s), %d samples per rank and "
        "step",
        job.group->world_size(), job.group->backend(),
        d.batch_size() / job.group->world_size()));
  }
  if (job.rank == 0) {
    const absl::Status additivity = CheckAdditivity(job, plan);
    // The others wait for it (and learn how it went) before training.
    if (data_parallel) {
      std::vector<torch::Tensor> failed = {torch::full(
          {1}, additivity.ok() ? 0.0 : 1.0,
          torch::TensorOptions().dtype(torch::kFloat32).device(job.device))};
      RETURN_IF_ERROR(job.group->AllReduceSum(failed));
    }
    RETURN_IF_ERROR(additivity);
  } else {
    std::vector<torch::Tensor> failed = {torch::zeros(
        {1}, torch::TensorOptions().dtype(torch::kFloat32).device(job.device))};
    RETURN_IF_ERROR(job.group->AllReduceSum(failed));
    if (failed[0].to(torch::kCPU).item<float>() > 0) {
      return absl::AbortedError(
          "rank 0 failed to measure additivity (its error fails the task)");
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<DistillTrainer> trainer,
                   MakeTrainer(job, plan));
  const int64_t steps = d.steps();
  std::optional<int64_t> resumed_from;
  int64_t first = 0;
  auto result = [&]() {
    return nlohmann::json{{"resumed_from", resumed_from.has_value()
                                               ? nlohmann::json(*resumed_from)
                                               : nlohmann::json(nullptr)},
                          {"final_step", trainer->step()},
                          {"steps_run", trainer->step() - first}};
  };
  if (steps == 0) {
    job.Log("skipped (steps: 0); the pruned teacher is the student");
    if (job.rank == 0)
      RETURN_IF_ERROR(job.PutJson(job::kDistillObject, result()));
    RETURN_IF_ERROR(job.Progress(1.0, "skipped (steps: 0)"));
    return result();
  }
  ASSIGN_OR_RETURN(resumed_from,
                   trainer->Resume(*job.out.store, job.out.prefix));
  if (resumed_from.has_value()) {
    job.Log(absl::StrFormat("resumed from step %d (%s)", *resumed_from,
                            job.Uri(job::CheckpointDir(*resumed_from))));
  }
  first = trainer->step();
  if (first >= steps) {
    job.Log(absl::StrFormat("%d of %d steps already done", first, steps));
    if (job.rank == 0)
      RETURN_IF_ERROR(job.PutJson(job::kDistillObject, result()));
    RETURN_IF_ERROR(job.Progress(1.0, "already done"));
    return result();
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
  int64_t every = job.ctx.log_every;
  if (every <= 0) every = std::clamp<int64_t>(steps / 20, 1, 100);
  job.Log(absl::StrFormat(
      "steps %d to %d, batch %d, lr %g, checkpoint every %d", first, steps,
      d.batch_size(), d.learning_rate(), d.checkpoint_every()));
  auto window_start = std::chrono::steady_clock::now();
  int64_t window_first = first;
  // The status the context's progress stopped training with, if it did.
  absl::Status stopped;
  ProgressCallback progress = [&](const StepReport& r) -> absl::Status {
    const int64_t done = r.step + 1;
    if (job.rank == 0 && job.ctx.on_distill_step) {
      job.ctx.on_distill_step(r.seconds, {{"total", r.loss.total},
                                          {"task", r.loss.task},
                                          {"output_kd", r.loss.output_kd},
                                          {"feature_kd", r.loss.feature_kd}});
    }
    const std::string line = absl::StrFormat(
        "step %d/%d loss %.6g (task %.4g, output_kd %.4g, "
        "feature_kd %.4g) lr %.3g grad_norm %.3g",
        done, steps, r.loss.total, r.loss.task, r.loss.output_kd,
        r.loss.feature_kd, r.learning_rate, r.grad_norm);
    if (done % every == 0 || done == steps) {
      const auto now = std::chrono::steady_clock::now();
      const double elapsed =
          std::chrono::duration<double>(now - window_start).count();
      const double rate = elapsed > 0 ? (done - window_first) / elapsed : 0;
      job.Log(absl::StrFormat(
          "%s, %.2f steps/s, ETA %s", line, rate,
          FormatSeconds(rate > 0 ? (steps - done) / rate : -1)));
      window_start = now;
      window_first = done;
    }
    stopped = job.Progress(
        static_cast<double>(done) / static_cast<double>(steps), line);
    return stopped;
  };
  CheckpointTarget target{job.out.store.get(), job.out.prefix,
                          d.checkpoint_every()};
  absl::Status trained = trainer->Train(steps, source, progress, target);
  if (!trainer->cuda_graph_failure().ok()) {
    job.Log(absl::StrCat("steps ran without a CUDA graph: ",
                         trainer->cuda_graph_failure().message()));
  } else if (trainer->replaying_cuda_graph()) {
    job.Log("steps replayed from a CUDA graph");
  }
  if (!trained.ok()) {
    if (!stopped.ok()) {
      // Stopped on request: keep the steps taken.
      ASSIGN_OR_RETURN(bool complete,
                       job::IsCheckpointComplete(
                           *job.out.store, trainer->step(), job.out.prefix));
      if (!complete) {
        RETURN_IF_ERROR(
            trainer->SaveCheckpoint(*job.out.store, job.out.prefix));
      }
      job.Log(absl::StrFormat("stopped at step %d (%s); checkpoint %s",
                              trainer->step(), stopped.message(),
                              job.Uri(job::CheckpointDir(trainer->step()))));
    }
    return trained;
  }
  job.Log(absl::StrFormat("done, %d steps this run; checkpoint %s",
                          trainer->step() - first,
                          job.Uri(job::CheckpointDir(trainer->step()))));
  if (job.rank == 0)
    RETURN_IF_ERROR(job.PutJson(job::kDistillObject, result()));
  return result();
}

// --- EVALUATE ------------------------------------------------------------

absl::StatusOr<nlohmann::json> EvaluatePhase(Job& job,
                                             EvaluationReport* report_out) {
  const auto& spec = job.spec.spec();
  RETURN_IF_ERROR(Prepare(job, /*need_data=*/true));
  ASSIGN_OR_RETURN(selection::Plan plan, ReadPlan(job));
  ASSIGN_OR_RETURN(Trained trained, TrainedStudent(job, plan));
  UNet2DConditionModel student = trained.student;
  EvaluationReport report;
  if (job.split.eval.empty()) {
    report.teacher_parameters = job.teacher->NumParameters();
    report.student_parameters = student->NumParameters();
    report.per_range.clear();
    job.Log(
        "no held-out samples (eval_samples: 0); parameter "
        "counts only");
  } else {
    ASSIGN_OR_RETURN(
        std::vector<TrainingBatch> batches,
        NoisedBatches(
            job, job.split.eval, BatchSeed(spec.seed(), 0) ^ kEvalStream,
            torch::kFloat32, [&](int64_t b, int64_t n) {
              return job.Progress(
                  0.5 * static_cast<double>(b) / n,
                  absl::StrFormat("held-out batch %d/%d ready", b, n));
            }));
    EvaluationOptions options;
    options.latency_runs = job.ctx.latency_runs;
    ASSIGN_OR_RETURN(report,
                     Evaluate(*job.teacher, *student, batches, options));
  }
  // distill.json of the DISTILL task says where it resumed from.
  nlohmann::json resumed_from = nullptr;
  {
    absl::StatusOr<std::string> text =
        job.out.store->Get(job.out.Key(job::kDistillObject));
    if (!text.ok() && !absl::IsNotFound(text.status())) return text.status();
    if (text.ok()) {
      nlohmann::json json = nlohmann::json::parse(*text, nullptr, false);
      if (json.is_object() && json.contains("resumed_from") &&
          (json["resumed_from"].is_null() ||
           json["resumed_from"].is_number_integer())) {
        resumed_from = json["resumed_from"];
      }
    }
  }
  nlohmann::json json = ReportToJson(report);
  json["job"] = job.spec.metadata().name();
  json["criterion"] = plan.criterion;
  json["target_ratio"] = plan.target_ratio;
  json["achieved_ratio"] = plan.achieved_ratio;
  json["removed_units"] = plan.removed;
  json["prediction_type"] = std::string(PredictionTypeName(job.prediction));
  json["distill"] = {{"steps", trained.step}, {"resumed_from", resumed_from}};
  RETURN_IF_ERROR(job.PutJson(job::kReportObject, json));
  job.Log(absl::StrFormat(
      "%d samples, relative error %.6g, loss teacher %.6g student "
      "%.6g, parameters %d -> %d, latency %.4gs -> %.4gs; wrote %s",
      report.overall.samples, report.overall.relative_error,
      report.overall.teacher_loss, report.overall.student_loss,
      report.teacher_parameters, report.student_parameters,
      report.latency.teacher_seconds, report.latency.student_seconds,
      job.Uri(job::kReportObject)));
  RETURN_IF_ERROR(job.Progress(1.0, "done"));
  nlohmann::json summary = {{"samples", report.overall.samples},
                            {"relative_error", report.overall.relative_error},
                            {"teacher_parameters", report.teacher_parameters},
                            {"student_parameters", report.student_parameters},
                            {"object", job.Uri(job::kReportObject)}};
  if (report_out != nullptr) *report_out = std::move(report);
  return summary;
}

// --- EXPORT --------------------------------------------------------------

absl::StatusOr<nlohmann::json> ExportPhase(Job& job) {
  RETURN_IF_ERROR(Prepare(job, /*need_data=*/false));
  ASSIGN_OR_RETURN(selection::Plan plan, ReadPlan(job));
  ASSIGN_OR_RETURN(Trained trained, TrainedStudent(job, plan));
  UNet2DConditionModel student = trained.student;
  RETURN_IF_ERROR(job.Progress(0.5, "writing the student"));
  ExportOptions options;
  options.config_json = job.config_json;
  options.dtype = job.model_dtype;
  options.teacher_parameters = job.teacher->NumParameters();
  RETURN_IF_ERROR(ExportStudent(*student, options, *job.out.store,
                                job.out.Key(job::kFinalFolder)));
  const std::string uri = absl::StrCat(job.Uri(job::kFinalFolder), "/");
  job.Log(absl::StrCat("wrote ", uri));
  RETURN_IF_ERROR(job.Progress(1.0, "done"));
  return nlohmann::json{{"student_parameters", student->NumParameters()},
                        {"object", uri}};
}

// Runs `body` as the task of `phase`: options checked, exceptions caught
// (`what` names the work in their statuses), errors prefixed with the phase.
template <typename Body>
absl::StatusOr<nlohmann::json> RunTask(lpd::v1::Phase phase,
                                       absl::string_view what,
                                       const CompressionJob& spec,
                                       const TaskContext& ctx, Body&& body) {
  absl::Status valid = CheckContext(ctx);
  if (!valid.ok()) return job::InPhase(phase, valid);
  Job job(spec, ctx, phase);
  absl::StatusOr<nlohmann::json> result = GuardTorch(
      what, [&]() -> absl::StatusOr<nlohmann::json> { return body(job); });
  if (!result.ok()) return job::InPhase(phase, result.status());
  return result;
}

}  // namespace

std::string FormatSeconds(double seconds) {
  if (!(seconds >= 0) || seconds > 1e9) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

absl::StatusOr<nlohmann::json> RunScoreTask(const CompressionJob& job,
                                            int shard_index, int shard_count,
                                            const TaskContext& ctx) {
  return RunTask(lpd::v1::PHASE_SCORE, "scoring", job, ctx,
                 [&](Job& j) { return Score(j, shard_index, shard_count); });
}

absl::StatusOr<nlohmann::json> RunDistillTask(const CompressionJob& job,
                                              const TaskContext& ctx) {
  return RunTask(lpd::v1::PHASE_DISTILL, "distillation", job, ctx,
                 [&](Job& j) { return Distill(j); });
}

absl::StatusOr<nlohmann::json> RunEvaluateTask(const CompressionJob& job,
                                               const TaskContext& ctx) {
  return RunEvaluateTask(job, ctx, nullptr);
}

absl::StatusOr<nlohmann::json> RunEvaluateTask(const CompressionJob& job,
                                               const TaskContext& ctx,
                                               EvaluationReport* report) {
  return RunTask(lpd::v1::PHASE_EVALUATE, "evaluation", job, ctx,
                 [&](Job& j) { return EvaluatePhase(j, report); });
}

absl::StatusOr<nlohmann::json> RunExportTask(const CompressionJob& job,
                                             const TaskContext& ctx) {
  return RunTask(lpd::v1::PHASE_EXPORT, "export", job, ctx,
                 [&](Job& j) { return ExportPhase(j); });
}

}  // namespace lpd::engine

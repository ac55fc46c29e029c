// lpd-worker: the GPU worker process. Subcommands wire the engine library:
//   forward  one forward pass of a model folder on stored inputs
//   units    the prunable units of a model folder
//   synth-dataset  a synthetic training set that fits a model folder
//   run      a whole compression job (SCORE → SELECT → DISTILL → EVALUATE
//            → EXPORT) on this machine
//   serve    the service worker: lease tasks from lpd-scheduler and run
//            them (worker/worker_loop.h) until SIGTERM
//   distill-rank  one rank of a data-parallel DISTILL (spec.distill.gpus >
//            1), started by `run` and `serve` through
//            worker/data_parallel_launcher.h, not by people
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/cli_args.h"
#include "base/termination_signals.h"
#include "engine/core/cpu_threads.h"
#include "engine/data/dataset.h"
#include "engine/data/synthetic_dataset.h"
#include "engine/formats/unet_config.h"
#include "engine/model/forward_runner.h"
#include "engine/model/model_loader.h"
#include "engine/model/unet.h"
#include "job/names.h"
#include "job/spec.h"
#include "metrics/endpoint.h"
#include "metrics/registry.h"
#include "nlohmann/json.hpp"
#include "runtime/job_tasks.h"
#include "runtime/pipeline.h"
#include "storage/object_store.h"
#include "storage/s3_flags.h"
#include "worker/data_parallel_launcher.h"
#include "worker/worker_loop.h"
#include "worker/worker_metrics.h"

namespace {

const std::vector<lpd::FlagSpec> kForwardFlags = {
    {"model", true, false, "model folder: config.json + safetensors"},
    {"inputs", true, false,
     "safetensors file with input.sample, input.timestep, "
     "input.encoder_hidden_states (+ input.text_embeds, input.time_ids)"},
    {"out", true, false, "output safetensors: output.sample and act.* blocks"},
    {"remove", false, false, "comma-separated unit ids to remove"},
    {"device", false, false, "cpu (default) or cuda[:N]"},
    {"dtype", false, false, "float32 (default), float16 or bfloat16"},
    {"threads", false, false, "CPU threads (default: all cores)"},
};

const std::vector<lpd::FlagSpec> kUnitsFlags = {
    {"model", true, false, "model folder (only config.json is read)"},
    {"granularity", false, false,
     "unit kinds, comma-separated (default resnet,attention; or "
     "resnet,transformer_block)"},
};

const std::vector<lpd::FlagSpec> kSynthDatasetFlags = {
    {"model", true, false, "model folder (only config.json is read)"},
    {"samples", true, false, "number of samples"},
    {"out", true, false, "dataset folder to write (must not hold one yet)"},
    {"latent-size", false, false,
     "latent height and width (default: the config's sample_size)"},
    {"seq-len", false, false,
     "encoder_hidden_states sequence length (default 77)"},
    {"shard-size", false, false, "samples per shard (default 256)"},
    {"seed", false, false, "random seed (default 0)"},
};

// The run flags, then the --s3-* flags (storage/s3_flags.h) for s3:// URIs
// in the job (they override the AWS_* variables).
const std::vector<lpd::FlagSpec> kRunFlags = [] {
  std::vector<lpd::FlagSpec> flags = {
      {"device", false, false,
       "cpu or cuda[:N] (default: the spec's device; auto: a GPU if any)"},
      {"threads", false, false, "CPU threads (default: all cores)"},
      {"log-every", false, false,
       "distillation progress every N steps (default: ~20 lines per run)"},
  };
  for (const lpd::FlagSpec& spec : lpd::storage::S3FlagSpecs()) {
    flags.push_back(spec);
  }
  return flags;
}();

// The serve flags, then the --s3-* flags.
const std::vector<lpd::FlagSpec> kServeFlags = [] {
  std::vector<lpd::FlagSpec> flags = {
      {"scheduler", true, false, "lpd-scheduler's host:port"},
      {"device", false, false,
       "cpu or cuda[:N] (default: the spec's device; auto: a GPU if any)"},
      {"threads", false, false, "CPU threads (default: all cores)"},
      {"name", false, false, "name shown by the scheduler (default host:pid)"},
      {"lease-wait-ms", false, false, "long-poll length (default 10000)"},
      {"max-tasks", false, false, "exit after N tasks (default: never)"},
      {"gpus", false, false,
       "GPUs one task may use, told to the scheduler (default: 0 with "
       "--device cpu, else every GPU this process sees)"},
      {"metrics-listen", false, false,
       "address:port of the Prometheus /metrics endpoint (default: none)"},
      {"metrics-port-file", false, false,
       "write the metrics port actually bound to this file"},
  };
  for (const lpd::FlagSpec& spec : lpd::storage::S3FlagSpecs()) {
    flags.push_back(spec);
  }
  return flags;
}();

// The distill-rank flags, then the --s3-* flags.
const std::vector<lpd::FlagSpec> kDistillRankFlags = [] {
  std::vector<lpd::FlagSpec> flags = {
      {"job", true, false, "the job: a binary lpd.v1.CompressionJob file"},
      {"rank", true, false, "this process's rank"},
      {"world-size", true, false, "number of ranks"},
      {"rendezvous", true, false, "file:///path or tcp://host:port"},
      {"result", true, false, "JSON file this rank's result goes to"},
      {"device", false, false, "cpu or cuda (default: the spec's device)"},
      {"threads", false, false, "CPU threads (default: all cores)"},
  };
  for (const lpd::FlagSpec& spec : lpd::storage::S3FlagSpecs()) {
    flags.push_back(spec);
  }
  return flags;
}();

void PrintUsage() {
  std::fprintf(stderr,
               "usage: lpd-worker COMMAND [flags]\n\n"
               "lpd-worker forward --model DIR --inputs FILE --out FILE\n%s\n"
               "lpd-worker units --model DIR [--granularity KINDS]\n%s\n"
               "lpd-worker synth-dataset --model DIR --samples N --out DIR "
               "[--latent-size S] [--seq-len L] [--shard-size M] [--seed K]\n"
               "%s\n"
               "lpd-worker run JOB.yaml [--device D] [--threads N] "
               "[--log-every N] [--s3-endpoint URL] [--s3-region R] "
               "[--s3-addressing path|virtual] [--s3-access-key-id ID] "
               "[--s3-secret-access-key KEY] [--s3-session-token T]\n"
               "  (--s3-* flags override the AWS_* environment variables "
               "for s3:// URIs)\n%s\n"
               "lpd-worker serve --scheduler HOST:PORT [--device D] "
               "[--threads N] [--name NAME] [--s3-* ...]\n%s",
               lpd::CliArgs::Usage(kForwardFlags).c_str(),
               lpd::CliArgs::Usage(kUnitsFlags).c_str(),
               lpd::CliArgs::Usage(kSynthDatasetFlags).c_str(),
               lpd::CliArgs::Usage(kRunFlags).c_str(),
               lpd::CliArgs::Usage(kServeFlags).c_str());
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "lpd-worker: %s\n", status.ToString().c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

int RunForwardCommand(const std::vector<std::string>& args) {
  auto flags = lpd::CliArgs::Parse(args, kForwardFlags);
  if (!flags.ok()) {
    PrintUsage();
    return Fail(flags.status());
  }
  auto threads = flags->GetInt("threads", 0);
  if (!threads.ok()) return Fail(threads.status());
  lpd::engine::SetCpuThreads(static_cast<int>(*threads));
  lpd::engine::ForwardRequest request;
  request.model_dir = flags->Get("model");
  request.inputs_path = flags->Get("inputs");
  request.output_path = flags->Get("out");
  for (const std::string& unit : flags->GetList("remove")) {
    request.remove_units.insert(unit);
  }
  request.device = flags->Get("device", "cpu");
  request.dtype = flags->Get("dtype", "float32");
  if (absl::Status status = lpd::engine::RunForward(request); !status.ok()) {
    return Fail(status);
  }
  std::printf("wrote %s\n", request.output_path.c_str());
  return 0;
}

int RunUnitsCommand(const std::vector<std::string>& args) {
  auto flags = lpd::CliArgs::Parse(args, kUnitsFlags);
  if (!flags.ok()) {
    PrintUsage();
    return Fail(flags.status());
  }
  std::set<lpd::engine::UnitKind> kinds;
  for (const std::string& name : flags->GetList("granularity")) {
    auto kind = lpd::engine::ParseUnitKind(name);
    if (!kind.ok()) return Fail(kind.status());
    kinds.insert(*kind);
  }
  if (kinds.empty()) {
    kinds = {lpd::engine::UnitKind::kResnet, lpd::engine::UnitKind::kAttention};
  }
  if (kinds.contains(lpd::engine::UnitKind::kAttention) &&
      kinds.contains(lpd::engine::UnitKind::kTransformerBlock)) {
    return Fail(absl::InvalidArgumentError(
        "--granularity: attention and transformer_block overlap; pick one"));
  }
  auto model = lpd::engine::BuildModelStructure(flags->Get("model"));
  if (!model.ok()) return Fail(model.status());
  int removable = 0;
  int64_t removable_params = 0;
  std::printf("%-55s %-18s %14s  %s\n", "unit", "kind", "parameters",
              "removable");
  for (const auto& unit : (*model)->Units(kinds)) {
    std::printf("%-55s %-18s %14lld  %s\n", unit.id.c_str(),
                std::string(lpd::engine::UnitKindName(unit.kind)).c_str(),
                static_cast<long long>(unit.num_parameters),
                unit.removable ? "yes" : "no");
    if (unit.removable) {
      ++removable;
      removable_params += unit.num_parameters;
    }
  }
  const int64_t total = (*model)->NumParameters();
  std::printf("%d removable units holding %lld of %lld parameters (%.1f%%)\n",
              removable, static_cast<long long>(removable_params),
              static_cast<long long>(total), 100.0 * removable_params / total);
  return 0;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ",";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

int RunSynthDatasetCommand(const std::vector<std::string>& args) {
  auto flags = lpd::CliArgs::Parse(args, kSynthDatasetFlags);
  if (!flags.ok()) {
    PrintUsage();
    return Fail(flags.status());
  }
  lpd::engine::SyntheticDatasetOptions options;
  auto samples = flags->GetInt("samples", 0);
  if (!samples.ok()) return Fail(samples.status());
  options.num_samples = *samples;
  auto latent_size = flags->GetInt("latent-size", 0);
  if (!latent_size.ok()) return Fail(latent_size.status());
  options.latent_size = *latent_size;
  auto seq_len = flags->GetInt("seq-len", options.seq_len);
  if (!seq_len.ok()) return Fail(seq_len.status());
  options.seq_len = *seq_len;
  auto shard_size = flags->GetInt("shard-size", options.shard_size);
  if (!shard_size.ok()) return Fail(shard_size.status());
  options.shard_size = *shard_size;
  auto seed = flags->GetInt("seed", 0);
  if (!seed.ok()) return Fail(seed.status());
  options.seed = static_cast<uint64_t>(*seed);
  if (options.num_samples < 1 || options.latent_size < 0 ||
      options.seq_len < 1 || options.shard_size < 1) {
    return Fail(absl::InvalidArgumentError(
        "--samples, --seq-len and --shard-size must be >= 1, --latent-size "
        ">= 0"));
  }
  auto config = lpd::engine::LoadUNetConfig(flags->Get("model"));
  if (!config.ok()) return Fail(config.status());
  const std::string out = flags->Get("out");
  auto manifest = lpd::engine::WriteSyntheticDataset(*config, options, out);
  if (!manifest.ok()) return Fail(manifest.status());
  // Read back what was written, as a training job would.
  auto dataset = lpd::engine::Dataset::Open(out);
  if (!dataset.ok()) return Fail(dataset.status());
  if (absl::Status status = (*dataset)->Validate(*config); !status.ok()) {
    return Fail(status);
  }
  std::printf("wrote %lld samples in %zu shards to %s\n",
              static_cast<long long>(manifest->num_samples),
              manifest->shards.size(), out.c_str());
  std::printf("  vae_scaling_factor     %g\n", manifest->vae_scaling_factor);
  for (const auto& [name, info] : manifest->tensors) {
    std::printf("  %-22s %s %s\n", name.c_str(), ShapeText(info.shape).c_str(),
                std::string(lpd::engine::DtypeName(info.dtype)).c_str());
  }
  return 0;
}

// How a data-parallel DISTILL's ranks get this process's --s3-* settings:
// the endpoint, region and addressing as flags, credentials through their
// AWS_* variables (never on a command line).
void ForwardS3Flags(const lpd::CliArgs& flags,
                    lpd::worker::DataParallelLaunchOptions& launch) {
  for (const char* name : {"s3-endpoint", "s3-region", "s3-addressing"}) {
    if (flags.Has(name)) {
      launch.extra_args.push_back(absl::StrCat("--", name));
      launch.extra_args.push_back(flags.Get(name));
    }
  }
  const std::pair<const char*, const char*> secrets[] = {
      {"s3-access-key-id", "AWS_ACCESS_KEY_ID"},
      {"s3-secret-access-key", "AWS_SECRET_ACCESS_KEY"},
      {"s3-session-token", "AWS_SESSION_TOKEN"}};
  for (const auto& [flag, variable] : secrets) {
    if (flags.Has(flag)) {
      launch.extra_env.push_back(absl::StrCat(variable, "=", flags.Get(flag)));
    }
  }
}

// DISTILL: in this process, or over spec.distill.gpus child processes.
absl::StatusOr<nlohmann::json> RunDistill(const lpd::v1::CompressionJob& job,
                                          const lpd::engine::TaskContext& ctx,
                                          const lpd::CliArgs& flags) {
  const int ranks = job.spec().distill().gpus();
  if (ranks <= 1) return lpd::engine::RunDistillTask(job, ctx);
  lpd::worker::DataParallelLaunchOptions launch;
  launch.world_size = ranks;
  launch.device = ctx.device;
  if (launch.device.empty()) {
    launch.device = job.spec().device() == lpd::v1::DEVICE_CPU    ? "cpu"
                    : job.spec().device() == lpd::v1::DEVICE_CUDA ? "cuda"
                                                                  : "";
  }
  const int threads =
      ctx.threads > 0 ? ctx.threads
                      : static_cast<int>(std::thread::hardware_concurrency());
  launch.threads_per_rank = std::max(1, threads / ranks);
  launch.progress = ctx.progress;
  launch.log = ctx.log;
  launch.on_distill_step = ctx.on_distill_step;
  ForwardS3Flags(flags, launch);
  absl::StatusOr<std::string> result =
      lpd::worker::RunDataParallelDistill(job, launch);
  if (!result.ok()) {
    // The ranks' statuses already name the phase.
    return lpd::job::InPhase(lpd::v1::PHASE_DISTILL, result.status());
  }
  nlohmann::json json = nlohmann::json::parse(*result, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return lpd::job::InPhase(
        lpd::v1::PHASE_DISTILL,
        absl::InternalError("rank 0's result is not JSON"));
  }
  json["ranks"] = ranks;
  return json;
}

// One rank of a data-parallel DISTILL. Writes its result file (also on
// failure); exit 0 when it succeeded, 1 otherwise. SIGTERM or SIGINT asks
// it (and so every rank) to stop at the next step, after a checkpoint.
int DistillRankCommand(const std::vector<std::string>& args) {
  static std::atomic<bool> stop{false};
  lpd::HandleTerminationSignals([](int) { stop = true; });
  auto flags = lpd::CliArgs::Parse(args, kDistillRankFlags);
  if (!flags.ok()) {
    PrintUsage();
    return Fail(flags.status());
  }
  const std::string result_path = flags->Get("result");
  auto finish = [&](const absl::StatusOr<std::string>& result) {
    std::ofstream out(result_path);
    out << lpd::worker::RankResultJson(result);
    out.close();
    if (!result.ok()) {
      std::fprintf(stderr, "lpd-worker distill-rank %s: %s\n",
                   flags->Get("rank").c_str(),
                   result.status().ToString().c_str());
    }
    return result.ok() && out ? 0 : 1;
  };
  auto rank = flags->GetInt("rank", 0);
  if (!rank.ok()) return finish(rank.status());
  auto world = flags->GetInt("world-size", 0);
  if (!world.ok()) return finish(world.status());
  auto threads = flags->GetInt("threads", 0);
  if (!threads.ok()) return finish(threads.status());
  auto s3_config = lpd::storage::S3ConfigFromFlags(*flags);
  if (!s3_config.ok()) return finish(s3_config.status());
  lpd::storage::SetDefaultS3Config(*s3_config);
  auto dp = lpd::engine::MakeDataParallelOptions(static_cast<int>(*rank),
                                                 static_cast<int>(*world),
                                                 flags->Get("rendezvous"));
  if (!dp.ok()) return finish(dp.status());
  lpd::v1::CompressionJob job;
  {
    std::ifstream in(flags->Get("job"), std::ios::binary);
    if (!in || !job.ParseFromIstream(&in)) {
      return finish(absl::InvalidArgumentError(
          absl::StrCat("cannot read the job from ", flags->Get("job"))));
    }
  }
  lpd::engine::TaskContext context;
  context.device = flags->Get("device");
  context.threads = static_cast<int>(*threads);
  context.data_parallel = *dp;
  const bool first = dp->rank == 0;
  context.progress = [first](double fraction, const std::string& line) {
    if (first) {
      std::printf("@progress %.6f %s\n", fraction, line.c_str());
      std::fflush(stdout);
    }
    return stop ? absl::CancelledError("asked to stop (SIGTERM)")
                : absl::OkStatus();
  };
  context.log = [](const std::string& line) {
    std::printf("@log %s\n", line.c_str());
    std::fflush(stdout);
  };
  context.on_distill_step =
      [](double seconds,
         const std::vector<std::pair<std::string, double>>& losses) {
        std::string line = absl::StrCat("@step ", seconds);
        for (const auto& [name, value] : losses) {
          absl::StrAppend(&line, " ", name, "=", value);
        }
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      };
  absl::StatusOr<nlohmann::json> result =
      lpd::engine::RunDistillTask(job, context);
  if (!result.ok()) return finish(result.status());
  return finish(result->dump());
}

int RunJobCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0].starts_with("--")) {
    PrintUsage();
    return Fail(absl::InvalidArgumentError("run: missing JOB.yaml"));
  }
  const std::string spec_path = args[0];
  auto flags = lpd::CliArgs::Parse(
      std::vector<std::string>(args.begin() + 1, args.end()), kRunFlags);
  if (!flags.ok()) {
    PrintUsage();
    return Fail(flags.status());
  }
  lpd::engine::PipelineOptions options;
  options.device = flags->Get("device");
  auto threads = flags->GetInt("threads", 0);
  if (!threads.ok()) return Fail(threads.status());
  options.threads = static_cast<int>(*threads);
  auto log_every = flags->GetInt("log-every", 0);
  if (!log_every.ok()) return Fail(log_every.status());
  options.log_every = *log_every;
  if (options.threads < 0 || options.log_every < 0) {
    return Fail(
        absl::InvalidArgumentError("--threads and --log-every must be >= 0"));
  }
  // s3:// stores opened by the job use the flags over the environment.
  auto s3_config = lpd::storage::S3ConfigFromFlags(*flags);
  if (!s3_config.ok()) return Fail(s3_config.status());
  lpd::storage::SetDefaultS3Config(*s3_config);
  // A spec that cannot be read or is invalid is the caller's mistake: 2.
  auto job = lpd::job::LoadJobSpecFile(spec_path);
  if (!job.ok()) {
    std::fprintf(stderr, "lpd-worker: %s\n", job.status().ToString().c_str());
    return 2;
  }
  const lpd::CliArgs& run_flags = *flags;
  options.run_distill = [&](const lpd::v1::CompressionJob& j,
                            const lpd::engine::TaskContext& ctx) {
    return RunDistill(j, ctx, run_flags);
  };
  auto result = lpd::engine::RunJob(*job, options);
  if (!result.ok()) return Fail(result.status());
  return 0;
}

// Runs one leased task with the engine's job tasks.
absl::StatusOr<std::string> RunLeasedTask(
    const lpd::v1::Task& task, const lpd::worker::TaskProgress& progress,
    const std::string& device, int threads, const lpd::CliArgs& flags,
    lpd::worker::WorkerMetrics& metrics) {
  lpd::engine::TaskContext context;
  context.device = device;
  context.threads = threads;
  context.progress = progress;
  const std::string job_id = task.job_id();
  context.on_distill_step =
      [&metrics, job_id](
          double seconds,
          const std::vector<std::pair<std::string, double>>& losses) {
        metrics.DistillStep(job_id, seconds, losses);
      };
  context.on_units_scored = [&metrics](int64_t units) {
    metrics.UnitsScored(units);
  };
  struct EndOfTask {
    lpd::worker::WorkerMetrics& metrics;
    std::string job;
    ~EndOfTask() { metrics.TaskEnded(job); }
  } end_of_task{metrics, job_id};
  const std::string prefix =
      absl::StrCat("lpd-worker: task ", task.task_id(), ": ");
  context.log = [prefix](const std::string& line) {
    std::fprintf(stderr, "%s%s\n", prefix.c_str(), line.c_str());
  };
  absl::StatusOr<nlohmann::json> result;
  switch (task.phase()) {
    case lpd::v1::PHASE_SCORE:
      result = lpd::engine::RunScoreTask(task.spec(), task.shard_index(),
                                         task.shard_count(), context);
      break;
    case lpd::v1::PHASE_DISTILL:
      result = RunDistill(task.spec(), context, flags);
      break;
    case lpd::v1::PHASE_EVALUATE:
      result = lpd::engine::RunEvaluateTask(task.spec(), context);
      break;
    case lpd::v1::PHASE_EXPORT:
      result = lpd::engine::RunExportTask(task.spec(), context);
      break;
    default:
      return absl::UnimplementedError(absl::StrCat(
          "task ", task.task_id(), ": phase ",
          lpd::v1::Phase_Name(task.phase()), " does not run on workers"));
  }
  if (!result.ok()) return result.status();
  return result->dump();
}

int ServeCommand(const std::vector<std::string>& args) {
  // SIGTERM/SIGINT: stop leasing, stop the task in hand (it is requeued).
  static std::atomic<bool> stop{false};
  lpd::HandleTerminationSignals([](int signal) {
    std::fprintf(stderr, "lpd-worker: signal %d, stopping\n", signal);
    stop = true;
  });
  auto flags = lpd::CliArgs::Parse(args, kServeFlags);
  if (!flags.ok()) {
    PrintUsage();
    return Fail(flags.status());
  }
  auto threads = flags->GetInt("threads", 0);
  if (!threads.ok()) return Fail(threads.status());
  auto wait_ms = flags->GetInt("lease-wait-ms", 10000);
  if (!wait_ms.ok()) return Fail(wait_ms.status());
  auto max_tasks = flags->GetInt("max-tasks", 0);
  if (!max_tasks.ok()) return Fail(max_tasks.status());
  if (*threads < 0 || *wait_ms < 0 || *wait_ms > 60000 || *max_tasks < 0) {
    return Fail(absl::InvalidArgumentError(
        "--threads and --max-tasks must be >= 0, --lease-wait-ms in "
        "[0, 60000]"));
  }
  auto s3_config = lpd::storage::S3ConfigFromFlags(*flags);
  if (!s3_config.ok()) return Fail(s3_config.status());
  lpd::storage::SetDefaultS3Config(*s3_config);
  lpd::engine::SetCpuThreads(static_cast<int>(*threads));
  lpd::worker::WorkerLoopOptions options;
  options.scheduler_address = flags->Get("scheduler");
  options.name = flags->Get("name");
  const std::string device = flags->Get("device");
  options.device = device.empty() ? "auto" : device;
  options.lease_wait = absl::Milliseconds(*wait_ms);
  options.max_tasks = static_cast<int>(*max_tasks);
  auto gpus = flags->GetInt(
      "gpus",
      device == "cpu" ? 0 : static_cast<int64_t>(torch::cuda::device_count()));
  if (!gpus.ok()) return Fail(gpus.status());
  if (*gpus < 0) {
    return Fail(absl::InvalidArgumentError("--gpus must be >= 0"));
  }
  options.gpus = static_cast<int>(*gpus);
  lpd::metrics::Registry registry;
  lpd::worker::WorkerMetrics worker_metrics(registry, LPD_VERSION);
  std::unique_ptr<lpd::metrics::MetricsHttpServer> metrics_server;
  if (flags->Has("metrics-listen")) {
    auto started =
        lpd::metrics::ServeRegistry(registry, flags->Get("metrics-listen"),
                                    flags->Get("metrics-port-file"));
    if (!started.ok()) return Fail(started.status());
    metrics_server = std::move(*started);
    std::fprintf(stderr, "lpd-worker: metrics on port %d (/metrics)\n",
                 metrics_server->port());
  }
  const int thread_count = static_cast<int>(*threads);
  const lpd::worker::TaskRunner runner =
      [&](const lpd::v1::Task& task,
          const lpd::worker::TaskProgress& progress) {
        return RunLeasedTask(task, progress, device, thread_count, *flags,
                             worker_metrics);
      };
  const absl::Status status = lpd::worker::RunWorkerLoop(options, runner, stop);
  if (!status.ok()) return Fail(status);
  std::fprintf(stderr, "lpd-worker: stopped\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage();
    return 2;
  }
  const std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "forward") return RunForwardCommand(args);
  if (command == "units") return RunUnitsCommand(args);
  if (command == "synth-dataset") return RunSynthDatasetCommand(args);
  if (command == "run") return RunJobCommand(args);
  if (command == "serve") return ServeCommand(args);
  if (command == "distill-rank") return DistillRankCommand(args);
  if (command == "--help" || command == "help") {
    PrintUsage();
    return 0;
  }
  std::fprintf(stderr, "lpd-worker: unknown command \"%s\"\n", command.c_str());
  PrintUsage();
  return 2;
}

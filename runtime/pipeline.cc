#include "runtime/pipeline.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"
#include "storage/object_store.h"

namespace lpd::engine {
absl::StatusOr<PipelineResult> RunJob(const lpd::v1::CompressionJob& spec,
                                      const PipelineOptions& options) {
  if (options.eval_batch_size < 1 || options.latency_runs < 0) {
    return absl::InvalidArgumentError(
        "pipeline options: eval_batch_size must be >= 1, latency_runs >= 0");
  }
  std::function<void(const std::string&)> log = options.progress;
  if (!log) {
    log = [](const std::string& line) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    };
  }
  TaskContext ctx;
  ctx.device = options.device;
  ctx.threads = options.threads;
  ctx.log = log;
  ctx.log_every = options.log_every;
  ctx.eval_batch_size = options.eval_batch_size;
  ctx.latency_runs = options.latency_runs;
  const auto start = std::chrono::steady_clock::now();

  RETURN_IF_ERROR(RunScoreTask(spec, 0, 1, ctx).status());
  PipelineResult result;
  {
    ASSIGN_OR_RETURN(nlohmann::json selected,
                     selection::RunSelectTask(spec, 1, log));
    absl::StatusOr<selection::Plan> plan =
        selection::PlanFromJson(selected["plan"]);
    if (!plan.ok()) {
      return absl::InternalError(
          absl::StrCat("SELECT: plan: ", plan.status().message()));
    }
    result.plan = *std::move(plan);
  }
  ASSIGN_OR_RETURN(nlohmann::json distill, options.run_distill
                                               ? options.run_distill(spec, ctx)
                                               : RunDistillTask(spec, ctx));
  if (distill["resumed_from"].is_number_integer()) {
    result.resumed_from = distill["resumed_from"].get<int64_t>();
  }
  result.steps_run = distill["steps_run"].get<int64_t>();
  result.final_step = distill["final_step"].get<int64_t>();
  RETURN_IF_ERROR(RunEvaluateTask(spec, ctx, &result.evaluation).status());
  RETURN_IF_ERROR(RunExportTask(spec, ctx).status());
  {
    ASSIGN_OR_RETURN(storage::StoreLocation out,
                     storage::OpenStoreLocation(spec.spec().output().uri()));
    result.output_uri = out.store->UriOf(out.prefix);
  }
  log(absl::StrFormat(
      "done in %s: %s",
      FormatSeconds(std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - start)
                        .count()),
      result.output_uri));
  return result;
}

}  // namespace lpd::engine

#include "server/scheduler_metrics.h"

#include <vector>

#include "absl/strings/ascii.h"

namespace lpd::server {
namespace {

std::string StateLabel(lpd::v1::JobState state) {
  std::string name = lpd::v1::JobState_Name(state);
  constexpr char kPrefix[] = "JOB_STATE_";
  if (name.rfind(kPrefix, 0) == 0) name = name.substr(sizeof(kPrefix) - 1);
  return absl::AsciiStrToLower(name);
}

}  // namespace

void RegisterSchedulerMetrics(metrics::Registry& registry,
                              const Scheduler& scheduler,
                              const std::string& version) {
  registry
      .AddGauge("lpd_build_info", "The lpd version of this process (always 1).",
                {"version"})
      .With({version})
      .Set(1);
  auto& submitted =
      registry.AddCounter("lpd_jobs_submitted_total",
                          "Jobs accepted since this scheduler started.");
  auto& jobs = registry.AddGauge("lpd_jobs", "Jobs by state.", {"state"});
  auto& progress = registry.AddGauge(
      "lpd_job_progress_ratio",
      "Share of a queued or running job done, from 0 to 1.", {"job"});
  auto& workers = registry.AddGauge(
      "lpd_workers", "Registered workers, busy (holding a task) or idle.",
      {"state"});
  auto& retried = registry.AddCounter(
      "lpd_tasks_retried_total",
      "Tasks put back in the queue since this scheduler started, by reason.",
      {"reason"});
  registry.AddCollector([&scheduler, &submitted, &jobs, &progress, &workers,
                         &retried] {
    const Scheduler::Stats stats = scheduler.GetStats();
    submitted.With({}).IncrementTo(static_cast<double>(stats.jobs_submitted));
    for (const auto& [state, count] : stats.jobs) {
      jobs.With({StateLabel(state)}).Set(static_cast<double>(count));
    }
    std::vector<std::vector<std::string>> active;
    for (const auto& [id, ratio] : stats.active_progress) {
      progress.With({id}).Set(ratio);
      active.push_back({id});
    }
    progress.RetainOnly(active);
    workers.With({"busy"}).Set(static_cast<double>(stats.workers_busy));
    workers.With({"idle"}).Set(static_cast<double>(stats.workers_idle));
    retried.With({"lease_expired"})
        .IncrementTo(static_cast<double>(stats.tasks_requeued_lease_expired));
    retried.With({"failed"})
        .IncrementTo(static_cast<double>(stats.tasks_requeued_failed));
  });
}

}  // namespace lpd::server

#include "server/scheduler_metrics.h"

#include <set>

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
  metrics::AddBuildInfo(registry, version);
  prometheus::Registry& families = registry.families();
  auto& submitted = prometheus::BuildCounter()
                        .Name("lpd_jobs_submitted_total")
                        .Help("Jobs accepted since this scheduler started.")
                        .Register(families)
                        .Add({});
  auto& jobs = prometheus::BuildGauge()
                   .Name("lpd_jobs")
                   .Help("Jobs by state.")
                   .Register(families);
  auto& progress =
      prometheus::BuildGauge()
          .Name("lpd_job_progress_ratio")
          .Help("Share of a queued or running job done, from 0 to 1.")
          .Register(families);
  auto& workers =
      prometheus::BuildGauge()
          .Name("lpd_workers")
          .Help(
              "Registered workers: busy (holding a task), idle, or lost "
              "(silent for two leases; forgotten after 10 minutes).")
          .Register(families);
  auto& retried = prometheus::BuildCounter()
                      .Name("lpd_tasks_retried_total")
                      .Help(
                          "Tasks put back in the queue since this scheduler "
                          "started, by reason.")
                      .Register(families);
  // `shown`: the jobs whose progress the last collection exposed.
  registry.AddCollector([&scheduler, &submitted, &jobs, &progress, &workers,
                         &retried, shown = std::set<std::string>()]() mutable {
    const Scheduler::Stats stats = scheduler.GetStats();
    metrics::IncrementTo(submitted, static_cast<double>(stats.jobs_submitted));
    for (const auto& [state, count] : stats.jobs) {
      jobs.Add({{"state", StateLabel(state)}}).Set(static_cast<double>(count));
    }
    std::set<std::string> active;
    for (const auto& [id, ratio] : stats.active_progress) {
      progress.Add({{"job", id}}).Set(ratio);
      active.insert(id);
    }
    for (const std::string& id : shown) {
      if (!active.contains(id)) metrics::RemoveSeries(progress, {{"job", id}});
    }
    shown = std::move(active);
    workers.Add({{"state", "busy"}})
        .Set(static_cast<double>(stats.workers_busy));
    workers.Add({{"state", "idle"}})
        .Set(static_cast<double>(stats.workers_idle));
    workers.Add({{"state", "lost"}})
        .Set(static_cast<double>(stats.workers_lost));
    metrics::IncrementTo(
        retried.Add({{"reason", "lease_expired"}}),
        static_cast<double>(stats.tasks_requeued_lease_expired));
    metrics::IncrementTo(retried.Add({{"reason", "failed"}}),
                         static_cast<double>(stats.tasks_requeued_failed));
  });
}

}  // namespace lpd::server

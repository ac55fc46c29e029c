// The scheduler's Prometheus families (DESIGN §6), all declared here and
// filled from Scheduler::GetStats() when /metrics is scraped:
//
//   lpd_build_info{version}            1
//   lpd_jobs_submitted_total           jobs accepted since start
//   lpd_jobs{state}                    jobs by state (every state listed)
//   lpd_job_progress_ratio{job}        queued and running jobs only: a job's
//                                      series goes when it ends
//   lpd_workers{state}                 registered workers, busy or idle
//   lpd_tasks_retried_total{reason}    tasks requeued since start, by
//                                      reason: lease_expired, failed
#ifndef LPD_SERVER_SCHEDULER_METRICS_H_
#define LPD_SERVER_SCHEDULER_METRICS_H_

#include <string>

#include "metrics/registry.h"
#include "server/scheduler.h"

namespace lpd::server {

// Adds the families to `registry` and a collector that reads `scheduler`,
// which must outlive the registry's scrapes.
void RegisterSchedulerMetrics(metrics::Registry& registry,
                              const Scheduler& scheduler,
                              const std::string& version);

}  // namespace lpd::server

#endif  // LPD_SERVER_SCHEDULER_METRICS_H_

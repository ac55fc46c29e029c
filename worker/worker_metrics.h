// lpd-worker's Prometheus families (DESIGN §6), all declared here:
//
//   lpd_build_info{version}                  1
//   lpd_distill_step_duration_seconds        histogram of distillation steps
//                                            (data-parallel: rank 0's)
//   lpd_distill_loss{job,term}               the last step's loss (total,
//                                            task, output_kd, feature_kd) of
//                                            the task running; removed when
//                                            it ends
//   lpd_score_units_total                    units scored by this worker
//   lpd_storage_bytes_total{direction}       bytes uploaded / downloaded by
//                                            this process's object stores
//   lpd_storage_errors_total                 their failed calls (NotFound
//                                            aside)
//
// Storage of data-parallel ranks (child processes) is not counted here.
#ifndef LPD_WORKER_WORKER_METRICS_H_
#define LPD_WORKER_WORKER_METRICS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "metrics/registry.h"

namespace lpd::worker {

class WorkerMetrics {
 public:
  // Adds the families to `registry` (which must outlive this object, and
  // this object its scrapes).
  WorkerMetrics(metrics::Registry& registry, const std::string& version);

  void DistillStep(const std::string& job, double seconds,
                   const std::vector<std::pair<std::string, double>>& losses);
  void UnitsScored(int64_t units);
  // Removes the job's per-job series (its task ended, however).
  void TaskEnded(const std::string& job);

 private:
  prometheus::Histogram& step_seconds_;
  prometheus::Family<prometheus::Gauge>& loss_;
  prometheus::Counter& units_scored_;
};

}  // namespace lpd::worker

#endif  // LPD_WORKER_WORKER_METRICS_H_

#include "worker/worker_metrics.h"

#include "storage/object_store.h"

namespace lpd::worker {

WorkerMetrics::WorkerMetrics(metrics::Registry& registry,
                             const std::string& version)
    : step_seconds_(registry
                        .AddHistogram("lpd_distill_step_duration_seconds",
                                      "Wall time of a distillation step, "
                                      "batch included.",
                                      {}, metrics::DurationBuckets())
                        .With({})),
      loss_(registry.AddGauge(
          "lpd_distill_loss",
          "Loss of the last distillation step of the running task, by term.",
          {"job", "term"})),
      units_scored_(registry
                        .AddCounter("lpd_score_units_total",
                                    "Prunable units scored by this worker.")
                        .With({})) {
  registry
      .AddGauge("lpd_build_info", "The lpd version of this process (always 1).",
                {"version"})
      .With({version})
      .Set(1);
  auto& bytes = registry.AddCounter(
      "lpd_storage_bytes_total",
      "Bytes moved by this process's object stores, by direction.",
      {"direction"});
  auto& errors =
      registry
          .AddCounter("lpd_storage_errors_total",
                      "Failed object store calls of this process (NotFound "
                      "aside).")
          .With({});
  registry.AddCollector([&bytes, &errors] {
    const storage::StorageIoCounters& io = storage::StorageIo();
    bytes.With({"upload"})
        .IncrementTo(static_cast<double>(io.bytes_uploaded.load()));
    bytes.With({"download"})
        .IncrementTo(static_cast<double>(io.bytes_downloaded.load()));
    errors.IncrementTo(static_cast<double>(io.errors.load()));
  });
}

void WorkerMetrics::DistillStep(
    const std::string& job, double seconds,
    const std::vector<std::pair<std::string, double>>& losses) {
  step_seconds_.Observe(seconds);
  for (const auto& [term, value] : losses) loss_.With({job, term}).Set(value);
}

void WorkerMetrics::UnitsScored(int64_t units) {
  units_scored_.Increment(static_cast<double>(units));
}

void WorkerMetrics::TaskEnded(const std::string& job) {
  for (const char* term : {"total", "task", "output_kd", "feature_kd"}) {
    loss_.Remove({job, term});
  }
}

}  // namespace lpd::worker

#include "worker/worker_metrics.h"

#include "storage/object_store.h"

namespace lpd::worker {

WorkerMetrics::WorkerMetrics(metrics::Registry& registry,
                             const std::string& version)
    : step_seconds_(prometheus::BuildHistogram()
                        .Name("lpd_distill_step_duration_seconds")
                        .Help("Wall time of a distillation step, batch "
                              "included.")
                        .Register(registry.families())
                        .Add({}, metrics::DurationBuckets())),
      loss_(prometheus::BuildGauge()
                .Name("lpd_distill_loss")
                .Help("Loss of the last distillation step of the running "
                      "task, by term.")
                .Register(registry.families())),
      units_scored_(prometheus::BuildCounter()
                        .Name("lpd_score_units_total")
                        .Help("Prunable units scored by this worker.")
                        .Register(registry.families())
                        .Add({})) {
  metrics::AddBuildInfo(registry, version);
  auto& bytes =
      prometheus::BuildCounter()
          .Name("lpd_storage_bytes_total")
          .Help("Bytes moved by this process's object stores, by direction.")
          .Register(registry.families());
  auto& uploaded = bytes.Add({{"direction", "upload"}});
  auto& downloaded = bytes.Add({{"direction", "download"}});
  auto& errors = prometheus::BuildCounter()
                     .Name("lpd_storage_errors_total")
                     .Help(
                         "Failed object store calls of this process "
                         "(NotFound aside).")
                     .Register(registry.families())
                     .Add({});
  registry.AddCollector([&uploaded, &downloaded, &errors] {
    const storage::StorageIoCounters& io = storage::StorageIo();
    metrics::IncrementTo(uploaded,
                         static_cast<double>(io.bytes_uploaded.load()));
    metrics::IncrementTo(downloaded,
                         static_cast<double>(io.bytes_downloaded.load()));
    metrics::IncrementTo(errors, static_cast<double>(io.errors.load()));
  });
}

void WorkerMetrics::DistillStep(
    const std::string& job, double seconds,
    const std::vector<std::pair<std::string, double>>& losses) {
  step_seconds_.Observe(seconds);
  for (const auto& [term, value] : losses) {
    loss_.Add({{"job", job}, {"term", term}}).Set(value);
  }
}

void WorkerMetrics::UnitsScored(int64_t units) {
  units_scored_.Increment(static_cast<double>(units));
}

void WorkerMetrics::TaskEnded(const std::string& job) {
  for (const char* term : {"total", "task", "output_kd", "feature_kd"}) {
    metrics::RemoveSeries(loss_, {{"job", job}, {"term", term}});
  }
}

}  // namespace lpd::worker

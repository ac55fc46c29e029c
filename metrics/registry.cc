#include "metrics/registry.h"

#include "prometheus/text_serializer.h"

namespace lpd::metrics {

Registry::Registry() : families_(prometheus::Registry::InsertBehavior::Throw) {}

void Registry::AddCollector(std::function<void()> collect) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.push_back(std::move(collect));
}

std::vector<prometheus::MetricFamily> Registry::Collect() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& collect : collectors_) collect();
  return families_.Collect();
}

std::string Registry::Serialize() const {
  return prometheus::TextSerializer().Serialize(Collect());
}

void AddBuildInfo(Registry& registry, const std::string& version) {
  prometheus::BuildGauge()
      .Name("lpd_build_info")
      .Help("The lpd version of this process (always 1).")
      .Register(registry.families())
      .Add({{"version", version}})
      .Set(1);
}

prometheus::Histogram::BucketBoundaries DurationBuckets() {
  return {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
          2.5,   5,     10,   30,    60,   120, 300,  600, 900};
}

void IncrementTo(prometheus::Counter& counter, double total) {
  const double difference = total - counter.Value();
  if (difference > 0) counter.Increment(difference);
}

}  // namespace lpd::metrics

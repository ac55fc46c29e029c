// The project's Prometheus metrics over prometheus-cpp (DESIGN §6): a
// Registry that holds the metric families, declared with prometheus-cpp's
// builders, and the collectors that set scrape-time values before each
// collection.
//
//   auto registry = std::make_shared<metrics::Registry>();
//   auto& jobs = prometheus::BuildGauge()
//                    .Name("lpd_jobs")
//                    .Help("Jobs by state.")
//                    .Register(registry->families());
//   jobs.Add({{"state", "running"}}).Set(3);
//   registry->Serialize();  // "# HELP lpd_jobs Jobs by state.\n# TYPE ..."
//
// Names follow the Prometheus guidelines: `lpd_` prefix, base units, `_total`
// for counters, histograms for durations; label values must stay bounded,
// and a per-job series is removed (RemoveSeries) when its job ends.
// prometheus-cpp throws std::invalid_argument for a metric or label name
// Prometheus would reject and for a family name registered twice: a bug in
// the binary, caught by its first test. A family without any series is left
// out of a collection (no HELP or TYPE line either).
#ifndef LPD_METRICS_REGISTRY_H_
#define LPD_METRICS_REGISTRY_H_

#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/labels.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace lpd::metrics {

// Thread-safe: series update at any time; collections (Collect, Serialize)
// run one at a time, each running every collector first.
class Registry : public prometheus::Collectable {
 public:
  Registry();

  // Where the families are declared, once, at start-up
  // (prometheus::BuildGauge()...Register(registry.families())).
  prometheus::Registry& families() { return families_; }

  // `collect` runs at the start of every collection, in the order added
  // (scrape-time values, e.g. gauges read from the scheduler). It must not
  // collect this registry.
  void AddCollector(std::function<void()> collect);

  // Runs the collectors, then returns every family that has a series.
  std::vector<prometheus::MetricFamily> Collect() const override;

  // Collect() in the text exposition format 0.0.4.
  std::string Serialize() const;

 private:
  prometheus::Registry families_;
  mutable std::mutex mu_;  // one collection at a time
  std::vector<std::function<void()>> collectors_;
};

// Declares lpd_build_info{version} (always 1), which both binaries serve.
void AddBuildInfo(Registry& registry, const std::string& version);

// Buckets for durations in seconds, 1 ms to 15 min.
prometheus::Histogram::BucketBoundaries DurationBuckets();

// Raises `counter` to `total`, a monotonic total kept elsewhere and read
// when scraped, by incrementing it by the difference; a lower total leaves
// it as it is (counters only rise).
void IncrementTo(prometheus::Counter& counter, double total);

// Removes the series of `family` with exactly these labels; nothing when
// there is none. References to it held elsewhere become invalid.
template <typename T>
void RemoveSeries(prometheus::Family<T>& family,
                  const prometheus::Labels& labels) {
  if (family.Has(labels)) family.Remove(&family.Add(labels));
}

}  // namespace lpd::metrics

#endif  // LPD_METRICS_REGISTRY_H_

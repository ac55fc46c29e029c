// Prometheus metrics without prometheus-cpp (not packaged for Debian 12),
// after its model: a Registry of metric families (counters, gauges,
// histograms), each a set of series told apart by label values, serialized in
// the text exposition format 0.0.4 that Prometheus scrapes and
// `promtool check metrics` reads.
//
//   metrics::Registry registry;
//   auto& jobs = registry.AddGauge("lpd_jobs", "Jobs by state.", {"state"});
//   jobs.With({"running"}).Set(3);
//   registry.Serialize();  // "# HELP lpd_jobs Jobs by state.\n# TYPE ..."
//
// Names follow the Prometheus guidelines (DESIGN §6): `lpd_` prefix, base
// units, `_total` for counters, histograms for durations; label values must
// stay bounded, and a per-job series is removed (Family::Remove) when its job
// ends. Thread-safe: series update with atomics or a family lock, Serialize
// may run at any time. Collectors registered with AddCollector run first in
// each Serialize, to set gauges that are computed when scraped.
#ifndef LPD_METRICS_REGISTRY_H_
#define LPD_METRICS_REGISTRY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace lpd::metrics {

class Counter {
 public:
  // Adds `amount` (>= 0; a negative amount is ignored: counters only rise).
  void Increment(double amount = 1);
  // Raises the counter to `total` (a monotonic total kept elsewhere, read
  // when scraped); a lower total is ignored.
  void IncrementTo(double total) { Increment(total - value()); }
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value); }
  void Add(double amount);
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `bounds`: the buckets' upper bounds, increasing (+Inf is implied).
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  // Cumulative counts per bound (the last one is +Inf), sum and count.
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, +Inf last
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Buckets for durations in seconds, 1 ms to ~15 min.
std::vector<double> DurationBuckets();

// The series of one metric name, one per tuple of label values.
template <typename Metric>
class Family {
 public:
  Family(std::string name, std::string help, std::vector<std::string> labels,
         std::function<std::unique_ptr<Metric>()> make)
      : name_(std::move(name)),
        help_(std::move(help)),
        labels_(std::move(labels)),
        make_(std::move(make)) {}

  // The series with these label values (as many as the family's label
  // names; extra ones are dropped, missing ones are empty), created at
  // zero on first use. The reference stays valid until Remove or Clear.
  Metric& With(std::vector<std::string> values) {
    values.resize(labels_.size());
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = series_[values];
    if (!slot) slot = make_();
    return *slot;
  }
  void Remove(std::vector<std::string> values) {
    values.resize(labels_.size());
    std::lock_guard<std::mutex> lock(mu_);
    series_.erase(values);
  }
  // Removes every series whose values are not in `keep`.
  void RetainOnly(const std::vector<std::vector<std::string>>& keep) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = series_.begin(); it != series_.end();) {
      bool kept = false;
      for (const auto& k : keep) kept = kept || k == it->first;
      it = kept ? std::next(it) : series_.erase(it);
    }
  }
  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    series_.clear();
  }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& labels() const { return labels_; }
  // Calls `visit(values, metric)` for every series, in label order.
  template <typename Visit>
  void ForEach(Visit&& visit) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [values, metric] : series_) visit(values, *metric);
  }

 private:
  std::string name_, help_;
  std::vector<std::string> labels_;
  std::function<std::unique_ptr<Metric>()> make_;
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Metric>> series_;
};

class Registry {
 public:
  // Families are created once, at start-up. A name or label name that
  // Prometheus would reject, or a name used twice, aborts with a message:
  // it is a bug in the binary, caught by its first test.
  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> labels = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> labels = {});
  Family<Histogram>& AddHistogram(const std::string& name,
                                  const std::string& help,
                                  std::vector<std::string> labels,
                                  std::vector<double> bounds);
  // `collect` runs at the start of every Serialize (scrape-time gauges).
  void AddCollector(std::function<void()> collect);

  // Every family in the order added, in the text exposition format.
  std::string Serialize() const;

 private:
  void CheckNew(const std::string& name,
                const std::vector<std::string>& labels);
  mutable std::mutex mu_;
  std::vector<std::function<void()>> collectors_;
  std::vector<std::unique_ptr<Family<Counter>>> counters_;
  std::vector<std::unique_ptr<Family<Gauge>>> gauges_;
  std::vector<std::unique_ptr<Family<Histogram>>> histograms_;
  // Serialization order: (kind, index).
  std::vector<std::pair<int, size_t>> order_;
};

// The exposition format's number syntax: integers without a fraction,
// shortest round-trip otherwise, +Inf / -Inf / NaN.
std::string FormatValue(double value);
// A label value with \, " and newline escaped.
std::string EscapeLabelValue(const std::string& value);

}  // namespace lpd::metrics

#endif  // LPD_METRICS_REGISTRY_H_

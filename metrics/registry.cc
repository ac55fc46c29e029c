#include "metrics/registry.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace lpd::metrics {
namespace {

bool ValidName(const std::string& name, bool colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    c == '_' || (colon && c == ':') ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// HELP text escapes \ and newline; label values also ".
std::string Escape(const std::string& text, bool quote) {
  std::string out;
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

// {a="x",b="y"} (with `extra` appended, e.g. le="0.5"), or "" with no
// labels.
std::string LabelText(const std::vector<std::string>& names,
                      const std::vector<std::string>& values,
                      const std::string& extra = "") {
  std::vector<std::string> parts;
  for (size_t i = 0; i < names.size(); ++i) {
    parts.push_back(
        absl::StrCat(names[i], "=\"", EscapeLabelValue(values[i]), "\""));
  }
  if (!extra.empty()) parts.push_back(extra);
  return parts.empty() ? "" : absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

void Header(std::string& out, const std::string& name, const std::string& help,
            const char* type) {
  absl::StrAppend(&out, "# HELP ", name, " ", Escape(help, /*quote=*/false),
                  "\n", "# TYPE ", name, " ", type, "\n");
}

}  // namespace

void Counter::Increment(double amount) {
  if (!(amount >= 0)) return;
  double current = value_.load();
  while (!value_.compare_exchange_weak(current, current + amount)) {
  }
}

void Gauge::Add(double amount) {
  double current = value_.load();
  while (!value_.compare_exchange_weak(current, current + amount)) {
  }
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && !(value <= bounds_[i])) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

Histogram::Snapshot Histogram::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  Snapshot s;
  s.bounds = bounds_;
  uint64_t running = 0;
  for (uint64_t c : counts_) {
    running += c;
    s.cumulative.push_back(running);
  }
  s.sum = sum_;
  s.count = count_;
  return s;
}

std::vector<double> DurationBuckets() {
  return {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
          2.5,   5,     10,   30,    60,   120, 300,  600, 900};
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    return absl::StrFormat("%.0f", value);
  }
  for (int precision = 6; precision <= 17; ++precision) {
    const std::string text = absl::StrFormat("%.*g", precision, value);
    if (std::strtod(text.c_str(), nullptr) == value) return text;
  }
  return absl::StrFormat("%.17g", value);
}

std::string EscapeLabelValue(const std::string& value) {
  return Escape(value, /*quote=*/true);
}

void Registry::CheckNew(const std::string& name,
                        const std::vector<std::string>& labels) {
  std::set<std::string> seen;
  auto fail = [&](const std::string& why) {
    std::fprintf(stderr, "metrics: %s: %s\n", name.c_str(), why.c_str());
    std::abort();
  };
  if (!ValidName(name, /*colon=*/true)) fail("not a valid metric name");
  for (const auto& [kind, index] : order_) {
    const std::string& other = kind == 0   ? counters_[index]->name()
                               : kind == 1 ? gauges_[index]->name()
                                           : histograms_[index]->name();
    if (other == name) fail("registered twice");
  }
  for (const std::string& label : labels) {
    if (!ValidName(label, /*colon=*/false) || label.rfind("__", 0) == 0 ||
        label == "le" || !seen.insert(label).second) {
      fail(absl::StrCat("bad or repeated label name \"", label, "\""));
    }
  }
}

Family<Counter>& Registry::AddCounter(const std::string& name,
                                      const std::string& help,
                                      std::vector<std::string> labels) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckNew(name, labels);
  counters_.push_back(std::make_unique<Family<Counter>>(
      name, help, std::move(labels),
      [] { return std::make_unique<Counter>(); }));
  order_.emplace_back(0, counters_.size() - 1);
  return *counters_.back();
}

Family<Gauge>& Registry::AddGauge(const std::string& name,
                                  const std::string& help,
                                  std::vector<std::string> labels) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckNew(name, labels);
  gauges_.push_back(std::make_unique<Family<Gauge>>(
      name, help, std::move(labels), [] { return std::make_unique<Gauge>(); }));
  order_.emplace_back(1, gauges_.size() - 1);
  return *gauges_.back();
}

Family<Histogram>& Registry::AddHistogram(const std::string& name,
                                          const std::string& help,
                                          std::vector<std::string> labels,
                                          std::vector<double> bounds) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckNew(name, labels);
  for (size_t i = 1; i < bounds.size(); ++i) {
    if (!(bounds[i] > bounds[i - 1])) {
      std::fprintf(stderr, "metrics: %s: buckets must increase\n",
                   name.c_str());
      std::abort();
    }
  }
  histograms_.push_back(std::make_unique<Family<Histogram>>(
      name, help, std::move(labels),
      [bounds] { return std::make_unique<Histogram>(bounds); }));
  order_.emplace_back(2, histograms_.size() - 1);
  return *histograms_.back();
}

void Registry::AddCollector(std::function<void()> collect) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.push_back(std::move(collect));
}

std::string Registry::Serialize() const {
  std::vector<std::function<void()>> collectors;
  {
    std::lock_guard<std::mutex> lock(mu_);
    collectors = collectors_;
  }
  for (const auto& collect : collectors) collect();
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& [kind, index] : order_) {
    if (kind == 0) {
      const Family<Counter>& f = *counters_[index];
      Header(out, f.name(), f.help(), "counter");
      f.ForEach([&](const std::vector<std::string>& values, const Counter& c) {
        absl::StrAppend(&out, f.name(), LabelText(f.labels(), values), " ",
                        FormatValue(c.value()), "\n");
      });
    } else if (kind == 1) {
      const Family<Gauge>& f = *gauges_[index];
      Header(out, f.name(), f.help(), "gauge");
      f.ForEach([&](const std::vector<std::string>& values, const Gauge& g) {
        absl::StrAppend(&out, f.name(), LabelText(f.labels(), values), " ",
                        FormatValue(g.value()), "\n");
      });
    } else {
      const Family<Histogram>& f = *histograms_[index];
      Header(out, f.name(), f.help(), "histogram");
      f.ForEach([&](const std::vector<std::string>& values,
                    const Histogram& h) {
        const Histogram::Snapshot s = h.snapshot();
        for (size_t i = 0; i < s.cumulative.size(); ++i) {
          const std::string le =
              i < s.bounds.size() ? FormatValue(s.bounds[i]) : "+Inf";
          absl::StrAppend(
              &out, f.name(), "_bucket",
              LabelText(f.labels(), values, absl::StrCat("le=\"", le, "\"")),
              " ", s.cumulative[i], "\n");
        }
        absl::StrAppend(&out, f.name(), "_sum", LabelText(f.labels(), values),
                        " ", FormatValue(s.sum), "\n", f.name(), "_count",
                        LabelText(f.labels(), values), " ", s.count, "\n");
      });
    }
  }
  return out;
}

}  // namespace lpd::metrics

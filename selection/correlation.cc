#include "selection/correlation.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"

namespace lpd::selection {
namespace {

absl::Status CheckPairs(absl::string_view what, absl::Span<const double> x,
                        absl::Span<const double> y) {
  if (x.size() != y.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": x has ", x.size(), " values but y has ", y.size()));
  }
  if (x.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": needs at least 2 pairs, got ", x.size()));
  }
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": pair #", i, " is not finite (", x[i], ", ", y[i], ")"));
    }
  }
  for (const auto& [name, values] : {std::pair{"x", x}, std::pair{"y", y}}) {
    const auto [min, max] = std::minmax_element(values.begin(), values.end());
    if (*min == *max) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": ", name, " is constant (all ", values.size(), " values are ",
          *min, "), so the correlation is undefined"));
    }
  }
  return absl::OkStatus();
}

// Pearson's r of checked input (finite, non-constant, same size >= 2).
double Pearson(absl::Span<const double> x, absl::Span<const double> y) {
  const size_t n = x.size();
  long double mean_x = 0, mean_y = 0;
  for (size_t i = 0; i < n; ++i) {
    mean_x += x[i];
    mean_y += y[i];
  }
  mean_x /= n;
  mean_y /= n;
  long double sxx = 0, syy = 0, sxy = 0;
  for (size_t i = 0; i < n; ++i) {
    const long double dx = x[i] - mean_x;
    const long double dy = y[i] - mean_y;
    sxx += dx * dx;
    syy += dy * dy;
    sxy += dx * dy;
  }
  // Non-constant input leaves sxx, syy > 0 (long double has the range).
  const long double r = sxy / std::sqrt(sxx * syy);
  return static_cast<double>(std::clamp(r, -1.0L, 1.0L));
}

}  // namespace

absl::StatusOr<double> PearsonCorrelation(absl::Span<const double> x,
                                          absl::Span<const double> y) {
  RETURN_IF_ERROR(CheckPairs("Pearson correlation", x, y));
  return Pearson(x, y);
}

absl::StatusOr<double> SpearmanCorrelation(absl::Span<const double> x,
                                           absl::Span<const double> y) {
  RETURN_IF_ERROR(CheckPairs("Spearman correlation", x, y));
  return Pearson(AverageRanks(x), AverageRanks(y));
}

std::vector<double> AverageRanks(absl::Span<const double> values) {
  std::vector<size_t> order(values.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(values.size());
  for (size_t begin = 0; begin < order.size();) {
    size_t end = begin + 1;
    while (end < order.size() && values[order[end]] == values[order[begin]]) {
      ++end;
    }
    // Positions begin..end-1 hold ranks begin+1..end: their mean.
    const double rank = (static_cast<double>(begin + 1 + end)) / 2;
    for (size_t i = begin; i < end; ++i) ranks[order[i]] = rank;
    begin = end;
  }
  return ranks;
}

absl::StatusOr<std::vector<AdditivityRow>> AdditivityReport(
    absl::Span<const AdditivitySample> samples) {
  std::map<int, std::pair<std::vector<double>, std::vector<double>>> groups;
  for (size_t i = 0; i < samples.size(); ++i) {
    const AdditivitySample& sample = samples[i];
    if (sample.set_size < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("additivity sample #", i,
                       ": set size must be >= 1, got ", sample.set_size));
    }
    if (!std::isfinite(sample.predicted) || !std::isfinite(sample.measured)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "additivity sample #", i, ": values must be finite, got predicted ",
          sample.predicted, ", measured ", sample.measured));
    }
    auto& [predicted, measured] = groups[sample.set_size];
    predicted.push_back(sample.predicted);
    measured.push_back(sample.measured);
  }
  std::vector<AdditivityRow> rows;
  for (const auto& [set_size, group] : groups) {
    const auto& [predicted, measured] = group;
    AdditivityRow row;
    row.set_size = set_size;
    row.samples = static_cast<int>(predicted.size());
    const absl::StatusOr<double> pearson =
        PearsonCorrelation(predicted, measured);
    if (pearson.ok()) {
      row.pearson = *pearson;
      row.spearman = SpearmanCorrelation(predicted, measured).value();
    } else {
      row.note = std::string(pearson.status().message());
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

nlohmann::json AdditivityReportToJson(absl::Span<const AdditivityRow> rows) {
  nlohmann::json by_size = nlohmann::json::array();
  for (const AdditivityRow& row : rows) {
    nlohmann::json entry = {{"set_size", row.set_size},
                            {"samples", row.samples}};
    entry["pearson"] = row.pearson.has_value() ? nlohmann::json(*row.pearson)
                                               : nlohmann::json(nullptr);
    entry["spearman"] = row.spearman.has_value() ? nlohmann::json(*row.spearman)
                                                 : nlohmann::json(nullptr);
    if (!row.note.empty()) entry["note"] = row.note;
    by_size.push_back(std::move(entry));
  }
  nlohmann::json report = nlohmann::json::object();
  report["by_set_size"] = std::move(by_size);
  return report;
}

}  // namespace lpd::selection

// Correlation statistics, and the additivity report of DESIGN §4.4: how well
// the sum of single-unit scores predicts the measured loss of removing a set,
// per set size (so that set size alone does not inflate the correlation).
#ifndef LPD_SELECTION_CORRELATION_H_
#define LPD_SELECTION_CORRELATION_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace lpd::selection {

// Pearson's r of paired samples, in [-1, 1]. InvalidArgument if the sizes
// differ, there are fewer than 2 pairs, a value is not finite, or either
// side is constant (r is undefined; no NaN is ever returned).
absl::StatusOr<double> PearsonCorrelation(absl::Span<const double> x,
                                          absl::Span<const double> y);

// Spearman's rho: Pearson's r of the ranks, tied values sharing the average
// of their ranks. Same errors as PearsonCorrelation.
absl::StatusOr<double> SpearmanCorrelation(absl::Span<const double> x,
                                           absl::Span<const double> y);

// 1-based ranks, ties given the average of the ranks they span:
// {10, 20, 20, 5} -> {2, 3.5, 3.5, 1}. Values must not be NaN.
std::vector<double> AverageRanks(absl::Span<const double> values);

// One removal set: its size, the sum of its units' single-unit scores, and
// the loss measured when removing the whole set.
struct AdditivitySample {
  int set_size = 0;
  double predicted = 0;
  double measured = 0;
};

// The correlation for one set size. A correlation that is undefined (fewer
// than two samples, or constant values) is absent and `note` says why.
struct AdditivityRow {
  int set_size = 0;
  int samples = 0;
  std::optional<double> pearson;
  std::optional<double> spearman;
  std::string note;
};

// Groups the samples by set size (rows by increasing size) and correlates
// predicted with measured within each group. InvalidArgument for a set size
// < 1 or a value that is not finite (naming the sample).
absl::StatusOr<std::vector<AdditivityRow>> AdditivityReport(
    absl::Span<const AdditivitySample> samples);

// {"by_set_size": [{"set_size": 4, "samples": 16, "pearson": 0.97,
// "spearman": 0.95}, ...]}; an undefined correlation is null and the row has
// a "note".
nlohmann::json AdditivityReportToJson(absl::Span<const AdditivityRow> rows);

}  // namespace lpd::selection

#endif  // LPD_SELECTION_CORRELATION_H_

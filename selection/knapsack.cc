#include "selection/knapsack.h"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"

namespace lpd::selection {
namespace {

using absl::uint128;

// Branch-and-bound nodes tried by kAuto before it considers
// meet-in-the-middle (a few tens of milliseconds).
constexpr int64_t kAutoFirstNodes = int64_t{1} << 20;
// Meet-in-the-middle: count vectors of the second half are stored, those of
// the first half are streamed against them.
constexpr uint64_t kMaxStoredHalf = uint64_t{1} << 20;
constexpr uint64_t kMaxStoredBytes = uint64_t{64} << 20;
constexpr uint64_t kMaxStreamedHalf = uint64_t{1} << 22;

// ---------------------------------------------------------------------------
// Costs: scores × 2^scale as exact unsigned integers of L 64-bit limbs.
// Two limbs hold every sum when the nonzero scores are within about 2^66 of
// each other; 35 limbs hold any sum of doubles (2^-1074 .. 2^1024).

constexpr int kNarrowLimbs = 2;
constexpr int kWideLimbs = 35;

template <int L>
struct Wide {
  std::array<uint64_t, L> limb{};  // least significant first

  static Wide Small(uint64_t value) {
    Wide w;
    w.limb[0] = value;
    return w;
  }
  // m × 2^shift; for shift < 0 the dropped bits of m must be zero.
  static Wide Shifted(uint64_t m, int shift) {
    Wide w;
    if (shift < 0) {
      w.limb[0] = m >> -shift;
      return w;
    }
    const int word = shift / 64, bit = shift % 64;
    w.limb[word] = m << bit;
    if (bit != 0 && word + 1 < L) w.limb[word + 1] = m >> (64 - bit);
    return w;
  }

  Wide& operator+=(const Wide& other) {
    uint64_t carry = 0;
    for (int i = 0; i < L; ++i) {
      const uint64_t sum = limb[i] + other.limb[i];
      const uint64_t total = sum + carry;
      carry = (sum < limb[i]) | (total < sum);
      limb[i] = total;
    }
    return *this;
  }
  friend Wide operator+(Wide a, const Wide& b) { return a += b; }
  friend bool operator==(const Wide& a, const Wide& b) = default;
  friend bool operator<(const Wide& a, const Wide& b) {
    for (int i = L - 1; i >= 0; --i) {
      if (a.limb[i] != b.limb[i]) return a.limb[i] < b.limb[i];
    }
    return false;
  }
  friend bool operator>(const Wide& a, const Wide& b) { return b < a; }

  // this × factor, one limb wider.
  std::array<uint64_t, L + 1> Times(uint64_t factor) const {
    std::array<uint64_t, L + 1> out{};
    uint64_t carry = 0;
    for (int i = 0; i < L; ++i) {
      const uint128 product = uint128(limb[i]) * factor + carry;
      out[i] = absl::Uint128Low64(product);
      carry = absl::Uint128High64(product);
    }
    out[L] = carry;
    return out;
  }
  // this / divisor (> 0), the remainder in *remainder.
  Wide DividedBy(uint64_t divisor, uint64_t* remainder) const {
    Wide quotient;
    uint128 rest = 0;
    for (int i = L - 1; i >= 0; --i) {
      const uint128 current = (rest << 64) | limb[i];
      quotient.limb[i] = absl::Uint128Low64(current / divisor);
      rest = current % divisor;
    }
    *remainder = absl::Uint128Low64(rest);
    return quotient;
  }
};

// a.cost / a.size < b.cost / b.size, exactly.
template <int L>
bool CheaperPerParam(const Wide<L>& a_cost, int64_t a_size,
                     const Wide<L>& b_cost, int64_t b_size) {
  const auto left = a_cost.Times(static_cast<uint64_t>(b_size));
  const auto right = b_cost.Times(static_cast<uint64_t>(a_size));
  return std::lexicographical_compare(left.rbegin(), left.rend(),
                                      right.rbegin(), right.rend());
}

// ⌈q × num / den⌉ for 0 < num <= den < 2^63; the result is at most q.
template <int L>
Wide<L> CeilMulDiv(const Wide<L>& q, uint64_t num, uint64_t den) {
  uint64_t part;  // < den, so part × num < 2^126
  const Wide<L> whole = q.DividedBy(den, &part);
  const auto product = whole.Times(num);  // at most q: the top limb is 0
  Wide<L> result;
  std::copy(product.begin(), product.begin() + L, result.limb.begin());
  const uint128 tail = (uint128(part) * num + (den - 1)) / den;  // <= num
  return result + Wide<L>::Small(absl::Uint128Low64(tail));
}

int CeilLog2(uint64_t n) { return n <= 1 ? 0 : std::bit_width(n - 1); }

// score = mantissa × 2^exponent, mantissa < 2^53 (score > 0).
void Decompose(double score, uint64_t* mantissa, int* exponent) {
  int e;
  const double fraction = std::frexp(score, &e);
  *mantissa = static_cast<uint64_t>(std::ldexp(fraction, 53));
  *exponent = e - 53;
}

// The least power of two that makes every removable score an integer, and
// the number of limbs that then hold any sum of them.
struct ScoreScale {
  int scale = 0;
  int limbs = kNarrowLimbs;
};

ScoreScale ChooseScale(absl::Span<const ScoredUnit> units) {
  uint64_t n = 0;
  int scale = INT_MIN;
  int top = INT_MIN;  // every score < 2^top
  for (const ScoredUnit& unit : units) {
    if (!unit.removable) continue;
    ++n;
    if (unit.score <= 0) continue;
    uint64_t mantissa;
    int exponent;
    Decompose(unit.score, &mantissa, &exponent);
    scale = std::max(scale, -(exponent + std::countr_zero(mantissa)));
    top = std::max(top, exponent + 53);
  }
  if (top == INT_MIN) return {};
  // Sums stay below 2^(top + scale + ⌈log2 n⌉); keep two bits spare.
  const int bits = top + scale + CeilLog2(n) + 2;
  return {scale, bits <= 64 * kNarrowLimbs ? kNarrowLimbs : kWideLimbs};
}

template <int L>
Wide<L> ScaledScore(double score, int scale) {
  if (score <= 0) return Wide<L>();
  uint64_t mantissa;
  int exponent;
  Decompose(score, &mantissa, &exponent);
  return Wide<L>::Shifted(mantissa, exponent + scale);
}

// ---------------------------------------------------------------------------
// Validation.

absl::Status CheckTarget(double target_ratio, int64_t total_params) {
  if (!(target_ratio > 0 && target_ratio < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("target_ratio must be in (0, 1), got ", target_ratio));
  }
  if (total_params <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("total_params must be positive, got ", total_params));
  }
  return absl::OkStatus();
}

// Checks ids, sizes and scores; returns the parameters the removable units
// hold in all.
absl::StatusOr<int64_t> CheckUnits(absl::Span<const ScoredUnit> units,
                                   int64_t total_params) {
  absl::flat_hash_map<absl::string_view, size_t> seen;
  int64_t removable_params = 0;
  long double score_sum = 0;
  for (size_t i = 0; i < units.size(); ++i) {
    const ScoredUnit& unit = units[i];
    if (unit.id.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit #", i, " has an empty id"));
    }
    auto [it, inserted] = seen.emplace(unit.id, i);
    if (!inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate unit id \"", unit.id, "\" (units #",
                       it->second, " and #", i, ")"));
    }
    if (!unit.removable) continue;
    if (unit.params <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit \"", unit.id, "\": params must be positive, got ",
                       unit.params));
    }
    if (!std::isfinite(unit.score) || unit.score < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit \"", unit.id,
                       "\": score must be finite and >= 0, got ", unit.score));
    }
    if (unit.params > total_params - removable_params) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the removable units hold more parameters than total_params=",
          total_params, " (exceeded at unit \"", unit.id, "\")"));
    }
    removable_params += unit.params;
    score_sum += unit.score;
  }
  if (score_sum > std::numeric_limits<double>::max()) {
    return absl::InvalidArgumentError(
        "the removable units' scores sum beyond the range of a double");
  }
  return removable_params;
}

// ---------------------------------------------------------------------------
// The instance: size classes and LP tables.

template <int L>
struct SizeClass {
  int64_t size = 0;
  std::vector<size_t> units;    // input indices, by (score, id)
  std::vector<Wide<L>> prefix;  // prefix[k]: cost of the first k units
};

template <int L>
struct LpItem {
  Wide<L> cost;
  int64_t size;
  size_t cls;
};

// The units of classes d, d+1, ... by increasing cost per parameter, with
// prefix sums: the LP relaxation of "cover r more parameters" takes them in
// this order.
template <int L>
struct LpTable {
  std::vector<LpItem<L>> items;
  std::vector<int64_t> size_prefix;  // size_prefix[i]: first i items
  std::vector<Wide<L>> cost_prefix;
};

template <int L>
struct Problem {
  int64_t required = 0;
  std::vector<SizeClass<L>> classes;  // by size, largest first
  std::vector<LpTable<L>> lp;         // lp[d] for d in [0, classes.size()]
};

template <int L>
Problem<L> BuildProblem(absl::Span<const ScoredUnit> units, int64_t required,
                        int scale) {
  Problem<L> problem;
  problem.required = required;
  std::vector<Wide<L>> cost(units.size());
  std::map<int64_t, SizeClass<L>, std::greater<>> by_size;
  for (size_t i = 0; i < units.size(); ++i) {
    if (!units[i].removable) continue;
    cost[i] = ScaledScore<L>(units[i].score, scale);
    SizeClass<L>& cls = by_size[units[i].params];
    cls.size = units[i].params;
    cls.units.push_back(i);
  }
  for (auto& [size, cls] : by_size) {
    std::sort(cls.units.begin(), cls.units.end(), [&](size_t a, size_t b) {
      if (units[a].score != units[b].score) {
        return units[a].score < units[b].score;
      }
      return units[a].id < units[b].id;
    });
    cls.prefix.assign(1, Wide<L>());
    for (size_t i : cls.units)
      cls.prefix.push_back(cls.prefix.back() + cost[i]);
    problem.classes.push_back(std::move(cls));
  }

  std::vector<LpItem<L>> items;
  for (size_t c = 0; c < problem.classes.size(); ++c) {
    for (size_t i : problem.classes[c].units) {
      items.push_back({cost[i], units[i].params, c});
    }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const LpItem<L>& a, const LpItem<L>& b) {
                     return CheaperPerParam(a.cost, a.size, b.cost, b.size);
                   });
  problem.lp.resize(problem.classes.size() + 1);
  for (size_t d = 0; d <= problem.classes.size(); ++d) {
    LpTable<L>& table = problem.lp[d];
    table.size_prefix.assign(1, 0);
    table.cost_prefix.assign(1, Wide<L>());
    for (const LpItem<L>& item : items) {
      if (item.cls < d) continue;
      table.items.push_back(item);
      table.size_prefix.push_back(table.size_prefix.back() + item.size);
      table.cost_prefix.push_back(table.cost_prefix.back() + item.cost);
    }
  }
  return problem;
}

// ⌈LP bound⌉ on the cost of covering `r` > 0 more parameters with the units
// of `table`; nullopt if they cannot.
template <int L>
std::optional<Wide<L>> LpBound(const LpTable<L>& table, int64_t r) {
  const std::vector<int64_t>& sizes = table.size_prefix;
  if (sizes.back() < r) return std::nullopt;
  const size_t i =
      std::lower_bound(sizes.begin(), sizes.end(), r) - sizes.begin();
  const LpItem<L>& last = table.items[i - 1];  // i >= 1: sizes[0] = 0 < r
  return table.cost_prefix[i - 1] +
         CeilMulDiv(last.cost, static_cast<uint64_t>(r - sizes[i - 1]),
                    static_cast<uint64_t>(last.size));
}

// ---------------------------------------------------------------------------
// Solutions: a count per class, ordered by (cost, params, preference).

template <int L>
struct Solution {
  Wide<L> cost;
  int64_t params = 0;
  std::vector<int> counts;
};

// Compares the first `n` counts: -1 if `a` is preferred (takes more units
// at the first class where they differ), 1 if `b` is, 0 if equal.
int ComparePreference(const std::vector<int>& a, const std::vector<int>& b,
                      size_t n) {
  for (size_t j = 0; j < n; ++j) {
    if (a[j] != b[j]) return a[j] > b[j] ? -1 : 1;
  }
  return 0;
}

template <int L>
bool Better(const Wide<L>& cost, int64_t params, const std::vector<int>& counts,
            const Solution<L>& than) {
  if (!(cost == than.cost)) return cost < than.cost;
  if (params != than.params) return params < than.params;
  return ComparePreference(counts, than.counts, counts.size()) < 0;
}

// Depth-first over classes (largest size first), a child per count (most
// first); a node is cut when the LP bound shows that no leaf below it can
// beat the incumbent in (cost, params, preference). A node that already
// covers the requirement is a leaf: adding units only adds cost or params.
template <int L>
class BranchAndBound {
 public:
  BranchAndBound(const Problem<L>& problem, int64_t node_limit)
      : problem_(problem),
        node_limit_(node_limit),
        current_(problem.classes.size(), 0) {}

  // The optimum, or nullopt if the node limit ran out first. The target
  // must be reachable.
  std::optional<Solution<L>> Solve() {
    SeedWithGreedy();
    Visit(0, Wide<L>(), 0);
    if (aborted_) return std::nullopt;
    return best_;
  }

 private:
  // The LP order's prefix that covers the requirement, as an incumbent.
  void SeedWithGreedy() {
    std::vector<int> counts(problem_.classes.size(), 0);
    int64_t params = 0;
    for (const LpItem<L>& item : problem_.lp[0].items) {
      if (params >= problem_.required) break;
      ++counts[item.cls];
      params += item.size;
    }
    if (params < problem_.required) return;
    Wide<L> cost;
    for (size_t c = 0; c < counts.size(); ++c) {
      cost += problem_.classes[c].prefix[counts[c]];
    }
    Offer(cost, params, counts);
  }

  void Offer(const Wide<L>& cost, int64_t params,
             const std::vector<int>& counts) {
    if (best_.has_value() && !Better(cost, params, counts, *best_)) return;
    best_ = Solution<L>{cost, params, counts};
  }

  void Visit(size_t depth, const Wide<L>& cost, int64_t params) {
    if (++nodes_ > node_limit_) {
      aborted_ = true;
      return;
    }
    const int64_t required = problem_.required;
    if (params >= required) {
      std::fill(current_.begin() + depth, current_.end(), 0);
      Offer(cost, params, current_);
      return;
    }
    const std::optional<Wide<L>> lp =
        LpBound(problem_.lp[depth], required - params);
    if (!lp.has_value()) return;
    if (best_.has_value()) {
      // Every leaf below costs at least `bound` and removes >= required.
      const Wide<L> bound = cost + *lp;
      if (bound > best_->cost) return;
      if (bound == best_->cost && best_->params == required &&
          ComparePreference(best_->counts, current_, depth) < 0) {
        return;
      }
    }
    const SizeClass<L>& cls = problem_.classes[depth];
    const int64_t rest = problem_.lp[depth + 1].size_prefix.back();
    for (int k = static_cast<int>(cls.units.size()); k >= 0; --k) {
      const int64_t taken = params + k * cls.size;
      if (taken + rest < required) break;  // fewer is hopeless too
      current_[depth] = k;
      Visit(depth + 1, cost + cls.prefix[k], taken);
      if (aborted_) return;
    }
  }

  const Problem<L>& problem_;
  const int64_t node_limit_;
  int64_t nodes_ = 0;
  bool aborted_ = false;
  std::vector<int> current_;
  std::optional<Solution<L>> best_;
};

// Meet-in-the-middle over count vectors: the classes split into a prefix
// [0, split) and a suffix [split, C). Count vectors of each half are
// numbered in preference order, so (cost, params, first index, second
// index) orders whole solutions exactly as Better does.

template <int L>
uint64_t CountVectors(const Problem<L>& problem, size_t begin, size_t end) {
  uint64_t product = 1;
  for (size_t c = begin; c < end; ++c) {
    const uint64_t options = problem.classes[c].units.size() + 1;
    if (product > (uint64_t{1} << 62) / options) return uint64_t{1} << 62;
    product *= options;
  }
  return product;
}

// The split with the least work whose halves fit, if any.
template <int L>
std::optional<size_t> ChooseSplit(const Problem<L>& problem,
                                  uint64_t max_stored) {
  const size_t num_classes = problem.classes.size();
  std::optional<size_t> best;
  uint64_t best_work = 0;
  for (size_t split = 0; split <= num_classes; ++split) {
    const uint64_t first = CountVectors(problem, 0, split);
    const uint64_t second = CountVectors(problem, split, num_classes);
    if (first > kMaxStreamedHalf || second > max_stored) continue;
    if (!best.has_value() || first + second < best_work) {
      best = split;
      best_work = first + second;
    }
  }
  return best;
}

// Calls f(index, counts, cost, params) for every count vector over classes
// [begin, end), in preference order: index 0 takes every unit.
template <int L, typename F>
void ForEachCountVector(const Problem<L>& problem, size_t begin, size_t end,
                        F&& f) {
  const size_t len = end - begin;
  std::vector<int> counts(len);
  for (size_t j = 0; j < len; ++j) {
    counts[j] = static_cast<int>(problem.classes[begin + j].units.size());
  }
  for (uint64_t index = 0;; ++index) {
    Wide<L> cost;
    int64_t params = 0;
    for (size_t j = 0; j < len; ++j) {
      const SizeClass<L>& cls = problem.classes[begin + j];
      cost += cls.prefix[counts[j]];
      params += counts[j] * cls.size;
    }
    f(index, counts, cost, params);
    bool advanced = false;
    for (size_t j = len; j-- > 0;) {
      if (counts[j] > 0) {
        --counts[j];
        advanced = true;
        break;
      }
      counts[j] = static_cast<int>(problem.classes[begin + j].units.size());
    }
    if (!advanced) return;
  }
}

template <int L>
std::optional<Solution<L>> MeetInTheMiddle(const Problem<L>& problem) {
  struct Entry {
    Wide<L> cost;
    int64_t params;
    uint64_t index;
  };
  const std::optional<size_t> split = ChooseSplit(
      problem, std::min(kMaxStoredHalf, kMaxStoredBytes / sizeof(Entry)));
  if (!split.has_value()) return std::nullopt;
  const size_t num_classes = problem.classes.size();

  std::vector<Entry> second;
  second.reserve(CountVectors(problem, *split, num_classes));
  ForEachCountVector(problem, *split, num_classes,
                     [&](uint64_t index, const std::vector<int>&,
                         const Wide<L>& cost, int64_t params) {
                       second.push_back({cost, params, index});
                     });
  std::sort(second.begin(), second.end(),
            [](const Entry& a, const Entry& b) { return a.params < b.params; });
  auto key_less = [](const Entry& a, const Entry& b) {
    if (!(a.cost == b.cost)) return a.cost < b.cost;
    if (a.params != b.params) return a.params < b.params;
    return a.index < b.index;
  };
  // best_from[i]: the best entry among second[i..].
  std::vector<uint32_t> best_from(second.size());
  for (size_t i = second.size(); i-- > 0;) {
    best_from[i] = static_cast<uint32_t>(i);
    if (i + 1 < second.size() &&
        key_less(second[best_from[i + 1]], second[i])) {
      best_from[i] = best_from[i + 1];
    }
  }

  std::optional<Solution<L>> best;
  uint64_t best_second_index = 0;
  ForEachCountVector(
      problem, 0, *split,
      [&](uint64_t, const std::vector<int>& counts, const Wide<L>& cost,
          int64_t params) {
        const int64_t needed = problem.required - params;
        const auto it = std::lower_bound(
            second.begin(), second.end(), needed,
            [](const Entry& e, int64_t value) { return e.params < value; });
        if (it == second.end()) return;
        const Entry& match = second[best_from[it - second.begin()]];
        const Wide<L> total_cost = cost + match.cost;
        const int64_t total_params = params + match.params;
        // Earlier first-half vectors win ties: only strictly better counts.
        if (best.has_value() &&
            (total_cost > best->cost ||
             (total_cost == best->cost && total_params >= best->params))) {
          return;
        }
        best = Solution<L>{total_cost, total_params, counts};
        best_second_index = match.index;
      });
  if (!best.has_value()) return best;  // unreachable target; checked before
  ForEachCountVector(problem, *split, num_classes,
                     [&](uint64_t index, const std::vector<int>& counts,
                         const Wide<L>&, int64_t) {
                       if (index != best_second_index) return;
                       best->counts.insert(best->counts.end(), counts.begin(),
                                           counts.end());
                     });
  return best;
}

// Runs the method; the removed units (flags by input index) and their
// parameters.
template <int L>
absl::StatusOr<std::pair<std::vector<bool>, int64_t>> Solve(
    absl::Span<const ScoredUnit> units, int64_t required, int scale,
    const SelectOptions& options) {
  const Problem<L> problem = BuildProblem<L>(units, required, scale);
  std::optional<Solution<L>> solution;
  using Method = SelectOptions::Method;
  switch (options.method) {
    case Method::kBranchAndBound:
      solution = BranchAndBound<L>(problem, options.node_limit).Solve();
      break;
    case Method::kMeetInTheMiddle:
      solution = MeetInTheMiddle(problem);
      if (!solution.has_value()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "meet-in-the-middle: the ", problem.classes.size(),
            " size classes have too many count vectors to tabulate"));
      }
      break;
    case Method::kAuto:
      solution = BranchAndBound<L>(
                     problem, std::min(options.node_limit, kAutoFirstNodes))
                     .Solve();
      if (!solution.has_value()) solution = MeetInTheMiddle(problem);
      if (!solution.has_value() && options.node_limit > kAutoFirstNodes) {
        solution = BranchAndBound<L>(problem, options.node_limit).Solve();
      }
      break;
  }
  if (!solution.has_value()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "selection over ", units.size(), " units in ", problem.classes.size(),
        " size classes did not finish within ", options.node_limit,
        " branch-and-bound nodes"));
  }
  std::vector<bool> chosen(units.size(), false);
  for (size_t c = 0; c < problem.classes.size(); ++c) {
    for (int k = 0; k < solution->counts[c]; ++k) {
      chosen[problem.classes[c].units[k]] = true;
    }
  }
  return std::make_pair(std::move(chosen), solution->params);
}

// ---------------------------------------------------------------------------
// Plans.

// removed / total, correctly rounded when both fit a double's mantissa.
double Ratio(int64_t removed, int64_t total) {
  constexpr int64_t kExact = int64_t{1} << 53;
  if (removed <= kExact && total <= kExact) {
    return static_cast<double>(removed) / static_cast<double>(total);
  }
  return static_cast<double>(static_cast<long double>(removed) /
                             static_cast<long double>(total));
}

Plan MakePlan(absl::Span<const ScoredUnit> units,
              const std::vector<bool>& chosen, int64_t total_params,
              double target_ratio, int64_t required_params) {
  Plan plan;
  plan.target_ratio = target_ratio;
  plan.total_params = total_params;
  plan.required_params = required_params;
  long double loss = 0;
  for (size_t i = 0; i < units.size(); ++i) {
    if (!chosen[i]) continue;
    plan.removed.push_back(units[i].id);
    plan.removed_params += units[i].params;
    loss += units[i].score;
  }
  plan.predicted_loss = static_cast<double>(loss);
  plan.achieved_ratio = Ratio(plan.removed_params, total_params);
  plan.overshoot = plan.achieved_ratio - target_ratio;
  return plan;
}

}  // namespace

absl::StatusOr<int64_t> RequiredParams(double target_ratio,
                                       int64_t total_params) {
  RETURN_IF_ERROR(CheckTarget(target_ratio, total_params));
  // The shortest decimal that reads back as target_ratio: "d.ddde-XX".
  char text[64];
  const std::to_chars_result written = std::to_chars(
      text, text + sizeof(text), target_ratio, std::chars_format::scientific);
  if (written.ec != std::errc()) {
    return absl::InternalError("cannot format target_ratio");
  }
  uint128 digits = 0;
  int num_digits = 0;
  const char* p = text;
  for (; p < written.ptr && *p != 'e'; ++p) {
    if (*p == '.') continue;
    digits = digits * 10 + static_cast<unsigned>(*p - '0');
    ++num_digits;
  }
  int exponent = 0;
  if (p < written.ptr) {
    const char* exponent_begin = p + 1;
    if (exponent_begin < written.ptr && *exponent_begin == '+') {
      ++exponent_begin;
    }
    std::from_chars(exponent_begin, written.ptr, exponent);
  }
  // target = digits / 10^scale, digits < 10^17, scale > 0 since target < 1.
  const int scale = num_digits - 1 - exponent;
  if (scale > 38) return 1;  // digits × total < 10^36: the product is < 1
  uint128 denominator = 1;
  for (int i = 0; i < scale; ++i) denominator *= 10;
  const uint128 numerator = digits * static_cast<uint64_t>(total_params);
  const uint128 required =
      numerator / denominator + (numerator % denominator != 0 ? 1 : 0);
  return static_cast<int64_t>(required);
}

absl::StatusOr<Plan> SelectUnits(absl::Span<const ScoredUnit> units,
                                 int64_t total_params, double target_ratio,
                                 const SelectOptions& options) {
  ASSIGN_OR_RETURN(const int64_t required,
                   RequiredParams(target_ratio, total_params));
  ASSIGN_OR_RETURN(const int64_t removable, CheckUnits(units, total_params));
  if (removable < required) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target_ratio ", target_ratio, " needs ", required, " of ",
        total_params, " parameters removed, but the removable units hold only ",
        removable, ": the largest achievable ratio is ",
        Ratio(removable, total_params)));
  }
  const ScoreScale scale = ChooseScale(units);
  absl::StatusOr<std::pair<std::vector<bool>, int64_t>> solved =
      scale.limbs == kNarrowLimbs
          ? Solve<kNarrowLimbs>(units, required, scale.scale, options)
          : Solve<kWideLimbs>(units, required, scale.scale, options);
  if (!solved.ok()) return solved.status();
  const auto& [chosen, solution_params] = *solved;
  Plan plan = MakePlan(units, chosen, total_params, target_ratio, required);
  if (plan.removed_params != solution_params ||
      plan.removed_params < required) {
    return absl::InternalError(absl::StrCat(
        "selection removed ", plan.removed_params, " parameters, expected ",
        solution_params, " >= ", required));
  }
  return plan;
}

absl::StatusOr<Plan> PlanForRemoval(absl::Span<const ScoredUnit> units,
                                    int64_t total_params, double target_ratio,
                                    absl::Span<const std::string> removed_ids) {
  ASSIGN_OR_RETURN(const int64_t required,
                   RequiredParams(target_ratio, total_params));
  RETURN_IF_ERROR(CheckUnits(units, total_params).status());
  absl::flat_hash_map<absl::string_view, size_t> index;
  for (size_t i = 0; i < units.size(); ++i) index.emplace(units[i].id, i);
  std::vector<bool> chosen(units.size(), false);
  for (const std::string& id : removed_ids) {
    const auto it = index.find(id);
    if (it == index.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot remove unknown unit \"", id, "\""));
    }
    if (!units[it->second].removable) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit \"", id, "\" is not removable"));
    }
    if (chosen[it->second]) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit \"", id, "\" is listed twice for removal"));
    }
    chosen[it->second] = true;
  }
  return MakePlan(units, chosen, total_params, target_ratio, required);
}

// ---------------------------------------------------------------------------
// plan.json

nlohmann::json PlanToJson(const Plan& plan) {
  nlohmann::json json = nlohmann::json::object();
  json["criterion"] = plan.criterion;
  json["target_ratio"] = plan.target_ratio;
  json["achieved_ratio"] = plan.achieved_ratio;
  json["overshoot"] = plan.overshoot;
  json["required_params"] = plan.required_params;
  json["removed_params"] = plan.removed_params;
  json["total_params"] = plan.total_params;
  json["predicted_loss"] = plan.predicted_loss;
  json["removed"] = plan.removed;
  return json;
}

namespace {

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("plan.json: field \"", field, "\" ", problem));
}

absl::StatusOr<const nlohmann::json*> Field(const nlohmann::json& json,
                                            absl::string_view field) {
  const auto it = json.find(std::string(field));
  if (it == json.end()) return FieldError(field, "is missing");
  return &*it;
}

absl::StatusOr<double> DoubleField(const nlohmann::json& json,
                                   absl::string_view field) {
  ASSIGN_OR_RETURN(const nlohmann::json* value, Field(json, field));
  if (!value->is_number()) {
    return FieldError(field,
                      absl::StrCat("must be a number, got ", value->dump()));
  }
  const double number = value->get<double>();
  if (!std::isfinite(number)) return FieldError(field, "must be finite");
  return number;
}

absl::StatusOr<int64_t> IntField(const nlohmann::json& json,
                                 absl::string_view field) {
  ASSIGN_OR_RETURN(const nlohmann::json* value, Field(json, field));
  if (!value->is_number_integer() ||
      (value->is_number_unsigned() &&
       value->get<uint64_t>() >
           static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
    return FieldError(
        field, absl::StrCat("must be a 64-bit integer, got ", value->dump()));
  }
  return value->get<int64_t>();
}

bool Near(double a, double b) { return std::fabs(a - b) <= 1e-9; }

}  // namespace

absl::StatusOr<Plan> PlanFromJson(const nlohmann::json& json) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan.json: expected an object, got ", json.type_name()));
  }
  static const std::set<std::string>* const kFields = new std::set<std::string>{
      "criterion",    "target_ratio",    "achieved_ratio",
      "overshoot",    "required_params", "removed_params",
      "total_params", "predicted_loss",  "removed"};
  for (const auto& item : json.items()) {
    if (!kFields->contains(item.key())) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan.json: unknown field \"", item.key(), "\""));
    }
  }

  Plan plan;
  ASSIGN_OR_RETURN(const nlohmann::json* criterion, Field(json, "criterion"));
  if (!criterion->is_string()) {
    return FieldError(
        "criterion", absl::StrCat("must be a string, got ", criterion->dump()));
  }
  plan.criterion = criterion->get<std::string>();

  ASSIGN_OR_RETURN(plan.target_ratio, DoubleField(json, "target_ratio"));
  ASSIGN_OR_RETURN(plan.total_params, IntField(json, "total_params"));
  absl::StatusOr<int64_t> required =
      RequiredParams(plan.target_ratio, plan.total_params);
  if (!required.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan.json: ", required.status().message()));
  }
  plan.required_params = *required;
  if (json.contains("required_params")) {
    ASSIGN_OR_RETURN(const int64_t written, IntField(json, "required_params"));
    if (written != plan.required_params) {
      return FieldError(
          "required_params",
          absl::StrCat("is ", written, ", but target_ratio ", plan.target_ratio,
                       " of ", plan.total_params, " requires ",
                       plan.required_params));
    }
  }

  ASSIGN_OR_RETURN(plan.removed_params, IntField(json, "removed_params"));
  if (plan.removed_params < 0 || plan.removed_params > plan.total_params) {
    return FieldError(
        "removed_params",
        absl::StrCat("must be in [0, total_params=", plan.total_params,
                     "], got ", plan.removed_params));
  }

  ASSIGN_OR_RETURN(const nlohmann::json* removed, Field(json, "removed"));
  if (!removed->is_array()) {
    return FieldError("removed", absl::StrCat("must be an array of ids, got ",
                                              removed->type_name()));
  }
  std::set<std::string> seen;
  for (size_t i = 0; i < removed->size(); ++i) {
    const nlohmann::json& id = (*removed)[i];
    if (!id.is_string() || id.get_ref<const std::string&>().empty()) {
      return FieldError(
          "removed", absl::StrCat("[", i, "] must be a non-empty string, got ",
                                  id.dump()));
    }
    if (!seen.insert(id.get<std::string>()).second) {
      return FieldError(
          "removed",
          absl::StrCat("lists \"", id.get<std::string>(), "\" twice"));
    }
    plan.removed.push_back(id.get<std::string>());
  }
  if (plan.removed.empty() != (plan.removed_params == 0)) {
    return FieldError("removed_params",
                      absl::StrCat("is ", plan.removed_params, " for ",
                                   plan.removed.size(), " removed units"));
  }

  ASSIGN_OR_RETURN(plan.achieved_ratio, DoubleField(json, "achieved_ratio"));
  const double ratio = Ratio(plan.removed_params, plan.total_params);
  if (!Near(plan.achieved_ratio, ratio)) {
    return FieldError(
        "achieved_ratio",
        absl::StrCat("is ", plan.achieved_ratio,
                     ", but removed_params / total_params is ", ratio));
  }
  ASSIGN_OR_RETURN(plan.overshoot, DoubleField(json, "overshoot"));
  if (!Near(plan.overshoot, plan.achieved_ratio - plan.target_ratio)) {
    return FieldError("overshoot",
                      absl::StrCat("is ", plan.overshoot,
                                   ", but achieved_ratio - target_ratio is ",
                                   plan.achieved_ratio - plan.target_ratio));
  }
  ASSIGN_OR_RETURN(plan.predicted_loss, DoubleField(json, "predicted_loss"));
  if (plan.predicted_loss < 0) {
    return FieldError("predicted_loss",
                      absl::StrCat("must be >= 0, got ", plan.predicted_loss));
  }
  return plan;
}

}  // namespace lpd::selection

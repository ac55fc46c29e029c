#include "selection/knapsack.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lpd::selection {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

using Method = SelectOptions::Method;
constexpr Method kMethods[] = {Method::kAuto, Method::kBranchAndBound,
                               Method::kMeetInTheMiddle};

std::string MethodName(Method method) {
  switch (method) {
    case Method::kAuto:
      return "auto";
    case Method::kBranchAndBound:
      return "branch-and-bound";
    case Method::kMeetInTheMiddle:
      return "meet-in-the-middle";
  }
  return "?";
}

Plan Select(const std::vector<ScoredUnit>& units, int64_t total, double target,
            Method method = Method::kAuto) {
  SelectOptions options;
  options.method = method;
  absl::StatusOr<Plan> plan = SelectUnits(units, total, target, options);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : Plan{};
}

std::vector<std::string> Sorted(std::vector<std::string> ids) {
  std::sort(ids.begin(), ids.end());
  return ids;
}

// Checks what every plan promises about the units it removes.
void ExpectConsistent(const Plan& plan, const std::vector<ScoredUnit>& units) {
  std::map<std::string, const ScoredUnit*> by_id;
  for (const ScoredUnit& unit : units) by_id[unit.id] = &unit;
  int64_t params = 0;
  long double loss = 0;
  size_t last_position = 0;
  for (const std::string& id : plan.removed) {
    ASSERT_TRUE(by_id.contains(id)) << id;
    const ScoredUnit& unit = *by_id[id];
    EXPECT_TRUE(unit.removable) << id;
    params += unit.params;
    loss += unit.score;
    const size_t position = &unit - units.data();
    EXPECT_TRUE(&id == &plan.removed.front() || position > last_position)
        << "removed ids are not in input order";
    last_position = position;
  }
  EXPECT_EQ(plan.removed_params, params);
  EXPECT_GE(plan.removed_params, plan.required_params);
  EXPECT_NEAR(plan.predicted_loss, static_cast<double>(loss),
              1e-15 * static_cast<double>(loss));
  EXPECT_DOUBLE_EQ(plan.achieved_ratio,
                   static_cast<double>(plan.removed_params) /
                       static_cast<double>(plan.total_params));
  EXPECT_EQ(plan.overshoot, plan.achieved_ratio - plan.target_ratio);
  EXPECT_GE(plan.overshoot, 0);
}

// ---------------------------------------------------------------------------
// Brute force over all subsets of the removable units.

struct BruteResult {
  bool feasible = false;
  double cost = 0;
  int64_t params = 0;
  // The plan the documented tie rule picks (sorted ids); meaningful when
  // sums of scores are exact in double (small integer scores).
  std::vector<std::string> canonical;
};

BruteResult BruteForce(const std::vector<ScoredUnit>& units, int64_t required) {
  std::vector<size_t> removable;
  for (size_t i = 0; i < units.size(); ++i) {
    if (units[i].removable) removable.push_back(i);
  }
  const size_t m = removable.size();
  std::vector<double> cost(size_t{1} << m, 0);
  std::vector<int64_t> params(size_t{1} << m, 0);
  BruteResult result;
  for (size_t mask = 1; mask < cost.size(); ++mask) {
    const int low = std::countr_zero(mask);
    cost[mask] = cost[mask & (mask - 1)] + units[removable[low]].score;
    params[mask] = params[mask & (mask - 1)] + units[removable[low]].params;
  }
  std::vector<size_t> ties;
  for (size_t mask = 0; mask < cost.size(); ++mask) {
    if (params[mask] < required) continue;
    if (!result.feasible || cost[mask] < result.cost ||
        (cost[mask] == result.cost && params[mask] < result.params)) {
      result.feasible = true;
      result.cost = cost[mask];
      result.params = params[mask];
      ties.clear();
    }
    if (cost[mask] == result.cost && params[mask] == result.params) {
      ties.push_back(mask);
    }
  }
  if (!result.feasible) return result;

  // Tie rule: classes by size (largest first), more units of the first class
  // where count vectors differ; in a class, by (score, id).
  std::map<int64_t, std::vector<size_t>, std::greater<>> classes;
  for (size_t j = 0; j < m; ++j) {
    classes[units[removable[j]].params].push_back(removable[j]);
  }
  std::vector<int> best_counts;
  for (size_t mask : ties) {
    std::vector<int> counts;
    for (const auto& [size, members] : classes) {
      int k = 0;
      for (size_t j = 0; j < m; ++j) {
        if ((mask >> j & 1) && units[removable[j]].params == size) ++k;
      }
      counts.push_back(k);
    }
    if (best_counts.empty() || counts > best_counts) best_counts = counts;
  }
  size_t c = 0;
  for (auto& [size, members] : classes) {
    std::sort(members.begin(), members.end(), [&](size_t a, size_t b) {
      if (units[a].score != units[b].score) {
        return units[a].score < units[b].score;
      }
      return units[a].id < units[b].id;
    });
    for (int k = 0; k < best_counts[c]; ++k) {
      result.canonical.push_back(units[members[k]].id);
    }
    ++c;
  }
  std::sort(result.canonical.begin(), result.canonical.end());
  return result;
}

struct RandomInstance {
  std::vector<ScoredUnit> units;
  int64_t total = 0;
  double target = 0;
  bool integer_scores = false;
};

RandomInstance MakeRandomInstance(std::mt19937_64& rng) {
  RandomInstance instance;
  const int n = std::uniform_int_distribution<int>(1, 16)(rng);
  const int size_mode = std::uniform_int_distribution<int>(0, 3)(rng);
  const int score_mode = std::uniform_int_distribution<int>(0, 4)(rng);
  instance.integer_scores =
      score_mode == 1 || score_mode == 2 || score_mode == 3;
  std::vector<int64_t> pool;
  const int pool_size = std::uniform_int_distribution<int>(1, 4)(rng);
  for (int i = 0; i < pool_size; ++i) {
    pool.push_back(std::uniform_int_distribution<int64_t>(1, 50)(rng));
  }
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) names.push_back(absl::StrCat("unit", 100 + i));
  std::shuffle(names.begin(), names.end(), rng);
  int64_t sum = 0;
  for (int i = 0; i < n; ++i) {
    ScoredUnit unit;
    unit.id = names[i];
    switch (size_mode) {
      case 0:  // distinct-ish small sizes
        unit.params = std::uniform_int_distribution<int64_t>(1, 1000)(rng);
        break;
      case 1:  // few repeated sizes
        unit.params = pool[std::uniform_int_distribution<size_t>(
            0, pool.size() - 1)(rng)];
        break;
      case 2:  // realistic magnitudes, repeated
        unit.params = pool[std::uniform_int_distribution<size_t>(
                          0, pool.size() - 1)(rng)] *
                      2'359'296;
        break;
      default:  // realistic magnitudes, distinct
        unit.params =
            std::uniform_int_distribution<int64_t>(1'000'000, 100'000'000)(rng);
        break;
    }
    switch (score_mode) {
      case 0:
        unit.score = std::uniform_real_distribution<double>(0, 1)(rng);
        break;
      case 1:  // many ties and zeros
        unit.score = std::uniform_int_distribution<int>(0, 3)(rng);
        break;
      case 2:
        unit.score = std::uniform_int_distribution<int>(0, 1000)(rng);
        break;
      case 3:  // all equal
        unit.score = 2;
        break;
      default:  // any magnitude a double has, and zeros
        unit.score =
            std::uniform_int_distribution<int>(0, 5)(rng) == 0
                ? 0.0
                : std::ldexp(
                      std::uniform_real_distribution<double>(0.5, 1)(rng),
                      std::uniform_int_distribution<int>(-1073, 1000)(rng));
        break;
    }
    unit.removable = std::uniform_int_distribution<int>(0, 9)(rng) < 8;
    sum += unit.params;
    instance.units.push_back(unit);
  }
  instance.total =
      sum + std::uniform_int_distribution<int64_t>(0, sum / 2 + 1)(rng);
  instance.target = std::uniform_real_distribution<double>(0.001, 0.999)(rng);
  return instance;
}

TEST(SelectUnitsTest, MatchesBruteForceOnRandomInstances) {
  std::mt19937_64 rng(20240531);
  int feasible = 0, infeasible = 0, exact_tie_checks = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const RandomInstance instance = MakeRandomInstance(rng);
    SCOPED_TRACE(absl::StrCat("trial ", trial, ": ", instance.units.size(),
                              " units, target ", instance.target));
    const int64_t required =
        RequiredParams(instance.target, instance.total).value();
    const BruteResult brute = BruteForce(instance.units, required);
    for (Method method : kMethods) {
      SCOPED_TRACE(MethodName(method));
      SelectOptions options;
      options.method = method;
      const absl::StatusOr<Plan> plan =
          SelectUnits(instance.units, instance.total, instance.target, options);
      if (!brute.feasible) {
        EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
        continue;
      }
      ASSERT_TRUE(plan.ok()) << plan.status();
      ExpectConsistent(*plan, instance.units);
      EXPECT_LE(std::fabs(plan->predicted_loss - brute.cost),
                1e-12 * brute.cost)
          << "brute force found " << brute.cost;
      if (instance.integer_scores) {
        EXPECT_EQ(plan->predicted_loss, brute.cost);
        EXPECT_EQ(plan->removed_params, brute.params);
        EXPECT_EQ(Sorted(plan->removed), brute.canonical);
        ++exact_tie_checks;
      }
    }
    brute.feasible ? ++feasible : ++infeasible;
  }
  EXPECT_GE(feasible, 1000);
  EXPECT_GE(infeasible, 50);
  EXPECT_GE(exact_tie_checks, 1000);
}

TEST(SelectUnitsTest, DoesNotDependOnInputOrder) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    RandomInstance instance = MakeRandomInstance(rng);
    const absl::StatusOr<Plan> first =
        SelectUnits(instance.units, instance.total, instance.target);
    std::shuffle(instance.units.begin(), instance.units.end(), rng);
    const absl::StatusOr<Plan> second =
        SelectUnits(instance.units, instance.total, instance.target);
    ASSERT_EQ(first.ok(), second.ok());
    if (!first.ok()) continue;
    EXPECT_EQ(Sorted(first->removed), Sorted(second->removed));
    EXPECT_EQ(first->predicted_loss, second->predicted_loss);
  }
}

// ---------------------------------------------------------------------------
// SDXL-shaped instance: 83 units (resnets + transformer blocks) in 10 size
// classes, sized as in the SDXL base U-Net.

int64_t ResnetParams(int64_t in, int64_t out) {
  const int64_t temb = 1280;
  int64_t params = 2 * in + (9 * in * out + out) + (temb * out + out) +
                   2 * out + (9 * out * out + out);
  if (in != out) params += in * out + out;  // 1×1 shortcut
  return params;
}

int64_t TransformerBlockParams(int64_t d) {
  const int64_t cross = 2048;
  const int64_t self_attention = 4 * d * d + d;
  const int64_t cross_attention = 2 * d * d + 2 * cross * d + d;
  const int64_t norms = 3 * 2 * d;
  const int64_t feed_forward = (d * 8 * d + 8 * d) + (4 * d * d + d);
  return self_attention + cross_attention + norms + feed_forward;
}

constexpr int64_t kSdxlTotalParams = 2'567'463'684;

std::vector<ScoredUnit> SdxlUnits(std::mt19937_64& rng) {
  std::vector<ScoredUnit> units;
  std::lognormal_distribution<double> score(-6, 1.5);
  auto resnet = [&](const std::string& id, int64_t in, int64_t out) {
    units.push_back({id, ResnetParams(in, out), score(rng), true});
  };
  auto blocks = [&](const std::string& attention, int count, int64_t d) {
    for (int b = 0; b < count; ++b) {
      units.push_back({absl::StrCat(attention, ".transformer_blocks.", b),
                       TransformerBlockParams(d), score(rng), true});
    }
  };
  resnet("down_blocks.0.resnets.0", 320, 320);
  resnet("down_blocks.0.resnets.1", 320, 320);
  resnet("down_blocks.1.resnets.1", 640, 640);
  blocks("down_blocks.1.attentions.0", 2, 640);
  blocks("down_blocks.1.attentions.1", 2, 640);
  resnet("down_blocks.2.resnets.1", 1280, 1280);
  blocks("down_blocks.2.attentions.0", 10, 1280);
  blocks("down_blocks.2.attentions.1", 10, 1280);
  resnet("mid_block.resnets.0", 1280, 1280);
  blocks("mid_block.attentions.0", 10, 1280);
  resnet("mid_block.resnets.1", 1280, 1280);
  // Up-path resnets: the main path h keeps its width; the skip tensor widens
  // the resnet's input.
  resnet("up_blocks.0.resnets.0", 2560, 1280);
  resnet("up_blocks.0.resnets.1", 2560, 1280);
  resnet("up_blocks.0.resnets.2", 1920, 1280);
  for (int a = 0; a < 3; ++a) {
    blocks(absl::StrCat("up_blocks.0.attentions.", a), 10, 1280);
  }
  resnet("up_blocks.1.resnets.1", 1280, 640);
  resnet("up_blocks.1.resnets.2", 960, 640);
  for (int a = 0; a < 3; ++a) {
    blocks(absl::StrCat("up_blocks.1.attentions.", a), 2, 640);
  }
  resnet("up_blocks.2.resnets.1", 640, 320);
  resnet("up_blocks.2.resnets.2", 640, 320);
  return units;
}

// The least total score over all count vectors (k lowest-score units per
// size class), by plain enumeration in double.
double EnumerateCountVectors(const std::vector<ScoredUnit>& units,
                             int64_t required) {
  std::map<int64_t, std::vector<double>> classes;
  for (const ScoredUnit& unit : units) {
    if (unit.removable) classes[unit.params].push_back(unit.score);
  }
  std::vector<int64_t> sizes;
  std::vector<std::vector<double>> prefix;
  for (auto& [size, scores] : classes) {
    std::sort(scores.begin(), scores.end());
    sizes.push_back(size);
    prefix.push_back({0.0});
    for (double s : scores) prefix.back().push_back(prefix.back().back() + s);
  }
  std::vector<size_t> counts(sizes.size(), 0);
  double best = std::numeric_limits<double>::infinity();
  while (true) {
    int64_t params = 0;
    double cost = 0;
    for (size_t c = 0; c < sizes.size(); ++c) {
      params += static_cast<int64_t>(counts[c]) * sizes[c];
      cost += prefix[c][counts[c]];
    }
    if (params >= required) best = std::min(best, cost);
    size_t c = 0;
    while (c < counts.size() && counts[c] + 1 == prefix[c].size()) {
      counts[c++] = 0;
    }
    if (c == counts.size()) break;
    ++counts[c];
  }
  return best;
}

TEST(SelectUnitsTest, SdxlShapedInstanceIsOptimalAndFast) {
  std::mt19937_64 rng(83);
  for (int seed = 0; seed < 2; ++seed) {
    const std::vector<ScoredUnit> units = SdxlUnits(rng);
    ASSERT_EQ(units.size(), 83u);
    for (double target : {0.05, 0.2, 0.35, 0.5, 0.65, 0.8}) {
      SCOPED_TRACE(absl::StrCat("seed ", seed, ", target ", target));
      const auto start = std::chrono::steady_clock::now();
      const Plan plan = Select(units, kSdxlTotalParams, target);
      const double seconds = std::chrono::duration<double>(
                                 std::chrono::steady_clock::now() - start)
                                 .count();
      EXPECT_LT(seconds, 1.0);
      ExpectConsistent(plan, units);
      const double best = EnumerateCountVectors(units, plan.required_params);
      EXPECT_LE(std::fabs(plan.predicted_loss - best), 1e-12 * best);
      for (Method method :
           {Method::kBranchAndBound, Method::kMeetInTheMiddle}) {
        EXPECT_EQ(Select(units, kSdxlTotalParams, target, method).removed,
                  plan.removed)
            << MethodName(method);
      }
    }
  }
}

TEST(SelectUnitsTest, SdxlShapedInstanceWithTiedScores) {
  std::mt19937_64 rng(5);
  std::vector<ScoredUnit> units = SdxlUnits(rng);
  for (ScoredUnit& unit : units) {
    unit.score = std::uniform_int_distribution<int>(0, 2)(rng);
  }
  const Plan plan = Select(units, kSdxlTotalParams, 0.5);
  ExpectConsistent(plan, units);
  EXPECT_EQ(plan.predicted_loss,
            EnumerateCountVectors(units, plan.required_params));
  for (Method method : {Method::kBranchAndBound, Method::kMeetInTheMiddle}) {
    EXPECT_EQ(Select(units, kSdxlTotalParams, 0.5, method).removed,
              plan.removed);
  }
}

// ---------------------------------------------------------------------------
// All sizes distinct: 40 classes of one unit.

std::vector<ScoredUnit> DistinctUnits(std::mt19937_64& rng, int n,
                                      bool score_is_size) {
  std::vector<ScoredUnit> units;
  for (int i = 0; i < n; ++i) {
    const int64_t params =
        std::uniform_int_distribution<int64_t>(10'000'000, 200'000'000)(rng);
    const double score =
        score_is_size ? static_cast<double>(params)
                      : std::uniform_real_distribution<double>(0, 1)(rng);
    units.push_back({absl::StrCat("u", i), params, score, true});
  }
  return units;
}

TEST(SelectUnitsTest, FortyDistinctSizesAgreeAcrossMethods) {
  std::mt19937_64 rng(40);
  for (int trial = 0; trial < 3; ++trial) {
    const std::vector<ScoredUnit> units = DistinctUnits(rng, 40, false);
    const Plan plan = Select(units, 10'000'000'000, 0.3);
    ExpectConsistent(plan, units);
    EXPECT_EQ(
        Select(units, 10'000'000'000, 0.3, Method::kMeetInTheMiddle).removed,
        plan.removed);
    EXPECT_EQ(
        Select(units, 10'000'000'000, 0.3, Method::kBranchAndBound).removed,
        plan.removed);
  }
}

// Score proportional to size is subset sum in disguise: the LP bound prunes
// nothing, and only meet-in-the-middle finishes.
TEST(SelectUnitsTest, SubsetSumLikeInstanceFinishesExactly) {
  std::mt19937_64 rng(41);
  const std::vector<ScoredUnit> units = DistinctUnits(rng, 40, true);
  int64_t hit = 0;  // the sum of a random subset: reachable exactly
  for (const ScoredUnit& unit : units) {
    if (rng() % 2) hit += unit.params;
  }
  const int64_t total = 10'000'000'000;
  const double target = static_cast<double>(hit) / 1e10;  // hit / total
  ASSERT_EQ(RequiredParams(target, total).value(), hit);
  const auto start = std::chrono::steady_clock::now();
  const Plan plan = Select(units, total, target);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  EXPECT_LT(seconds, 10.0);
  ExpectConsistent(plan, units);
  EXPECT_EQ(plan.removed_params, hit);
  EXPECT_EQ(plan.predicted_loss, static_cast<double>(hit));
  EXPECT_EQ(plan.overshoot, 0);

  SelectOptions options;
  options.method = Method::kBranchAndBound;
  options.node_limit = 1000;
  EXPECT_EQ(SelectUnits(units, total, target, options).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(SelectUnitsTest, MeetInTheMiddleRefusesHugeInstances) {
  std::mt19937_64 rng(60);
  const std::vector<ScoredUnit> units = DistinctUnits(rng, 60, false);
  SelectOptions options;
  options.method = Method::kMeetInTheMiddle;
  EXPECT_EQ(SelectUnits(units, 100'000'000'000, 0.05, options).status().code(),
            absl::StatusCode::kResourceExhausted);
  // kAuto still solves it (the LP bound is strong on random scores).
  const Plan plan = Select(units, 100'000'000'000, 0.05);
  ExpectConsistent(plan, units);
}

// ---------------------------------------------------------------------------
// Small cases with known answers.

TEST(SelectUnitsTest, PicksCheapestCover) {
  const std::vector<ScoredUnit> units = {
      {"a", 40, 5.0}, {"b", 30, 1.0}, {"c", 30, 1.5}, {"d", 60, 3.0}};
  // 50 of 200 params: b+c (60, 2.5) beats d (60, 3.0) and a+anything.
  const Plan plan = Select(units, 200, 0.25);
  EXPECT_THAT(plan.removed, ElementsAre("b", "c"));
  EXPECT_EQ(plan.required_params, 50);
  EXPECT_EQ(plan.removed_params, 60);
  EXPECT_DOUBLE_EQ(plan.predicted_loss, 2.5);
  EXPECT_DOUBLE_EQ(plan.achieved_ratio, 0.3);
  EXPECT_DOUBLE_EQ(plan.overshoot, 0.3 - 0.25);
}

TEST(SelectUnitsTest, NeverRemovesUnitsThatAreNotRemovable) {
  const std::vector<ScoredUnit> units = {
      {"free", 100, 0.0, false}, {"a", 50, 1.0}, {"b", 50, 2.0}};
  const Plan plan = Select(units, 200, 0.5);
  EXPECT_THAT(plan.removed, ElementsAre("a", "b"));
}

TEST(SelectUnitsTest, IgnoresScoresOfUnitsThatAreNotRemovable) {
  const std::vector<ScoredUnit> units = {{"pinned", 0, std::nan(""), false},
                                         {"a", 50, 1.0}};
  EXPECT_THAT(Select(units, 100, 0.5).removed, ElementsAre("a"));
}

TEST(SelectUnitsTest, TargetExactlyReachableHasZeroOvershoot) {
  const std::vector<ScoredUnit> units = {{"a", 1, 1.0}, {"b", 2, 0.5}};
  // 0.1 of 10 is exactly 1 parameter, even though the double 0.1 is above
  // one tenth.
  const Plan plan = Select(units, 10, 0.1);
  EXPECT_EQ(plan.required_params, 1);
  EXPECT_THAT(plan.removed, ElementsAre("b"));  // cheaper, overshoots
  const Plan exact = Select({{"a", 1, 0.5}, {"b", 2, 1.0}}, 10, 0.1);
  EXPECT_THAT(exact.removed, ElementsAre("a"));
  EXPECT_EQ(exact.achieved_ratio, 0.1);
  EXPECT_EQ(exact.overshoot, 0);
}

TEST(SelectUnitsTest, EqualLossPrefersFewerParams) {
  const std::vector<ScoredUnit> units = {
      {"big", 70, 1.0}, {"small", 55, 1.0}, {"tiny", 10, 3.0}};
  EXPECT_THAT(Select(units, 200, 0.25).removed, ElementsAre("small"));
}

TEST(SelectUnitsTest, EqualLossAndParamsPrefersLargerUnits) {
  // {x} and {y, z} both remove 40 parameters at loss 2.
  const std::vector<ScoredUnit> units = {
      {"y", 20, 1.0}, {"z", 20, 1.0}, {"x", 40, 2.0}};
  EXPECT_THAT(Select(units, 100, 0.4).removed, ElementsAre("x"));
}

TEST(SelectUnitsTest, EqualScoresInAClassPreferSmallerIds) {
  const std::vector<ScoredUnit> units = {
      {"c", 10, 1.0}, {"a", 10, 1.0}, {"b", 10, 1.0}, {"d", 10, 0.5}};
  EXPECT_THAT(Select(units, 100, 0.2).removed, ElementsAre("a", "d"));
}

TEST(SelectUnitsTest, AllZeroScoresRemoveTheFewestParams) {
  const std::vector<ScoredUnit> units = {
      {"a", 7, 0.0}, {"b", 5, 0.0}, {"c", 4, 0.0}, {"d", 3, 0.0}};
  // 9 of 20: 4 + 5 = 9 exactly.
  for (Method method : kMethods) {
    const Plan plan = Select(units, 20, 0.45, method);
    EXPECT_THAT(plan.removed, ElementsAre("b", "c")) << MethodName(method);
    EXPECT_EQ(plan.predicted_loss, 0);
  }
}

TEST(SelectUnitsTest, ScoresOfVeryDifferentMagnitudes) {
  const std::vector<ScoredUnit> units = {{"huge", 10, 1e300},
                                         {"small", 5, 1e-300},
                                         {"smaller", 5, 5e-324},
                                         {"mid", 10, 1.0}};
  EXPECT_THAT(Select(units, 100, 0.1).removed, ElementsAre("small", "smaller"));
  EXPECT_THAT(Select(units, 100, 0.2).removed,
              ElementsAre("small", "smaller", "mid"));
  // 25 needs "huge"; then "smaller" beats "small" by 1e-300, which no
  // double sum next to 1e300 can show.
  EXPECT_THAT(Select(units, 100, 0.25).removed,
              ElementsAre("huge", "smaller", "mid"));
}

TEST(SelectUnitsTest, HugeTotalsAreExact) {
  // Beyond 2^53 a double cannot hold the counts; selection never uses one.
  const int64_t total = (int64_t{1} << 62) + 7;
  const int64_t half = (int64_t{1} << 61) + 4;  // ⌈total / 2⌉
  ASSERT_EQ(RequiredParams(0.5, total).value(), half);
  const std::vector<ScoredUnit> units = {
      {"just_short", half - 1, 1.0},
      {"one", 1, 0.5},
      {"three", 3, 0.6},
  };
  const Plan plan = Select(units, total, 0.5);
  EXPECT_THAT(plan.removed, ElementsAre("just_short", "one"));
  EXPECT_EQ(plan.removed_params, half);
  EXPECT_EQ(plan.achieved_ratio, 0.5);
  EXPECT_EQ(plan.overshoot, 0);
}

// ---------------------------------------------------------------------------
// RequiredParams.

TEST(RequiredParamsTest, RoundsUpTheDecimalProduct) {
  EXPECT_EQ(RequiredParams(0.5, 10).value(), 5);
  EXPECT_EQ(RequiredParams(0.5, 7).value(), 4);
  EXPECT_EQ(RequiredParams(0.1, 10).value(), 1);  // not 2
  EXPECT_EQ(RequiredParams(0.1, 30).value(), 3);
  EXPECT_EQ(RequiredParams(0.3, 10).value(), 3);
  EXPECT_EQ(RequiredParams(0.7, 10).value(), 7);
  EXPECT_EQ(RequiredParams(1.0 / 3, 3).value(), 1);
  EXPECT_EQ(RequiredParams(0.25, 1).value(), 1);
  EXPECT_EQ(RequiredParams(0.999, 1000).value(), 999);
  EXPECT_EQ(RequiredParams(0.999, 1001).value(), 1000);
  EXPECT_EQ(RequiredParams(1e-300, int64_t{1} << 62).value(), 1);
  EXPECT_EQ(RequiredParams(5e-324, 1).value(), 1);
  EXPECT_EQ(RequiredParams(0.5, 2'567'463'684).value(), 1'283'731'842);
}

TEST(RequiredParamsTest, ExactBeyondDoublePrecision) {
  const int64_t total = std::numeric_limits<int64_t>::max();  // 2^63 - 1
  EXPECT_EQ(RequiredParams(0.5, total).value(), int64_t{1} << 62);
  // 0.9999999999999999 × 2^62 = 2^62 − 461.168…
  EXPECT_EQ(RequiredParams(0.9999999999999999, int64_t{1} << 62).value(),
            (int64_t{1} << 62) - 461);
  EXPECT_EQ(RequiredParams(0.1, 1'000'000'000'000'000'001).value(),
            100'000'000'000'000'001);
}

TEST(RequiredParamsTest, MeetingItMeetsTheRatioInDoubles) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 10000; ++i) {
    const double target = std::uniform_real_distribution<double>(0, 1)(rng);
    if (target <= 0) continue;
    const int64_t total = std::uniform_int_distribution<int64_t>(
        1, int64_t{1} << std::uniform_int_distribution<int>(1, 62)(rng))(rng);
    const int64_t required = RequiredParams(target, total).value();
    ASSERT_GE(required, 1);
    ASSERT_LE(required, total);
    EXPECT_GE(static_cast<double>(static_cast<long double>(required) /
                                  static_cast<long double>(total)),
              target)
        << target << " of " << total;
    // One fewer falls short of the target (in exact arithmetic).
    // (The decimal may sit up to half an ulp above target.)
    EXPECT_LT(static_cast<long double>(required - 1),
              static_cast<long double>(target) *
                      static_cast<long double>(total) * (1 + 0x1p-52L) +
                  1e-3L)
        << target << " of " << total;
  }
}

TEST(RequiredParamsTest, RejectsBadArguments) {
  for (double target : {0.0, 1.0, -0.5, 1.5, std::nan(""),
                        std::numeric_limits<double>::infinity()}) {
    EXPECT_EQ(RequiredParams(target, 100).status().code(),
              absl::StatusCode::kInvalidArgument)
        << target;
  }
  EXPECT_EQ(RequiredParams(0.5, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RequiredParams(0.5, -3).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Errors.

TEST(SelectUnitsTest, ImpossibleTargetGivesLargestAchievableRatio) {
  const std::vector<ScoredUnit> units = {
      {"a", 20, 1.0}, {"b", 10, 1.0}, {"keep", 50, 0.0, false}};
  const absl::StatusOr<Plan> plan = SelectUnits(units, 100, 0.5);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(),
              HasSubstr("largest achievable ratio is 0.3"));
  EXPECT_THAT(plan.status().message(), HasSubstr("needs 50 of 100"));
  EXPECT_EQ(SelectUnits({}, 100, 0.5).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SelectUnitsTest, RejectsBadUnits) {
  auto error = [](std::vector<ScoredUnit> units) {
    return SelectUnits(units, 1000, 0.01).status();
  };
  EXPECT_THAT(error({{"a", 10, -1.0}}).message(), HasSubstr("score"));
  EXPECT_THAT(error({{"a", 10, std::nan("")}}).message(), HasSubstr("nan"));
  EXPECT_THAT(
      error({{"a", 10, std::numeric_limits<double>::infinity()}}).message(),
      HasSubstr("score"));
  EXPECT_THAT(error({{"a", 10, 1.0}, {"b", 10, 1.0}, {"a", 5, 1.0}}).message(),
              HasSubstr("duplicate unit id \"a\" (units #0 and #2)"));
  EXPECT_THAT(error({{"", 10, 1.0}}).message(), HasSubstr("empty id"));
  EXPECT_THAT(error({{"a", 0, 1.0}}).message(), HasSubstr("positive"));
  EXPECT_THAT(error({{"a", 600, 1.0}, {"b", 600, 1.0}}).message(),
              HasSubstr("more parameters than total_params=1000"));
  EXPECT_THAT(error({{"a", 10, 1e308}, {"b", 10, 1e308}}).message(),
              HasSubstr("range of a double"));
  EXPECT_EQ(error({{"a", 10, -1.0}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectUnits({{"a", 10, 1.0}}, 0, 0.5).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectUnits({{"a", 10, 1.0}}, 100, 1.0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// PlanForRemoval.

TEST(PlanForRemovalTest, DescribesAGivenSet) {
  const std::vector<ScoredUnit> units = {
      {"a", 10, 1.0}, {"b", 20, 2.0}, {"c", 30, 4.0}};
  const absl::StatusOr<Plan> plan = PlanForRemoval(units, 100, 0.5, {"c", "a"});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->removed, ElementsAre("a", "c"));
  EXPECT_EQ(plan->removed_params, 40);
  EXPECT_EQ(plan->required_params, 50);
  EXPECT_DOUBLE_EQ(plan->predicted_loss, 5.0);
  EXPECT_DOUBLE_EQ(plan->overshoot, 0.4 - 0.5);  // falls short: reported
}

TEST(PlanForRemovalTest, RejectsUnknownRepeatedAndPinnedUnits) {
  const std::vector<ScoredUnit> units = {{"a", 10, 1.0},
                                         {"pinned", 10, 1.0, false}};
  EXPECT_THAT(PlanForRemoval(units, 100, 0.5, {"x"}).status().message(),
              HasSubstr("unknown unit \"x\""));
  EXPECT_THAT(PlanForRemoval(units, 100, 0.5, {"a", "a"}).status().message(),
              HasSubstr("twice"));
  EXPECT_THAT(PlanForRemoval(units, 100, 0.5, {"pinned"}).status().message(),
              HasSubstr("not removable"));
}

// ---------------------------------------------------------------------------
// plan.json

Plan SamplePlan() {
  std::mt19937_64 rng(1);
  const std::vector<ScoredUnit> units = SdxlUnits(rng);
  Plan plan = Select(units, kSdxlTotalParams, 0.37);
  plan.criterion = "output_loss";
  return plan;
}

TEST(PlanJsonTest, RoundTripsExactly) {
  const Plan plan = SamplePlan();
  const std::string text = PlanToJson(plan).dump(2);
  const absl::StatusOr<Plan> back = PlanFromJson(nlohmann::json::parse(text));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->criterion, "output_loss");
  EXPECT_EQ(back->target_ratio, plan.target_ratio);
  EXPECT_EQ(back->achieved_ratio, plan.achieved_ratio);
  EXPECT_EQ(back->overshoot, plan.overshoot);
  EXPECT_EQ(back->required_params, plan.required_params);
  EXPECT_EQ(back->removed_params, plan.removed_params);
  EXPECT_EQ(back->total_params, plan.total_params);
  EXPECT_EQ(back->predicted_loss, plan.predicted_loss);
  EXPECT_EQ(back->removed, plan.removed);
  EXPECT_EQ(PlanToJson(*back).dump(), PlanToJson(plan).dump());
}

TEST(PlanJsonTest, WritesTheDocumentedFields) {
  const nlohmann::json json = PlanToJson(SamplePlan());
  for (const char* field : {"criterion", "target_ratio", "achieved_ratio",
                            "overshoot", "required_params", "removed_params",
                            "total_params", "predicted_loss", "removed"}) {
    EXPECT_TRUE(json.contains(field)) << field;
  }
  EXPECT_EQ(json.size(), 9u);
}

TEST(PlanJsonTest, RequiredParamsMayBeOmitted) {
  nlohmann::json json = PlanToJson(SamplePlan());
  json.erase("required_params");
  const absl::StatusOr<Plan> plan = PlanFromJson(json);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->required_params, SamplePlan().required_params);
}

TEST(PlanJsonTest, AcceptsAPlanThatFallsShort) {
  const std::vector<ScoredUnit> units = {{"a", 10, 1.0}, {"b", 20, 2.0}};
  Plan plan = PlanForRemoval(units, 100, 0.5, {"a"}).value();
  plan.criterion = "handcrafted";
  EXPECT_TRUE(PlanFromJson(PlanToJson(plan)).ok());
  plan = PlanForRemoval(units, 100, 0.5, {}).value();
  EXPECT_TRUE(PlanFromJson(PlanToJson(plan)).ok());
}

TEST(PlanJsonTest, RejectsInvalidPlans) {
  const nlohmann::json good = PlanToJson(SamplePlan());
  auto error = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json json = good;
    edit(json);
    return std::string(PlanFromJson(json).status().message());
  };
  EXPECT_THAT(
      std::string(PlanFromJson(nlohmann::json::array()).status().message()),
      HasSubstr("expected an object"));
  EXPECT_THAT(error([](auto& j) { j.erase("removed"); }),
              HasSubstr("\"removed\" is missing"));
  EXPECT_THAT(error([](auto& j) { j["extra"] = 1; }),
              HasSubstr("unknown field \"extra\""));
  EXPECT_THAT(error([](auto& j) { j["criterion"] = 3; }),
              HasSubstr("\"criterion\" must be a string"));
  EXPECT_THAT(error([](auto& j) { j["target_ratio"] = "half"; }),
              HasSubstr("\"target_ratio\" must be a number"));
  EXPECT_THAT(error([](auto& j) { j["target_ratio"] = 1.5; }),
              HasSubstr("target_ratio must be in (0, 1)"));
  EXPECT_THAT(error([](auto& j) { j["total_params"] = 1.5; }),
              HasSubstr("\"total_params\" must be a 64-bit integer"));
  EXPECT_THAT(error([](auto& j) {
                j["total_params"] = std::numeric_limits<uint64_t>::max();
              }),
              HasSubstr("\"total_params\" must be a 64-bit integer"));
  EXPECT_THAT(error([](auto& j) { j["total_params"] = 0; }),
              HasSubstr("total_params must be positive"));
  EXPECT_THAT(error([](auto& j) { j["required_params"] = 1; }),
              HasSubstr("\"required_params\" is 1"));
  EXPECT_THAT(error([](auto& j) { j["removed_params"] = -1; }),
              HasSubstr("\"removed_params\" must be in"));
  EXPECT_THAT(error([](auto& j) { j["removed"] = "a"; }),
              HasSubstr("must be an array"));
  EXPECT_THAT(error([](auto& j) { j["removed"].push_back(7); }),
              HasSubstr("must be a non-empty string"));
  EXPECT_THAT(error([](auto& j) { j["removed"].push_back(""); }),
              HasSubstr("must be a non-empty string"));
  EXPECT_THAT(error([](auto& j) {
                const nlohmann::json first = j["removed"][0];
                j["removed"].push_back(first);
              }),
              HasSubstr("twice"));
  EXPECT_THAT(error([](auto& j) { j["removed"] = nlohmann::json::array(); }),
              HasSubstr("removed units"));
  EXPECT_THAT(error([](auto& j) { j["achieved_ratio"] = 0.9; }),
              HasSubstr("removed_params / total_params"));
  EXPECT_THAT(error([](auto& j) { j["overshoot"] = 0.5; }),
              HasSubstr("achieved_ratio - target_ratio"));
  EXPECT_THAT(error([](auto& j) { j["predicted_loss"] = -1; }),
              HasSubstr("must be >= 0"));
}

TEST(PlanJsonTest, EmptyPlanHasNoRemovedUnits) {
  Plan plan;
  plan.target_ratio = 0.5;
  plan.total_params = 10;
  plan.required_params = 5;
  plan.overshoot = -0.5;
  const absl::StatusOr<Plan> back = PlanFromJson(PlanToJson(plan));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_THAT(back->removed, IsEmpty());
}

}  // namespace
}  // namespace lpd::selection

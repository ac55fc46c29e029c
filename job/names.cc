#include "job/names.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lpd::job {
namespace {

using ::lpd::selection::ScoreCriterion;
using ::lpd::selection::UnitKind;
using ::lpd::v1::Criterion;
using ::lpd::v1::Phase;
using ::lpd::v1::PruneUnit;

constexpr std::pair<PruneUnit, UnitKind> kUnitKinds[] = {
    {lpd::v1::PRUNE_UNIT_RESNET, UnitKind::kResnet},
    {lpd::v1::PRUNE_UNIT_ATTENTION, UnitKind::kAttention},
    {lpd::v1::PRUNE_UNIT_TRANSFORMER_BLOCK, UnitKind::kTransformerBlock},
};

constexpr std::pair<Criterion, std::optional<ScoreCriterion>> kCriteria[] = {
    {lpd::v1::CRITERION_OUTPUT_LOSS, ScoreCriterion::kOutputLoss},
    {lpd::v1::CRITERION_MAGNITUDE, ScoreCriterion::kMagnitude},
    {lpd::v1::CRITERION_RANDOM, ScoreCriterion::kRandom},
    {lpd::v1::CRITERION_HANDCRAFTED, std::nullopt},
};

}  // namespace

const PhaseInfo* FindPhase(Phase phase) {
  for (const PhaseInfo& info : kPhases) {
    if (info.phase == phase) return &info;
  }
  return nullptr;
}

absl::string_view PhaseName(Phase phase) {
  const PhaseInfo* info = FindPhase(phase);
  return info != nullptr ? info->name : "UNSPECIFIED";
}

std::string PhaseLabel(Phase phase) {
  return absl::AsciiStrToLower(PhaseName(phase));
}

Phase FirstPhase() { return kPhases.front().phase; }

Phase NextPhase(Phase phase) {
  for (size_t i = 0; i + 1 < kPhases.size(); ++i) {
    if (kPhases[i].phase == phase) return kPhases[i + 1].phase;
  }
  return lpd::v1::PHASE_UNSPECIFIED;
}

double PhaseWeight(Phase phase) {
  const PhaseInfo* info = FindPhase(phase);
  return info != nullptr ? info->progress_weight : 0;
}

std::string PhasePrefix(Phase phase) {
  return absl::StrCat(PhaseName(phase), ": ");
}

absl::Status InPhase(Phase phase, const absl::Status& status) {
  if (status.ok()) return status;
  const std::string prefix = PhasePrefix(phase);
  if (absl::StartsWith(status.message(), prefix)) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

absl::StatusOr<UnitKind> UnitKindOf(PruneUnit unit) {
  for (const auto& [value, kind] : kUnitKinds) {
    if (value == unit) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "not a unit kind: PruneUnit value ", static_cast<int>(unit)));
}

absl::StatusOr<std::set<UnitKind>> UnitKindsOf(
    const google::protobuf::RepeatedField<int>& units) {
  std::set<UnitKind> kinds;
  for (int unit : units) {
    absl::StatusOr<UnitKind> kind = UnitKindOf(static_cast<PruneUnit>(unit));
    if (!kind.ok()) return kind.status();
    kinds.insert(*kind);
  }
  return kinds;
}

absl::StatusOr<std::optional<ScoreCriterion>> ScoreCriterionOf(
    Criterion criterion) {
  for (const auto& [value, score] : kCriteria) {
    if (value == criterion) return score;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "not a criterion: Criterion value ", static_cast<int>(criterion)));
}

}  // namespace lpd::job

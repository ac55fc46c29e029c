// The job's vocabulary, one table each (DESIGN §3.2, §4.2, §4.3):
//
//   phases     the order a job runs them in (the phase graph), their names
//              in events, logs and error messages ("DISTILL: ..."), their
//              lower-case labels (task ids, lpdctl), their share of a job's
//              progress, and whether workers or the scheduler run them;
//   unit kinds the spec's PruneUnit values as selection's unit kinds;
//   criteria   the spec's Criterion values as selection's scoring criteria.
//
// The YAML spelling of the enums is the spec's (job/spec.h YamlName); a test
// checks that it names the same kinds and criteria as selection does.
#ifndef LPD_JOB_NAMES_H_
#define LPD_JOB_NAMES_H_

#include <array>
#include <optional>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lpd/v1/job_service.pb.h"
#include "lpd/v1/job_spec.pb.h"
#include "selection/scores.h"
#include "selection/units.h"

namespace lpd::job {

struct PhaseInfo {
  lpd::v1::Phase phase;
  absl::string_view name;  // "SCORE"
  // Its share of Job.progress; the shares of all phases sum to 1.
  double progress_weight;
  // False: the scheduler runs it itself (SELECT needs no LibTorch).
  bool runs_on_workers;
};

// Every phase, in the order a job runs them.
inline constexpr std::array<PhaseInfo, 5> kPhases = {{
    {lpd::v1::PHASE_SCORE, "SCORE", 0.10, true},
    {lpd::v1::PHASE_SELECT, "SELECT", 0.02, false},
    {lpd::v1::PHASE_DISTILL, "DISTILL", 0.75, true},
    {lpd::v1::PHASE_EVALUATE, "EVALUATE", 0.08, true},
    {lpd::v1::PHASE_EXPORT, "EXPORT", 0.05, true},
}};

// kPhases' entry of `phase`; null for PHASE_UNSPECIFIED and unknown values.
const PhaseInfo* FindPhase(lpd::v1::Phase phase);
// "SCORE", ...; "UNSPECIFIED" for anything not in kPhases.
absl::string_view PhaseName(lpd::v1::Phase phase);
// "score", ...; "unspecified" for anything not in kPhases.
std::string PhaseLabel(lpd::v1::Phase phase);
// The phase a job starts with.
lpd::v1::Phase FirstPhase();
// The phase after `phase`; PHASE_UNSPECIFIED after the last one (the job is
// done) and for anything not in kPhases.
lpd::v1::Phase NextPhase(lpd::v1::Phase phase);
// Progress weight of `phase` (0 for anything not in kPhases).
double PhaseWeight(lpd::v1::Phase phase);
// "DISTILL: ": what starts every log line and error message of a phase.
std::string PhasePrefix(lpd::v1::Phase phase);
// `status` with its message prefixed by PhasePrefix(phase), unless it
// already starts with it (a status from a phase's own code); OK stays OK.
absl::Status InPhase(lpd::v1::Phase phase, const absl::Status& status);

// The unit kind a PruneUnit value names; InvalidArgument for
// PRUNE_UNIT_UNSPECIFIED and unknown values.
absl::StatusOr<selection::UnitKind> UnitKindOf(lpd::v1::PruneUnit unit);
// The kinds of spec.prune.units (repeated PruneUnit, as ints).
absl::StatusOr<std::set<selection::UnitKind>> UnitKindsOf(
    const google::protobuf::RepeatedField<int>& units);

// The scoring criterion a Criterion value names; nullopt for
// CRITERION_HANDCRAFTED (a rule, no scores); InvalidArgument for
// CRITERION_UNSPECIFIED and unknown values.
absl::StatusOr<std::optional<selection::ScoreCriterion>> ScoreCriterionOf(
    lpd::v1::Criterion criterion);

}  // namespace lpd::job

#endif  // LPD_JOB_NAMES_H_

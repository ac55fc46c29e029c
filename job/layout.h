// Where a job's artifacts live under its output location (spec.output.uri,
// opened with storage::OpenStoreLocation): every name in one place. Phases
// write, in order (DESIGN §3.2):
//
//   SCORE     units.json                    every prunable unit of the teacher
//             scores/shard-I-of-N.json      one per SCORE task, or
//             handcrafted.json              the rule's removal (handcrafted)
//   SELECT    scores.json, plan.json
//   DISTILL   additivity.json               output_loss jobs
//             checkpoints/step-00000500/    student.safetensors,
//                                           optimizer.safetensors,
//                                           trainer.json, manifest.json
//             checkpoints/LATEST            written last: "step-00000500"
//             distill.json
//   EVALUATE  report.json
//   EXPORT    final/                        config.json,
//                                           diffusion_pytorch_model.safetensors,
//                                           lpd_pruning.json, manifest.json
//
// Names are relative to the job's prefix ("" or ending in '/'). No I/O here:
// job/checkpoints.h commits and finds checkpoints.
#ifndef LPD_JOB_LAYOUT_H_
#define LPD_JOB_LAYOUT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace lpd::job {

// SCORE and SELECT.
inline constexpr char kUnitsObject[] = "units.json";
inline constexpr char kHandcraftedObject[] = "handcrafted.json";
inline constexpr char kScoresObject[] = "scores.json";
inline constexpr char kPlanObject[] = "plan.json";
// "scores/shard-<index>-of-<count>.json".
std::string ScoreShardObject(int index, int count);

// DISTILL, EVALUATE, EXPORT.
inline constexpr char kAdditivityObject[] = "additivity.json";
inline constexpr char kDistillObject[] = "distill.json";
inline constexpr char kReportObject[] = "report.json";
inline constexpr char kFinalFolder[] = "final";

// Checkpoints.
inline constexpr absl::string_view kCheckpointsFolder = "checkpoints/";
inline constexpr absl::string_view kLatestCheckpointKey = "checkpoints/LATEST";
// Every checkpoint folder's name starts with this.
inline constexpr absl::string_view kCheckpointNamePrefix = "step-";
// "step-00000500": the folder name of `step`'s checkpoint (8 digits or more;
// steps are >= 0).
std::string CheckpointName(int64_t step);
// "checkpoints/step-00000500/".
std::string CheckpointDir(int64_t step);
// The step named by exactly what CheckpointName gives (a trailing '/'
// allowed), else nullopt.
std::optional<int64_t> ParseCheckpointName(absl::string_view name);
// A checkpoint's objects (besides its manifest.json).
inline constexpr absl::string_view kStudentWeightsName = "student.safetensors";
inline constexpr absl::string_view kOptimizerStateName =
    "optimizer.safetensors";
inline constexpr absl::string_view kTrainerStateName = "trainer.json";

// An exported student's files (besides config.json and manifest.json).
inline constexpr char kPruningFileName[] = "lpd_pruning.json";
inline constexpr char kWeightsFileName[] =
    "diffusion_pytorch_model.safetensors";

}  // namespace lpd::job

#endif  // LPD_JOB_LAYOUT_H_

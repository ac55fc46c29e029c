// How a job's checkpoints (job/layout.h) are committed and how the newest
// complete one is found:
//
//   <prefix>checkpoints/step-00000500/<objects>      written first
//   <prefix>checkpoints/step-00000500/manifest.json  then its manifest
//   <prefix>checkpoints/LATEST                       last: "step-00000500"
//
// `prefix` is the job's key prefix in its store ("" or ending in '/', as
// StoreLocation gives it). Steps are >= 0.
#ifndef LPD_JOB_CHECKPOINTS_H_
#define LPD_JOB_CHECKPOINTS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "job/layout.h"
#include "storage/manifest.h"
#include "storage/object_store.h"

namespace lpd::job {

// Completes `step`'s checkpoint, whose objects are already written into
// storage::JoinKey({prefix, CheckpointDir(step)}) and recorded in `manifest`
// (by PutWithManifest and friends): checks they are all there, writes the
// checkpoint's manifest.json, then checkpoints/LATEST naming it. A missing
// or wrong-sized object is an error and LATEST is left as it was.
absl::Status CommitCheckpoint(storage::ObjectStore& store, int64_t step,
                              const storage::Manifest& manifest,
                              absl::string_view prefix = "");

// Whether `step`'s checkpoint is complete: its manifest exists and parses,
// and every object it lists is present with its recorded size (contents are
// checked when read, by VerifiedGet). Errors only when storage fails.
absl::StatusOr<bool> IsCheckpointComplete(const storage::ObjectStore& store,
                                          int64_t step,
                                          absl::string_view prefix = "");

// The step to resume from. The one LATEST names when that checkpoint is
// complete; otherwise (no LATEST, unreadable content, or a checkpoint whose
// manifest is missing or incomplete) the newest complete checkpoint under
// checkpoints/; nullopt when there is none. Errors only when storage fails.
absl::StatusOr<std::optional<int64_t>> ReadLatestCheckpoint(
    const storage::ObjectStore& store, absl::string_view prefix = "");

}  // namespace lpd::job

#endif  // LPD_JOB_CHECKPOINTS_H_

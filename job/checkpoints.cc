#include "job/checkpoints.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"

namespace lpd::job {
absl::Status CommitCheckpoint(storage::ObjectStore& store, int64_t step,
                              const storage::Manifest& manifest,
                              absl::string_view prefix) {
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint step must be >= 0, got ", step));
  }
  const std::string dir = storage::JoinKey({prefix, CheckpointDir(step)});
  if (absl::Status present = storage::CheckObjectsPresent(store, dir, manifest);
      !present.ok()) {
    return absl::Status(
        present.code(),
        absl::StrCat("checkpoint ", store.UriOf(dir),
                     " is incomplete, not committing it: ", present.message()));
  }
  RETURN_IF_ERROR(storage::WriteManifest(store, dir, manifest));
  return store.Put(storage::JoinKey({prefix, kLatestCheckpointKey}),
                   CheckpointName(step));
}

absl::StatusOr<bool> IsCheckpointComplete(const storage::ObjectStore& store,
                                          int64_t step,
                                          absl::string_view prefix) {
  const std::string dir = storage::JoinKey({prefix, CheckpointDir(step)});
  absl::StatusOr<storage::Manifest> manifest =
      storage::ReadManifest(store, dir);
  if (absl::IsNotFound(manifest.status()) ||
      absl::IsDataLoss(manifest.status())) {
    return false;
  }
  RETURN_IF_ERROR(manifest.status());
  absl::Status present = storage::CheckObjectsPresent(store, dir, *manifest);
  if (absl::IsNotFound(present) || absl::IsDataLoss(present)) return false;
  RETURN_IF_ERROR(present);
  return true;
}

absl::StatusOr<std::optional<int64_t>> ReadLatestCheckpoint(
    const storage::ObjectStore& store, absl::string_view prefix) {
  std::optional<int64_t> named;
  absl::StatusOr<std::string> latest =
      store.Get(storage::JoinKey({prefix, kLatestCheckpointKey}));
  if (latest.ok()) {
    named = ParseCheckpointName(absl::StripAsciiWhitespace(*latest));
    if (named.has_value()) {
      ASSIGN_OR_RETURN(bool complete,
                       IsCheckpointComplete(store, *named, prefix));
      if (complete) return named;
    }
  } else if (!absl::IsNotFound(latest.status())) {
    return latest.status();
  }

  // LATEST is missing or names no complete checkpoint: fall back to the
  // newest checkpoint with a complete manifest.
  const std::string folder = storage::JoinKey({prefix, kCheckpointsFolder});
  ASSIGN_OR_RETURN(std::vector<storage::ObjectEntry> entries,
                   store.List(absl::StrCat(folder, kCheckpointNamePrefix)));
  std::vector<int64_t> steps;
  for (const storage::ObjectEntry& entry : entries) {
    absl::string_view rest = entry.key;
    if (!absl::ConsumePrefix(&rest, folder) ||
        !absl::ConsumeSuffix(&rest,
                             absl::StrCat("/", storage::kManifestName))) {
      continue;
    }
    std::optional<int64_t> step = ParseCheckpointName(rest);
    if (step.has_value() && step != named) steps.push_back(*step);
  }
  std::sort(steps.begin(), steps.end(), std::greater<>());
  for (int64_t step : steps) {
    ASSIGN_OR_RETURN(bool complete, IsCheckpointComplete(store, step, prefix));
    if (complete) return step;
  }
  return std::nullopt;
}

}  // namespace lpd::job

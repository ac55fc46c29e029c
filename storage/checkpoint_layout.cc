#include "storage/checkpoint_layout.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace lpd::storage {
namespace {

constexpr absl::string_view kStepPrefix = "step-";
constexpr size_t kStepDigits = 8;

}  // namespace

std::string CheckpointName(int64_t step) {
  std::string digits = absl::StrCat(step);
  if (digits.size() < kStepDigits) {
    digits.insert(0, kStepDigits - digits.size(), '0');
  }
  return absl::StrCat(kStepPrefix, digits);
}

std::string CheckpointDir(int64_t step) {
  return absl::StrCat(kCheckpointsFolder, CheckpointName(step), "/");
}

std::optional<int64_t> ParseCheckpointName(absl::string_view name) {
  absl::ConsumeSuffix(&name, "/");
  absl::string_view digits = name;
  if (!absl::ConsumePrefix(&digits, kStepPrefix) || digits.empty()) {
    return std::nullopt;
  }
  for (char c : digits) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return std::nullopt;
    }
  }
  int64_t step = 0;
  if (!absl::SimpleAtoi(digits, &step) || CheckpointName(step) != name) {
    return std::nullopt;
  }
  return step;
}

absl::Status CommitCheckpoint(ObjectStore& store, int64_t step,
                              const Manifest& manifest,
                              absl::string_view prefix) {
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint step must be >= 0, got ", step));
  }
  const std::string dir = JoinKey({prefix, CheckpointDir(step)});
  if (absl::Status present = CheckObjectsPresent(store, dir, manifest);
      !present.ok()) {
    return absl::Status(
        present.code(),
        absl::StrCat("checkpoint ", store.UriOf(dir),
                     " is incomplete, not committing it: ", present.message()));
  }
  RETURN_IF_ERROR(WriteManifest(store, dir, manifest));
  return store.Put(JoinKey({prefix, kLatestCheckpointKey}),
                   CheckpointName(step));
}

absl::StatusOr<bool> IsCheckpointComplete(const ObjectStore& store,
                                          int64_t step,
                                          absl::string_view prefix) {
  const std::string dir = JoinKey({prefix, CheckpointDir(step)});
  absl::StatusOr<Manifest> manifest = ReadManifest(store, dir);
  if (absl::IsNotFound(manifest.status()) ||
      absl::IsDataLoss(manifest.status())) {
    return false;
  }
  RETURN_IF_ERROR(manifest.status());
  absl::Status present = CheckObjectsPresent(store, dir, *manifest);
  if (absl::IsNotFound(present) || absl::IsDataLoss(present)) return false;
  RETURN_IF_ERROR(present);
  return true;
}

absl::StatusOr<std::optional<int64_t>> ReadLatestCheckpoint(
    const ObjectStore& store, absl::string_view prefix) {
  std::optional<int64_t> named;
  absl::StatusOr<std::string> latest =
      store.Get(JoinKey({prefix, kLatestCheckpointKey}));
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
  const std::string folder = JoinKey({prefix, kCheckpointsFolder});
  ASSIGN_OR_RETURN(std::vector<ObjectEntry> entries,
                   store.List(absl::StrCat(folder, kStepPrefix)));
  std::vector<int64_t> steps;
  for (const ObjectEntry& entry : entries) {
    absl::string_view rest = entry.key;
    if (!absl::ConsumePrefix(&rest, folder) ||
        !absl::ConsumeSuffix(&rest, absl::StrCat("/", kManifestName))) {
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

}  // namespace lpd::storage

#include "job/layout.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace lpd::job {
namespace {

constexpr size_t kStepDigits = 8;

}  // namespace

std::string CheckpointName(int64_t step) {
  std::string digits = absl::StrCat(step);
  if (digits.size() < kStepDigits) {
    digits.insert(0, kStepDigits - digits.size(), '0');
  }
  return absl::StrCat(kCheckpointNamePrefix, digits);
}

std::string CheckpointDir(int64_t step) {
  return absl::StrCat(kCheckpointsFolder, CheckpointName(step), "/");
}

std::optional<int64_t> ParseCheckpointName(absl::string_view name) {
  absl::ConsumeSuffix(&name, "/");
  absl::string_view digits = name;
  if (!absl::ConsumePrefix(&digits, kCheckpointNamePrefix) || digits.empty()) {
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

std::string ScoreShardObject(int index, int count) {
  return absl::StrCat("scores/shard-", index, "-of-", count, ".json");
}

}  // namespace lpd::job

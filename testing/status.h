// Status checks for tests.
#ifndef LPD_TESTING_STATUS_H_
#define LPD_TESTING_STATUS_H_

#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace lpd::test {

// `status` is an error with `code` whose message contains every one of
// `parts`.
inline ::testing::AssertionResult IsError(
    const absl::Status& status, absl::StatusCode code,
    std::initializer_list<std::string> parts = {}) {
  if (status.ok()) return ::testing::AssertionFailure() << "status is OK";
  if (status.code() != code) {
    return ::testing::AssertionFailure()
           << "code " << absl::StatusCodeToString(status.code())
           << " instead of " << absl::StatusCodeToString(code) << ": "
           << status;
  }
  for (const std::string& part : parts) {
    if (!absl::StrContains(status.message(), part)) {
      return ::testing::AssertionFailure()
             << "message lacks \"" << part << "\": " << status;
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace lpd::test

#endif  // LPD_TESTING_STATUS_H_

// Temporary folders for tests: one class, so that no test file defines its
// own.
#ifndef LPD_TESTING_TEMP_FOLDER_H_
#define LPD_TESTING_TEMP_FOLDER_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

#include "gtest/gtest.h"

namespace lpd::test {

// A new empty folder under ::testing::TempDir(), named `<prefix>` and six
// random characters, removed with its contents on destruction. A failure to
// create it fails the current test.
class TempFolder {
 public:
  explicit TempFolder(std::string_view prefix = "lpd-test-") {
    std::string pattern = (std::filesystem::path(::testing::TempDir()) /
                           (std::string(prefix) + "XXXXXX"))
                              .string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp " << pattern << " failed";
    }
    path_ = pattern;
  }
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  ~TempFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }

  const std::string& path() const { return path_; }
  // path() + "/" + relative.
  std::string Sub(const std::string& relative) const {
    return path_ + "/" + relative;
  }

 private:
  std::string path_;
};

// A fixture with a fresh temporary folder per test; `dir_` is its path.
class TempFolderTest : public ::testing::Test {
 protected:
  TempFolder temp_;
  std::string dir_ = temp_.path();
};

}  // namespace lpd::test

#endif  // LPD_TESTING_TEMP_FOLDER_H_

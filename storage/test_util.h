// Helpers shared by the storage tests: small file helpers (and, from
// testing/, a fresh temporary folder and a status check).
#ifndef LPD_STORAGE_TEST_UTIL_H_
#define LPD_STORAGE_TEST_UTIL_H_

#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "testing/status.h"
#include "testing/temp_folder.h"

namespace lpd::storage::testing_util {

// Temporary folders and status checks are every test's (testing/).
using ::lpd::test::IsError;
using ::lpd::test::TempFolder;

inline void WriteLocalFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  ASSERT_TRUE(out.good()) << "writing " << path;
}

inline std::string ReadLocalFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Names of every entry (files and folders, recursively, hidden ones too)
// under `root`, relative to it, sorted.
inline std::vector<std::string> AllEntries(const std::string& root) {
  std::vector<std::string> out;
  for (const auto& entry :
       std::filesystem::recursive_directory_iterator(root)) {
    out.push_back(std::filesystem::relative(entry.path(), root).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// `size` bytes that differ from one position to the next.
inline std::string PatternBytes(size_t size, uint32_t seed = 1) {
  std::string out(size, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : out) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

}  // namespace lpd::storage::testing_util

#endif  // LPD_STORAGE_TEST_UTIL_H_

// What the integration tests that run the real `lpd-worker` binary share:
// running a command, the reference models, and a fresh temporary folder.
#ifndef LPD_TESTS_WORKER_TEST_SUPPORT_H_
#define LPD_TESTS_WORKER_TEST_SUPPORT_H_

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "testing/temp_folder.h"

namespace lpd::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `command` through the shell and collects its output and exit code.
inline CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    result.output.append(buffer, n);
  }
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// The folder of a reference model ("tiny-sd15", "tiny-sdxl").
inline std::string Golden(const std::string& name) {
  return std::string(LPD_TESTDATA_DIR) + "/unet-golden/" + name;
}

// A fixture with a fresh temporary folder `dir_`, removed after each test.
using TempDirTest = ::lpd::test::TempFolderTest;

}  // namespace lpd::testing

#endif  // LPD_TESTS_WORKER_TEST_SUPPORT_H_

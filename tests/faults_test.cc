// The service under faults and misuse (issue 16): each case runs the real
// lpd-scheduler (and, where needed, lpd-worker) on loopback and reproduces a
// defect a probe found, so that it stays fixed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "testing/temp_folder.h"
#include "tests/service_test_support.h"

namespace {

namespace fs = std::filesystem;
using lpd::testing::ChildProcess;
using lpd::testing::ReadFileText;
using lpd::testing::WaitFor;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

class FaultsTest : public lpd::test::TempFolderTest {
 protected:
  // lpd-scheduler on `listen`, state in `state_dir`, output in dir_/`name`.log.
  std::unique_ptr<ChildProcess> Scheduler(const std::string& name,
                                          const std::string& listen,
                                          const std::string& state_dir) {
    return std::make_unique<ChildProcess>(
        std::vector<std::string>{LPD_SCHEDULER_BIN, "--listen", listen,
                                 "--state-dir", state_dir, "--port-file",
                                 dir_ + "/" + name + ".port"},
        dir_ + "/" + name + ".log");
  }

  // Waits for `name`'s port file; 0 when it did not come.
  int PortOf(const std::string& name) {
    const std::string file = dir_ + "/" + name + ".port";
    if (!WaitFor([&] { return fs::exists(file) && fs::file_size(file) > 0; },
                 20s)) {
      return 0;
    }
    return std::stoi(ReadFileText(file));
  }
};

// Defect 1: a second scheduler on a port in use started and served beside
// the first (gRPC's SO_REUSEPORT); clients alternated between two stores.
TEST_F(FaultsTest, SecondSchedulerOnAPortInUseExitsNamingIt) {
  auto first = Scheduler("first", "127.0.0.1:0", dir_ + "/state-1");
  const int port = PortOf("first");
  ASSERT_GT(port, 0) << first->Log();
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  auto second = Scheduler("second", listen, dir_ + "/state-2");
  EXPECT_EQ(second->Wait(20s), 1) << second->Log();
  EXPECT_THAT(second->Log(), HasSubstr("cannot listen on " + listen));
  EXPECT_FALSE(fs::exists(dir_ + "/second.port"));
  EXPECT_TRUE(first->running());
}

// Defect 2: a second scheduler on the same state directory (another port)
// started and served the same jobs.
TEST_F(FaultsTest, SecondSchedulerOnAStateDirInUseExitsNamingTheHolder) {
  const std::string state = dir_ + "/state";
  auto first = Scheduler("first", "127.0.0.1:0", state);
  ASSERT_GT(PortOf("first"), 0) << first->Log();
  auto second = Scheduler("second", "127.0.0.1:0", state);
  EXPECT_EQ(second->Wait(20s), 1) << second->Log();
  EXPECT_THAT(second->Log(), HasSubstr(state +
                                       " is in use by lpd-scheduler "
                                       "--listen 127.0.0.1:0 (pid " +
                                       std::to_string(first->pid())));
  EXPECT_FALSE(fs::exists(dir_ + "/second.port"));
  // Once the first has stopped, the folder is free again, also after a
  // SIGKILL (the kernel drops the lock).
  first->Signal(SIGKILL);
  first->Wait();
  auto third = Scheduler("third", "127.0.0.1:0", state);
  EXPECT_GT(PortOf("third"), 0) << third->Log();
}

}  // namespace

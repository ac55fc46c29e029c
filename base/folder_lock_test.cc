#include "base/folder_lock.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>

#include "testing/temp_folder.h"

namespace lpd {
namespace {

using ::testing::HasSubstr;

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(FolderLockTest, SecondHolderIsRefusedNamingTheFirst) {
  test::TempFolder dir{"folder_lock_"};
  auto first = FolderLock::Acquire(dir.path(), "lpd-scheduler pid 11");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(ReadText(dir.path() + "/lock"), "lpd-scheduler pid 11\n");
  auto second = FolderLock::Acquire(dir.path(), "lpd-scheduler pid 12");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr(dir.path()));
  EXPECT_THAT(second.status().message(), HasSubstr("lpd-scheduler pid 11"));
  // The refused one did not overwrite the holder's name.
  EXPECT_EQ(ReadText(dir.path() + "/lock"), "lpd-scheduler pid 11\n");
}

TEST(FolderLockTest, ReleasedByDestructionAndByTheHoldersDeath) {
  test::TempFolder dir{"folder_lock_"};
  {
    auto held = FolderLock::Acquire(dir.path(), "a");
    ASSERT_TRUE(held.ok()) << held.status();
    FolderLock moved = std::move(*held);  // the lock moves with it
    EXPECT_FALSE(FolderLock::Acquire(dir.path(), "b").ok());
  }
  EXPECT_TRUE(FolderLock::Acquire(dir.path(), "c").ok());

  // A child takes the lock and is killed: nothing stale is left behind.
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto lock = FolderLock::Acquire(dir.path(), "child");
    const char byte = lock.ok() ? '1' : '0';
    (void)!write(ready[1], &byte, 1);
    pause();
    _exit(0);
  }
  char byte = 0;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  ASSERT_EQ(byte, '1');
  auto refused = FolderLock::Acquire(dir.path(), "parent");
  EXPECT_THAT(refused.status().message(), HasSubstr("child"));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_TRUE(FolderLock::Acquire(dir.path(), "parent").ok());
  close(ready[0]);
  close(ready[1]);
}

TEST(FolderLockTest, MissingFolderIsUnavailable) {
  auto lock = FolderLock::Acquire("/nonexistent/lpd-folder", "x");
  EXPECT_EQ(lock.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace lpd

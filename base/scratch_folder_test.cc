#include "base/scratch_folder.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>
#include <string>
#include <utility>

#include "gtest/gtest.h"
#include "testing/temp_folder.h"

namespace lpd {
namespace {

bool Exists(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0;
}

TEST(ScratchFolderTest, IsCreatedUnderTmpdirAndRemovedWithItsFiles) {
  test::TempFolder tmpdir;
  ::setenv("TMPDIR", tmpdir.path().c_str(), 1);
  std::string path;
  {
    absl::StatusOr<ScratchFolder> scratch = ScratchFolder::Make("lpd-x-");
    ::unsetenv("TMPDIR");
    ASSERT_TRUE(scratch.ok()) << scratch.status();
    path = scratch->path();
    EXPECT_EQ(path.rfind(tmpdir.path() + "/lpd-x-", 0), 0u) << path;
    std::ofstream(scratch->File("a.bin")) << "data";
    EXPECT_TRUE(Exists(path + "/a.bin"));
    // Moving hands the folder over; only the last owner removes it.
    ScratchFolder moved(std::move(*scratch));
    EXPECT_EQ(moved.path(), path);
  }
  EXPECT_FALSE(Exists(path));
}

TEST(ScratchFolderTest, FailsWithAMessageWhenTheFolderCannotBeMade) {
  ::setenv("TMPDIR", "/proc/self", 1);  // exists, but nothing can be made there
  absl::StatusOr<ScratchFolder> scratch = ScratchFolder::Make("lpd-x-");
  ::unsetenv("TMPDIR");
  ASSERT_FALSE(scratch.ok());
  EXPECT_EQ(scratch.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(scratch.status().message().find("cannot create a temporary folder"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace lpd

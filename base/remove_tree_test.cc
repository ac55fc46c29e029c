#include "base/remove_tree.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace lpd {
namespace {

bool Exists(const std::string& path) {
  struct stat info;
  return ::lstat(path.c_str(), &info) == 0;
}

TEST(RemoveTreeTest, RemovesNestedFoldersFilesAndLinksWithoutFollowingThem) {
  char pattern[] = "/tmp/lpd-remove-tree-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  const std::string root = pattern;
  const std::string keep = root + "-kept";
  ASSERT_EQ(::mkdir(keep.c_str(), 0755), 0);
  std::ofstream(keep + "/precious") << "x";
  ASSERT_EQ(::mkdir((root + "/a").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((root + "/a/b").c_str(), 0755), 0);
  std::ofstream(root + "/a/b/file") << "data";
  std::ofstream(root + "/top") << "data";
  ASSERT_EQ(::symlink(keep.c_str(), (root + "/a/link").c_str()), 0);

  EXPECT_TRUE(RemoveTree(root));
  EXPECT_FALSE(Exists(root));
  EXPECT_TRUE(Exists(keep + "/precious"));  // the link was not followed
  EXPECT_TRUE(RemoveTree(root));            // already gone: fine
  std::ofstream(root) << "a file";
  EXPECT_TRUE(RemoveTree(root));
  EXPECT_FALSE(Exists(root));
  EXPECT_TRUE(RemoveTree(keep));
  EXPECT_FALSE(Exists(keep));
}

}  // namespace
}  // namespace lpd

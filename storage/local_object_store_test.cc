#include "storage/local_object_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/test_util.h"

namespace lpd::storage {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using testing_util::AllEntries;
using testing_util::IsError;
using testing_util::PatternBytes;
using testing_util::ReadLocalFile;
using testing_util::TempFolder;
using testing_util::WriteLocalFile;

class LocalObjectStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<LocalObjectStore>> store =
        LocalObjectStore::Create(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  // The keys List(prefix) gives.
  std::vector<std::string> Keys(absl::string_view prefix) {
    absl::StatusOr<std::vector<ObjectEntry>> entries = store_->List(prefix);
    EXPECT_TRUE(entries.ok()) << entries.status();
    std::vector<std::string> keys;
    if (entries.ok()) {
      for (const ObjectEntry& entry : *entries) keys.push_back(entry.key);
    }
    return keys;
  }

  TempFolder temp_;
  const std::string root_ = temp_.Sub("store");
  std::unique_ptr<LocalObjectStore> store_;
};

TEST_F(LocalObjectStoreTest, RoundTripsSmallObject) {
  ASSERT_TRUE(store_->Put("scores.json", "{\"a\": 1}").ok());
  absl::StatusOr<std::string> data = store_->Get("scores.json");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(*data, "{\"a\": 1}");
  EXPECT_EQ(ReadLocalFile(root_ + "/scores.json"), "{\"a\": 1}");
}

// The process-wide counters behind lpd_storage_bytes_total and
// lpd_storage_errors_total (tests of this binary run one at a time).
TEST_F(LocalObjectStoreTest, CountsBytesBothWaysAndErrorsButNotNotFound) {
  StorageIoCounters& io = StorageIo();
  const uint64_t up = io.bytes_uploaded, down = io.bytes_downloaded,
                 errors = io.errors;
  ASSERT_TRUE(store_->Put("a", "12345").ok());
  WriteLocalFile(temp_.Sub("local"), "1234567");
  ASSERT_TRUE(store_->PutFile("b", temp_.Sub("local")).ok());
  EXPECT_EQ(io.bytes_uploaded - up, 12u);
  ASSERT_TRUE(store_->Get("a").ok());
  ASSERT_TRUE(store_->GetRange("b", 1, 3).ok());
  ASSERT_TRUE(store_->GetToFile("b", temp_.Sub("copy")).ok());
  EXPECT_EQ(io.bytes_downloaded - down, 5u + 3u + 7u);
  EXPECT_FALSE(store_->Get("missing").ok());  // NotFound: not an error
  EXPECT_EQ(io.errors - errors, 0u);
  EXPECT_FALSE(store_->GetRange("a", 3, 10).ok());  // OutOfRange
  EXPECT_EQ(io.errors - errors, 1u);
}

TEST_F(LocalObjectStoreTest, RoundTripsEmptyObject) {
  ASSERT_TRUE(store_->Put("empty", "").ok());
  absl::StatusOr<std::string> data = store_->Get("empty");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(*data, "");
  EXPECT_EQ(store_->Stat("empty")->size, 0);
}

TEST_F(LocalObjectStoreTest, RoundTripsBinaryBytes) {
  const std::string bytes("\0\xff\n\r\x80 end", 9);
  ASSERT_TRUE(store_->Put("bin", bytes).ok());
  EXPECT_EQ(*store_->Get("bin"), bytes);
}

TEST_F(LocalObjectStoreTest, StreamsTwentyMegabytesInChunks) {
  const std::string data = PatternBytes(20 << 20);
  absl::StatusOr<std::unique_ptr<ObjectWriter>> writer =
      store_->NewWriter("checkpoints/step-00000500/unet.safetensors");
  ASSERT_TRUE(writer.ok()) << writer.status();
  constexpr size_t kChunk = (1 << 20) + 7;  // not a divisor of the size
  for (size_t offset = 0; offset < data.size(); offset += kChunk) {
    ASSERT_TRUE(
        (*writer)->Append(absl::string_view(data).substr(offset, kChunk)).ok());
  }
  EXPECT_EQ((*writer)->bytes_written(), 20 << 20);
  ASSERT_TRUE((*writer)->Commit().ok());
  absl::StatusOr<std::string> read =
      store_->Get("checkpoints/step-00000500/unet.safetensors");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->size(), data.size());
  EXPECT_TRUE(*read == data);
}

TEST_F(LocalObjectStoreTest, PutReplacesExistingObject) {
  ASSERT_TRUE(store_->Put("k", "old and longer").ok());
  ASSERT_TRUE(store_->Put("k", "new").ok());
  EXPECT_EQ(*store_->Get("k"), "new");
}

TEST_F(LocalObjectStoreTest, PutFileUploadsLocalFile) {
  const std::string local = temp_.Sub("local.bin");
  const std::string data = PatternBytes(5 << 20, 7);
  WriteLocalFile(local, data);
  ASSERT_TRUE(store_->PutFile("final/unet.safetensors", local).ok());
  EXPECT_TRUE(*store_->Get("final/unet.safetensors") == data);
}

TEST_F(LocalObjectStoreTest, PutFileOfMissingLocalFileIsNotFound) {
  EXPECT_TRUE(IsError(store_->PutFile("k", temp_.Sub("missing")),
                      absl::StatusCode::kNotFound, {temp_.Sub("missing")}));
  EXPECT_FALSE(*store_->Exists("k"));
}

TEST_F(LocalObjectStoreTest, GetToFileWritesCompleteLocalFile) {
  const std::string data = PatternBytes(9 << 20, 3);
  ASSERT_TRUE(store_->Put("model/unet.safetensors", data).ok());
  const std::string local = temp_.Sub("download.safetensors");
  WriteLocalFile(local, "stale");
  ASSERT_TRUE(store_->GetToFile("model/unet.safetensors", local).ok());
  EXPECT_TRUE(ReadLocalFile(local) == data);
  // No temporary file is left beside it.
  EXPECT_THAT(AllEntries(temp_.path()),
              ElementsAre("download.safetensors", "store", "store/model",
                          "store/model/unet.safetensors"));
}

TEST_F(LocalObjectStoreTest, GetToFileOfMissingKeyLeavesLocalFileAlone) {
  const std::string local = temp_.Sub("out");
  EXPECT_TRUE(IsError(store_->GetToFile("nope", local),
                      absl::StatusCode::kNotFound, {"\"nope\""}));
  EXPECT_FALSE(fs::exists(local));
}

TEST_F(LocalObjectStoreTest, GetToFileIntoMissingFolderIsNotFound) {
  ASSERT_TRUE(store_->Put("k", "x").ok());
  EXPECT_TRUE(IsError(store_->GetToFile("k", temp_.Sub("no/such/dir/f")),
                      absl::StatusCode::kNotFound, {"no/such/dir/f"}));
}

TEST_F(LocalObjectStoreTest, GetRangeReadsBytesInside) {
  ASSERT_TRUE(store_->Put("k", "0123456789").ok());
  EXPECT_EQ(*store_->GetRange("k", 0, 3), "012");
  EXPECT_EQ(*store_->GetRange("k", 4, 2), "45");
  EXPECT_EQ(*store_->GetRange("k", 7, 3), "789");
}

TEST_F(LocalObjectStoreTest, GetRangeOfZeroLengthIsEmpty) {
  ASSERT_TRUE(store_->Put("k", "0123456789").ok());
  EXPECT_EQ(*store_->GetRange("k", 5, 0), "");
  EXPECT_EQ(*store_->GetRange("k", 10, 0), "");
}

TEST_F(LocalObjectStoreTest, GetRangePastEndIsOutOfRange) {
  ASSERT_TRUE(store_->Put("k", "0123456789").ok());
  EXPECT_TRUE(IsError(store_->GetRange("k", 8, 3).status(),
                      absl::StatusCode::kOutOfRange,
                      {"/k", "[8, 11)", "10 bytes"}));
  EXPECT_TRUE(IsError(store_->GetRange("k", 11, 0).status(),
                      absl::StatusCode::kOutOfRange));
}

TEST_F(LocalObjectStoreTest, GetRangeOfMissingKeyIsNotFound) {
  EXPECT_TRUE(IsError(store_->GetRange("missing", 0, 1).status(),
                      absl::StatusCode::kNotFound, {"\"missing\""}));
}

TEST_F(LocalObjectStoreTest, StatReportsSizeAndModificationTime) {
  const absl::Time before = absl::Now() - absl::Seconds(2);
  ASSERT_TRUE(store_->Put("a/b", "12345").ok());
  absl::StatusOr<ObjectStat> stat = store_->Stat("a/b");
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->size, 5);
  EXPECT_GE(stat->mtime, before);
  EXPECT_LE(stat->mtime, absl::Now() + absl::Seconds(2));
}

TEST_F(LocalObjectStoreTest, ExistsTellsPresentFromAbsent) {
  ASSERT_TRUE(store_->Put("a/b", "x").ok());
  EXPECT_TRUE(*store_->Exists("a/b"));
  EXPECT_FALSE(*store_->Exists("a/c"));
  EXPECT_FALSE(*store_->Exists("a"));  // a folder is not an object
  EXPECT_FALSE(*store_->Exists("a/b/c"));
}

TEST_F(LocalObjectStoreTest, NotFoundNamesKeyAndPath) {
  ASSERT_TRUE(store_->Put("other", "x").ok());
  for (absl::Status status : {store_->Get("checkpoints/LATEST").status(),
                              store_->Stat("checkpoints/LATEST").status()}) {
    EXPECT_TRUE(IsError(status, absl::StatusCode::kNotFound,
                        {"\"checkpoints/LATEST\"", store_->uri(),
                         root_ + "/checkpoints/LATEST"}));
  }
}

TEST_F(LocalObjectStoreTest, FolderIsNotAnObject) {
  ASSERT_TRUE(store_->Put("a/b", "x").ok());
  EXPECT_TRUE(IsError(store_->Get("a").status(), absl::StatusCode::kNotFound,
                      {"\"a\""}));
}

TEST_F(LocalObjectStoreTest, RootIsCreatedByFirstWrite) {
  EXPECT_FALSE(fs::exists(root_));
  EXPECT_TRUE(IsError(store_->Get("k").status(), absl::StatusCode::kNotFound));
  EXPECT_THAT(*store_->List(""), IsEmpty());
  ASSERT_TRUE(store_->Put("k", "v").ok());
  EXPECT_TRUE(fs::is_directory(root_));
}

TEST_F(LocalObjectStoreTest, ListReturnsAllKeysSortedWithSizes) {
  ASSERT_TRUE(store_->Put("plan.json", "12").ok());
  ASSERT_TRUE(store_->Put("checkpoints/step-00000500/b", "123").ok());
  ASSERT_TRUE(store_->Put("checkpoints/step-00000500/a", "").ok());
  ASSERT_TRUE(store_->Put("checkpoints/LATEST", "1").ok());
  ASSERT_TRUE(store_->Put("a/deep/er/still/x", "1234").ok());
  absl::StatusOr<std::vector<ObjectEntry>> all = store_->List("");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(*all, ElementsAre(ObjectEntry{"a/deep/er/still/x", 4},
                                ObjectEntry{"checkpoints/LATEST", 1},
                                ObjectEntry{"checkpoints/step-00000500/a", 0},
                                ObjectEntry{"checkpoints/step-00000500/b", 3},
                                ObjectEntry{"plan.json", 2}));
}

TEST_F(LocalObjectStoreTest, ListSelectsByFolderPrefix) {
  ASSERT_TRUE(store_->Put("checkpoints/step-00000500/a", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints/step-00001000/a", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints-old/x", "1").ok());
  ASSERT_TRUE(store_->Put("final/config.json", "1").ok());
  absl::StatusOr<std::vector<ObjectEntry>> listed =
      store_->List("checkpoints/");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_THAT(*listed,
              ElementsAre(ObjectEntry{"checkpoints/step-00000500/a", 1},
                          ObjectEntry{"checkpoints/step-00001000/a", 1}));
}

TEST_F(LocalObjectStoreTest, ListSelectsByPartialNamePrefix) {
  ASSERT_TRUE(store_->Put("checkpoints/step-00000500/a", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints/LATEST", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints-old/x", "1").ok());
  EXPECT_THAT(Keys("checkpoints/step-"),
              ElementsAre("checkpoints/step-00000500/a"));
  EXPECT_THAT(Keys("checkpoints"),
              ElementsAre("checkpoints-old/x", "checkpoints/LATEST",
                          "checkpoints/step-00000500/a"));
}

TEST_F(LocalObjectStoreTest, ListOfMissingPrefixIsEmpty) {
  ASSERT_TRUE(store_->Put("a/b", "1").ok());
  EXPECT_THAT(*store_->List("nothing/here/"), IsEmpty());
  EXPECT_THAT(*store_->List("a/b/"), IsEmpty());  // "a/b" is an object
}

TEST_F(LocalObjectStoreTest, ListHidesUnfinishedWrites) {
  ASSERT_TRUE(store_->Put("dir/done", "1").ok());
  absl::StatusOr<std::unique_ptr<ObjectWriter>> writer =
      store_->NewWriter("dir/pending");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append("partial").ok());
  // The temporary file exists on disk but is not an object.
  EXPECT_EQ(AllEntries(root_ + "/dir").size(), 2u);
  EXPECT_THAT(*store_->List(""), ElementsAre(ObjectEntry{"dir/done", 1}));
}

TEST_F(LocalObjectStoreTest, DeleteRemovesObject) {
  ASSERT_TRUE(store_->Put("a/b", "1").ok());
  ASSERT_TRUE(store_->Delete("a/b").ok());
  EXPECT_FALSE(*store_->Exists("a/b"));
  EXPECT_TRUE(
      IsError(store_->Get("a/b").status(), absl::StatusCode::kNotFound));
}

TEST_F(LocalObjectStoreTest, DeleteOfMissingObjectIsOk) {
  EXPECT_TRUE(store_->Delete("never/was").ok());
  ASSERT_TRUE(store_->Put("a/b", "1").ok());
  EXPECT_TRUE(store_->Delete("a/c").ok());
  EXPECT_TRUE(store_->Delete("a").ok());  // a folder: not an object
  EXPECT_TRUE(*store_->Exists("a/b"));
}

TEST_F(LocalObjectStoreTest, DeletePrefixRemovesMatchingObjectsAndFolders) {
  ASSERT_TRUE(store_->Put("checkpoints/step-00000500/a", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints/step-00000500/sub/b", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints/step-00001000/a", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints/LATEST", "1").ok());
  ASSERT_TRUE(store_->DeletePrefix("checkpoints/step-00000500/").ok());
  EXPECT_THAT(*store_->List(""),
              ElementsAre(ObjectEntry{"checkpoints/LATEST", 1},
                          ObjectEntry{"checkpoints/step-00001000/a", 1}));
  EXPECT_FALSE(fs::exists(root_ + "/checkpoints/step-00000500"));
}

TEST_F(LocalObjectStoreTest, DeletePrefixByPartialName) {
  ASSERT_TRUE(store_->Put("checkpoints/step-00000500/a", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints/step-00001000/a", "1").ok());
  ASSERT_TRUE(store_->Put("checkpoints/LATEST", "1").ok());
  ASSERT_TRUE(store_->DeletePrefix("checkpoints/step-").ok());
  EXPECT_THAT(*store_->List(""),
              ElementsAre(ObjectEntry{"checkpoints/LATEST", 1}));
  EXPECT_THAT(AllEntries(root_),
              ElementsAre("checkpoints", "checkpoints/LATEST"));
}

TEST_F(LocalObjectStoreTest, UncommittedWriteIsInvisible) {
  absl::StatusOr<std::unique_ptr<ObjectWriter>> writer =
      store_->NewWriter("checkpoints/step-00000500/unet.safetensors");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append(PatternBytes(1 << 20)).ok());
  const std::string key = "checkpoints/step-00000500/unet.safetensors";
  EXPECT_FALSE(*store_->Exists(key));
  EXPECT_TRUE(IsError(store_->Get(key).status(), absl::StatusCode::kNotFound));
  EXPECT_THAT(*store_->List(""), IsEmpty());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_TRUE(*store_->Exists(key));
  EXPECT_EQ(store_->Stat(key)->size, 1 << 20);
}

TEST_F(LocalObjectStoreTest, OldVersionStaysReadableUntilCommit) {
  ASSERT_TRUE(store_->Put("checkpoints/LATEST", "step-00000500").ok());
  absl::StatusOr<std::unique_ptr<ObjectWriter>> writer =
      store_->NewWriter("checkpoints/LATEST");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append("step-0000").ok());
  EXPECT_EQ(*store_->Get("checkpoints/LATEST"), "step-00000500");
  ASSERT_TRUE((*writer)->Append("1000").ok());
  EXPECT_EQ(*store_->Get("checkpoints/LATEST"), "step-00000500");
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_EQ(*store_->Get("checkpoints/LATEST"), "step-00001000");
}

TEST_F(LocalObjectStoreTest, AbortLeavesNothingBehind) {
  ASSERT_TRUE(store_->Put("dir/keep", "1").ok());
  absl::StatusOr<std::unique_ptr<ObjectWriter>> writer =
      store_->NewWriter("dir/aborted");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append("data").ok());
  ASSERT_TRUE((*writer)->Abort().ok());
  EXPECT_TRUE((*writer)->Abort().ok());  // idempotent
  EXPECT_THAT(AllEntries(root_), ElementsAre("dir", "dir/keep"));
  EXPECT_TRUE(IsError((*writer)->Append("more"),
                      absl::StatusCode::kFailedPrecondition, {"aborted"}));
  EXPECT_TRUE(IsError((*writer)->Commit(),
                      absl::StatusCode::kFailedPrecondition, {"aborted"}));
  EXPECT_FALSE(*store_->Exists("dir/aborted"));
}

TEST_F(LocalObjectStoreTest, DestroyedWriterLeavesNothingBehind) {
  ASSERT_TRUE(store_->Put("dir/keep", "1").ok());
  {
    absl::StatusOr<std::unique_ptr<ObjectWriter>> writer =
        store_->NewWriter("dir/dropped");
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Append("data").ok());
  }
  EXPECT_THAT(AllEntries(root_), ElementsAre("dir", "dir/keep"));
}

TEST_F(LocalObjectStoreTest, WriterCommitsOnce) {
  absl::StatusOr<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("k");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append("v").ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_TRUE(IsError((*writer)->Commit(),
                      absl::StatusCode::kFailedPrecondition, {"committed"}));
  EXPECT_TRUE(IsError((*writer)->Append("x"),
                      absl::StatusCode::kFailedPrecondition, {"committed"}));
  EXPECT_TRUE(IsError((*writer)->Abort(), absl::StatusCode::kFailedPrecondition,
                      {"committed"}));
  EXPECT_EQ(*store_->Get("k"), "v");
  EXPECT_THAT(AllEntries(root_), ElementsAre("k"));
}

TEST_F(LocalObjectStoreTest, ConcurrentReaderSeesOnlyWholeObjects) {
  // A writer replaces the object with versions of one repeated byte; a
  // reader must only ever see a whole version.
  constexpr size_t kSize = 1 << 20;
  ASSERT_TRUE(store_->Put("obj", std::string(kSize, 'a')).ok());
  std::atomic<bool> done = false;
  std::thread writer([&] {
    for (int i = 0; i < 40; ++i) {
      absl::StatusOr<std::unique_ptr<ObjectWriter>> w =
          store_->NewWriter("obj");
      ASSERT_TRUE(w.ok()) << w.status();
      const std::string chunk(kSize / 8, static_cast<char>('a' + i % 26));
      for (int part = 0; part < 8; ++part)
        ASSERT_TRUE((*w)->Append(chunk).ok());
      ASSERT_TRUE((*w)->Commit().ok());
    }
    done = true;
  });
  int reads = 0;
  while (!done || reads == 0) {
    absl::StatusOr<std::string> data = store_->Get("obj");
    ASSERT_TRUE(data.ok()) << data.status();
    ASSERT_EQ(data->size(), kSize);
    ASSERT_EQ(data->find_first_not_of((*data)[0]), std::string::npos)
        << "mixed versions after " << reads << " reads";
    ++reads;
  }
  writer.join();
}

TEST_F(LocalObjectStoreTest, RejectsKeysThatLeaveTheStore) {
  for (const char* key :
       {"../outside", "a/../../outside", "/etc/passwd", "a//b", "./a", ""}) {
    EXPECT_TRUE(
        IsError(store_->Put(key, "x"), absl::StatusCode::kInvalidArgument))
        << key;
  }
  EXPECT_FALSE(fs::exists(temp_.Sub("outside")));
}

TEST_F(LocalObjectStoreTest, RefusesSymlinkedFolderPointingOutside) {
  const std::string outside = temp_.Sub("outside");
  fs::create_directories(outside);
  WriteLocalFile(outside + "/secret", "secret");
  ASSERT_TRUE(store_->Put("inside", "x").ok());
  fs::create_directory_symlink(outside, root_ + "/link");
  constexpr auto kDenied = absl::StatusCode::kPermissionDenied;
  EXPECT_TRUE(IsError(store_->Get("link/secret").status(), kDenied,
                      {"\"link/secret\"", "symbolic link", root_ + "/link"}));
  EXPECT_TRUE(IsError(store_->Stat("link/secret").status(), kDenied));
  EXPECT_TRUE(IsError(store_->Exists("link/secret").status(), kDenied));
  EXPECT_TRUE(IsError(store_->GetRange("link/secret", 0, 1).status(), kDenied));
  EXPECT_TRUE(IsError(store_->Put("link/planted", "x"), kDenied));
  EXPECT_TRUE(IsError(store_->NewWriter("link/planted").status(), kDenied));
  EXPECT_TRUE(IsError(store_->List("link/").status(), kDenied));
  EXPECT_TRUE(IsError(store_->Delete("link/secret"), kDenied));
  EXPECT_FALSE(fs::exists(outside + "/planted"));
  EXPECT_TRUE(fs::exists(outside + "/secret"));
  // A listing of the whole store skips the link.
  EXPECT_THAT(*store_->List(""), ElementsAre(ObjectEntry{"inside", 1}));
}

TEST_F(LocalObjectStoreTest, RefusesSymlinkedObject) {
  const std::string outside = temp_.Sub("secret");
  WriteLocalFile(outside, "secret");
  ASSERT_TRUE(store_->Put("dir/x", "x").ok());
  fs::create_symlink(outside, root_ + "/dir/link");
  constexpr auto kDenied = absl::StatusCode::kPermissionDenied;
  EXPECT_TRUE(IsError(store_->Get("dir/link").status(), kDenied,
                      {"\"dir/link\"", "symbolic link"}));
  EXPECT_TRUE(IsError(store_->Stat("dir/link").status(), kDenied));
  EXPECT_TRUE(
      IsError(store_->GetToFile("dir/link", temp_.Sub("copy")), kDenied));
  EXPECT_FALSE(fs::exists(temp_.Sub("copy")));
  EXPECT_THAT(*store_->List("dir/"), ElementsAre(ObjectEntry{"dir/x", 1}));
}

TEST_F(LocalObjectStoreTest, RefusesSymlinkedFolderPointingInside) {
  ASSERT_TRUE(store_->Put("real/x", "x").ok());
  fs::create_directory_symlink(root_ + "/real", root_ + "/alias");
  EXPECT_TRUE(IsError(store_->Get("alias/x").status(),
                      absl::StatusCode::kPermissionDenied));
}

TEST_F(LocalObjectStoreTest, PutOverSymlinkReplacesLinkNotTarget) {
  const std::string outside = temp_.Sub("target");
  WriteLocalFile(outside, "untouched");
  ASSERT_TRUE(store_->Put("x", "x").ok());
  fs::create_symlink(outside, root_ + "/link");
  ASSERT_TRUE(store_->Put("link", "new").ok());
  EXPECT_EQ(ReadLocalFile(outside), "untouched");
  EXPECT_FALSE(fs::is_symlink(root_ + "/link"));
  EXPECT_EQ(*store_->Get("link"), "new");
}

TEST_F(LocalObjectStoreTest, ObjectCannotAlsoBeAFolder) {
  ASSERT_TRUE(store_->Put("a", "object").ok());
  EXPECT_TRUE(IsError(store_->Put("a/b", "x"),
                      absl::StatusCode::kFailedPrecondition,
                      {"\"a/b\"", "not a folder"}));
  EXPECT_TRUE(
      IsError(store_->Get("a/b").status(), absl::StatusCode::kNotFound));
  ASSERT_TRUE(store_->Put("c/d", "x").ok());
  EXPECT_TRUE(IsError(store_->Put("c", "x"),
                      absl::StatusCode::kFailedPrecondition,
                      {"\"c\"", "folder"}));
}

TEST_F(LocalObjectStoreTest, UriAndPathsFollowTheRoot) {
  EXPECT_EQ(store_->uri(), "file://" + root_ + "/");
  EXPECT_EQ(store_->PathOf("a/b"), root_ + "/a/b");
  EXPECT_EQ(store_->UriOf("a/b"), "file://" + root_ + "/a/b");
}

TEST(LocalObjectStoreCreateTest, RejectsRelativeRoot) {
  EXPECT_TRUE(IsError(LocalObjectStore::Create("relative/dir").status(),
                      absl::StatusCode::kInvalidArgument, {"relative/dir"}));
}

}  // namespace
}  // namespace lpd::storage

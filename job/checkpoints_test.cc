#include "job/checkpoints.h"

#include <memory>
#include <optional>
#include <string>

#include "gtest/gtest.h"
#include "storage/local_object_store.h"
#include "storage/test_util.h"

namespace lpd::job {
namespace {

using storage::testing_util::IsError;
using storage::testing_util::TempFolder;

TEST(CheckpointLayoutTest, CheckpointDirIsZeroPadded) {
  EXPECT_EQ(CheckpointDir(500), "checkpoints/step-00000500/");
  EXPECT_EQ(CheckpointDir(0), "checkpoints/step-00000000/");
  EXPECT_EQ(CheckpointDir(123456789), "checkpoints/step-123456789/");
  EXPECT_EQ(CheckpointName(20000), "step-00020000");
}

TEST(CheckpointLayoutTest, ParsesOnlyCanonicalNames) {
  EXPECT_EQ(ParseCheckpointName("step-00000500"), 500);
  EXPECT_EQ(ParseCheckpointName("step-00000500/"), 500);
  EXPECT_EQ(ParseCheckpointName("step-123456789"), 123456789);
  for (const char* bad :
       {"step-500", "step-", "step-0000050a", "Step-00000500", "step-+0000500",
        "step--0000500", "00000500", "step-000000500", ""}) {
    EXPECT_EQ(ParseCheckpointName(bad), std::nullopt) << bad;
  }
}

class CheckpointStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<storage::LocalObjectStore>> store =
        storage::LocalObjectStore::Create(temp_.Sub("store"));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  // Writes a checkpoint's objects and commits it (manifest, then LATEST).
  void Commit(int64_t step, const std::string& prefix = "") {
    storage::Manifest manifest;
    const std::string dir = storage::JoinKey({prefix, CheckpointDir(step)});
    ASSERT_TRUE(storage::PutWithManifest(*store_, dir, "student.safetensors",
                                         storage::testing_util::PatternBytes(
                                             1000, static_cast<uint32_t>(step)),
                                         manifest)
                    .ok());
    ASSERT_TRUE(storage::PutWithManifest(*store_, dir, "optimizer.bin", "state",
                                         manifest)
                    .ok());
    ASSERT_TRUE(CommitCheckpoint(*store_, step, manifest, prefix).ok());
  }

  std::optional<int64_t> Latest(const std::string& prefix = "") {
    absl::StatusOr<std::optional<int64_t>> latest =
        ReadLatestCheckpoint(*store_, prefix);
    EXPECT_TRUE(latest.ok()) << latest.status();
    return latest.ok() ? *latest : std::optional<int64_t>(-1);
  }

  TempFolder temp_;
  std::unique_ptr<storage::LocalObjectStore> store_;
};

TEST_F(CheckpointStoreTest, NoCheckpointGivesNothing) {
  EXPECT_EQ(Latest(), std::nullopt);
}

TEST_F(CheckpointStoreTest, CommitWritesManifestThenLatest) {
  Commit(500);
  EXPECT_TRUE(*store_->Exists("checkpoints/step-00000500/manifest.json"));
  EXPECT_EQ(*store_->Get("checkpoints/LATEST"), "step-00000500");
  EXPECT_EQ(Latest(), 500);
  Commit(1000);
  EXPECT_EQ(*store_->Get("checkpoints/LATEST"), "step-00001000");
  EXPECT_EQ(Latest(), 1000);
}

TEST_F(CheckpointStoreTest, CommitRefusesCheckpointWithMissingObject) {
  Commit(500);
  storage::Manifest manifest;
  const std::string dir = CheckpointDir(1000);
  ASSERT_TRUE(storage::PutWithManifest(*store_, dir, "a", "x", manifest).ok());
  ASSERT_TRUE(store_->Delete(dir + "a").ok());
  EXPECT_TRUE(IsError(CommitCheckpoint(*store_, 1000, manifest),
                      absl::StatusCode::kNotFound,
                      {"step-00001000", "incomplete", "\"" + dir + "a\""}));
  EXPECT_FALSE(*store_->Exists(dir + "manifest.json"));
  EXPECT_EQ(*store_->Get("checkpoints/LATEST"), "step-00000500");
}

TEST_F(CheckpointStoreTest, CommitRefusesNegativeStep) {
  EXPECT_TRUE(IsError(CommitCheckpoint(*store_, -1, storage::Manifest()),
                      absl::StatusCode::kInvalidArgument, {"-1"}));
}

TEST_F(CheckpointStoreTest, LatestNamingCheckpointWithoutManifestIsIgnored) {
  Commit(500);
  // A crash after the objects of step 1000 but before its manifest, with a
  // LATEST that (against the protocol) already names it.
  ASSERT_TRUE(
      store_->Put(CheckpointDir(1000) + "student.safetensors", "x").ok());
  ASSERT_TRUE(store_->Put("checkpoints/LATEST", "step-00001000").ok());
  EXPECT_EQ(Latest(), 500);
}

TEST_F(CheckpointStoreTest, LatestNamingIncompleteCheckpointIsIgnored) {
  Commit(500);
  Commit(1000);
  ASSERT_TRUE(store_->Delete(CheckpointDir(1000) + "student.safetensors").ok());
  EXPECT_EQ(Latest(), 500);
}

TEST_F(CheckpointStoreTest,
       LatestNamingCheckpointWithCorruptManifestIsIgnored) {
  Commit(500);
  Commit(1000);
  ASSERT_TRUE(store_->Put(CheckpointDir(1000) + "manifest.json", "{").ok());
  EXPECT_EQ(Latest(), 500);
}

TEST_F(CheckpointStoreTest, UnreadableLatestIsIgnored) {
  Commit(500);
  ASSERT_TRUE(store_->Put("checkpoints/LATEST", "garbage").ok());
  EXPECT_EQ(Latest(), 500);
}

TEST_F(CheckpointStoreTest, LatestWithTrailingNewlineIsAccepted) {
  Commit(500);
  Commit(1000);
  ASSERT_TRUE(store_->Put("checkpoints/LATEST", "step-00000500\n").ok());
  EXPECT_EQ(Latest(), 500);
}

TEST_F(CheckpointStoreTest, WithoutLatestNewestCompleteCheckpointIsUsed) {
  Commit(500);
  Commit(1000);
  Commit(1500);
  ASSERT_TRUE(store_->Delete("checkpoints/LATEST").ok());
  ASSERT_TRUE(store_->Delete(CheckpointDir(1500) + "optimizer.bin").ok());
  EXPECT_EQ(Latest(), 1000);
}

TEST_F(CheckpointStoreTest, AllIncompleteGivesNothing) {
  Commit(500);
  ASSERT_TRUE(store_->Delete(CheckpointDir(500) + "manifest.json").ok());
  EXPECT_EQ(Latest(), std::nullopt);
}

TEST_F(CheckpointStoreTest, WorksUnderAJobPrefix) {
  Commit(500, "jobs/42/");
  Commit(700, "jobs/43/");
  EXPECT_EQ(*store_->Get("jobs/42/checkpoints/LATEST"), "step-00000500");
  EXPECT_EQ(Latest("jobs/42/"), 500);
  EXPECT_EQ(Latest("jobs/43/"), 700);
  EXPECT_EQ(Latest("jobs/44/"), std::nullopt);
  EXPECT_EQ(Latest(), std::nullopt);
}

TEST_F(CheckpointStoreTest, IsCheckpointCompleteChecksManifestAndObjects) {
  Commit(500);
  EXPECT_TRUE(*IsCheckpointComplete(*store_, 500));
  EXPECT_FALSE(*IsCheckpointComplete(*store_, 1000));
  ASSERT_TRUE(store_->Put(CheckpointDir(500) + "optimizer.bin", "sta").ok());
  EXPECT_FALSE(*IsCheckpointComplete(*store_, 500));
}

}  // namespace
}  // namespace lpd::job

#include "storage/manifest.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/local_object_store.h"
#include "storage/test_util.h"

namespace lpd::storage {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::Pair;
using testing_util::IsError;
using testing_util::PatternBytes;
using testing_util::ReadLocalFile;
using testing_util::TempFolder;
using testing_util::WriteLocalFile;

constexpr char kEmptySha[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr char kAbcSha[] =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST(Sha256Test, MatchesKnownDigests) {
  EXPECT_EQ(Sha256Hex(""), kEmptySha);
  EXPECT_EQ(Sha256Hex("abc"), kAbcSha);
}

TEST(Sha256Test, IncrementalEqualsOneShot) {
  const std::string data = PatternBytes(100000);
  Sha256 hash;
  hash.Update(absl::string_view(data).substr(0, 3));
  hash.Update(absl::string_view(data).substr(3, 60000));
  hash.Update(absl::string_view(data).substr(60003));
  EXPECT_EQ(hash.HexDigest(), Sha256Hex(data));
}

TEST(ManifestTest, JsonRoundTrips) {
  Manifest manifest;
  manifest.Add("unet/diffusion_pytorch_model.safetensors", {12, kAbcSha});
  manifest.Add("config.json", {0, kEmptySha});
  absl::StatusOr<Manifest> parsed = Manifest::FromJson(manifest.ToJson());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_THAT(parsed->objects(),
              ElementsAre(Pair("config.json", ManifestEntry{0, kEmptySha}),
                          Pair("unet/diffusion_pytorch_model.safetensors",
                               ManifestEntry{12, kAbcSha})));
}

TEST(ManifestTest, FromJsonRejectsMalformedManifests) {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  const std::string ok_entry =
      absl::StrCat("{\"size\": 1, \"sha256\": \"", kAbcSha, "\"}");
  EXPECT_TRUE(IsError(Manifest::FromJson("{not json").status(), kInvalid,
                      {"not valid JSON"}));
  EXPECT_TRUE(
      IsError(Manifest::FromJson("{\"version\": 2, \"objects\": {}}").status(),
              kInvalid, {"version"}));
  EXPECT_TRUE(
      IsError(Manifest::FromJson("{\"version\": 1, \"objects\": {}, \"x\": 1}")
                  .status(),
              kInvalid, {"unknown field \"x\""}));
  EXPECT_TRUE(IsError(
      Manifest::FromJson(
          absl::StrCat("{\"version\": 1, \"objects\": {\"../x\": ", ok_entry,
                       "}}"))
          .status(),
      kInvalid, {"\"../x\""}));
  EXPECT_TRUE(IsError(
      Manifest::FromJson(
          absl::StrCat("{\"version\": 1, \"objects\": {\"a\": {\"size\": "
                       "-1, \"sha256\": \"",
                       kAbcSha, "\"}}}"))
          .status(),
      kInvalid, {"objects[\"a\"].size"}));
  EXPECT_TRUE(IsError(
      Manifest::FromJson("{\"version\": 1, \"objects\": {\"a\": {\"size\": 1, "
                         "\"sha256\": \"ABC\"}}}")
          .status(),
      kInvalid, {"objects[\"a\"].sha256", "64 lowercase hex"}));
}

class ManifestStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<LocalObjectStore>> store =
        LocalObjectStore::Create(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  // Flips one bit of the byte at `offset` of the file behind `key`.
  void FlipByte(const std::string& key, std::streamoff offset) {
    std::fstream file(store_->PathOf(key),
                      std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(offset);
    char c = 0;
    file.get(c);
    file.seekp(offset);
    file.put(static_cast<char>(c ^ 0x01));
    ASSERT_TRUE(file.good());
  }

  TempFolder temp_;
  const std::string root_ = temp_.Sub("store");
  std::unique_ptr<LocalObjectStore> store_;
  const std::string dir_ = "checkpoints/step-00000500/";
};

TEST_F(ManifestStoreTest, PutWithManifestRecordsSizeAndDigest) {
  Manifest manifest;
  ASSERT_TRUE(PutWithManifest(*store_, dir_, "a.json", "abc", manifest).ok());
  EXPECT_THAT(manifest.objects(),
              ElementsAre(Pair("a.json", ManifestEntry{3, kAbcSha})));
  EXPECT_EQ(*store_->Get(dir_ + "a.json"), "abc");
}

TEST_F(ManifestStoreTest, StreamingWriterRecordsDigestOnCommit) {
  const std::string data = PatternBytes(3 << 20);
  Manifest manifest;
  absl::StatusOr<std::unique_ptr<ObjectWriter>> writer =
      NewManifestWriter(*store_, dir_, "unet.safetensors", manifest);
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_EQ((*writer)->key(), dir_ + "unet.safetensors");
  for (size_t offset = 0; offset < data.size(); offset += 100000) {
    ASSERT_TRUE(
        (*writer)->Append(absl::string_view(data).substr(offset, 100000)).ok());
  }
  EXPECT_EQ(manifest.Find("unet.safetensors"), nullptr);
  ASSERT_TRUE((*writer)->Commit().ok());
  const ManifestEntry* entry = manifest.Find("unet.safetensors");
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(*entry, (ManifestEntry{3 << 20, Sha256Hex(data)}));
}

TEST_F(ManifestStoreTest, AbortedStreamingWriterRecordsNothing) {
  Manifest manifest;
  absl::StatusOr<std::unique_ptr<ObjectWriter>> writer =
      NewManifestWriter(*store_, dir_, "x", manifest);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append("data").ok());
  ASSERT_TRUE((*writer)->Abort().ok());
  EXPECT_TRUE(manifest.objects().empty());
  EXPECT_FALSE(*store_->Exists(dir_ + "x"));
}

TEST_F(ManifestStoreTest, PutFileWithManifestHashesTheFile) {
  const std::string local = temp_.Sub("local");
  const std::string data = PatternBytes(10 << 20, 5);
  WriteLocalFile(local, data);
  Manifest manifest;
  ASSERT_TRUE(PutFileWithManifest(*store_, dir_, "big", local, manifest).ok());
  EXPECT_EQ(*manifest.Find("big"), (ManifestEntry{10 << 20, Sha256Hex(data)}));
}

TEST_F(ManifestStoreTest, ManifestRoundTripsThroughTheStore) {
  Manifest manifest;
  ASSERT_TRUE(PutWithManifest(*store_, dir_, "a", "abc", manifest).ok());
  ASSERT_TRUE(WriteManifest(*store_, dir_, manifest).ok());
  EXPECT_TRUE(*store_->Exists(dir_ + "manifest.json"));
  absl::StatusOr<Manifest> read = ReadManifest(*store_, dir_);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->objects(), manifest.objects());
}

TEST_F(ManifestStoreTest, MissingManifestIsNotFound) {
  EXPECT_TRUE(IsError(ReadManifest(*store_, dir_).status(),
                      absl::StatusCode::kNotFound, {"manifest.json"}));
}

TEST_F(ManifestStoreTest, CorruptManifestIsDataLossNamingIt) {
  ASSERT_TRUE(store_->Put(dir_ + "manifest.json", "{\"version\":").ok());
  EXPECT_TRUE(IsError(ReadManifest(*store_, dir_).status(),
                      absl::StatusCode::kDataLoss,
                      {dir_ + "manifest.json", "not valid JSON"}));
}

TEST_F(ManifestStoreTest, VerifiedGetReturnsIntactObject) {
  Manifest manifest;
  const std::string data = PatternBytes(4096);
  ASSERT_TRUE(PutWithManifest(*store_, dir_, "a", data, manifest).ok());
  absl::StatusOr<std::string> read = VerifiedGet(*store_, dir_, manifest, "a");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, data);
}

TEST_F(ManifestStoreTest, VerifiedGetDetectsFlippedByte) {
  Manifest manifest;
  ASSERT_TRUE(PutWithManifest(*store_, dir_, "unet.safetensors",
                              PatternBytes(4096), manifest)
                  .ok());
  FlipByte(dir_ + "unet.safetensors", 1234);
  EXPECT_TRUE(
      IsError(VerifiedGet(*store_, dir_, manifest, "unet.safetensors").status(),
              absl::StatusCode::kDataLoss,
              {dir_ + "unet.safetensors", "SHA-256",
               manifest.Find("unet.safetensors")->sha256}));
}

TEST_F(ManifestStoreTest, VerifiedGetDetectsSizeMismatch) {
  Manifest manifest;
  ASSERT_TRUE(PutWithManifest(*store_, dir_, "a", "abc", manifest).ok());
  ASSERT_TRUE(store_->Put(dir_ + "a", "abcd").ok());
  EXPECT_TRUE(IsError(VerifiedGet(*store_, dir_, manifest, "a").status(),
                      absl::StatusCode::kDataLoss,
                      {dir_ + "a", "size is 4 bytes", "says 3 bytes"}));
}

TEST_F(ManifestStoreTest, VerifiedGetOfUnlistedNameIsNotFound) {
  Manifest manifest;
  ASSERT_TRUE(store_->Put(dir_ + "stray", "x").ok());
  EXPECT_TRUE(IsError(VerifiedGet(*store_, dir_, manifest, "stray").status(),
                      absl::StatusCode::kNotFound,
                      {"does not list \"stray\""}));
}

TEST_F(ManifestStoreTest, VerifiedGetToFileWritesIntactObject) {
  Manifest manifest;
  const std::string data = PatternBytes((17 << 20) + 3);  // several chunks
  ASSERT_TRUE(PutWithManifest(*store_, dir_, "big", data, manifest).ok());
  const std::string local = temp_.Sub("big.local");
  ASSERT_TRUE(VerifiedGetToFile(*store_, dir_, manifest, "big", local).ok());
  EXPECT_TRUE(ReadLocalFile(local) == data);
}

TEST_F(ManifestStoreTest, VerifiedGetToFileLeavesNoFileOnFlippedByte) {
  Manifest manifest;
  ASSERT_TRUE(
      PutWithManifest(*store_, dir_, "big", PatternBytes(9 << 20), manifest)
          .ok());
  FlipByte(dir_ + "big", (9 << 20) - 1);
  const std::string local = temp_.Sub("big.local");
  EXPECT_TRUE(IsError(VerifiedGetToFile(*store_, dir_, manifest, "big", local),
                      absl::StatusCode::kDataLoss, {dir_ + "big", "SHA-256"}));
  EXPECT_FALSE(fs::exists(local));
  EXPECT_THAT(
      testing_util::AllEntries(temp_.path()),
      ::testing::Not(::testing::Contains(::testing::HasSubstr("big.local"))));
}

TEST_F(ManifestStoreTest, CheckObjectsPresentFindsMissingAndResized) {
  Manifest manifest;
  ASSERT_TRUE(PutWithManifest(*store_, dir_, "a", "abc", manifest).ok());
  ASSERT_TRUE(PutWithManifest(*store_, dir_, "b", "abc", manifest).ok());
  EXPECT_TRUE(CheckObjectsPresent(*store_, dir_, manifest).ok());
  ASSERT_TRUE(store_->Put(dir_ + "b", "ab").ok());
  EXPECT_TRUE(IsError(CheckObjectsPresent(*store_, dir_, manifest),
                      absl::StatusCode::kDataLoss, {dir_ + "b"}));
  ASSERT_TRUE(store_->Delete(dir_ + "a").ok());
  EXPECT_TRUE(IsError(CheckObjectsPresent(*store_, dir_, manifest),
                      absl::StatusCode::kNotFound, {dir_ + "a"}));
}

TEST_F(ManifestStoreTest, RejectsInvalidObjectNames) {
  Manifest manifest;
  EXPECT_TRUE(IsError(PutWithManifest(*store_, dir_, "../x", "v", manifest),
                      absl::StatusCode::kInvalidArgument, {"\"../x\""}));
  EXPECT_TRUE(manifest.objects().empty());
}

}  // namespace
}  // namespace lpd::storage

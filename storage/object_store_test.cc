#include "storage/object_store.h"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/test_util.h"

namespace lpd::storage {
namespace {

using testing_util::IsError;
using testing_util::TempFolder;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

TEST(ValidateKeyTest, AcceptsRelativeNestedKeys) {
  EXPECT_TRUE(ValidateKey("scores.json").ok());
  EXPECT_TRUE(ValidateKey("checkpoints/step-00000500/unet.safetensors").ok());
  EXPECT_TRUE(ValidateKey(".hidden/..dots/a.b").ok());
}

TEST(ValidateKeyTest, RejectsEmptyKey) {
  EXPECT_TRUE(IsError(ValidateKey(""), kInvalid, {"empty"}));
}

TEST(ValidateKeyTest, RejectsAbsoluteKey) {
  EXPECT_TRUE(IsError(ValidateKey("/etc/passwd"), kInvalid,
                      {"\"/etc/passwd\"", "absolute"}));
}

TEST(ValidateKeyTest, RejectsDotDotSegment) {
  EXPECT_TRUE(IsError(ValidateKey("a/../../etc"), kInvalid, {"\"..\""}));
  EXPECT_TRUE(IsError(ValidateKey(".."), kInvalid, {"\"..\""}));
}

TEST(ValidateKeyTest, RejectsDotSegment) {
  EXPECT_TRUE(IsError(ValidateKey("a/./b"), kInvalid, {"\".\""}));
}

TEST(ValidateKeyTest, RejectsEmptySegment) {
  EXPECT_TRUE(IsError(ValidateKey("a//b"), kInvalid, {"empty segment"}));
}

TEST(ValidateKeyTest, RejectsTrailingSlash) {
  EXPECT_TRUE(IsError(ValidateKey("a/b/"), kInvalid, {"folder"}));
}

TEST(ValidateKeyTest, RejectsNul) {
  EXPECT_TRUE(IsError(ValidateKey(absl::string_view("a\0b", 3)), kInvalid,
                      {"NUL", "\"a\\x00"}));
}

TEST(ValidateKeyTest, RejectsBackslash) {
  EXPECT_TRUE(IsError(ValidateKey("a\\..\\b"), kInvalid, {"backslash"}));
}

TEST(ValidateKeyTest, RejectsReservedTemporaryName) {
  EXPECT_TRUE(IsError(ValidateKey("a/.lpd-tmp.x.123"), kInvalid, {"reserved"}));
}

TEST(ValidateKeyTest, RejectsOverlongKeysAndSegments) {
  EXPECT_TRUE(IsError(ValidateKey(std::string(kMaxKeySegmentBytes + 1, 'a')),
                      kInvalid, {"segment of 256 bytes"}));
  std::string long_key;
  while (long_key.size() <= kMaxKeyBytes) long_key += "abcdefgh/";
  long_key += "x";
  EXPECT_TRUE(IsError(ValidateKey(long_key), kInvalid, {"limit is 1024"}));
}

TEST(ValidatePrefixTest, AcceptsEverythingFolderAndPartialName) {
  EXPECT_TRUE(ValidatePrefix("").ok());
  EXPECT_TRUE(ValidatePrefix("checkpoints/").ok());
  EXPECT_TRUE(ValidatePrefix("checkpoints/step-").ok());
  EXPECT_TRUE(ValidatePrefix("sco").ok());
}

TEST(ValidatePrefixTest, RejectsEscapingOrAbsolutePrefixes) {
  EXPECT_TRUE(IsError(ValidatePrefix("../"), kInvalid, {"\"..\""}));
  EXPECT_TRUE(IsError(ValidatePrefix("a/../b/"), kInvalid, {"\"..\""}));
  EXPECT_TRUE(IsError(ValidatePrefix("/abs/"), kInvalid, {"absolute"}));
  EXPECT_TRUE(IsError(ValidatePrefix("a//"), kInvalid, {"empty segment"}));
}

TEST(JoinKeyTest, PutsExactlyOneSlashBetweenParts) {
  EXPECT_EQ(JoinKey({"jobs/42/", "checkpoints/LATEST"}),
            "jobs/42/checkpoints/LATEST");
  EXPECT_EQ(JoinKey({"jobs/42", "checkpoints/LATEST"}),
            "jobs/42/checkpoints/LATEST");
  EXPECT_EQ(JoinKey({"jobs/42/", "/x"}), "jobs/42/x");
  EXPECT_EQ(JoinKey({"", "a", "", "b/"}), "a/b/");
  EXPECT_EQ(JoinKey({}), "");
}

TEST(ParseStorageUriTest, ParsesFileUriToCanonicalFolder) {
  absl::StatusOr<StorageUri> uri = ParseStorageUri("file:///srv/lpd");
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_EQ(uri->scheme, StorageUri::Scheme::kFile);
  EXPECT_EQ(uri->location, "/srv/lpd");
  EXPECT_EQ(uri->prefix, "");
  EXPECT_EQ(uri->ToString(), "file:///srv/lpd/");
  ASSERT_TRUE(ParseStorageUri("file:///srv/lpd/").ok());
  EXPECT_EQ(ParseStorageUri("file:///srv/lpd/")->location, "/srv/lpd");
  EXPECT_EQ(ParseStorageUri("file:///")->ToString(), "file:///");
}

TEST(ParseStorageUriTest, ParsesS3BucketAndPrefix) {
  absl::StatusOr<StorageUri> uri =
      ParseStorageUri("s3://artifacts/compressed/job-1");
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_EQ(uri->scheme, StorageUri::Scheme::kS3);
  EXPECT_EQ(uri->location, "artifacts");
  EXPECT_EQ(uri->prefix, "compressed/job-1/");
  EXPECT_EQ(uri->ToString(), "s3://artifacts/compressed/job-1/");
  EXPECT_EQ(ParseStorageUri("s3://bucket")->ToString(), "s3://bucket/");
}

TEST(ParseStorageUriTest, RejectsFileUriWithHostOrRelativePath) {
  EXPECT_TRUE(IsError(ParseStorageUri("file://host/srv").status(), kInvalid,
                      {"file://host/srv", "empty host"}));
  EXPECT_TRUE(IsError(ParseStorageUri("file://").status(), kInvalid));
}

TEST(ParseStorageUriTest, RejectsDotDotAndEmptySegmentsInPaths) {
  EXPECT_TRUE(IsError(ParseStorageUri("file:///srv/lpd/../etc/").status(),
                      kInvalid, {"file:///srv/lpd/../etc/", "\"..\""}));
  EXPECT_TRUE(IsError(ParseStorageUri("file:///srv//lpd/").status(), kInvalid,
                      {"empty segment"}));
  EXPECT_TRUE(IsError(ParseStorageUri("s3://b/a/../c/").status(), kInvalid,
                      {"\"..\""}));
}

TEST(ParseStorageUriTest, RejectsEmptyOrOddBucket) {
  EXPECT_TRUE(IsError(ParseStorageUri("s3:///prefix/").status(), kInvalid,
                      {"bucket is empty"}));
  EXPECT_TRUE(
      IsError(ParseStorageUri("s3://bu cket/").status(), kInvalid, {"bucket"}));
}

TEST(ParseStorageUriTest, RejectsOtherSchemesNamingTheUri) {
  for (const char* uri :
       {"http://example.com/x", "/srv/lpd", "", "S3://b/", "gs://bucket/"}) {
    EXPECT_TRUE(IsError(ParseStorageUri(uri).status(), kInvalid,
                        {absl::StrCat("\"", uri, "\""), "file:///", "s3://"}))
        << uri;
  }
}

TEST(OpenObjectStoreTest, OpensLocalStoreForFileUri) {
  TempFolder temp;
  absl::StatusOr<std::unique_ptr<ObjectStore>> store =
      OpenObjectStore(absl::StrCat("file://", temp.path()));
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->uri(), absl::StrCat("file://", temp.path(), "/"));
  ASSERT_TRUE((*store)->Put("a/b.txt", "hello").ok());
  EXPECT_EQ(testing_util::ReadLocalFile(temp.Sub("a/b.txt")), "hello");
}

TEST(OpenObjectStoreTest, OpensS3FromTheEnvironment) {
  ::unsetenv("AWS_ACCESS_KEY_ID");
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  EXPECT_TRUE(IsError(OpenObjectStore("s3://bucket/prefix/").status(), kInvalid,
                      {"s3://bucket/prefix/", "AWS_ACCESS_KEY_ID"}));
  ::setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "secret", 1);
  absl::StatusOr<std::unique_ptr<ObjectStore>> store =
      OpenObjectStore("s3://bucket/prefix");
  ::unsetenv("AWS_ACCESS_KEY_ID");
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->uri(), "s3://bucket/prefix/");
}

TEST(OpenObjectStoreTest, RejectsUnknownSchemeNamingTheUri) {
  EXPECT_TRUE(IsError(OpenObjectStore("ftp://host/x").status(), kInvalid,
                      {"ftp://host/x"}));
}

TEST(OpenStoreLocationTest, SplitsUriUnderRootIntoStoreAndPrefix) {
  TempFolder temp;
  const std::string root = absl::StrCat("file://", temp.path(), "/");
  absl::StatusOr<StoreLocation> location = OpenStoreLocation(
      absl::StrCat(root, "jobs/42"), std::vector<std::string>{root});
  ASSERT_TRUE(location.ok()) << location.status();
  EXPECT_EQ(location->store->uri(), root);
  EXPECT_EQ(location->prefix, "jobs/42/");
  EXPECT_EQ(location->Key("scores.json"), "jobs/42/scores.json");
}

TEST(OpenStoreLocationTest, LongestRootWins) {
  TempFolder temp;
  const std::string outer = absl::StrCat("file://", temp.path());
  const std::string inner = absl::StrCat(outer, "/jobs/");
  absl::StatusOr<StoreLocation> location = OpenStoreLocation(
      absl::StrCat(inner, "42/"), std::vector<std::string>{outer, inner});
  ASSERT_TRUE(location.ok()) << location.status();
  EXPECT_EQ(location->store->uri(), inner);
  EXPECT_EQ(location->prefix, "42/");
}

TEST(OpenStoreLocationTest, UriEqualToRootHasEmptyPrefix) {
  TempFolder temp;
  const std::string root = absl::StrCat("file://", temp.path(), "/");
  absl::StatusOr<StoreLocation> location =
      OpenStoreLocation(root, std::vector<std::string>{root});
  ASSERT_TRUE(location.ok()) << location.status();
  EXPECT_EQ(location->prefix, "");
}

TEST(OpenStoreLocationTest, RefusesUriOutsideTheRoots) {
  TempFolder temp;
  const std::string root = absl::StrCat("file://", temp.path(), "/jobs");
  // A sibling sharing the root's spelling is not inside it.
  const std::string sibling = absl::StrCat("file://", temp.path(), "/jobs2/x");
  EXPECT_TRUE(IsError(
      OpenStoreLocation(sibling, std::vector<std::string>{root}).status(),
      absl::StatusCode::kPermissionDenied, {sibling, root}));
  EXPECT_TRUE(
      IsError(OpenStoreLocation("file:///etc/", std::vector<std::string>{root})
                  .status(),
              absl::StatusCode::kPermissionDenied, {"file:///etc/"}));
}

TEST(OpenStoreLocationTest, RefusesDotDotEscapeFromRoot) {
  TempFolder temp;
  const std::string root = absl::StrCat("file://", temp.path(), "/");
  EXPECT_TRUE(IsError(OpenStoreLocation(absl::StrCat(root, "../etc/"),
                                        std::vector<std::string>{root})
                          .status(),
                      kInvalid, {"\"..\""}));
}

TEST(OpenStoreLocationTest, WithoutRootsStoreIsRootedAtUri) {
  TempFolder temp;
  const std::string uri = absl::StrCat("file://", temp.path(), "/out/");
  absl::StatusOr<StoreLocation> location = OpenStoreLocation(uri);
  ASSERT_TRUE(location.ok()) << location.status();
  EXPECT_EQ(location->store->uri(), uri);
  EXPECT_EQ(location->prefix, "");
}

TEST(ObjectStoreTest, EveryMethodValidatesItsKey) {
  TempFolder temp;
  absl::StatusOr<std::unique_ptr<ObjectStore>> opened =
      OpenObjectStore(absl::StrCat("file://", temp.path(), "/root/"));
  ASSERT_TRUE(opened.ok()) << opened.status();
  ObjectStore& store = **opened;
  const std::string bad = "../escaped";
  EXPECT_TRUE(IsError(store.Put(bad, "x"), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.NewWriter(bad).status(), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.PutFile(bad, "/dev/null"), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.Get(bad).status(), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.GetRange(bad, 0, 1).status(), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.GetToFile(bad, temp.Sub("f")), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.Stat(bad).status(), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.Exists(bad).status(), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.List("../").status(), kInvalid));
  EXPECT_TRUE(IsError(store.Delete(bad), kInvalid, {bad}));
  EXPECT_TRUE(IsError(store.DeletePrefix("../"), kInvalid));
  EXPECT_FALSE(std::filesystem::exists(temp.Sub("escaped")));
}

TEST(ObjectStoreTest, DeletePrefixRefusesTheWholeStore) {
  TempFolder temp;
  absl::StatusOr<std::unique_ptr<ObjectStore>> store =
      OpenObjectStore(absl::StrCat("file://", temp.path()));
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->Put("keep", "x").ok());
  EXPECT_TRUE(IsError((*store)->DeletePrefix(""), kInvalid, {"everything"}));
  EXPECT_TRUE(*(*store)->Exists("keep"));
}

TEST(ObjectStoreTest, GetRangeRejectsNegativeArguments) {
  TempFolder temp;
  absl::StatusOr<std::unique_ptr<ObjectStore>> store =
      OpenObjectStore(absl::StrCat("file://", temp.path()));
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->Put("k", "abc").ok());
  EXPECT_TRUE(IsError((*store)->GetRange("k", -1, 1).status(), kInvalid,
                      {"offset -1"}));
  EXPECT_TRUE(IsError((*store)->GetRange("k", 0, -1).status(), kInvalid,
                      {"length -1"}));
}

}  // namespace
}  // namespace lpd::storage

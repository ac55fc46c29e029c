#include "storage/s3_flags.h"

#include <stdlib.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/test_util.h"

namespace lpd::storage {
namespace {

using testing_util::IsError;

absl::StatusOr<S3Config> FromFlags(const std::vector<std::string>& args) {
  absl::StatusOr<CliArgs> flags = CliArgs::Parse(args, S3FlagSpecs());
  if (!flags.ok()) return flags.status();
  return S3ConfigFromFlags(*flags);
}

TEST(S3FlagsTest, FlagsOverrideTheEnvironment) {
  ::setenv("AWS_ACCESS_KEY_ID", "ENV-AKID", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "ENV-SECRET", 1);
  ::setenv("AWS_SESSION_TOKEN", "ENV-TOKEN", 1);
  ::setenv("AWS_REGION", "eu-west-3", 1);
  ::setenv("AWS_ENDPOINT_URL_S3", "http://env:9000", 1);

  // No flags: the environment.
  absl::StatusOr<S3Config> config = FromFlags({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->endpoint, "http://env:9000");
  EXPECT_EQ(config->region, "eu-west-3");
  EXPECT_EQ(config->credentials.access_key_id, "ENV-AKID");
  EXPECT_EQ(config->credentials.secret_access_key, "ENV-SECRET");
  EXPECT_EQ(config->credentials.session_token, "ENV-TOKEN");
  EXPECT_EQ(config->addressing, S3Config::Addressing::kAuto);

  // Each flag wins over its variable; the others stay.
  config = FromFlags({"--s3-endpoint", "http://flag:9000",
                      "--s3-region=us-west-2", "--s3-access-key-id",
                      "FLAG-AKID", "--s3-addressing", "virtual"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->endpoint, "http://flag:9000");
  EXPECT_EQ(config->region, "us-west-2");
  EXPECT_EQ(config->credentials.access_key_id, "FLAG-AKID");
  EXPECT_EQ(config->credentials.secret_access_key, "ENV-SECRET");
  EXPECT_EQ(config->credentials.session_token, "ENV-TOKEN");
  EXPECT_EQ(config->addressing, S3Config::Addressing::kVirtualHost);

  config = FromFlags({"--s3-secret-access-key", "FLAG-SECRET",
                      "--s3-session-token", "", "--s3-addressing", "path"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->credentials.secret_access_key, "FLAG-SECRET");
  EXPECT_EQ(config->credentials.session_token, "");
  EXPECT_EQ(config->addressing, S3Config::Addressing::kPathStyle);

  EXPECT_TRUE(IsError(FromFlags({"--s3-addressing", "sideways"}).status(),
                      absl::StatusCode::kInvalidArgument,
                      {"--s3-addressing", "sideways"}));
  for (const char* name :
       {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_REGION", "AWS_ENDPOINT_URL_S3"}) {
    ::unsetenv(name);
  }
}

}  // namespace
}  // namespace lpd::storage

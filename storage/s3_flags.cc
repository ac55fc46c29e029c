#include "storage/s3_flags.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lpd::storage {

const std::vector<FlagSpec>& S3FlagSpecs() {
  static const std::vector<FlagSpec>* const specs = new std::vector<FlagSpec>{
      {"s3-endpoint", false, false,
       "S3 endpoint URL, e.g. http://minio:9000 (default: "
       "AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS S3)"},
      {"s3-region", false, false,
       "S3 region (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1)"},
      {"s3-addressing", false, false,
       "path|virtual|auto: bucket in the path or in the host name (default: "
       "auto, path-style with a custom endpoint)"},
      {"s3-access-key-id", false, false,
       "S3 access key id (default: AWS_ACCESS_KEY_ID)"},
      {"s3-secret-access-key", false, false,
       "S3 secret access key (default: AWS_SECRET_ACCESS_KEY)"},
      {"s3-session-token", false, false,
       "S3 session token (default: AWS_SESSION_TOKEN)"},
  };
  return *specs;
}

absl::StatusOr<S3Config> S3ConfigFromFlags(const CliArgs& flags) {
  S3Config config = S3Config::FromEnvironment();
  if (flags.Has("s3-endpoint")) config.endpoint = flags.Get("s3-endpoint");
  if (flags.Has("s3-region")) config.region = flags.Get("s3-region");
  if (flags.Has("s3-addressing")) {
    const std::string value = flags.Get("s3-addressing");
    if (value == "path") {
      config.addressing = S3Config::Addressing::kPathStyle;
    } else if (value == "virtual") {
      config.addressing = S3Config::Addressing::kVirtualHost;
    } else if (value == "auto") {
      config.addressing = S3Config::Addressing::kAuto;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--s3-addressing: \"", value,
                       "\" is not one of path, virtual, auto"));
    }
  }
  if (flags.Has("s3-access-key-id")) {
    config.credentials.access_key_id = flags.Get("s3-access-key-id");
  }
  if (flags.Has("s3-secret-access-key")) {
    config.credentials.secret_access_key = flags.Get("s3-secret-access-key");
  }
  if (flags.Has("s3-session-token")) {
    config.credentials.session_token = flags.Get("s3-session-token");
  }
  return config;
}

}  // namespace lpd::storage

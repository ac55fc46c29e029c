// AWS Signature Version 4 for S3 requests, computed by hand so that every
// step (canonical request, string to sign, signature) can be checked against
// other implementations. libcurl's CURLOPT_AWS_SIGV4 is not used: 7.88 signs
// the query string as written and omits x-amz-content-sha256.
#ifndef LPD_STORAGE_SIGV4_H_
#define LPD_STORAGE_SIGV4_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace lpd::storage {

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // "" when none
};

// A request to sign. Everything is given raw (not percent-encoded).
struct SigV4Request {
  std::string method;  // "GET", "PUT", ...
  // The Host header: "bucket.s3.us-east-1.amazonaws.com", "127.0.0.1:4568"
  // (a port only when not the scheme's default).
  std::string host;
  // The absolute path, not encoded: "/bucket/a b/c.txt".
  std::string path;
  // Query parameters, not encoded, in any order; a valueless one ("uploads")
  // has an empty value.
  std::vector<std::pair<std::string, std::string>> query;
  // Further headers to sign and send (range, content-type, ...). Names in
  // any case.
  std::vector<std::pair<std::string, std::string>> headers;
  // Lowercase hex SHA-256 of the body (Sha256Hex in storage/manifest.h),
  // or "UNSIGNED-PAYLOAD".
  std::string payload_sha256;
};

// What signing gives: the intermediate strings and what to send.
struct SigV4Signed {
  std::string amz_date;         // "20130524T000000Z"
  std::string encoded_path;     // the path as sent and signed
  std::string canonical_query;  // the query string as sent and signed
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;      // lowercase hex
  std::string authorization;  // the Authorization header's value
  // Every header to send, names lowercase, sorted: the request's own,
  // host, x-amz-content-sha256, x-amz-date, x-amz-security-token (with a
  // session token) and authorization.
  std::vector<std::pair<std::string, std::string>> headers;
};

// RFC 3986 percent-encoding as S3 wants it: unreserved characters
// (A-Z a-z 0-9 - _ . ~) stay, '/' stays when `keep_slash`, every other byte
// becomes %XX (uppercase hex).
std::string AwsUriEncode(absl::string_view in, bool keep_slash);
// Query parameters encoded (AwsUriEncode, '/' too) and sorted by name, then
// value: "a=1&b=&c=x%2Fy".
std::string CanonicalQueryString(
    const std::vector<std::pair<std::string, std::string>>& query);
// Raw HMAC-SHA256 of `data` under `key`.
std::string HmacSha256(absl::string_view key, absl::string_view data);
// "YYYYMMDDTHHMMSSZ" in UTC.
std::string AmzDate(absl::Time time);
// The SigV4 signing key for a day ("20130524"), region and service.
std::string SigV4SigningKey(absl::string_view secret, absl::string_view day,
                            absl::string_view region,
                            absl::string_view service);

// Signs `request` for service "s3" in `region` at `time`.
SigV4Signed SignS3Request(const SigV4Request& request,
                          const AwsCredentials& credentials,
                          absl::string_view region, absl::Time time);

}  // namespace lpd::storage

#endif  // LPD_STORAGE_SIGV4_H_

#include "storage/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "storage/manifest.h"

namespace lpd::storage {
namespace {

bool Unreserved(unsigned char c) {
  return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
}

// Trims and collapses runs of spaces inside a header value, as SigV4 asks.
std::string CanonicalHeaderValue(absl::string_view value) {
  std::vector<absl::string_view> words =
      absl::StrSplit(value, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  return absl::StrJoin(words, " ");
}

}  // namespace

std::string AwsUriEncode(absl::string_view in, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(in.size() * 3);
  for (unsigned char c : in) {
    if (Unreserved(c) || (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string CanonicalQueryString(
    const std::vector<std::pair<std::string, std::string>>& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [name, value] : query) {
    encoded.emplace_back(AwsUriEncode(name, false), AwsUriEncode(value, false));
  }
  std::sort(encoded.begin(), encoded.end());
  std::vector<std::string> parts;
  parts.reserve(encoded.size());
  for (const auto& [name, value] : encoded) {
    parts.push_back(absl::StrCat(name, "=", value));
  }
  return absl::StrJoin(parts, "&");
}

std::string HmacSha256(absl::string_view key, absl::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int out_len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out,
       &out_len);
  return std::string(reinterpret_cast<const char*>(out), out_len);
}

std::string AmzDate(absl::Time time) {
  return absl::FormatTime("%Y%m%dT%H%M%SZ", time, absl::UTCTimeZone());
}

std::string SigV4SigningKey(absl::string_view secret, absl::string_view day,
                            absl::string_view region,
                            absl::string_view service) {
  std::string key = HmacSha256(absl::StrCat("AWS4", secret), day);
  key = HmacSha256(key, region);
  key = HmacSha256(key, service);
  return HmacSha256(key, "aws4_request");
}

SigV4Signed SignS3Request(const SigV4Request& request,
                          const AwsCredentials& credentials,
                          absl::string_view region, absl::Time time) {
  SigV4Signed out;
  out.amz_date = AmzDate(time);
  const std::string day = out.amz_date.substr(0, 8);
  // S3 does not normalize or double-encode the path.
  out.encoded_path = AwsUriEncode(request.path, true);
  if (out.encoded_path.empty()) out.encoded_path = "/";
  out.canonical_query = CanonicalQueryString(request.query);

  std::vector<std::pair<std::string, std::string>> headers;
  for (const auto& [name, value] : request.headers) {
    headers.emplace_back(absl::AsciiStrToLower(name),
                         CanonicalHeaderValue(value));
  }
  headers.emplace_back("host", request.host);
  headers.emplace_back("x-amz-content-sha256", request.payload_sha256);
  headers.emplace_back("x-amz-date", out.amz_date);
  if (!credentials.session_token.empty()) {
    headers.emplace_back("x-amz-security-token", credentials.session_token);
  }
  std::sort(headers.begin(), headers.end());

  std::string canonical_headers;
  std::vector<absl::string_view> names;
  for (const auto& [name, value] : headers) {
    absl::StrAppend(&canonical_headers, name, ":", value, "\n");
    names.push_back(name);
  }
  const std::string signed_headers = absl::StrJoin(names, ";");

  out.canonical_request = absl::StrCat(
      request.method, "\n", out.encoded_path, "\n", out.canonical_query, "\n",
      canonical_headers, "\n", signed_headers, "\n", request.payload_sha256);
  const std::string scope = absl::StrCat(day, "/", region, "/s3/aws4_request");
  out.string_to_sign =
      absl::StrCat("AWS4-HMAC-SHA256\n", out.amz_date, "\n", scope, "\n",
                   Sha256Hex(out.canonical_request));
  const std::string key =
      SigV4SigningKey(credentials.secret_access_key, day, region, "s3");
  out.signature = absl::BytesToHexString(HmacSha256(key, out.string_to_sign));
  out.authorization = absl::StrCat(
      "AWS4-HMAC-SHA256 Credential=", credentials.access_key_id, "/", scope,
      ",SignedHeaders=", signed_headers, ",Signature=", out.signature);
  headers.emplace_back("authorization", out.authorization);
  std::sort(headers.begin(), headers.end());
  out.headers = std::move(headers);
  return out;
}

}  // namespace lpd::storage

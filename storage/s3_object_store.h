// The S3 back end of ObjectStore (s3://bucket/prefix/), over libcurl with
// SigV4 signing done by hand (storage/sigv4.h). Works with AWS S3 and with
// S3-compatible servers (path-style addressing, custom endpoint).
#ifndef LPD_STORAGE_S3_OBJECT_STORE_H_
#define LPD_STORAGE_S3_OBJECT_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "storage/object_store.h"
#include "storage/sigv4.h"

namespace lpd::storage {

// S3 refuses parts smaller than this (all but the last).
inline constexpr int64_t kS3MinPartBytes = int64_t{5} << 20;
// And more parts than this.
inline constexpr int kS3MaxParts = 10000;

// How to reach S3. FromEnvironment fills it from the usual AWS_* variables;
// flags may then override single fields.
struct S3Config {
  // "https://s3.eu-west-1.amazonaws.com" or "http://127.0.0.1:4568"; empty:
  // AWS S3 for `region`.
  std::string endpoint;
  std::string region = "us-east-1";
  AwsCredentials credentials;
  // Path-style ("endpoint/bucket/key") rather than virtual-host style
  // ("bucket.endpoint/key"). Unset: path-style exactly when `endpoint` is
  // set (S3-compatible servers) or the bucket has a '.'.
  enum class Addressing { kAuto, kPathStyle, kVirtualHost };
  Addressing addressing = Addressing::kAuto;

  // Objects larger than this go up as multipart uploads of parts this size
  // (the size grows when 10,000 parts would not hold the object). At least
  // kS3MinPartBytes unless allow_small_parts (tests only).
  int64_t part_size = int64_t{16} << 20;
  bool allow_small_parts = false;
  // Parts of a multipart upload in flight at once, each on its own
  // connection (so at most this many part buffers in memory), and ranges of
  // one part_size fetched at once by GetToFile for objects larger than a
  // part. 1: one at a time.
  int parallel_parts = 4;
  // Attempts per request (1 = no retry) on 5xx, 429, timeouts, resets and
  // refused connections; waits grow from initial_backoff, doubling, capped
  // at max_backoff, with jitter.
  int max_attempts = 6;
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(20);
  absl::Duration connect_timeout = absl::Seconds(10);
  // A transfer slower than 1 KiB/s for this long is a timeout.
  absl::Duration stall_timeout = absl::Seconds(60);
  // Keep connections open between requests (tests turn this off so that a
  // fault-injecting proxy sees every request on a new connection).
  bool reuse_connections = true;
  // Keys per ListObjectsV2 page (S3's maximum is 1000).
  int list_page_size = 1000;

  // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
  // AWS_REGION (else AWS_DEFAULT_REGION), AWS_ENDPOINT_URL_S3 (else
  // AWS_ENDPOINT_URL).
  static S3Config FromEnvironment();
};

// Process-wide S3 traffic counters (for metrics).
struct S3Counters {
  int64_t requests = 0;        // HTTP requests made, retries included
  int64_t bytes_sent = 0;      // request bodies
  int64_t bytes_received = 0;  // response bodies
  int64_t errors = 0;          // failed attempts (HTTP >= 400 or transport)
  int64_t retries = 0;         // attempts repeated after a failure
};
S3Counters GetS3Counters();

// Objects are S3 objects under `prefix` in `bucket`.
//
// Writes become visible only when complete: small objects go up in one PUT,
// larger ones as a multipart upload that is completed on Commit and aborted
// on failure. Up to S3Config::parallel_parts parts are in flight at once, so
// with more than one a failed part may show only in a later Append or in
// Commit; the upload is aborted once the parts in flight finish. GetToFile
// fetches objects larger than a part as parallel ranges into a temporary file
// renamed onto the target when complete. Each request is retried with
// backoff on transient failures.
// If the server refuses to abort an upload (S3-compatible servers may), the
// failure is logged; the parts stay invisible until a bucket lifecycle rule
// removes them.
//
// Thread-safe.
class S3ObjectStore : public ObjectStore {
 public:
  // `prefix` is "" or ends in '/'. InvalidArgument for a bad config
  // (endpoint that is not http(s)://host[:port], missing credentials, part
  // size out of range).
  static absl::StatusOr<std::unique_ptr<S3ObjectStore>> Create(
      std::string bucket, std::string prefix, S3Config config);
  ~S3ObjectStore() override;

  std::string uri() const override;
  const S3Config& config() const { return config_; }

  // Below: plumbing shared with the writer; not for callers.
  struct Request;
  struct Response {
    long http_status = 0;
    std::string body;  // unless streamed to a sink
    std::vector<std::pair<std::string, std::string>> headers;  // lowercase
    std::string Header(absl::string_view name) const;
  };
  // Sends `request` with retries; a non-2xx answer is an error naming
  // `what` and the object.
  absl::StatusOr<Response> Send(Request& request) const;
  // Object key in the bucket for a store key.
  std::string ObjectKey(absl::string_view key) const {
    return prefix_ + std::string(key);
  }

 private:
  S3ObjectStore(std::string bucket, std::string prefix, S3Config config,
                std::string scheme, std::string endpoint_host, bool path_style);

  absl::Status DoPut(absl::string_view key, absl::string_view data) override;
  absl::StatusOr<std::unique_ptr<ObjectWriter>> DoNewWriter(
      absl::string_view key) override;
  absl::StatusOr<std::string> DoGet(absl::string_view key) const override;
  absl::StatusOr<std::string> DoGetRange(absl::string_view key, int64_t offset,
                                         int64_t length) const override;
  absl::Status DoGetToFile(absl::string_view key,
                           const std::string& local_path) const override;
  absl::StatusOr<ObjectStat> DoStat(absl::string_view key) const override;
  absl::StatusOr<std::vector<ObjectEntry>> DoList(
      absl::string_view prefix) const override;
  absl::Status DoDelete(absl::string_view key) override;

  // GetToFile of an object of `size` bytes (> part_size) as parallel
  // ranged GETs written at their offsets; `etag` ("" if unknown) must still
  // match.
  absl::Status GetRangesToFile(absl::string_view key,
                               const std::string& local_path, int64_t size,
                               const std::string& etag) const;
  absl::StatusOr<Response> SendOnce(Request& request, bool& retryable) const;

  std::string bucket_;
  std::string prefix_;
  S3Config config_;
  std::string scheme_;         // "http" or "https"
  std::string endpoint_host_;  // host[:port]
  bool path_style_;
};

// Decodes XML character references (&amp; &lt; &gt; &quot; &apos; &#N;
// &#xH;) in `text`.
std::string XmlUnescape(absl::string_view text);
// The inner text of every <tag>...</tag> element in `xml` (not nested in
// itself), still escaped; an empty element "<tag/>" gives "".
std::vector<std::string> XmlElements(absl::string_view xml,
                                     absl::string_view tag);

}  // namespace lpd::storage

#endif  // LPD_STORAGE_S3_OBJECT_STORE_H_

#include "storage/s3_object_store.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <iostream>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "storage/local_file.h"
#include "storage/manifest.h"

namespace lpd::storage {
namespace {

std::atomic<int64_t> g_requests{0};
std::atomic<int64_t> g_bytes_sent{0};
std::atomic<int64_t> g_bytes_received{0};
std::atomic<int64_t> g_errors{0};
std::atomic<int64_t> g_retries{0};

// S3's largest part.
constexpr int64_t kS3MaxPartBytes = int64_t{5} << 30;

void InitCurlOnce() {
  static const bool done = [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return true;
  }();
  (void)done;
}

std::string Env(const char* name) {
  const char* value = ::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

std::string Quote(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

std::string XmlEscape(absl::string_view in) {
  std::string out;
  for (char c : in) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string FirstElement(absl::string_view xml, absl::string_view tag) {
  std::vector<std::string> all = XmlElements(xml, tag);
  return all.empty() ? std::string() : XmlUnescape(all.front());
}

bool RetryableCurlCode(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
      return true;
    default:
      return false;
  }
}

}  // namespace

S3Counters GetS3Counters() {
  S3Counters c;
  c.requests = g_requests.load();
  c.bytes_sent = g_bytes_sent.load();
  c.bytes_received = g_bytes_received.load();
  c.errors = g_errors.load();
  c.retries = g_retries.load();
  return c;
}

std::string XmlUnescape(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    size_t amp = text.find('&');
    if (amp == absl::string_view::npos) break;
    out.append(text.data(), amp);
    text.remove_prefix(amp);
    size_t semi = text.find(';');
    if (semi == absl::string_view::npos || semi > 12) {
      out.push_back('&');
      text.remove_prefix(1);
      continue;
    }
    absl::string_view entity = text.substr(1, semi - 1);
    std::string replacement;
    if (entity == "amp")
      replacement = "&";
    else if (entity == "lt")
      replacement = "<";
    else if (entity == "gt")
      replacement = ">";
    else if (entity == "quot")
      replacement = "\"";
    else if (entity == "apos")
      replacement = "'";
    else if (absl::ConsumePrefix(&entity, "#")) {
      uint32_t cp = 0;
      bool ok = absl::ConsumePrefix(&entity, "x")
                    ? absl::SimpleHexAtoi(entity, &cp)
                    : absl::SimpleAtoi(entity, &cp);
      if (ok && cp < 0x110000) {
        // UTF-8 encode.
        if (cp < 0x80) {
          replacement.push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
          replacement.push_back(static_cast<char>(0xC0 | (cp >> 6)));
          replacement.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
          replacement.push_back(static_cast<char>(0xE0 | (cp >> 12)));
          replacement.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          replacement.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
          replacement.push_back(static_cast<char>(0xF0 | (cp >> 18)));
          replacement.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
          replacement.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          replacement.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
      }
    }
    if (replacement.empty()) {
      out.push_back('&');
      text.remove_prefix(1);
      continue;
    }
    out += replacement;
    text.remove_prefix(semi + 1);
  }
  out.append(text.data(), text.size());
  return out;
}

std::vector<std::string> XmlElements(absl::string_view xml,
                                     absl::string_view tag) {
  std::vector<std::string> out;
  const std::string open = absl::StrCat("<", tag);
  const std::string close = absl::StrCat("</", tag, ">");
  size_t pos = 0;
  while (true) {
    size_t start = xml.find(open, pos);
    if (start == absl::string_view::npos) break;
    size_t after = start + open.size();
    if (after >= xml.size()) break;
    char next = xml[after];
    if (next != '>' && next != ' ' && next != '/' && next != '\t' &&
        next != '\n' && next != '\r') {
      pos = after;  // a longer tag name ("<KeyCount" for "Key")
      continue;
    }
    size_t gt = xml.find('>', after);
    if (gt == absl::string_view::npos) break;
    if (xml[gt - 1] == '/') {  // <tag/>
      out.emplace_back();
      pos = gt + 1;
      continue;
    }
    size_t end = xml.find(close, gt + 1);
    if (end == absl::string_view::npos) break;
    out.emplace_back(xml.substr(gt + 1, end - gt - 1));
    pos = end + close.size();
  }
  return out;
}

S3Config S3Config::FromEnvironment() {
  S3Config config;
  config.credentials.access_key_id = Env("AWS_ACCESS_KEY_ID");
  config.credentials.secret_access_key = Env("AWS_SECRET_ACCESS_KEY");
  config.credentials.session_token = Env("AWS_SESSION_TOKEN");
  std::string region = Env("AWS_REGION");
  if (region.empty()) region = Env("AWS_DEFAULT_REGION");
  if (!region.empty()) config.region = region;
  config.endpoint = Env("AWS_ENDPOINT_URL_S3");
  if (config.endpoint.empty()) config.endpoint = Env("AWS_ENDPOINT_URL");
  return config;
}

std::string S3ObjectStore::Response::Header(absl::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (n == name) return v;
  }
  return "";
}

struct S3ObjectStore::Request {
  std::string method;
  std::string key;  // object key in the bucket; "" for the bucket itself
  std::vector<std::pair<std::string, std::string>> query;
  std::vector<std::pair<std::string, std::string>> headers;
  absl::string_view body;
  // For messages: the operation and the store key (or prefix).
  std::string what;
  std::string store_key;
  // Called before every attempt (to restart a streamed download).
  std::function<absl::Status()> begin_attempt;
  // Receives a 2xx body instead of Response::body.
  std::function<absl::Status(absl::string_view)> sink;
};

namespace {

struct Transfer {
  CURL* curl = nullptr;
  S3ObjectStore::Request* request = nullptr;
  S3ObjectStore::Response* response = nullptr;
  size_t sent = 0;
  absl::Status sink_status;
};

size_t WriteCallback(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  g_bytes_received.fetch_add(static_cast<int64_t>(bytes));
  long code = 0;
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);
  if (t->request->sink && code >= 200 && code < 300) {
    t->sink_status = t->request->sink(absl::string_view(data, bytes));
    if (!t->sink_status.ok()) return 0;
  } else {
    t->response->body.append(data, bytes);
  }
  return bytes;
}

size_t ReadCallback(char* buffer, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const absl::string_view body = t->request->body;
  const size_t count = std::min(size * n, body.size() - t->sent);
  std::memcpy(buffer, body.data() + t->sent, count);
  t->sent += count;
  g_bytes_sent.fetch_add(static_cast<int64_t>(count));
  return count;
}

size_t HeaderCallback(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  absl::string_view line(data, bytes);
  if (absl::StartsWith(line, "HTTP/")) {
    t->response->headers.clear();  // a new response (after 100 Continue)
    return bytes;
  }
  size_t colon = line.find(':');
  if (colon != absl::string_view::npos) {
    t->response->headers.emplace_back(
        absl::AsciiStrToLower(
            absl::StripAsciiWhitespace(line.substr(0, colon))),
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  }
  return bytes;
}

// A pool of idle easy handles, so connections are reused.
class CurlPool {
 public:
  ~CurlPool() {
    for (CURL* c : idle_) curl_easy_cleanup(c);
  }
  CURL* Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        CURL* c = idle_.back();
        idle_.pop_back();
        return c;
      }
    }
    return curl_easy_init();
  }
  void Release(CURL* c) {
    curl_easy_reset(c);
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(c);
  }

 private:
  std::mutex mu_;
  std::vector<CURL*> idle_;
};

CurlPool& Pool() {
  static CurlPool* pool = new CurlPool;
  return *pool;
}

}  // namespace

S3ObjectStore::S3ObjectStore(std::string bucket, std::string prefix,
                             S3Config config, std::string scheme,
                             std::string endpoint_host, bool path_style)
    : bucket_(std::move(bucket)),
      prefix_(std::move(prefix)),
      config_(std::move(config)),
      scheme_(std::move(scheme)),
      endpoint_host_(std::move(endpoint_host)),
      path_style_(path_style) {}

S3ObjectStore::~S3ObjectStore() = default;

absl::StatusOr<std::unique_ptr<S3ObjectStore>> S3ObjectStore::Create(
    std::string bucket, std::string prefix, S3Config config) {
  InitCurlOnce();
  const std::string where = absl::StrCat("s3://", bucket, "/", prefix);
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("S3 store ", where, ": ", why));
  };
  if (bucket.empty()) return invalid("no bucket");
  if (!prefix.empty() && !absl::EndsWith(prefix, "/")) {
    return invalid("the prefix must end in '/'");
  }
  if (config.region.empty()) return invalid("no region");
  if (config.credentials.access_key_id.empty() ||
      config.credentials.secret_access_key.empty()) {
    return invalid(
        "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)");
  }
  if (config.part_size > kS3MaxPartBytes ||
      (config.part_size < kS3MinPartBytes && !config.allow_small_parts) ||
      config.part_size < 1) {
    return invalid(absl::StrCat("part size ", config.part_size,
                                " is outside [5 MiB, 5 GiB]"));
  }
  if (config.max_attempts < 1) return invalid("max_attempts must be >= 1");
  if (config.parallel_parts < 1) return invalid("parallel_parts must be >= 1");
  if (config.list_page_size < 1 || config.list_page_size > 1000) {
    return invalid("list_page_size must be in [1, 1000]");
  }
  std::string scheme = "https";
  std::string host;
  if (config.endpoint.empty()) {
    host = absl::StrCat("s3.", config.region, ".amazonaws.com");
  } else {
    absl::string_view rest = config.endpoint;
    if (absl::ConsumePrefix(&rest, "http://")) {
      scheme = "http";
    } else if (!absl::ConsumePrefix(&rest, "https://")) {
      return invalid(absl::StrCat("endpoint ", Quote(config.endpoint),
                                  " is not http(s)://host[:port]"));
    }
    absl::ConsumeSuffix(&rest, "/");
    if (rest.empty() || absl::StrContains(rest, "/") ||
        absl::StrContains(rest, "?") || absl::StrContains(rest, "@")) {
      return invalid(absl::StrCat("endpoint ", Quote(config.endpoint),
                                  " is not http(s)://host[:port]"));
    }
    host = std::string(rest);
    // The Host header leaves out the scheme's default port.
    if (scheme == "http") absl::ConsumeSuffix(&rest, ":80");
    if (scheme == "https") absl::ConsumeSuffix(&rest, ":443");
    host = std::string(rest);
  }
  bool path_style = false;
  switch (config.addressing) {
    case S3Config::Addressing::kPathStyle:
      path_style = true;
      break;
    case S3Config::Addressing::kVirtualHost:
      path_style = false;
      break;
    case S3Config::Addressing::kAuto:
      path_style = !config.endpoint.empty() || absl::StrContains(bucket, ".");
      break;
  }
  return std::unique_ptr<S3ObjectStore>(
      new S3ObjectStore(std::move(bucket), std::move(prefix), std::move(config),
                        std::move(scheme), std::move(host), path_style));
}

std::string S3ObjectStore::uri() const {
  return absl::StrCat("s3://", bucket_, "/", prefix_);
}

absl::StatusOr<S3ObjectStore::Response> S3ObjectStore::Send(
    Request& request) const {
  absl::BitGen gen;
  absl::Duration backoff = config_.initial_backoff;
  for (int attempt = 1;; ++attempt) {
    if (request.begin_attempt) RETURN_IF_ERROR(request.begin_attempt());
    bool retryable = false;
    absl::StatusOr<Response> response = SendOnce(request, retryable);
    if (response.ok()) return response;
    g_errors.fetch_add(1);
    if (!retryable || attempt >= config_.max_attempts) {
      if (!retryable || attempt == 1) return response.status();
      return absl::Status(response.status().code(),
                          absl::StrCat(response.status().message(), " (after ",
                                       attempt, " attempts)"));
    }
    g_retries.fetch_add(1);
    // Full jitter between half and all of the current backoff.
    absl::SleepFor(backoff * absl::Uniform(gen, 0.5, 1.0));
    backoff = std::min(backoff * 2, config_.max_backoff);
  }
}

absl::StatusOr<S3ObjectStore::Response> S3ObjectStore::SendOnce(
    Request& request, bool& retryable) const {
  retryable = false;
  g_requests.fetch_add(1);
  SigV4Request to_sign;
  to_sign.method = request.method;
  to_sign.host =
      path_style_ ? endpoint_host_ : absl::StrCat(bucket_, ".", endpoint_host_);
  to_sign.path = path_style_
                     ? absl::StrCat("/", bucket_,
                                    request.key.empty() ? "" : "/", request.key)
                     : absl::StrCat("/", request.key);
  to_sign.query = request.query;
  to_sign.headers = request.headers;
  to_sign.payload_sha256 = Sha256Hex(request.body);
  SigV4Signed signed_request =
      SignS3Request(to_sign, config_.credentials, config_.region, absl::Now());
  std::string url =
      absl::StrCat(scheme_, "://", to_sign.host, signed_request.encoded_path);
  if (!signed_request.canonical_query.empty()) {
    absl::StrAppend(&url, "?", signed_request.canonical_query);
  }
  const std::string display = request.store_key.empty() && request.key.empty()
                                  ? uri()
                                  : UriOf(request.store_key);

  Response response;
  Transfer transfer;
  CURL* curl = Pool().Acquire();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  transfer.curl = curl;
  transfer.request = &request;
  transfer.response = &response;

  curl_slist* headers = nullptr;
  for (const auto& [name, value] : signed_request.headers) {
    if (name == "host") continue;  // curl sends it from the URL
    headers =
        curl_slist_append(headers, absl::StrCat(name, ": ", value).c_str());
  }
  headers = curl_slist_append(headers, "Expect:");
  headers = curl_slist_append(headers, "Accept:");
  if (request.method == "POST") {
    headers = curl_slist_append(headers, "Content-Type:");
  }
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  if (!config_.reuse_connections) {
    curl_easy_setopt(curl, CURLOPT_FORBID_REUSE, 1L);
  }
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &WriteCallback);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &HeaderCallback);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(
      curl, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(config_.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(
      curl, CURLOPT_LOW_SPEED_TIME,
      std::max<long>(
          1, static_cast<long>(absl::ToInt64Seconds(config_.stall_timeout))));
  if (request.method == "GET") {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
  } else if (request.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (request.method == "PUT") {
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, &ReadCallback);
    curl_easy_setopt(curl, CURLOPT_READDATA, &transfer);
    curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
  } else if (request.method == "POST") {
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, &ReadCallback);
    curl_easy_setopt(curl, CURLOPT_READDATA, &transfer);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
  } else {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  char error_buffer[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  CURLcode code = curl_easy_perform(curl);
  long http_status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http_status);
  curl_slist_free_all(headers);
  Pool().Release(curl);
  response.http_status = http_status;

  const std::string op = absl::StrCat("S3 ", request.what, " ", display);
  if (code != CURLE_OK) {
    if (!transfer.sink_status.ok()) {
      return absl::Status(
          transfer.sink_status.code(),
          absl::StrCat(op, ": ", transfer.sink_status.message()));
    }
    retryable = RetryableCurlCode(code);
    absl::StatusCode status_code = code == CURLE_OPERATION_TIMEDOUT
                                       ? absl::StatusCode::kDeadlineExceeded
                                       : absl::StatusCode::kUnavailable;
    if (!retryable) status_code = absl::StatusCode::kUnavailable;
    return absl::Status(
        status_code,
        absl::StrCat(op, ": ", curl_easy_strerror(code),
                     error_buffer[0] ? absl::StrCat(" (", error_buffer, ")")
                                     : std::string(),
                     " [", scheme_, "://", to_sign.host, "]"));
  }
  if (http_status >= 200 && http_status < 300) return response;

  // An error answer: <Error><Code>NoSuchKey</Code><Message>...</Message>.
  const std::string s3_code = FirstElement(response.body, "Code");
  const std::string s3_message = FirstElement(response.body, "Message");
  retryable = http_status >= 500 || http_status == 429 ||
              s3_code == "RequestTimeout" || s3_code == "SlowDown" ||
              s3_code == "InternalError";
  std::string detail = absl::StrCat("HTTP ", http_status);
  if (!s3_code.empty()) absl::StrAppend(&detail, " ", s3_code);
  if (!s3_message.empty()) absl::StrAppend(&detail, ": ", s3_message);
  if (s3_code == "NoSuchBucket") {
    return absl::NotFoundError(
        absl::StrCat(op, ": bucket ", Quote(bucket_), " does not exist at ",
                     scheme_, "://", endpoint_host_, " (", detail, ")"));
  }
  absl::StatusCode status_code;
  if (s3_code == "NoSuchKey" || s3_code == "NoSuchUpload" ||
      http_status == 404) {
    if (request.method == "HEAD" || s3_code == "NoSuchKey") {
      return absl::NotFoundError(
          absl::StrCat("object ", Quote(request.store_key), " not found in ",
                       uri(), " (", op, ": ", detail, ")"));
    }
    status_code = absl::StatusCode::kNotFound;
  } else if (s3_code == "InvalidAccessKeyId" || s3_code == "AccessDenied" ||
             s3_code == "SignatureDoesNotMatch" || s3_code == "ExpiredToken" ||
             s3_code == "InvalidToken" || http_status == 401 ||
             http_status == 403) {
    return absl::PermissionDeniedError(
        absl::StrCat(op, ": ", detail, " (access key id ",
                     Quote(config_.credentials.access_key_id), ", bucket ",
                     Quote(bucket_), ")"));
  } else if (http_status == 416 || s3_code == "InvalidRange") {
    status_code = absl::StatusCode::kOutOfRange;
  } else if (retryable) {
    status_code = absl::StatusCode::kUnavailable;
  } else if (http_status == 405 || http_status == 501) {
    status_code = absl::StatusCode::kUnimplemented;
  } else if (http_status == 409 || http_status == 412) {
    status_code = absl::StatusCode::kFailedPrecondition;
  } else if (http_status == 400) {
    status_code = absl::StatusCode::kInvalidArgument;
  } else {
    status_code = absl::StatusCode::kUnknown;
  }
  return absl::Status(status_code, absl::StrCat(op, ": ", detail));
}

namespace {

// A streaming upload: one PUT when the object fits in one part, else a
// multipart upload started with the first full part.
class S3Writer : public ObjectWriter {
 public:
  S3Writer(const S3ObjectStore* store, std::string key)
      : store_(store), key_(std::move(key)) {}
  ~S3Writer() override {
    if (state_ == State::kOpen) (void)Abort();
  }

  absl::Status Append(absl::string_view data) override {
    RETURN_IF_ERROR(CheckOpen());
    bytes_written_ += static_cast<int64_t>(data.size());
    while (!data.empty()) {
      const size_t part = static_cast<size_t>(PartSize());
      // A full buffer goes up only once more data follows, so that the
      // last part is never empty.
      const size_t take = std::min(part - buffer_.size(), data.size());
      if (buffer_.empty()) buffer_.reserve(part);
      buffer_.append(data.data(), take);
      data.remove_prefix(take);
      if (buffer_.size() == part && !data.empty()) {
        RETURN_IF_ERROR(UploadPart(std::move(buffer_)));
        buffer_ = std::string();
      }
    }
    return absl::OkStatus();
  }

  absl::Status Commit() override {
    RETURN_IF_ERROR(CheckOpen());
    if (upload_id_.empty()) {
      S3ObjectStore::Request request;
      request.method = "PUT";
      request.key = store_->ObjectKey(key_);
      request.store_key = key_;
      request.what = "PUT";
      request.body = buffer_;
      absl::StatusOr<S3ObjectStore::Response> r = store_->Send(request);
      if (!r.ok()) return Fail(r.status());
      state_ = State::kCommitted;
      buffer_.clear();
      return absl::OkStatus();
    }
    if (!buffer_.empty()) {
      RETURN_IF_ERROR(UploadPart(std::move(buffer_)));
      buffer_ = std::string();
    }
    RETURN_IF_ERROR(WaitForParts(0));
    std::string xml = "<CompleteMultipartUpload>";
    for (size_t i = 0; i < etags_.size(); ++i) {
      absl::StrAppend(&xml, "<Part><PartNumber>", i + 1, "</PartNumber><ETag>",
                      XmlEscape(etags_[i]), "</ETag></Part>");
    }
    absl::StrAppend(&xml, "</CompleteMultipartUpload>");
    S3ObjectStore::Request request;
    request.method = "POST";
    request.key = store_->ObjectKey(key_);
    request.store_key = key_;
    request.what = "CompleteMultipartUpload";
    request.query = {{"uploadId", upload_id_}};
    request.headers = {{"content-type", "application/xml"}};
    request.body = xml;
    absl::StatusOr<S3ObjectStore::Response> r = store_->Send(request);
    if (r.ok() && absl::StrContains(r->body, "<Error>")) {
      // S3 can fail a completion after answering 200.
      r = absl::UnavailableError(
          absl::StrCat("S3 CompleteMultipartUpload ", store_->UriOf(key_), ": ",
                       FirstElement(r->body, "Code"), ": ",
                       FirstElement(r->body, "Message")));
    }
    if (!r.ok()) return Fail(r.status());
    state_ = State::kCommitted;
    return absl::OkStatus();
  }

  absl::Status Abort() override {
    if (state_ == State::kCommitted) {
      return absl::FailedPreconditionError(absl::StrCat(
          "writer for ", store_->UriOf(key_), " is already committed"));
    }
    if (state_ == State::kAborted) return absl::OkStatus();
    state_ = State::kAborted;
    buffer_.clear();
    buffer_.shrink_to_fit();
    DrainParts();
    AbortUpload();
    return absl::OkStatus();
  }

  const std::string& key() const override { return key_; }
  int64_t bytes_written() const override { return bytes_written_; }

 private:
  enum class State { kOpen, kCommitted, kAborted };

  absl::Status CheckOpen() const {
    if (!error_.ok()) return error_;
    if (state_ != State::kOpen) {
      return absl::FailedPreconditionError(
          absl::StrCat("writer for ", store_->UriOf(key_), " is already ",
                       state_ == State::kCommitted ? "committed" : "aborted"));
    }
    return absl::OkStatus();
  }

  // Parts double in size every 1,000 so that 10,000 hold any object S3
  // takes (5 TiB), capped at S3's 5 GiB.
  int64_t PartSize() const {
    int64_t size = store_->config().part_size;
    for (size_t n = etags_.size() / 1000; n > 0 && size < kS3MaxPartBytes;
         --n) {
      size *= 2;
    }
    return std::min(size, kS3MaxPartBytes);
  }

  absl::Status Fail(absl::Status status) {
    error_ = status;
    state_ = State::kAborted;
    buffer_.clear();
    DrainParts();
    AbortUpload();
    return status;
  }

  // Waits for every part in flight (their results no longer matter).
  void DrainParts() {
    for (InFlightPart& p : in_flight_) p.result.wait();
    in_flight_.clear();
  }

  // Waits until at most `max_in_flight` parts are in flight, oldest first;
  // the first failed part fails the upload (after the others finish).
  absl::Status WaitForParts(size_t max_in_flight) {
    while (!in_flight_.empty()) {
      // Surface a failure among the finished parts early.
      auto done = std::find_if(
          in_flight_.begin(), in_flight_.end(), [](InFlightPart& p) {
            return p.result.wait_for(std::chrono::seconds(0)) ==
                   std::future_status::ready;
          });
      if (done == in_flight_.end()) {
        if (in_flight_.size() <= max_in_flight) return absl::OkStatus();
        done = in_flight_.begin();
      }
      absl::StatusOr<std::string> etag = done->result.get();
      const int part_number = done->part_number;
      in_flight_.erase(done);
      if (!etag.ok()) return Fail(etag.status());
      etags_[part_number - 1] = *std::move(etag);
    }
    return absl::OkStatus();
  }

  void AbortUpload() {
    if (upload_id_.empty()) return;
    S3ObjectStore::Request request;
    request.method = "DELETE";
    request.key = store_->ObjectKey(key_);
    request.store_key = key_;
    request.what = "AbortMultipartUpload";
    request.query = {{"uploadId", upload_id_}};
    absl::StatusOr<S3ObjectStore::Response> r = store_->Send(request);
    if (!r.ok()) {
      std::cerr << "lpd storage: warning: could not abort multipart upload "
                << upload_id_ << " of " << store_->UriOf(key_) << ": "
                << r.status()
                << "; its parts are not visible and stay until a bucket "
                   "lifecycle rule removes them\n";
    }
    upload_id_.clear();
  }

  // Starts uploading `data` as the next part on its own thread, then waits
  // until fewer than parallel_parts parts are in flight (so at most that
  // many part buffers exist, this writer's included).
  absl::Status UploadPart(std::string data) {
    if (etags_.size() >= static_cast<size_t>(kS3MaxParts)) {
      return Fail(absl::ResourceExhaustedError(
          absl::StrCat("writing ", store_->UriOf(key_), ": more than ",
                       kS3MaxParts, " parts")));
    }
    if (upload_id_.empty()) {
      S3ObjectStore::Request request;
      request.method = "POST";
      request.key = store_->ObjectKey(key_);
      request.store_key = key_;
      request.what = "CreateMultipartUpload";
      request.query = {{"uploads", ""}};
      absl::StatusOr<S3ObjectStore::Response> r = store_->Send(request);
      if (!r.ok()) return Fail(r.status());
      upload_id_ = FirstElement(r->body, "UploadId");
      if (upload_id_.empty()) {
        return Fail(absl::InternalError(
            absl::StrCat("S3 CreateMultipartUpload ", store_->UriOf(key_),
                         ": no UploadId in the answer")));
      }
    }
    const int part_number = static_cast<int>(etags_.size()) + 1;
    etags_.emplace_back();
    InFlightPart part;
    part.part_number = part_number;
    part.result = std::async(
        std::launch::async,
        [store = store_, key = key_, upload_id = upload_id_, part_number,
         data = std::move(data)]() -> absl::StatusOr<std::string> {
          S3ObjectStore::Request request;
          request.method = "PUT";
          request.key = store->ObjectKey(key);
          request.store_key = key;
          request.what = absl::StrCat("UploadPart ", part_number);
          request.query = {{"partNumber", absl::StrCat(part_number)},
                           {"uploadId", upload_id}};
          request.body = data;
          absl::StatusOr<S3ObjectStore::Response> r = store->Send(request);
          if (!r.ok()) return r.status();
          std::string etag = r->Header("etag");
          if (etag.empty()) {
            return absl::InternalError(
                absl::StrCat("S3 UploadPart ", part_number, " ",
                             store->UriOf(key), ": no ETag in the answer"));
          }
          return etag;
        });
    in_flight_.push_back(std::move(part));
    const size_t parallel =
        static_cast<size_t>(std::max(1, store_->config().parallel_parts));
    return WaitForParts(parallel - 1);
  }

  struct InFlightPart {
    int part_number = 0;
    std::future<absl::StatusOr<std::string>> result;
  };

  const S3ObjectStore* store_;
  std::string key_;
  std::string buffer_;
  std::string upload_id_;
  std::vector<std::string> etags_;  // by part number - 1; "" while in flight
  std::vector<InFlightPart> in_flight_;
  int64_t bytes_written_ = 0;
  absl::Status error_;
  State state_ = State::kOpen;
};

}  // namespace

absl::Status S3ObjectStore::DoPut(absl::string_view key,
                                  absl::string_view data) {
  if (static_cast<int64_t>(data.size()) > config_.part_size) {
    S3Writer writer(this, std::string(key));
    RETURN_IF_ERROR(writer.Append(data));
    return writer.Commit();
  }
  Request request;
  request.method = "PUT";
  request.key = ObjectKey(key);
  request.store_key = std::string(key);
  request.what = "PUT";
  request.body = data;
  return Send(request).status();
}

absl::StatusOr<std::unique_ptr<ObjectWriter>> S3ObjectStore::DoNewWriter(
    absl::string_view key) {
  return std::unique_ptr<ObjectWriter>(new S3Writer(this, std::string(key)));
}

absl::StatusOr<std::string> S3ObjectStore::DoGet(absl::string_view key) const {
  Request request;
  request.method = "GET";
  request.key = ObjectKey(key);
  request.store_key = std::string(key);
  request.what = "GET";
  ASSIGN_OR_RETURN(Response response, Send(request));
  return std::move(response.body);
}

absl::StatusOr<std::string> S3ObjectStore::DoGetRange(absl::string_view key,
                                                      int64_t offset,
                                                      int64_t length) const {
  auto past_end = [&](int64_t size) {
    return absl::OutOfRangeError(absl::StrCat(
        "reading ", UriOf(key), ": range [", offset, ", ", offset + length,
        ") ends past the end of the object (", size, " bytes)"));
  };
  if (length == 0) {
    ASSIGN_OR_RETURN(ObjectStat stat, DoStat(key));
    if (offset > stat.size) return past_end(stat.size);
    return std::string();
  }
  Request request;
  request.method = "GET";
  request.key = ObjectKey(key);
  request.store_key = std::string(key);
  request.what = absl::StrCat("GET (range ", offset, "+", length, ")");
  request.headers = {
      {"range", absl::StrCat("bytes=", offset, "-", offset + length - 1)}};
  absl::StatusOr<Response> response = Send(request);
  if (absl::IsOutOfRange(response.status())) {
    ASSIGN_OR_RETURN(ObjectStat stat, DoStat(key));
    return past_end(stat.size);
  }
  if (!response.ok()) return response.status();
  if (response->http_status == 200) {  // the whole object: range ignored
    const int64_t size = static_cast<int64_t>(response->body.size());
    if (offset + length > size) return past_end(size);
    return response->body.substr(offset, length);
  }
  if (static_cast<int64_t>(response->body.size()) != length) {
    // Content-Range: bytes a-b/size
    int64_t size = -1;
    std::string content_range = response->Header("content-range");
    size_t slash = content_range.rfind('/');
    if (slash == std::string::npos ||
        !absl::SimpleAtoi(content_range.substr(slash + 1), &size)) {
      size = offset + static_cast<int64_t>(response->body.size());
    }
    if (offset + length > size) return past_end(size);
    return absl::DataLossError(
        absl::StrCat("reading ", UriOf(key), ": asked for ", length,
                     " bytes at ", offset, ", got ", response->body.size()));
  }
  return std::move(response->body);
}

absl::Status S3ObjectStore::GetRangesToFile(absl::string_view key,
                                            const std::string& local_path,
                                            int64_t size,
                                            const std::string& etag) const {
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file,
                   AtomicFileWriter::CreateAtPath(local_path));
  if (::ftruncate(file->fd(), static_cast<off_t>(size)) != 0) {
    absl::Status status = ErrnoError(
        errno, absl::StrCat("sizing ", local_path, " to ", size, " bytes"));
    (void)file->Abort();
    return status;
  }
  const int64_t range = config_.part_size;
  const int64_t ranges = (size + range - 1) / range;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  absl::Status first_error;
  auto worker = [&] {
    while (!failed.load()) {
      const int64_t index = next.fetch_add(1);
      if (index >= ranges) return;
      const int64_t offset = index * range;
      const int64_t length = std::min(range, size - offset);
      int64_t written = 0;
      Request request;
      request.method = "GET";
      request.key = ObjectKey(key);
      request.store_key = std::string(key);
      request.what = absl::StrCat("GET (range ", offset, "+", length, ")");
      request.headers = {
          {"range", absl::StrCat("bytes=", offset, "-", offset + length - 1)}};
      if (!etag.empty()) request.headers.emplace_back("if-match", etag);
      request.begin_attempt = [&]() -> absl::Status {
        written = 0;
        return absl::OkStatus();
      };
      request.sink = [&](absl::string_view data) -> absl::Status {
        if (written + static_cast<int64_t>(data.size()) > length) {
          return absl::DataLossError(
              absl::StrCat("got more than the ", length, " bytes asked for"));
        }
        const char* p = data.data();
        size_t left = data.size();
        while (left > 0) {
          ssize_t n = ::pwrite(file->fd(), p, left,
                               static_cast<off_t>(offset + written));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            return ErrnoError(n < 0 ? errno : EIO,
                              absl::StrCat("writing ", local_path));
          }
          p += n;
          left -= static_cast<size_t>(n);
          written += n;
        }
        return absl::OkStatus();
      };
      absl::Status status = Send(request).status();
      if (status.ok() && written != length) {
        status = absl::DataLossError(absl::StrCat(
            "downloading ", UriOf(key), " to ", local_path, ": got ", written,
            " of ", length, " bytes at ", offset));
      }
      if (!status.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.ok()) first_error = status;
        failed = true;
        return;
      }
    }
  };
  const int64_t threads =
      std::min<int64_t>(ranges, std::max(1, config_.parallel_parts));
  std::vector<std::thread> helpers;
  for (int64_t i = 1; i < threads; ++i) helpers.emplace_back(worker);
  worker();
  for (std::thread& t : helpers) t.join();
  if (!first_error.ok()) {
    (void)file->Abort();
    return first_error;
  }
  return file->Commit();
}

absl::Status S3ObjectStore::DoGetToFile(absl::string_view key,
                                        const std::string& local_path) const {
  if (config_.parallel_parts > 1) {
    // The size first: large objects come down as parallel ranges.
    Request head;
    head.method = "HEAD";
    head.key = ObjectKey(key);
    head.store_key = std::string(key);
    head.what = "HEAD";
    ASSIGN_OR_RETURN(Response response, Send(head));
    int64_t size = 0;
    if (absl::SimpleAtoi(response.Header("content-length"), &size) &&
        size > config_.part_size) {
      return GetRangesToFile(key, local_path, size, response.Header("etag"));
    }
  }
  std::unique_ptr<AtomicFileWriter> file;
  Request request;
  request.method = "GET";
  request.key = ObjectKey(key);
  request.store_key = std::string(key);
  request.what = "GET";
  request.begin_attempt = [&]() -> absl::Status {
    if (file != nullptr && file->bytes_written() == 0) return absl::OkStatus();
    if (file != nullptr) (void)file->Abort();
    ASSIGN_OR_RETURN(file, AtomicFileWriter::CreateAtPath(local_path));
    return absl::OkStatus();
  };
  request.sink = [&](absl::string_view data) { return file->Append(data); };
  ASSIGN_OR_RETURN(Response response, Send(request));
  int64_t expected = 0;
  if (absl::SimpleAtoi(response.Header("content-length"), &expected) &&
      expected != file->bytes_written()) {
    return absl::DataLossError(
        absl::StrCat("downloading ", UriOf(key), " to ", local_path, ": got ",
                     file->bytes_written(), " of ", expected, " bytes"));
  }
  return file->Commit();
}

absl::StatusOr<ObjectStat> S3ObjectStore::DoStat(absl::string_view key) const {
  Request request;
  request.method = "HEAD";
  request.key = ObjectKey(key);
  request.store_key = std::string(key);
  request.what = "HEAD";
  ASSIGN_OR_RETURN(Response response, Send(request));
  ObjectStat stat;
  if (!absl::SimpleAtoi(response.Header("content-length"), &stat.size)) {
    return absl::InternalError(
        absl::StrCat("S3 HEAD ", UriOf(key), ": no Content-Length"));
  }
  std::string error;
  // RFC 7231: "Wed, 21 Oct 2015 07:28:00 GMT".
  if (!absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT",
                       response.Header("last-modified"), absl::UTCTimeZone(),
                       &stat.mtime, &error)) {
    stat.mtime = absl::UnixEpoch();
  }
  return stat;
}

absl::StatusOr<std::vector<ObjectEntry>> S3ObjectStore::DoList(
    absl::string_view prefix) const {
  std::vector<ObjectEntry> out;
  std::string token;
  const std::string full_prefix = ObjectKey(prefix);
  for (int page = 0;; ++page) {
    Request request;
    request.method = "GET";
    request.store_key = std::string(prefix);
    request.what = absl::StrCat("ListObjectsV2 (prefix ", Quote(prefix), ")");
    request.query = {{"list-type", "2"},
                     {"max-keys", absl::StrCat(config_.list_page_size)}};
    if (!full_prefix.empty()) request.query.emplace_back("prefix", full_prefix);
    if (!token.empty()) request.query.emplace_back("continuation-token", token);
    ASSIGN_OR_RETURN(Response response, Send(request));
    for (const std::string& contents : XmlElements(response.body, "Contents")) {
      std::string key = FirstElement(contents, "Key");
      int64_t size = 0;
      if (!absl::SimpleAtoi(FirstElement(contents, "Size"), &size) ||
          !absl::StartsWith(key, prefix_)) {
        return absl::InternalError(absl::StrCat("S3 ", request.what, " in ",
                                                uri(), ": malformed entry ",
                                                contents.substr(0, 200)));
      }
      key.erase(0, prefix_.size());
      // Keys this store could not have written (other tools): not listed.
      if (!ValidateKey(key).ok()) continue;
      out.push_back(ObjectEntry{std::move(key), size});
    }
    if (FirstElement(response.body, "IsTruncated") != "true") break;
    token = FirstElement(response.body, "NextContinuationToken");
    if (token.empty()) {
      return absl::InternalError(
          absl::StrCat("S3 ", request.what, " in ", uri(),
                       ": truncated listing without NextContinuationToken"));
    }
  }
  std::sort(
      out.begin(), out.end(),
      [](const ObjectEntry& a, const ObjectEntry& b) { return a.key < b.key; });
  return out;
}

absl::Status S3ObjectStore::DoDelete(absl::string_view key) {
  Request request;
  request.method = "DELETE";
  request.key = ObjectKey(key);
  request.store_key = std::string(key);
  request.what = "DELETE";
  absl::StatusOr<Response> response = Send(request);
  if (absl::IsNotFound(response.status()) &&
      !absl::StrContains(response.status().message(), "NoSuchBucket")) {
    return absl::OkStatus();
  }
  return response.status();
}

}  // namespace lpd::storage

#include "storage/object_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <type_traits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"
#include "storage/local_file.h"
#include "storage/local_object_store.h"
#include "storage/s3_object_store.h"

namespace lpd::storage {
namespace {

// Chunk size of PutFile's default implementation.
constexpr size_t kCopyChunkBytes = 4 << 20;

// `text` in quotes, with unprintable bytes escaped.
std::string Quote(absl::string_view text) {
  return absl::StrCat("\"", absl::CHexEscape(text), "\"");
}

// Checks the '/'-separated `path` (no leading or trailing '/'): every segment
// non-empty, not "." or "..", short enough and not reserved; no NUL or
// backslash. `what` ("key \"a/b\"") leads the error message.
absl::Status CheckSegments(absl::string_view path, absl::string_view what) {
  if (absl::StrContains(path, absl::string_view("\0", 1))) {
    return absl::InvalidArgumentError(absl::StrCat(what, " contains a NUL"));
  }
  if (absl::StrContains(path, '\\')) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " contains a backslash ('/' separates segments)"));
  }
  for (absl::string_view segment : absl::StrSplit(path, '/')) {
    if (segment.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has an empty segment (\"//\")"));
    }
    if (segment == "." || segment == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has a \"", segment, "\" segment"));
    }
    if (segment.size() > kMaxKeySegmentBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has a segment of ", segment.size(),
                       " bytes; the limit is ", kMaxKeySegmentBytes));
    }
    if (absl::StartsWith(segment, kTempSegmentPrefix)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " has a segment starting with \"", kTempSegmentPrefix,
          "\", which is reserved for unfinished writes"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckLength(absl::string_view text, absl::string_view what) {
  if (text.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " is ", text.size(), " bytes long; the limit is ", kMaxKeyBytes));
  }
  return absl::OkStatus();
}

absl::Status InvalidUri(absl::string_view uri, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("storage URI ", Quote(uri), ": ", why));
}

}  // namespace

absl::Status ValidateKey(absl::string_view key) {
  std::string what = absl::StrCat("key ", Quote(key));
  if (key.empty()) return absl::InvalidArgumentError("key is empty");
  RETURN_IF_ERROR(CheckLength(key, what));
  if (key.front() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is absolute; keys are relative to the store"));
  }
  if (key.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ends with '/', which names a folder"));
  }
  return CheckSegments(key, what);
}

absl::Status ValidatePrefix(absl::string_view prefix) {
  std::string what = absl::StrCat("prefix ", Quote(prefix));
  RETURN_IF_ERROR(CheckLength(prefix, what));
  if (absl::StartsWith(prefix, "/")) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is absolute; keys are relative to the store"));
  }
  size_t slash = prefix.rfind('/');
  absl::string_view folder =
      slash == absl::string_view::npos ? "" : prefix.substr(0, slash);
  absl::string_view start =
      slash == absl::string_view::npos ? prefix : prefix.substr(slash + 1);
  if (!folder.empty()) RETURN_IF_ERROR(CheckSegments(folder, what));
  if (absl::StrContains(start, absl::string_view("\0", 1)) ||
      absl::StrContains(start, '\\')) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " contains a NUL or a backslash"));
  }
  return absl::OkStatus();
}

std::string JoinKey(std::initializer_list<absl::string_view> parts) {
  std::string out;
  for (absl::string_view part : parts) {
    if (part.empty()) continue;
    if (!out.empty()) {
      bool out_slash = out.back() == '/';
      bool part_slash = part.front() == '/';
      if (out_slash && part_slash) {
        part.remove_prefix(1);
      } else if (!out_slash && !part_slash) {
        out += '/';
      }
    }
    absl::StrAppend(&out, part);
  }
  return out;
}

std::string ObjectStore::UriOf(absl::string_view key) const {
  return absl::StrCat(uri(), key);
}

StorageIoCounters& StorageIo() {
  static StorageIoCounters* const counters = new StorageIoCounters;
  return *counters;
}

namespace {

// Counts a call's outcome: `bytes` moved in `direction` when it succeeded,
// an error when it failed with anything but NotFound.
template <typename T>
const T& Counted(const T& result, std::atomic<uint64_t>& direction,
                 uint64_t bytes) {
  absl::Status status;
  if constexpr (std::is_same_v<T, absl::Status>) {
    status = result;
  } else {
    status = result.status();
  }
  if (status.ok()) {
    direction += bytes;
  } else if (!absl::IsNotFound(status)) {
    ++StorageIo().errors;
  }
  return result;
}

uint64_t LocalFileSize(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 ? static_cast<uint64_t>(info.st_size)
                                          : 0;
}

}  // namespace

absl::Status ObjectStore::Put(absl::string_view key, absl::string_view data) {
  RETURN_IF_ERROR(ValidateKey(key));
  return Counted(DoPut(key, data), StorageIo().bytes_uploaded, data.size());
}

absl::Status ObjectStore::PutFile(absl::string_view key,
                                  const std::string& local_path) {
  RETURN_IF_ERROR(ValidateKey(key));
  return Counted(DoPutFile(key, local_path), StorageIo().bytes_uploaded,
                 LocalFileSize(local_path));
}

absl::StatusOr<std::unique_ptr<ObjectWriter>> ObjectStore::NewWriter(
    absl::string_view key) {
  RETURN_IF_ERROR(ValidateKey(key));
  return DoNewWriter(key);
}

absl::StatusOr<std::string> ObjectStore::Get(absl::string_view key) const {
  RETURN_IF_ERROR(ValidateKey(key));
  absl::StatusOr<std::string> data = DoGet(key);
  return Counted(data, StorageIo().bytes_downloaded,
                 data.ok() ? data->size() : 0);
}

absl::StatusOr<std::string> ObjectStore::GetRange(absl::string_view key,
                                                  int64_t offset,
                                                  int64_t length) const {
  RETURN_IF_ERROR(ValidateKey(key));
  if (offset < 0 || length < 0 ||
      offset > std::numeric_limits<int64_t>::max() - length) {
    return absl::InvalidArgumentError(
        absl::StrCat("reading ", UriOf(key), ": invalid range offset ", offset,
                     ", length ", length));
  }
  absl::StatusOr<std::string> data = DoGetRange(key, offset, length);
  return Counted(data, StorageIo().bytes_downloaded,
                 data.ok() ? data->size() : 0);
}

absl::Status ObjectStore::GetToFile(absl::string_view key,
                                    const std::string& local_path) const {
  RETURN_IF_ERROR(ValidateKey(key));
  const absl::Status status = DoGetToFile(key, local_path);
  return Counted(status, StorageIo().bytes_downloaded,
                 status.ok() ? LocalFileSize(local_path) : 0);
}

absl::StatusOr<ObjectStat> ObjectStore::Stat(absl::string_view key) const {
  RETURN_IF_ERROR(ValidateKey(key));
  return DoStat(key);
}

absl::StatusOr<bool> ObjectStore::Exists(absl::string_view key) const {
  RETURN_IF_ERROR(ValidateKey(key));
  return DoExists(key);
}

absl::StatusOr<std::vector<ObjectEntry>> ObjectStore::List(
    absl::string_view prefix) const {
  RETURN_IF_ERROR(ValidatePrefix(prefix));
  return DoList(prefix);
}

absl::Status ObjectStore::Delete(absl::string_view key) {
  RETURN_IF_ERROR(ValidateKey(key));
  return DoDelete(key);
}

absl::Status ObjectStore::DeletePrefix(absl::string_view prefix) {
  if (prefix.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "refusing to delete everything in ", uri(), " (empty prefix)"));
  }
  RETURN_IF_ERROR(ValidatePrefix(prefix));
  return DoDeletePrefix(prefix);
}

absl::Status ObjectStore::DoPut(absl::string_view key, absl::string_view data) {
  ASSIGN_OR_RETURN(std::unique_ptr<ObjectWriter> writer, DoNewWriter(key));
  RETURN_IF_ERROR(writer->Append(data));
  return writer->Commit();
}

absl::Status ObjectStore::DoPutFile(absl::string_view key,
                                    const std::string& local_path) {
  UniqueFd file(::open(local_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file.valid()) {
    return ErrnoError(errno, absl::StrCat("opening ", local_path, " to store ",
                                          "it as ", UriOf(key)));
  }
  struct stat st;
  if (::fstat(file.get(), &st) != 0) {
    return ErrnoError(errno, absl::StrCat("reading ", local_path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(local_path, " is not a regular file"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ObjectWriter> writer, DoNewWriter(key));
  std::string buffer(kCopyChunkBytes, '\0');
  for (int64_t offset = 0;;) {
    ASSIGN_OR_RETURN(size_t n, ReadAt(file.get(), buffer.data(), buffer.size(),
                                      offset, local_path));
    if (n == 0) break;
    RETURN_IF_ERROR(writer->Append(absl::string_view(buffer.data(), n)));
    offset += static_cast<int64_t>(n);
  }
  return writer->Commit();
}

absl::StatusOr<bool> ObjectStore::DoExists(absl::string_view key) const {
  absl::StatusOr<ObjectStat> stat = DoStat(key);
  if (stat.ok()) return true;
  if (absl::IsNotFound(stat.status())) return false;
  return stat.status();
}

absl::Status ObjectStore::DoDeletePrefix(absl::string_view prefix) {
  ASSIGN_OR_RETURN(std::vector<ObjectEntry> entries, DoList(prefix));
  for (const ObjectEntry& entry : entries) {
    RETURN_IF_ERROR(DoDelete(entry.key));
  }
  return absl::OkStatus();
}

std::string StorageUri::ToString() const {
  switch (scheme) {
    case Scheme::kFile:
      return absl::StrCat("file://", location, location == "/" ? "" : "/");
    case Scheme::kS3:
      return absl::StrCat("s3://", location, "/", prefix);
  }
  return "";
}

absl::StatusOr<StorageUri> ParseStorageUri(absl::string_view uri) {
  StorageUri out;
  absl::string_view rest = uri;
  if (absl::ConsumePrefix(&rest, "file://")) {
    out.scheme = StorageUri::Scheme::kFile;
    if (!absl::StartsWith(rest, "/")) {
      return InvalidUri(uri,
                        "a file URI needs an empty host and an absolute "
                        "path, as in file:///srv/lpd/");
    }
    absl::string_view path = rest;
    if (path.size() > 1) absl::ConsumeSuffix(&path, "/");
    if (path.size() > 1) {
      absl::Status status = CheckSegments(path.substr(1), "the path");
      if (!status.ok()) return InvalidUri(uri, status.message());
    } else if (absl::StrContains(path, absl::string_view("\0", 1))) {
      return InvalidUri(uri, "the path contains a NUL");
    }
    out.location = std::string(path);
    return out;
  }
  if (absl::ConsumePrefix(&rest, "s3://")) {
    out.scheme = StorageUri::Scheme::kS3;
    size_t slash = rest.find('/');
    absl::string_view bucket = rest.substr(0, slash);
    absl::string_view prefix =
        slash == absl::string_view::npos ? "" : rest.substr(slash + 1);
    if (bucket.empty()) return InvalidUri(uri, "the bucket is empty");
    for (char c : bucket) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' &&
          c != '-' && c != '_') {
        return InvalidUri(uri, absl::StrCat("the bucket ", Quote(bucket),
                                            " has a character other than "
                                            "letters, digits, '.', '-', '_'"));
      }
    }
    absl::ConsumeSuffix(&prefix, "/");
    if (!prefix.empty()) {
      absl::Status status = CheckSegments(prefix, "the prefix");
      if (!status.ok()) return InvalidUri(uri, status.message());
      out.prefix = absl::StrCat(prefix, "/");
    }
    out.location = std::string(bucket);
    return out;
  }
  return InvalidUri(uri,
                    "unsupported; expected file:///absolute/path/ or "
                    "s3://bucket/prefix/");
}

namespace {

std::mutex g_default_s3_mu;
S3Config* g_default_s3 = nullptr;  // guarded by g_default_s3_mu

}  // namespace

void SetDefaultS3Config(const S3Config& config) {
  std::lock_guard<std::mutex> lock(g_default_s3_mu);
  delete g_default_s3;
  g_default_s3 = new S3Config(config);
}

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenObjectStore(
    absl::string_view uri) {
  S3Config config;
  {
    std::lock_guard<std::mutex> lock(g_default_s3_mu);
    if (g_default_s3 != nullptr) {
      config = *g_default_s3;
    } else {
      config = S3Config::FromEnvironment();
    }
  }
  return OpenObjectStore(uri, config);
}

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenObjectStore(
    absl::string_view uri, const S3Config& s3_config) {
  ASSIGN_OR_RETURN(StorageUri parsed, ParseStorageUri(uri));
  // The one place that maps a scheme to its back end.
  switch (parsed.scheme) {
    case StorageUri::Scheme::kFile: {
      ASSIGN_OR_RETURN(std::unique_ptr<LocalObjectStore> store,
                       LocalObjectStore::Create(parsed.location));
      return std::unique_ptr<ObjectStore>(std::move(store));
    }
    case StorageUri::Scheme::kS3: {
      ASSIGN_OR_RETURN(
          std::unique_ptr<S3ObjectStore> store,
          S3ObjectStore::Create(parsed.location, parsed.prefix, s3_config));
      return std::unique_ptr<ObjectStore>(std::move(store));
    }
  }
  return absl::InternalError(absl::StrCat("unhandled scheme in ", uri));
}

std::string StoreLocation::Key(absl::string_view name) const {
  return JoinKey({prefix, name});
}

absl::StatusOr<StoreLocation> OpenStoreLocation(
    absl::string_view uri, absl::Span<const std::string> roots) {
  ASSIGN_OR_RETURN(StorageUri parsed, ParseStorageUri(uri));
  std::string canonical = parsed.ToString();
  StoreLocation location;
  if (roots.empty()) {
    ASSIGN_OR_RETURN(location.store, OpenObjectStore(canonical));
    return location;
  }
  std::string best_root;
  for (const std::string& root : roots) {
    absl::StatusOr<StorageUri> parsed_root = ParseStorageUri(root);
    if (!parsed_root.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("storage root: ", parsed_root.status().message()));
    }
    std::string canonical_root = parsed_root->ToString();
    if (absl::StartsWith(canonical, canonical_root) &&
        canonical_root.size() > best_root.size()) {
      best_root = std::move(canonical_root);
    }
  }
  if (best_root.empty()) {
    return absl::PermissionDeniedError(
        absl::StrCat("storage URI ", Quote(uri),
                     " is outside the configured storage roots (",
                     absl::StrJoin(roots, ", "), ")"));
  }
  ASSIGN_OR_RETURN(location.store, OpenObjectStore(best_root));
  location.prefix = canonical.substr(best_root.size());
  return location;
}

}  // namespace lpd::storage

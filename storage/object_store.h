// Object storage behind one interface over URIs (DESIGN §5):
// `file:///abs/path/` (a local folder, the embedded default) and, later,
// `s3://bucket/prefix/`. Workers write scores, plans, checkpoints and the
// final model through it; readers see an object only once it is complete.
//
// Keys are relative, '/'-separated names ("checkpoints/step-00000500/x.bin").
// A "folder" is a key prefix ending in '/'; it exists only through the keys
// under it. Every method validates its keys (ValidateKey, ValidatePrefix)
// before a back end sees them, so all back ends accept the same keys.
#ifndef LPD_STORAGE_OBJECT_STORE_H_
#define LPD_STORAGE_OBJECT_STORE_H_

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace lpd::storage {

struct S3Config;  // storage/s3_object_store.h

// Longest key accepted, in bytes (S3's limit).
inline constexpr size_t kMaxKeyBytes = 1024;
// Longest key segment (between slashes), in bytes (a file name's limit).
inline constexpr size_t kMaxKeySegmentBytes = 255;
// Segments starting with this are reserved for temporary files of
// unfinished writes: no key may contain one, and listings never show them.
inline constexpr absl::string_view kTempSegmentPrefix = ".lpd-tmp.";

// OK when `key` can name an object: non-empty, at most kMaxKeyBytes, not
// starting or ending with '/', no empty, "." or ".." segment, no NUL or
// backslash, no segment longer than kMaxKeySegmentBytes or starting with
// kTempSegmentPrefix. Otherwise InvalidArgument naming the key and the rule.
absl::Status ValidateKey(absl::string_view key);

// OK when `prefix` can select keys in a listing: "" (all keys), a folder
// ("a/b/"), or a folder followed by the start of a name ("a/b/step-"). The
// folder part follows ValidateKey's rules.
absl::Status ValidatePrefix(absl::string_view prefix);

// Joins key parts with exactly the '/' needed between them; empty parts are
// skipped: JoinKey({"jobs/42/", "checkpoints/LATEST"}) and
// JoinKey({"jobs/42", "checkpoints/LATEST"}) both give
// "jobs/42/checkpoints/LATEST". Does not validate.
std::string JoinKey(std::initializer_list<absl::string_view> parts);

// What Stat reports about an object.
struct ObjectStat {
  int64_t size = 0;  // bytes
  absl::Time mtime;  // last modification
};

// One object in a listing.
struct ObjectEntry {
  std::string key;
  int64_t size = 0;  // bytes

  friend bool operator==(const ObjectEntry&, const ObjectEntry&) = default;
};

// A streaming upload of one object (S3: a multipart upload). Nothing is
// visible under the key until Commit succeeds; an object already there stays
// readable, unchanged, until then. Destroying a writer that was neither
// committed nor aborted aborts it. Not thread-safe: one writer, one thread.
class ObjectWriter {
 public:
  virtual ~ObjectWriter() = default;

  // Adds `data` at the end of the object. After an error the writer is
  // broken: later calls return that error and Commit removes what was sent.
  virtual absl::Status Append(absl::string_view data) = 0;
  // Makes the object visible, complete and durable. Once only; after Commit
  // or Abort, Append and Commit are FailedPrecondition.
  virtual absl::Status Commit() = 0;
  // Discards what was written; no trace remains. Idempotent;
  // FailedPrecondition after Commit.
  virtual absl::Status Abort() = 0;

  // The key being written.
  virtual const std::string& key() const = 0;
  // Bytes appended so far.
  virtual int64_t bytes_written() const = 0;
};

// An object store. Implementations are thread-safe. Errors name the key and
// the store (or local path): NotFound for a missing object, InvalidArgument
// for a malformed key ("..", absolute, ...), PermissionDenied for a path
// through a symbolic link, and the back end's own failures mapped to the
// nearest code (errno → code for files).
//
// The public methods validate their arguments and call the private Do*
// methods, which back ends implement (non-virtual interface).
// Bytes moved and failed calls of every ObjectStore of this process, counted
// by the public methods (the metrics' lpd_storage_bytes_total{direction} and
// lpd_storage_errors_total). NotFound is not an error here.
struct StorageIoCounters {
  std::atomic<uint64_t> bytes_uploaded{0};
  std::atomic<uint64_t> bytes_downloaded{0};
  std::atomic<uint64_t> errors{0};
};
StorageIoCounters& StorageIo();

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // The store's root as a URI ending in '/': "file:///srv/lpd/".
  virtual std::string uri() const = 0;
  // uri() + key, for messages and logs.
  std::string UriOf(absl::string_view key) const;

  // Writes `data` as the whole object `key`, replacing any old one
  // atomically.
  absl::Status Put(absl::string_view key, absl::string_view data);
  // Uploads the local file `local_path` as `key`.
  absl::Status PutFile(absl::string_view key, const std::string& local_path);
  // Starts a streaming write of `key` (see ObjectWriter).
  absl::StatusOr<std::unique_ptr<ObjectWriter>> NewWriter(
      absl::string_view key);

  // The whole object.
  absl::StatusOr<std::string> Get(absl::string_view key) const;
  // Bytes [offset, offset + length) of the object. offset and length must
  // be >= 0 (else InvalidArgument); a range reaching past the end of the
  // object is OutOfRange naming the key, the range and the size (a zero
  // length at offset == size is an empty string).
  absl::StatusOr<std::string> GetRange(absl::string_view key, int64_t offset,
                                       int64_t length) const;
  // Downloads the object to `local_path`, which appears only when complete
  // (temporary file in the same folder, fsync, rename). The local folder
  // must exist.
  absl::Status GetToFile(absl::string_view key,
                         const std::string& local_path) const;
  // Size and modification time of the object.
  absl::StatusOr<ObjectStat> Stat(absl::string_view key) const;
  // Whether the object exists; errors other than NotFound are returned.
  absl::StatusOr<bool> Exists(absl::string_view key) const;
  // Every object whose key starts with `prefix`, at any depth, sorted by key
  // (byte order). Unfinished writes are not listed. A prefix matching
  // nothing gives an empty list.
  absl::StatusOr<std::vector<ObjectEntry>> List(absl::string_view prefix) const;

  // Removes the object. Deleting a missing object is OK (as on S3).
  absl::Status Delete(absl::string_view key);
  // Removes every object whose key starts with `prefix`. The empty prefix
  // (the whole store) is refused with InvalidArgument.
  absl::Status DeletePrefix(absl::string_view prefix);

 private:
  // Back ends implement these; keys and prefixes are already valid, and
  // GetRange's arguments are >= 0. The defaults build on the others.
  virtual absl::Status DoPut(absl::string_view key, absl::string_view data);
  virtual absl::Status DoPutFile(absl::string_view key,
                                 const std::string& local_path);
  virtual absl::StatusOr<std::unique_ptr<ObjectWriter>> DoNewWriter(
      absl::string_view key) = 0;
  virtual absl::StatusOr<std::string> DoGet(absl::string_view key) const = 0;
  virtual absl::StatusOr<std::string> DoGetRange(absl::string_view key,
                                                 int64_t offset,
                                                 int64_t length) const = 0;
  virtual absl::Status DoGetToFile(absl::string_view key,
                                   const std::string& local_path) const = 0;
  virtual absl::StatusOr<ObjectStat> DoStat(absl::string_view key) const = 0;
  virtual absl::StatusOr<bool> DoExists(absl::string_view key) const;
  virtual absl::StatusOr<std::vector<ObjectEntry>> DoList(
      absl::string_view prefix) const = 0;
  virtual absl::Status DoDelete(absl::string_view key) = 0;
  virtual absl::Status DoDeletePrefix(absl::string_view prefix);
};

// A storage URI taken apart.
struct StorageUri {
  enum class Scheme { kFile, kS3 };
  Scheme scheme = Scheme::kFile;
  // file: the absolute folder path, without a trailing '/' ("/srv/lpd"; the
  // file system root is "/"). s3: the bucket.
  std::string location;
  // s3: the key prefix inside the bucket, "" or ending in '/'. file: "".
  std::string prefix;

  // The canonical URI, ending in '/': "file:///srv/lpd/", "s3://b/p/".
  std::string ToString() const;
};

// Parses `uri`: "file:///abs/path[/]" (empty host, absolute path taken
// literally, no "." or ".." or empty segments) or "s3://bucket[/prefix/]".
// Anything else is InvalidArgument naming the URI and the accepted forms.
absl::StatusOr<StorageUri> ParseStorageUri(absl::string_view uri);

// Opens the store rooted at `uri`: for file:// a LocalObjectStore on that
// folder (which need not exist yet; the first write creates it); for s3://
// an S3ObjectStore configured by SetDefaultS3Config, else from the AWS_*
// environment variables (S3Config::FromEnvironment; InvalidArgument without
// credentials).
absl::StatusOr<std::unique_ptr<ObjectStore>> OpenObjectStore(
    absl::string_view uri);
// The same with an explicit S3 configuration for s3:// URIs.
absl::StatusOr<std::unique_ptr<ObjectStore>> OpenObjectStore(
    absl::string_view uri, const S3Config& s3_config);

// Sets the S3 configuration that OpenObjectStore(uri) (and so
// OpenStoreLocation) uses from now on instead of S3Config::FromEnvironment(),
// e.g. once at startup from command-line flags. Thread-safe.
void SetDefaultS3Config(const S3Config& config);

// A place inside a store: the store and the key prefix ("" or ending in
// '/') of the place.
struct StoreLocation {
  std::unique_ptr<ObjectStore> store;
  std::string prefix;

  // JoinKey({prefix, name}).
  std::string Key(absl::string_view name) const;
};

// Splits `uri` into the store that holds it and a key prefix inside that
// store, so that a job's output.uri can point into a configured store: with
// roots {"file:///srv/lpd/"}, "file:///srv/lpd/jobs/42" gives the store at
// file:///srv/lpd/ and prefix "jobs/42/". The longest matching root wins; a
// URI under none of them is PermissionDenied naming it and the roots. With
// no roots, the store is rooted at `uri` itself and the prefix is "".
absl::StatusOr<StoreLocation> OpenStoreLocation(
    absl::string_view uri, absl::Span<const std::string> roots = {});

}  // namespace lpd::storage

#endif  // LPD_STORAGE_OBJECT_STORE_H_

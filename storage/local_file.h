// Local-file primitives the storage back ends share: an owned descriptor,
// errno as a status, full reads and writes, and a file that appears under
// its name only when complete.
#ifndef LPD_STORAGE_LOCAL_FILE_H_
#define LPD_STORAGE_LOCAL_FILE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lpd::storage {

// Owns a file descriptor and closes it.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A status for the errno value `err`: its code (ENOENT → NotFound, EACCES →
// PermissionDenied, ENOSPC → ResourceExhausted, ...) and "<what>: <strerror>".
absl::Status ErrnoError(int err, absl::string_view what);

// Writes all of `data`, retrying short writes and EINTR; `what` names the
// file in errors.
absl::Status WriteAll(int fd, absl::string_view data, absl::string_view what);

// Reads up to `length` bytes at `offset` into `buffer`; fewer only at the end
// of the file. Returns the count.
absl::StatusOr<size_t> ReadAt(int fd, char* buffer, size_t length,
                              int64_t offset, absl::string_view what);

// A new file written under a temporary name (kTempSegmentPrefix + name +
// random suffix) in its folder and renamed onto its name by Commit, so
// readers see the old file or the whole new one, never a part. Commit makes
// it durable: fsync of the file, rename, fsync of the folder. Destroying it
// without Commit removes the temporary file. Not thread-safe.
class AtomicFileWriter {
 public:
  // Creates the temporary file in the folder open as `dir_fd` (the writer
  // keeps its own duplicate). `name` is a plain file name; `display_path`
  // names the final file in messages. The new file gets mode 0666 & ~umask.
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(
      int dir_fd, std::string name, std::string display_path);
  // The same for a local path (relative or absolute), whose folder must
  // exist.
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> CreateAtPath(
      const std::string& path);

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  // Appends `data`. After an error, the writer is broken: later Append and
  // Commit return that error (Commit also removes the temporary file).
  absl::Status Append(absl::string_view data);
  // Publishes the file under its name. Once only; afterwards (and after
  // Abort) Append and Commit are FailedPrecondition.
  absl::Status Commit();
  // Removes the temporary file. Idempotent; FailedPrecondition after Commit.
  absl::Status Abort();

  int64_t bytes_written() const { return bytes_written_; }
  // The temporary file, for callers that fill it out of order with
  // positioned writes (pwrite) instead of Append; they must be done before
  // Commit.
  int fd() const { return file_.get(); }
  const std::string& display_path() const { return display_path_; }

 private:
  AtomicFileWriter(UniqueFd dir, UniqueFd file, std::string name,
                   std::string temp_name, std::string display_path);
  absl::Status Closed() const;
  void RemoveTemp();

  UniqueFd dir_;
  UniqueFd file_;
  std::string name_;
  std::string temp_name_;
  std::string display_path_;
  int64_t bytes_written_ = 0;
  absl::Status error_;
  enum class State { kOpen, kCommitted, kAborted } state_ = State::kOpen;
};

}  // namespace lpd::storage

#endif  // LPD_STORAGE_LOCAL_FILE_H_

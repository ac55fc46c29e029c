#include "storage/local_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "storage/object_store.h"

namespace lpd::storage {
namespace {

// Longest part of the final name kept in a temporary name.
constexpr size_t kTempNameStemBytes = 100;

std::string RandomSuffix(absl::BitGen& gen) {
  static constexpr absl::string_view kAlphabet =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string suffix(12, ' ');
  for (char& c : suffix) {
    c = kAlphabet[absl::Uniform<size_t>(gen, 0, kAlphabet.size())];
  }
  return suffix;
}

}  // namespace

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

absl::Status ErrnoError(int err, absl::string_view what) {
  return absl::ErrnoToStatus(err, what);
}

absl::Status WriteAll(int fd, absl::string_view data, absl::string_view what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, absl::StrCat("writing ", what));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> ReadAt(int fd, char* buffer, size_t length,
                              int64_t offset, absl::string_view what) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::pread(fd, buffer + done, length - done,
                        static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, absl::StrCat("reading ", what));
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

AtomicFileWriter::AtomicFileWriter(UniqueFd dir, UniqueFd file,
                                   std::string name, std::string temp_name,
                                   std::string display_path)
    : dir_(std::move(dir)),
      file_(std::move(file)),
      name_(std::move(name)),
      temp_name_(std::move(temp_name)),
      display_path_(std::move(display_path)) {}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(
    int dir_fd, std::string name, std::string display_path) {
  UniqueFd dir(::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0));
  if (!dir.valid()) {
    return ErrnoError(errno, absl::StrCat("creating ", display_path));
  }
  absl::BitGen gen;
  std::string stem = name.substr(0, kTempNameStemBytes);
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string temp_name =
        absl::StrCat(kTempSegmentPrefix, stem, ".", RandomSuffix(gen));
    UniqueFd file(::openat(dir.get(), temp_name.c_str(),
                           O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                           0666));
    if (file.valid()) {
      return std::unique_ptr<AtomicFileWriter>(
          new AtomicFileWriter(std::move(dir), std::move(file), std::move(name),
                               std::move(temp_name), std::move(display_path)));
    }
    if (errno != EEXIST) {
      return ErrnoError(
          errno, absl::StrCat("creating a temporary file for ", display_path));
    }
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("no free temporary name for ", display_path));
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>>
AtomicFileWriter::CreateAtPath(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "."
                    : slash == 0               ? "/"
                                               : path.substr(0, slash);
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("local path \"", path, "\" does not name a file"));
  }
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid()) {
    return ErrnoError(errno, absl::StrCat("opening the folder of ", path));
  }
  return Create(dir_fd.get(), std::move(name), path);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (state_ == State::kOpen) RemoveTemp();
}

absl::Status AtomicFileWriter::Closed() const {
  return absl::FailedPreconditionError(
      absl::StrCat("writer for ", display_path_, " is already ",
                   state_ == State::kCommitted ? "committed" : "aborted"));
}

void AtomicFileWriter::RemoveTemp() {
  file_.Reset();
  ::unlinkat(dir_.get(), temp_name_.c_str(), 0);
}

absl::Status AtomicFileWriter::Append(absl::string_view data) {
  if (state_ != State::kOpen) return Closed();
  if (!error_.ok()) return error_;
  error_ = WriteAll(file_.get(), data, display_path_);
  if (!error_.ok()) return error_;
  bytes_written_ += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (state_ != State::kOpen) return Closed();
  if (error_.ok() && ::fsync(file_.get()) != 0) {
    error_ = ErrnoError(errno, absl::StrCat("syncing ", display_path_));
  }
  if (error_.ok() && ::close(file_.Release()) != 0) {
    error_ = ErrnoError(errno, absl::StrCat("closing ", display_path_));
  }
  if (error_.ok() && ::renameat(dir_.get(), temp_name_.c_str(), dir_.get(),
                                name_.c_str()) != 0) {
    error_ =
        ErrnoError(errno, absl::StrCat("renaming the temporary file ",
                                       temp_name_, " onto ", display_path_));
  }
  if (!error_.ok()) {
    RemoveTemp();
    state_ = State::kAborted;
    return error_;
  }
  state_ = State::kCommitted;
  // The rename is done; make it survive a crash.
  if (::fsync(dir_.get()) != 0) {
    return ErrnoError(errno,
                      absl::StrCat("syncing the folder of ", display_path_));
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Abort() {
  if (state_ == State::kCommitted) return Closed();
  if (state_ == State::kOpen) {
    RemoveTemp();
    state_ = State::kAborted;
  }
  return absl::OkStatus();
}

}  // namespace lpd::storage

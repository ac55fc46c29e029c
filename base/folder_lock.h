// An exclusive, advisory lock on a folder, held by one process at a time:
// `<folder>/lock`, locked with flock(2) and naming its holder. The kernel
// drops the lock when the holder exits, however it exits (no stale locks
// after a SIGKILL); the file itself stays, with the last holder's name.
#ifndef LPD_BASE_FOLDER_LOCK_H_
#define LPD_BASE_FOLDER_LOCK_H_

#include <string>

#include "absl/status/statusor.h"

namespace lpd {

class FolderLock {
 public:
  // Locks `folder` (which must exist) and writes `holder` into its lock file.
  // FAILED_PRECONDITION when another open lock holds it (another process,
  // or another FolderLock of this one), naming the folder and what that
  // holder wrote; UNAVAILABLE when the lock file cannot be opened or written.
  static absl::StatusOr<FolderLock> Acquire(const std::string& folder,
                                            const std::string& holder);

  FolderLock(FolderLock&& other) noexcept;
  FolderLock& operator=(FolderLock&& other) noexcept;
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;
  ~FolderLock();  // unlocks

  const std::string& path() const { return path_; }

 private:
  FolderLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

  std::string path_;
  int fd_ = -1;
};

}  // namespace lpd

#endif  // LPD_BASE_FOLDER_LOCK_H_

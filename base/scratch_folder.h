// A private local folder for staging files on their way to or from object
// storage (checkpoints, exports), removed with everything in it when the
// owner goes.
#ifndef LPD_BASE_SCRATCH_FOLDER_H_
#define LPD_BASE_SCRATCH_FOLDER_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lpd {

class ScratchFolder {
 public:
  // A new, empty folder `<prefix>XXXXXX` under the system's temporary folder
  // (TMPDIR, else /tmp). Internal when it cannot be created.
  static absl::StatusOr<ScratchFolder> Make(absl::string_view prefix);

  ScratchFolder(ScratchFolder&& other) noexcept;
  ScratchFolder& operator=(ScratchFolder&&) = delete;
  ScratchFolder(const ScratchFolder&) = delete;
  ~ScratchFolder();  // RemoveTree (base/remove_tree.h)

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string File(absl::string_view name) const;

 private:
  explicit ScratchFolder(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace lpd

#endif  // LPD_BASE_SCRATCH_FOLDER_H_

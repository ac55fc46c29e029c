// The local-folder back end of ObjectStore (file:///abs/path/).
#ifndef LPD_STORAGE_LOCAL_OBJECT_STORE_H_
#define LPD_STORAGE_LOCAL_OBJECT_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/local_file.h"
#include "storage/object_store.h"

namespace lpd::storage {

// Objects are files under a root folder; a key is a file's path relative to
// the root, and its folders are created as needed.
//
// Writes are atomic and durable: the object is written to a temporary file
// (".lpd-tmp.<name>.<random>") in its folder, fsynced, renamed onto its
// name, and the folder is fsynced. Listings skip temporary files; an aborted
// or destroyed writer removes its own.
//
// A key never reaches outside the root: each folder on its way is opened
// relative to its parent with O_NOFOLLOW, so a symbolic link anywhere inside
// the store (pointing outside or not) is refused with PermissionDenied, never
// followed. The root path itself may contain links.
//
// Unlike S3, a key cannot be both an object and a folder of other keys
// ("a" and "a/b"): the second write is FailedPrecondition.
//
// Thread-safe: it holds no state besides the root path.
class LocalObjectStore : public ObjectStore {
 public:
  // A store rooted at the absolute folder `root`, which need not exist yet:
  // the first write creates it, reads until then are NotFound and listings
  // empty. InvalidArgument for a relative path.
  static absl::StatusOr<std::unique_ptr<LocalObjectStore>> Create(
      absl::string_view root);

  std::string uri() const override;
  // The root folder, without a trailing '/' (except for "/").
  const std::string& root() const { return root_; }
  // The local path of `key` (not checked).
  std::string PathOf(absl::string_view key) const;

 private:
  explicit LocalObjectStore(std::string root) : root_(std::move(root)) {}

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
  absl::Status DoDeletePrefix(absl::string_view prefix) override;

  // An object open for reading, with what fstat said.
  struct OpenObject {
    UniqueFd fd;
    int64_t size = 0;
    absl::Time mtime;
  };

  // Opens the root folder; with `create`, makes it first when missing.
  // `key` is named in errors.
  absl::StatusOr<UniqueFd> OpenRoot(bool create, absl::string_view key) const;
  // Opens the folder `folder` ("" for the root, else "a/b") without
  // following links; with `create`, makes missing folders (fsyncing each
  // parent). A missing folder, or an object in the way when not creating,
  // is NotFound naming `key`.
  absl::StatusOr<UniqueFd> OpenFolder(absl::string_view folder, bool create,
                                      absl::string_view key) const;
  absl::StatusOr<OpenObject> OpenForRead(absl::string_view key) const;
  // Appends the objects under the open folder `dir` (key prefix `base`)
  // whose first segment starts with `start`, recursively, to `out`.
  absl::Status ListFolder(int dir, const std::string& base,
                          absl::string_view start,
                          std::vector<ObjectEntry>& out) const;

  absl::Status NotFound(absl::string_view key) const;
  absl::Status SymlinkRefused(absl::string_view key,
                              absl::string_view link_path) const;

  std::string root_;
};

}  // namespace lpd::storage

#endif  // LPD_STORAGE_LOCAL_OBJECT_STORE_H_

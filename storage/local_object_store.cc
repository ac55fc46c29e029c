#include "storage/local_object_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"

namespace lpd::storage {
namespace {

// Chunk size for copies to local files.
constexpr size_t kCopyChunkBytes = 4 << 20;

// Splits "a/b/c" into folder "a/b" and name "c" ("" and "c" at the root).
std::pair<absl::string_view, absl::string_view> SplitKey(
    absl::string_view key) {
  size_t slash = key.rfind('/');
  if (slash == absl::string_view::npos) return {"", key};
  return {key.substr(0, slash), key.substr(slash + 1)};
}

// The object behind `key` as a local writer.
class LocalObjectWriter : public ObjectWriter {
 public:
  LocalObjectWriter(std::string key, std::unique_ptr<AtomicFileWriter> file)
      : key_(std::move(key)), file_(std::move(file)) {}

  absl::Status Append(absl::string_view data) override {
    return file_->Append(data);
  }
  absl::Status Commit() override { return file_->Commit(); }
  absl::Status Abort() override { return file_->Abort(); }
  const std::string& key() const override { return key_; }
  int64_t bytes_written() const override { return file_->bytes_written(); }

 private:
  std::string key_;
  std::unique_ptr<AtomicFileWriter> file_;  // removes its temp file
};

}  // namespace

absl::StatusOr<std::unique_ptr<LocalObjectStore>> LocalObjectStore::Create(
    absl::string_view root) {
  if (!absl::StartsWith(root, "/")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "local store root \"", root, "\" is not an absolute path"));
  }
  if (root.size() > 1) absl::ConsumeSuffix(&root, "/");
  return std::unique_ptr<LocalObjectStore>(
      new LocalObjectStore(std::string(root)));
}

std::string LocalObjectStore::uri() const {
  return absl::StrCat("file://", root_, root_ == "/" ? "" : "/");
}

std::string LocalObjectStore::PathOf(absl::string_view key) const {
  if (key.empty()) return root_;
  return absl::StrCat(root_, root_ == "/" ? "" : "/", key);
}

absl::Status LocalObjectStore::NotFound(absl::string_view key) const {
  return absl::NotFoundError(absl::StrCat("object \"", key, "\" not found in ",
                                          uri(), " (", PathOf(key), ")"));
}

absl::Status LocalObjectStore::SymlinkRefused(
    absl::string_view key, absl::string_view link_path) const {
  return absl::PermissionDeniedError(absl::StrCat(
      "key \"", key, "\" in ", uri(), ": ", link_path,
      " is a symbolic link; links inside a store are not followed"));
}

absl::StatusOr<UniqueFd> LocalObjectStore::OpenRoot(
    bool create, absl::string_view key) const {
  UniqueFd dir(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid() && errno == ENOENT) {
    if (!create) return NotFound(key);
    std::error_code error;
    std::filesystem::create_directories(root_, error);
    if (error) {
      return ErrnoError(error.value(),
                        absl::StrCat("creating the store root ", root_));
    }
    dir.Reset(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  }
  if (!dir.valid()) {
    return ErrnoError(errno, absl::StrCat("opening the store root ", root_));
  }
  return dir;
}

absl::StatusOr<UniqueFd> LocalObjectStore::OpenFolder(
    absl::string_view folder, bool create, absl::string_view key) const {
  ASSIGN_OR_RETURN(UniqueFd dir, OpenRoot(create, key));
  if (folder.empty()) return dir;
  size_t walked = 0;  // bytes of `folder` opened so far
  for (absl::string_view segment : absl::StrSplit(folder, '/')) {
    walked += segment.size() + (walked == 0 ? 0 : 1);
    const std::string name(segment);
    constexpr int kFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    int fd = ::openat(dir.get(), name.c_str(), kFlags);
    if (fd < 0 && errno == ENOENT && create) {
      if (::mkdirat(dir.get(), name.c_str(), 0777) == 0) {
        if (::fsync(dir.get()) != 0) {
          return ErrnoError(errno,
                            absl::StrCat("syncing the folder of ",
                                         PathOf(folder.substr(0, walked))));
        }
      } else if (errno != EEXIST) {
        return ErrnoError(errno, absl::StrCat("creating the folder ",
                                              PathOf(folder.substr(0, walked)),
                                              " for key \"", key, "\""));
      }
      fd = ::openat(dir.get(), name.c_str(), kFlags);
    }
    if (fd < 0) {
      const int err = errno;
      const std::string path = PathOf(folder.substr(0, walked));
      struct stat st;
      if ((err == ELOOP || err == ENOTDIR) &&
          ::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISLNK(st.st_mode)) return SymlinkRefused(key, path);
        if (!create) return NotFound(key);
        return absl::FailedPreconditionError(
            absl::StrCat("cannot write key \"", key, "\" in ", uri(), ": ",
                         path, " is an object, not a folder"));
      }
      if (err == ENOENT) return NotFound(key);
      return ErrnoError(
          err, absl::StrCat("opening ", path, " for key \"", key, "\""));
    }
    dir.Reset(fd);
  }
  return dir;
}

absl::StatusOr<LocalObjectStore::OpenObject> LocalObjectStore::OpenForRead(
    absl::string_view key) const {
  auto [folder, name] = SplitKey(key);
  ASSIGN_OR_RETURN(UniqueFd dir, OpenFolder(folder, /*create=*/false, key));
  // O_NONBLOCK: a FIFO planted in the store must not hang the reader.
  UniqueFd fd(::openat(dir.get(), std::string(name).c_str(),
                       O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ELOOP) return SymlinkRefused(key, PathOf(key));
    if (errno == ENOENT) return NotFound(key);
    return ErrnoError(errno, absl::StrCat("opening ", PathOf(key)));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoError(errno, absl::StrCat("reading ", PathOf(key)));
  }
  if (S_ISDIR(st.st_mode)) return NotFound(key);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        PathOf(key), " (key \"", key, "\") is not a regular file"));
  }
  return OpenObject{std::move(fd), static_cast<int64_t>(st.st_size),
                    absl::TimeFromTimespec(st.st_mtim)};
}

absl::StatusOr<std::unique_ptr<ObjectWriter>> LocalObjectStore::DoNewWriter(
    absl::string_view key) {
  auto [folder, name] = SplitKey(key);
  ASSIGN_OR_RETURN(UniqueFd dir, OpenFolder(folder, /*create=*/true, key));
  struct stat st;
  if (::fstatat(dir.get(), std::string(name).c_str(), &st,
                AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write key \"", key, "\" in ", uri(), ": ",
                     PathOf(key), " is a folder of other keys"));
  }
  ASSIGN_OR_RETURN(
      std::unique_ptr<AtomicFileWriter> file,
      AtomicFileWriter::Create(dir.get(), std::string(name), PathOf(key)));
  return std::make_unique<LocalObjectWriter>(std::string(key), std::move(file));
}

absl::StatusOr<std::string> LocalObjectStore::DoGet(
    absl::string_view key) const {
  ASSIGN_OR_RETURN(OpenObject object, OpenForRead(key));
  std::string data(static_cast<size_t>(object.size), '\0');
  ASSIGN_OR_RETURN(size_t n, ReadAt(object.fd.get(), data.data(), data.size(),
                                    0, PathOf(key)));
  data.resize(n);
  return data;
}

absl::StatusOr<std::string> LocalObjectStore::DoGetRange(absl::string_view key,
                                                         int64_t offset,
                                                         int64_t length) const {
  ASSIGN_OR_RETURN(OpenObject object, OpenForRead(key));
  auto past_end = [&](int64_t size) {
    return absl::OutOfRangeError(absl::StrCat(
        "reading ", UriOf(key), ": range [", offset, ", ", offset + length,
        ") ends past the end of the object (", size, " bytes)"));
  };
  if (offset + length > object.size) return past_end(object.size);
  std::string data(static_cast<size_t>(length), '\0');
  ASSIGN_OR_RETURN(size_t n, ReadAt(object.fd.get(), data.data(), data.size(),
                                    offset, PathOf(key)));
  if (n != data.size()) {
    return past_end(offset + static_cast<int64_t>(n));  // it shrank
  }
  return data;
}

absl::Status LocalObjectStore::DoGetToFile(
    absl::string_view key, const std::string& local_path) const {
  ASSIGN_OR_RETURN(OpenObject object, OpenForRead(key));
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> out,
                   AtomicFileWriter::CreateAtPath(local_path));
  std::string buffer(kCopyChunkBytes, '\0');
  for (int64_t offset = 0;;) {
    ASSIGN_OR_RETURN(size_t n, ReadAt(object.fd.get(), buffer.data(),
                                      buffer.size(), offset, PathOf(key)));
    if (n == 0) break;
    RETURN_IF_ERROR(out->Append(absl::string_view(buffer.data(), n)));
    offset += static_cast<int64_t>(n);
  }
  return out->Commit();
}

absl::StatusOr<ObjectStat> LocalObjectStore::DoStat(
    absl::string_view key) const {
  auto [folder, name] = SplitKey(key);
  ASSIGN_OR_RETURN(UniqueFd dir, OpenFolder(folder, /*create=*/false, key));
  struct stat st;
  if (::fstatat(dir.get(), std::string(name).c_str(), &st,
                AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return NotFound(key);
    return ErrnoError(errno, absl::StrCat("reading ", PathOf(key)));
  }
  if (S_ISLNK(st.st_mode)) return SymlinkRefused(key, PathOf(key));
  if (S_ISDIR(st.st_mode)) return NotFound(key);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        PathOf(key), " (key \"", key, "\") is not a regular file"));
  }
  return ObjectStat{static_cast<int64_t>(st.st_size),
                    absl::TimeFromTimespec(st.st_mtim)};
}

absl::Status LocalObjectStore::ListFolder(int dir, const std::string& base,
                                          absl::string_view start,
                                          std::vector<ObjectEntry>& out) const {
  // Deeper folders cannot hold a valid key; stopping also bounds the
  // descriptors held open (one per level).
  if (base.size() >= kMaxKeyBytes) return absl::OkStatus();
  std::vector<std::string> names;
  {
    UniqueFd copy(::fcntl(dir, F_DUPFD_CLOEXEC, 0));
    DIR* stream = copy.valid() ? ::fdopendir(copy.get()) : nullptr;
    if (stream == nullptr) {
      return ErrnoError(errno, absl::StrCat("listing ", PathOf(base)));
    }
    copy.Release();  // the stream owns it now
    errno = 0;
    while (const dirent* entry = ::readdir(stream)) {
      absl::string_view name = entry->d_name;
      if (name == "." || name == ".." || !absl::StartsWith(name, start) ||
          absl::StartsWith(name, kTempSegmentPrefix)) {
        continue;
      }
      names.emplace_back(name);
    }
    const int err = errno;
    ::closedir(stream);
    if (err != 0)
      return ErrnoError(err, absl::StrCat("listing ", PathOf(base)));
  }
  for (const std::string& name : names) {
    struct stat st;
    if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;  // deleted meanwhile
      return ErrnoError(errno, absl::StrCat("listing ", PathOf(base + name)));
    }
    std::string key = base + name;
    if (S_ISREG(st.st_mode)) {
      // Files no key can name (a backslash, say) are not objects.
      if (ValidateKey(key).ok()) {
        out.push_back({std::move(key), static_cast<int64_t>(st.st_size)});
      }
    } else if (S_ISDIR(st.st_mode)) {
      UniqueFd sub(::openat(dir, name.c_str(),
                            O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub.valid()) {
        if (errno == ENOENT) continue;
        return ErrnoError(errno, absl::StrCat("listing ", PathOf(key)));
      }
      RETURN_IF_ERROR(ListFolder(sub.get(), key + "/", "", out));
    }
    // Links and special files are not objects.
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ObjectEntry>> LocalObjectStore::DoList(
    absl::string_view prefix) const {
  size_t slash = prefix.rfind('/');
  absl::string_view folder =
      slash == absl::string_view::npos ? "" : prefix.substr(0, slash);
  absl::string_view start =
      slash == absl::string_view::npos ? prefix : prefix.substr(slash + 1);
  std::vector<ObjectEntry> out;
  absl::StatusOr<UniqueFd> dir = OpenFolder(folder, /*create=*/false, prefix);
  if (absl::IsNotFound(dir.status())) return out;
  RETURN_IF_ERROR(dir.status());
  RETURN_IF_ERROR(ListFolder(
      dir->get(), folder.empty() ? "" : absl::StrCat(folder, "/"), start, out));
  std::sort(
      out.begin(), out.end(),
      [](const ObjectEntry& a, const ObjectEntry& b) { return a.key < b.key; });
  return out;
}

absl::Status LocalObjectStore::DoDelete(absl::string_view key) {
  auto [folder, name] = SplitKey(key);
  absl::StatusOr<UniqueFd> dir = OpenFolder(folder, /*create=*/false, key);
  if (absl::IsNotFound(dir.status())) return absl::OkStatus();
  RETURN_IF_ERROR(dir.status());
  if (::unlinkat(dir->get(), std::string(name).c_str(), 0) != 0 &&
      errno != ENOENT && errno != EISDIR) {
    return ErrnoError(errno, absl::StrCat("deleting ", PathOf(key)));
  }
  return absl::OkStatus();
}

absl::Status LocalObjectStore::DoDeletePrefix(absl::string_view prefix) {
  ASSIGN_OR_RETURN(std::vector<ObjectEntry> entries, DoList(prefix));
  // Folders that only held the deleted objects go too: those whose key
  // ("a/b/") starts with the prefix.
  std::set<std::string> folders;
  for (const ObjectEntry& entry : entries) {
    RETURN_IF_ERROR(DoDelete(entry.key));
    for (size_t slash = entry.key.find('/'); slash != std::string::npos;
         slash = entry.key.find('/', slash + 1)) {
      std::string folder = entry.key.substr(0, slash + 1);
      if (absl::StartsWith(folder, prefix)) folders.insert(std::move(folder));
    }
  }
  std::vector<std::string> deepest_first(folders.begin(), folders.end());
  std::sort(deepest_first.begin(), deepest_first.end(),
            [](const std::string& a, const std::string& b) {
              return a.size() > b.size();
            });
  for (const std::string& folder_key : deepest_first) {
    absl::string_view folder = folder_key;
    folder.remove_suffix(1);
    auto [parent, name] = SplitKey(folder);
    absl::StatusOr<UniqueFd> dir = OpenFolder(parent, /*create=*/false, folder);
    if (!dir.ok()) continue;
    // Fails harmlessly when something else (a writer's file) is still there.
    ::unlinkat(dir->get(), std::string(name).c_str(), AT_REMOVEDIR);
  }
  return absl::OkStatus();
}

}  // namespace lpd::storage

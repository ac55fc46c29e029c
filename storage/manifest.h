// Artifact manifests (DESIGN §5: "Every artifact records its SHA-256 in a
// manifest that readers check").
//
// A manifest describes the objects of one folder of a store (a checkpoint,
// final/): for each object, by its name relative to the folder, its size and
// SHA-256. It is stored as the folder's manifest.json, written after every
// object it lists, so a folder with a manifest is complete:
//
//   Manifest manifest;
//   RETURN_IF_ERROR(PutWithManifest(store, dir, "plan.json", json, manifest));
//   RETURN_IF_ERROR(PutFileWithManifest(store, dir, "unet.safetensors",
//                                       local, manifest));
//   RETURN_IF_ERROR(WriteManifest(store, dir, manifest));
//   ...
//   ASSIGN_OR_RETURN(Manifest read, ReadManifest(store, dir));
//   ASSIGN_OR_RETURN(std::string plan,
//                    VerifiedGet(store, dir, read, "plan.json"));
#ifndef LPD_STORAGE_MANIFEST_H_
#define LPD_STORAGE_MANIFEST_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/object_store.h"

struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX

namespace lpd::storage {

// The name of a folder's manifest object.
inline constexpr absl::string_view kManifestName = "manifest.json";

// An incremental SHA-256 (OpenSSL EVP).
class Sha256 {
 public:
  Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  ~Sha256();

  void Update(absl::string_view data);
  // The digest of everything passed to Update, as 64 lowercase hex digits.
  // Ends the hash: call it once.
  std::string HexDigest();

 private:
  evp_md_ctx_st* ctx_;
};

// SHA-256 of `data`, as 64 lowercase hex digits.
std::string Sha256Hex(absl::string_view data);

// What a manifest records about one object.
struct ManifestEntry {
  int64_t size = 0;    // bytes
  std::string sha256;  // 64 lowercase hex digits

  friend bool operator==(const ManifestEntry&, const ManifestEntry&) = default;
};

// The objects of one folder, by name relative to the folder. Serialized as
// {"version": 1, "objects": {"<name>": {"size": N, "sha256": "<hex>"}}}.
class Manifest {
 public:
  // Records `name` (a valid key), replacing an earlier entry.
  void Add(absl::string_view name, ManifestEntry entry);
  // The entry of `name`, or nullptr.
  const ManifestEntry* Find(absl::string_view name) const;
  const std::map<std::string, ManifestEntry, std::less<>>& objects() const {
    return objects_;
  }

  std::string ToJson() const;
  // Parses ToJson's output. InvalidArgument naming the field for anything
  // else: bad JSON, another version, an invalid name, a negative size, a
  // digest that is not 64 lowercase hex digits.
  static absl::StatusOr<Manifest> FromJson(absl::string_view json);

 private:
  std::map<std::string, ManifestEntry, std::less<>> objects_;
};

// Stores `data` as JoinKey({dir, name}) and records it in `manifest`.
absl::Status PutWithManifest(ObjectStore& store, absl::string_view dir,
                             absl::string_view name, absl::string_view data,
                             Manifest& manifest);

// Uploads the local file as JoinKey({dir, name}) and records it in
// `manifest` (the file is hashed first, then uploaded: a file changed
// between the two is caught by readers as DataLoss).
absl::Status PutFileWithManifest(ObjectStore& store, absl::string_view dir,
                                 absl::string_view name,
                                 const std::string& local_path,
                                 Manifest& manifest);

// A streaming writer of JoinKey({dir, name}) that hashes what it sends and
// records the object in `manifest` when Commit succeeds. `manifest` must
// outlive the writer, and is not locked: one thread at a time.
absl::StatusOr<std::unique_ptr<ObjectWriter>> NewManifestWriter(
    ObjectStore& store, absl::string_view dir, absl::string_view name,
    Manifest& manifest);

// Writes `manifest` as JoinKey({dir, kManifestName}). Write it last.
absl::Status WriteManifest(ObjectStore& store, absl::string_view dir,
                           const Manifest& manifest);

// Reads the manifest of `dir`: NotFound when there is none, DataLoss naming
// the object when it does not parse.
absl::StatusOr<Manifest> ReadManifest(const ObjectStore& store,
                                      absl::string_view dir);

// Reads JoinKey({dir, name}) and checks it against `manifest`: NotFound when
// the manifest does not list `name`; DataLoss naming the object when its
// size or SHA-256 differs from the manifest's.
absl::StatusOr<std::string> VerifiedGet(const ObjectStore& store,
                                        absl::string_view dir,
                                        const Manifest& manifest,
                                        absl::string_view name);

// Downloads JoinKey({dir, name}) to `local_path`, hashing as it goes; the
// file appears only when size and SHA-256 match (errors as VerifiedGet).
absl::Status VerifiedGetToFile(const ObjectStore& store, absl::string_view dir,
                               const Manifest& manifest, absl::string_view name,
                               const std::string& local_path);

// Checks, without reading them, that every object `manifest` lists exists
// with its recorded size: NotFound or DataLoss naming the first that does
// not.
absl::Status CheckObjectsPresent(const ObjectStore& store,
                                 absl::string_view dir,
                                 const Manifest& manifest);

}  // namespace lpd::storage

#endif  // LPD_STORAGE_MANIFEST_H_

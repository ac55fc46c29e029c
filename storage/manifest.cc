#include "storage/manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"
#include "storage/local_file.h"

namespace lpd::storage {
namespace {

using json = nlohmann::json;

constexpr int kManifestVersion = 1;
// Chunk size of hashed copies.
constexpr int64_t kChunkBytes = 8 << 20;

bool IsSha256Hex(absl::string_view text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)) &&
        !(c >= 'a' && c <= 'f')) {
      return false;
    }
  }
  return true;
}

absl::Status CheckName(absl::string_view name) {
  absl::Status status = ValidateKey(name);
  if (status.ok()) return status;
  return absl::InvalidArgumentError(
      absl::StrCat("manifest object name: ", status.message()));
}

absl::Status Mismatch(const ObjectStore& store, absl::string_view key,
                      absl::string_view what, absl::string_view expected,
                      absl::string_view actual) {
  return absl::DataLossError(absl::StrCat(store.UriOf(key), ": ", what, " is ",
                                          actual, ", the manifest says ",
                                          expected));
}

// The check shared by the verified reads, once size and digest are known.
absl::Status CheckAgainst(const ObjectStore& store, absl::string_view key,
                          const ManifestEntry& expected, int64_t size,
                          absl::string_view sha256) {
  if (size != expected.size) {
    return Mismatch(store, key, "size", absl::StrCat(expected.size, " bytes"),
                    absl::StrCat(size, " bytes"));
  }
  if (sha256 != expected.sha256) {
    return Mismatch(store, key, "SHA-256", expected.sha256, sha256);
  }
  return absl::OkStatus();
}

absl::StatusOr<const ManifestEntry*> Lookup(const ObjectStore& store,
                                            absl::string_view dir,
                                            const Manifest& manifest,
                                            absl::string_view name) {
  const ManifestEntry* entry = manifest.Find(name);
  if (entry == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        "the manifest of ", store.UriOf(dir), " does not list \"", name, "\""));
  }
  return entry;
}

// Hashes what it forwards to `inner`; records the object on Commit.
class ManifestWriter : public ObjectWriter {
 public:
  ManifestWriter(std::unique_ptr<ObjectWriter> inner, std::string name,
                 Manifest& manifest)
      : inner_(std::move(inner)), name_(std::move(name)), manifest_(manifest) {}

  absl::Status Append(absl::string_view data) override {
    RETURN_IF_ERROR(inner_->Append(data));
    hash_.Update(data);
    return absl::OkStatus();
  }
  absl::Status Commit() override {
    RETURN_IF_ERROR(inner_->Commit());
    manifest_.Add(name_, {inner_->bytes_written(), hash_.HexDigest()});
    return absl::OkStatus();
  }
  absl::Status Abort() override { return inner_->Abort(); }
  const std::string& key() const override { return inner_->key(); }
  int64_t bytes_written() const override { return inner_->bytes_written(); }

 private:
  std::unique_ptr<ObjectWriter> inner_;
  std::string name_;
  Manifest& manifest_;
  Sha256 hash_;
};

}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr);
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Update(absl::string_view data) {
  EVP_DigestUpdate(ctx_, data.data(), data.size());
}

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx_, digest, &length);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), length));
}

std::string Sha256Hex(absl::string_view data) {
  Sha256 hash;
  hash.Update(data);
  return hash.HexDigest();
}

void Manifest::Add(absl::string_view name, ManifestEntry entry) {
  objects_.insert_or_assign(std::string(name), std::move(entry));
}

const ManifestEntry* Manifest::Find(absl::string_view name) const {
  auto it = objects_.find(name);
  return it == objects_.end() ? nullptr : &it->second;
}

std::string Manifest::ToJson() const {
  json objects = json::object();
  for (const auto& [name, entry] : objects_) {
    objects[name] = {{"size", entry.size}, {"sha256", entry.sha256}};
  }
  json out = {{"version", kManifestVersion}, {"objects", std::move(objects)}};
  return out.dump(2) + "\n";
}

absl::StatusOr<Manifest> Manifest::FromJson(absl::string_view text) {
  json parsed = json::parse(text.begin(), text.end(), nullptr,
                            /*allow_exceptions=*/false);
  auto invalid = [](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("manifest: ", why));
  };
  if (parsed.is_discarded()) return invalid("not valid JSON");
  if (!parsed.is_object()) return invalid("not a JSON object");
  for (const auto& [field, value] : parsed.items()) {
    if (field != "version" && field != "objects") {
      return invalid(absl::StrCat("unknown field \"", field, "\""));
    }
  }
  const auto version = parsed.find("version");
  if (version == parsed.end() || !version->is_number_integer() ||
      version->get<int64_t>() != kManifestVersion) {
    return invalid(absl::StrCat("\"version\" must be ", kManifestVersion));
  }
  const auto objects = parsed.find("objects");
  if (objects == parsed.end() || !objects->is_object()) {
    return invalid("\"objects\" must be an object");
  }
  Manifest manifest;
  for (const auto& [name, value] : objects->items()) {
    std::string where =
        absl::StrCat("objects[\"", absl::CHexEscape(name), "\"]");
    RETURN_IF_ERROR(CheckName(name));
    if (!value.is_object() || value.size() != 2 || !value.contains("size") ||
        !value.contains("sha256")) {
      return invalid(
          absl::StrCat(where, " must be {\"size\": N, \"sha256\": \"...\"}"));
    }
    const json& size = value.at("size");
    if (!size.is_number_integer() || size.get<int64_t>() < 0) {
      return invalid(absl::StrCat(where, ".size must be an integer >= 0, got ",
                                  size.dump()));
    }
    const json& sha256 = value.at("sha256");
    if (!sha256.is_string() || !IsSha256Hex(sha256.get<std::string>())) {
      return invalid(
          absl::StrCat(where, ".sha256 must be 64 lowercase hex digits, got ",
                       sha256.dump()));
    }
    manifest.Add(name, {size.get<int64_t>(), sha256.get<std::string>()});
  }
  return manifest;
}

absl::Status PutWithManifest(ObjectStore& store, absl::string_view dir,
                             absl::string_view name, absl::string_view data,
                             Manifest& manifest) {
  RETURN_IF_ERROR(CheckName(name));
  RETURN_IF_ERROR(store.Put(JoinKey({dir, name}), data));
  manifest.Add(name, {static_cast<int64_t>(data.size()), Sha256Hex(data)});
  return absl::OkStatus();
}

absl::Status PutFileWithManifest(ObjectStore& store, absl::string_view dir,
                                 absl::string_view name,
                                 const std::string& local_path,
                                 Manifest& manifest) {
  RETURN_IF_ERROR(CheckName(name));
  UniqueFd file(::open(local_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file.valid()) {
    return ErrnoError(errno, absl::StrCat("opening ", local_path));
  }
  Sha256 hash;
  int64_t size = 0;
  std::string buffer(kChunkBytes, '\0');
  for (;;) {
    ASSIGN_OR_RETURN(size_t n, ReadAt(file.get(), buffer.data(), buffer.size(),
                                      size, local_path));
    if (n == 0) break;
    hash.Update(absl::string_view(buffer.data(), n));
    size += static_cast<int64_t>(n);
  }
  RETURN_IF_ERROR(store.PutFile(JoinKey({dir, name}), local_path));
  manifest.Add(name, {size, hash.HexDigest()});
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ObjectWriter>> NewManifestWriter(
    ObjectStore& store, absl::string_view dir, absl::string_view name,
    Manifest& manifest) {
  RETURN_IF_ERROR(CheckName(name));
  ASSIGN_OR_RETURN(std::unique_ptr<ObjectWriter> inner,
                   store.NewWriter(JoinKey({dir, name})));
  return std::make_unique<ManifestWriter>(std::move(inner), std::string(name),
                                          manifest);
}

absl::Status WriteManifest(ObjectStore& store, absl::string_view dir,
                           const Manifest& manifest) {
  return store.Put(JoinKey({dir, kManifestName}), manifest.ToJson());
}

absl::StatusOr<Manifest> ReadManifest(const ObjectStore& store,
                                      absl::string_view dir) {
  const std::string key = JoinKey({dir, kManifestName});
  ASSIGN_OR_RETURN(std::string text, store.Get(key));
  absl::StatusOr<Manifest> manifest = Manifest::FromJson(text);
  if (!manifest.ok()) {
    return absl::DataLossError(
        absl::StrCat(store.UriOf(key), ": ", manifest.status().message()));
  }
  return manifest;
}

absl::StatusOr<std::string> VerifiedGet(const ObjectStore& store,
                                        absl::string_view dir,
                                        const Manifest& manifest,
                                        absl::string_view name) {
  ASSIGN_OR_RETURN(const ManifestEntry* entry,
                   Lookup(store, dir, manifest, name));
  const std::string key = JoinKey({dir, name});
  ASSIGN_OR_RETURN(std::string data, store.Get(key));
  RETURN_IF_ERROR(CheckAgainst(
      store, key, *entry, static_cast<int64_t>(data.size()), Sha256Hex(data)));
  return data;
}

absl::Status VerifiedGetToFile(const ObjectStore& store, absl::string_view dir,
                               const Manifest& manifest, absl::string_view name,
                               const std::string& local_path) {
  ASSIGN_OR_RETURN(const ManifestEntry* entry,
                   Lookup(store, dir, manifest, name));
  const std::string key = JoinKey({dir, name});
  ASSIGN_OR_RETURN(ObjectStat stat, store.Stat(key));
  RETURN_IF_ERROR(CheckAgainst(store, key, *entry, stat.size, entry->sha256));
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> out,
                   AtomicFileWriter::CreateAtPath(local_path));
  Sha256 hash;
  for (int64_t offset = 0; offset < stat.size; offset += kChunkBytes) {
    ASSIGN_OR_RETURN(
        std::string chunk,
        store.GetRange(key, offset, std::min(kChunkBytes, stat.size - offset)));
    hash.Update(chunk);
    RETURN_IF_ERROR(out->Append(chunk));
  }
  RETURN_IF_ERROR(
      CheckAgainst(store, key, *entry, stat.size, hash.HexDigest()));
  return out->Commit();
}

absl::Status CheckObjectsPresent(const ObjectStore& store,
                                 absl::string_view dir,
                                 const Manifest& manifest) {
  for (const auto& [name, entry] : manifest.objects()) {
    const std::string key = JoinKey({dir, name});
    ASSIGN_OR_RETURN(ObjectStat stat, store.Stat(key));
    if (stat.size != entry.size) {
      return Mismatch(store, key, "size", absl::StrCat(entry.size, " bytes"),
                      absl::StrCat(stat.size, " bytes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace lpd::storage

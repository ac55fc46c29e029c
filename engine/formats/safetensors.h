// Reading and writing the safetensors format (https://huggingface.co/docs/
// safetensors): an 8-byte little-endian header length, a JSON header that maps
// tensor names to {dtype, shape, data_offsets} (plus an optional
// "__metadata__" string map), then the raw little-endian tensor bytes.
//
// This header is free of LibTorch: the scheduler, tools and the fuzzer use it
// without linking the engine. `tensor_io.h` turns entries into torch tensors.
#ifndef LPD_ENGINE_FORMATS_SAFETENSORS_H_
#define LPD_ENGINE_FORMATS_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lpd::engine {

// Element types the format defines that the engine understands.
enum class SafetensorsDtype {
  kF64,
  kF32,
  kF16,
  kBF16,
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool,
};

// The format's name of a dtype ("F32", "BF16", ...).
std::string_view DtypeName(SafetensorsDtype dtype);
// Bytes per element.
size_t DtypeSize(SafetensorsDtype dtype);
// Parses a dtype name; an unknown name is InvalidArgument.
absl::StatusOr<SafetensorsDtype> ParseDtype(std::string_view name);

// One tensor's entry in a header. Offsets are relative to the start of the
// data section (just after the header), as in the format.
struct TensorEntry {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets[0]
  uint64_t end = 0;    // data_offsets[1]

  int64_t NumElements() const;
};

// A parsed and validated header.
struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
};

// Largest header accepted (the reference implementation's bound is 100 MB).
inline constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// Parses and validates a JSON header against a data section of `data_size`
// bytes: valid JSON object; each entry has a known dtype, a shape of
// non-negative dims, offsets with begin <= end <= data_size, end - begin ==
// elements x dtype size, no two entries overlapping; "__metadata__" is a map of
// strings. Errors are InvalidArgument and name `source` (a file name, for
// messages) and the offending tensor. Never reads outside `header_json`.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(
    std::string_view header_json, uint64_t data_size, std::string_view source);

// A safetensors file, memory-mapped read-only. Tensor bytes are not copied
// until the caller copies them.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors name the path: NotFound for a missing
  // file, InvalidArgument (DataLoss for truncation: a file shorter than its
  // length prefix, header or tensors' data_offsets say) for a malformed one.
  // Gaps between tensors and bytes after the last one are accepted. The file
  // must not be truncated by someone else while it is mapped (SIGBUS).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  // The entry named `name`, or nullptr.
  const TensorEntry* Find(std::string_view name) const;
  // The raw bytes of `entry` (which must come from this file's header).
  std::span<const std::byte> Bytes(const TensorEntry& entry) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const std::byte* data_ = nullptr;  // start of the data section
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
};

// The tensors of a checkpoint folder, single-file or sharded: a folder holding
// `<stem>.safetensors.index.json` (whose "weight_map" names each tensor's
// shard) or exactly one `*.safetensors` file. Each tensor name resolves to its
// file; a name claimed by two shards, a shard missing from the folder, a
// weight_map entry absent from its shard, a shard tensor the weight_map does
// not list, or a shard name with '/', '\' or ".." is an error naming both.
class SafetensorsCheckpoint {
 public:
  // Opens `dir`, preferring `diffusion_pytorch_model.safetensors.index.json`,
  // then `diffusion_pytorch_model.safetensors` (as diffusers does), when
  // several candidates are present. NotFound when there is none.
  static absl::StatusOr<SafetensorsCheckpoint> Open(const std::string& dir);

  struct Located {
    const SafetensorsFile* file;
    const TensorEntry* entry;
  };
  // Every tensor name, sorted.
  std::vector<std::string> Names() const;
  // The tensor named `name`, or nullptr in `file` if absent.
  Located Find(std::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const {
    return files_;
  }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Located, std::less<>> tensors_;
};

// A tensor to write: its bytes must be exactly elements x dtype size,
// little-endian, row-major.
struct TensorToWrite {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

// Serializes tensors with optional `__metadata__` (omitted when empty) exactly
// as the reference writer does: tensors ordered by descending dtype alignment
// (the reference's dtype order: I64, F64, F32, I32, BF16, F16, I16, I8, U8,
// BOOL), then by name, laid out contiguously; the compact JSON header (the
// metadata first, then the tensors in file order) padded with spaces to a
// multiple of 8 bytes, so every tensor's data is aligned. For one dtype the
// order is name order. Errors (InvalidArgument, naming the tensor): duplicate
// names, a size mismatch, a negative dimension, the reserved name
// "__metadata__", a name or metadata string that is not valid UTF-8.
absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// Writes the serialized file to `path` atomically: a temporary name in the
// same folder, fsync, rename. Streams each tensor's bytes to the file (through
// SafetensorsWriter): nothing the size of the file is built in memory.
absl::Status WriteSafetensorsFile(
    const std::string& path, const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// A tensor's description for SafetensorsWriter: its bytes come later.
struct TensorSpec {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<int64_t> shape;
};

// Writes a safetensors file of any size without holding it in memory: takes
// every tensor's description up front, writes the header (same layout and
// validation as SerializeSafetensors) to a temporary file beside `path`, then
// takes each tensor's bytes in file order (`entries()`), and on Finish()
// fsyncs and renames the file into place. Destroying a writer before Finish()
// succeeds removes the temporary file and leaves `path` untouched.
class SafetensorsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, const std::vector<TensorSpec>& tensors,
      const std::map<std::string, std::string>& metadata = {});

  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The tensors in the order Write() takes them, with their offsets.
  const std::vector<TensorEntry>& entries() const { return entries_; }
  // The entry Write() expects next, or nullptr once all were written.
  const TensorEntry* next() const {
    return next_ < entries_.size() ? &entries_[next_] : nullptr;
  }

  // Appends the bytes of tensor `name`, which must be next(), and exactly
  // elements x dtype size bytes long (FailedPrecondition, InvalidArgument).
  // After an I/O error every later call fails.
  absl::Status Write(std::string_view name, std::span<const std::byte> bytes);

  // After the last tensor: fsync, rename over `path`, fsync the folder.
  // FailedPrecondition while a tensor is still unwritten.
  absl::Status Finish();

 private:
  SafetensorsWriter() = default;
  absl::Status Fail(absl::Status status);

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  std::vector<TensorEntry> entries_;
  size_t next_ = 0;
  bool finished_ = false;
  absl::Status error_;
};

}  // namespace lpd::engine

#endif  // LPD_ENGINE_FORMATS_SAFETENSORS_H_

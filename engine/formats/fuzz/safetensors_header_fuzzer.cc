// libFuzzer target for the safetensors reader. Each input is used twice:
//  - as a JSON header for ParseSafetensorsHeader, against a small and an
//    unbounded data section; an accepted header is checked against the
//    function's contract (offsets in bounds, sizes consistent, no overlaps);
//  - as a whole file image, opened through SafetensorsFile::Open from an
//    in-memory file (memfd), and every accepted tensor's bytes are read.
// Any crash, sanitizer report or broken invariant is a bug.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>

#include "engine/formats/safetensors.h"

namespace {

using lpd::engine::DtypeSize;
using lpd::engine::SafetensorsFile;
using lpd::engine::SafetensorsHeader;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

void CheckHeader(const SafetensorsHeader& header, uint64_t data_size) {
  uint64_t furthest = 0;
  for (const auto& entry : header.tensors) {
    Check(entry.begin <= entry.end, "begin <= end");
    Check(entry.end <= data_size, "end <= data size");
    Check(entry.NumElements() >= 0, "non-negative element count");
    Check(static_cast<uint64_t>(entry.NumElements()) * DtypeSize(entry.dtype) ==
              entry.end - entry.begin,
          "size matches shape");
    if (entry.begin != entry.end) {
      Check(entry.begin >= furthest, "no overlap");
      furthest = entry.end;
    }
  }
}

void FuzzHeader(std::string_view json) {
  for (uint64_t data_size :
       {uint64_t{64}, std::numeric_limits<uint64_t>::max()}) {
    auto header = lpd::engine::ParseSafetensorsHeader(json, data_size, "fuzz");
    if (header.ok()) {
      CheckHeader(*header, data_size);
    } else {
      Check(header.status().code() == absl::StatusCode::kInvalidArgument,
            "header errors are InvalidArgument");
      Check(header.status().message().find("fuzz") != std::string_view::npos,
            "errors name the source");
    }
  }
}

void FuzzFile(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("safetensors_fuzz", MFD_CLOEXEC);
  if (fd < 0) return;
  if (ftruncate(fd, 0) != 0) return;
  if (size > 0 && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    return;
  }
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return;
  uint8_t sum = 0;
  for (const auto& entry : (*file)->header().tensors) {
    Check((*file)->Find(entry.name) == &entry, "Find returns the entry");
    for (std::byte b : (*file)->Bytes(entry)) sum += static_cast<uint8_t>(b);
  }
  // Keep the reads.
  asm volatile("" : : "r"(sum));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzHeader(std::string_view(reinterpret_cast<const char*>(data), size));
  FuzzFile(data, size);
  return 0;
}

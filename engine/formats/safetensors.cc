#include "engine/formats/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"

namespace lpd::engine {
namespace {

using Json = nlohmann::json;

// Debian's Abseil has its own string_view (ABSL_OPTION_USE_STD_STRING_VIEW is
// 0), distinct from std::string_view: convert where the two meet. Both are
// no-ops where Abseil uses std::string_view.
absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }
std::string_view SV(absl::string_view s) { return {s.data(), s.size()}; }
absl::string_view AName(SafetensorsDtype dtype) { return AV(DtypeName(dtype)); }

// A string from a file, quoted and escaped for an error message.
std::string Quote(std::string_view s) {
  constexpr size_t kMaxShown = 200;
  if (s.size() > kMaxShown) {
    return absl::StrCat("\"", absl::CHexEscape(AV(s.substr(0, kMaxShown))),
                        "...\" (", s.size(), " bytes)");
  }
  return absl::StrCat("\"", absl::CHexEscape(AV(s)), "\"");
}

absl::Status HeaderError(std::string_view source, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(AV(source), ": invalid safetensors header: ", AV(what)));
}

absl::Status TensorError(std::string_view source, std::string_view tensor,
                         std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(AV(source), ": tensor ", Quote(tensor), ": ", AV(what)));
}

// An errno value as a status naming `path`.
absl::Status ErrnoError(int error, std::string_view what,
                        std::string_view path) {
  return absl::ErrnoToStatus(error, absl::StrCat(AV(what), " ", AV(path)));
}

// The reference writer's dtype order (its enum order): tensors are written by
// descending rank, which keeps every tensor aligned for its dtype.
int ReferenceRank(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kBool:
      return 0;
    case SafetensorsDtype::kU8:
      return 1;
    case SafetensorsDtype::kI8:
      return 2;
    case SafetensorsDtype::kI16:
      return 5;
    case SafetensorsDtype::kF16:
      return 7;
    case SafetensorsDtype::kBF16:
      return 8;
    case SafetensorsDtype::kI32:
      return 9;
    case SafetensorsDtype::kF32:
      return 11;
    case SafetensorsDtype::kF64:
      return 12;
    case SafetensorsDtype::kI64:
      return 13;
  }
  return 0;
}

// "[2, 3]"; long shapes are cut short, for messages.
std::string ShapeString(const std::vector<int64_t>& shape) {
  constexpr size_t kMaxShown = 8;
  if (shape.size() <= kMaxShown) {
    return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
  }
  return absl::StrCat(
      "[", absl::StrJoin(shape.begin(), shape.begin() + kMaxShown, ", "),
      ", ... (", shape.size(), " dimensions)]");
}

// Elements of `shape` times `dtype_size` bytes, or an error message when a
// dimension is negative or the count does not fit (elements in int64_t).
absl::StatusOr<uint64_t> ByteSize(const std::vector<int64_t>& shape,
                                  size_t dtype_size) {
  uint64_t elements = 1;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("negative dimension ", dim));
    }
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(dim),
                               &elements) ||
        elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeString(shape), " has too many elements"));
    }
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(elements, static_cast<uint64_t>(dtype_size),
                             &bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", ShapeString(shape), " has too many bytes"));
  }
  return bytes;
}

// ---------------------------------------------------------------------------
// Header parsing: a SAX handler that checks the structure as it goes, so a
// malformed header is rejected at the first bad token, nesting never gets
// deeper than the format's, and no JSON tree is built.

class HeaderSax {
 public:
  HeaderSax(uint64_t data_size, std::string_view source)
      : data_size_(data_size), source_(source) {}

  absl::Status error() const { return error_; }
  SafetensorsHeader TakeHeader() { return std::move(header_); }

  bool null() {
    if (state_ == State::kMetadataValue) {  // "__metadata__": null, as None.
      state_ = State::kTop;
      return true;
    }
    return Unexpected("null");
  }
  bool boolean(bool) { return Unexpected("a boolean"); }
  bool number_integer(Json::number_integer_t value) {
    // nlohmann reports integers written with a minus sign here ("-0" too).
    if (value >= 0) return number_unsigned(static_cast<uint64_t>(value));
    if (state_ == State::kShape) {
      return Fail(TensorError(source_, entry_.name,
                              absl::StrCat("negative dimension ", value)));
    }
    if (state_ == State::kOffsets) {
      return Fail(TensorError(source_, entry_.name,
                              absl::StrCat("negative data offset ", value)));
    }
    return Unexpected("a number");
  }
  bool number_unsigned(Json::number_unsigned_t value) {
    if (state_ == State::kShape) {
      if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Fail(TensorError(source_, entry_.name,
                                absl::StrCat("dimension ", value, " too big")));
      }
      entry_.shape.push_back(static_cast<int64_t>(value));
      return true;
    }
    if (state_ == State::kOffsets) {
      if (offsets_seen_ >= 2) {
        return Fail(TensorError(source_, entry_.name,
                                "data_offsets has more than two integers"));
      }
      (offsets_seen_ == 0 ? entry_.begin : entry_.end) = value;
      ++offsets_seen_;
      return true;
    }
    return Unexpected("a number");
  }
  bool number_float(Json::number_float_t, const Json::string_t& text) {
    if (state_ == State::kShape || state_ == State::kOffsets) {
      return Fail(TensorError(
          source_, entry_.name,
          absl::StrCat(state_ == State::kShape ? "dimension " : "data offset ",
                       text.substr(0, 40),
                       " is not a non-negative 64-bit integer")));
    }
    return Unexpected("a number");
  }
  bool string(Json::string_t& value) {
    switch (state_) {
      case State::kMetadataEntry:
        if (!header_.metadata.emplace(key_, value).second) {
          return Fail(HeaderError(source_,
                                  absl::StrCat("__metadata__ key ", Quote(key_),
                                               " appears twice")));
        }
        state_ = State::kMetadata;
        return true;
      case State::kDtype: {
        absl::StatusOr<SafetensorsDtype> dtype = ParseDtype(value);
        if (!dtype.ok()) {
          return Fail(
              TensorError(source_, entry_.name, SV(dtype.status().message())));
        }
        entry_.dtype = *dtype;
        state_ = State::kTensor;
        return true;
      }
      default:
        return Unexpected("a string");
    }
  }
  bool binary(Json::binary_t&) { return Unexpected("binary data"); }

  bool start_object(std::size_t) {
    switch (state_) {
      case State::kStart:
        state_ = State::kTop;
        return true;
      case State::kMetadataValue:
        state_ = State::kMetadata;
        return true;
      case State::kTensorValue:
        state_ = State::kTensor;
        return true;
      default:
        return Unexpected("an object");
    }
  }
  bool key(Json::string_t& name) {
    switch (state_) {
      case State::kTop:
        last_key_ = name;
        if (!top_keys_.insert(name).second) {
          return Fail(name == "__metadata__"
                          ? HeaderError(source_, "__metadata__ appears twice")
                          : TensorError(source_, name, "appears twice"));
        }
        if (name == "__metadata__") {
          state_ = State::kMetadataValue;
        } else {
          entry_ = NewEntry(name);
          fields_seen_ = 0;
          offsets_seen_ = 0;
          state_ = State::kTensorValue;
        }
        return true;
      case State::kMetadata:
        key_ = name;
        state_ = State::kMetadataEntry;
        return true;
      case State::kTensor: {
        int field = 0;
        if (name == "dtype") {
          field = kHasDtype;
          state_ = State::kDtype;
        } else if (name == "shape") {
          field = kHasShape;
          state_ = State::kShapeValue;
        } else if (name == "data_offsets") {
          field = kHasOffsets;
          state_ = State::kOffsetsValue;
        } else {
          return Fail(TensorError(source_, entry_.name,
                                  absl::StrCat("unknown field ", Quote(name))));
        }
        if (fields_seen_ & field) {
          return Fail(
              TensorError(source_, entry_.name,
                          absl::StrCat("field ", name, " appears twice")));
        }
        fields_seen_ |= field;
        return true;
      }
      default:
        return Unexpected("a key");  // Unreachable: keys are only in objects.
    }
  }
  bool end_object() {
    switch (state_) {
      case State::kTop:
        state_ = State::kDone;
        return true;
      case State::kMetadata:
        state_ = State::kTop;
        return true;
      case State::kTensor:
        state_ = State::kTop;
        return FinishEntry();
      default:
        return Unexpected("the end of an object");
    }
  }
  bool start_array(std::size_t) {
    switch (state_) {
      case State::kShapeValue:
        state_ = State::kShape;
        return true;
      case State::kOffsetsValue:
        state_ = State::kOffsets;
        return true;
      default:
        return Unexpected("an array");
    }
  }
  bool end_array() {
    switch (state_) {
      case State::kShape:
        state_ = State::kTensor;
        return true;
      case State::kOffsets:
        if (offsets_seen_ != 2) {
          return Fail(TensorError(source_, entry_.name,
                                  "data_offsets must be two integers"));
        }
        state_ = State::kTensor;
        return true;
      default:
        return Unexpected("the end of an array");
    }
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) {
    std::string what = absl::StrCat("not valid JSON at byte ", position);
    if (!last_key_.empty()) {
      absl::StrAppend(&what, " (in or after entry ", Quote(last_key_), ")");
    }
    const std::string_view detail = e.what();
    absl::StrAppend(&what, ": ", AV(detail.substr(0, 300)));
    return Fail(HeaderError(source_, what));
  }

 private:
  enum class State {
    kStart,          // before the top-level value
    kTop,            // in the top-level object
    kMetadataValue,  // after "__metadata__":
    kMetadata,       // in the __metadata__ object
    kMetadataEntry,  // after a __metadata__ key
    kTensorValue,    // after a tensor's name
    kTensor,         // in a tensor's object
    kDtype,          // after "dtype":
    kShapeValue,     // after "shape":
    kShape,          // in the shape array
    kOffsetsValue,   // after "data_offsets":
    kOffsets,        // in the data_offsets array
    kDone,           // after the top-level object
  };
  static constexpr int kHasDtype = 1, kHasShape = 2, kHasOffsets = 4;

  static TensorEntry NewEntry(const std::string& name) {
    TensorEntry entry;
    entry.name = name;
    entry.dtype = SafetensorsDtype::kF32;  // until "dtype" is read
    return entry;
  }

  bool Fail(absl::Status status) {
    if (error_.ok()) error_ = std::move(status);
    return false;
  }

  // `what` (a JSON token) where the format does not allow it.
  bool Unexpected(std::string_view token) {
    const absl::string_view what = AV(token);
    switch (state_) {
      case State::kStart:
        return Fail(HeaderError(
            source_,
            absl::StrCat("the header must be a JSON object, not ", what)));
      case State::kMetadataValue:
      case State::kMetadata:
      case State::kMetadataEntry:
        return Fail(HeaderError(
            source_,
            absl::StrCat("__metadata__ must be an object of strings, found ",
                         what,
                         state_ == State::kMetadataEntry
                             ? absl::StrCat(" for key ", Quote(key_))
                             : "")));
      case State::kTensorValue:
        return Fail(
            TensorError(source_, entry_.name,
                        absl::StrCat("entry must be an object, not ", what)));
      case State::kDtype:
        return Fail(
            TensorError(source_, entry_.name,
                        absl::StrCat("dtype must be a string, not ", what)));
      case State::kShapeValue:
      case State::kShape:
        return Fail(TensorError(
            source_, entry_.name,
            absl::StrCat("shape must be an array of non-negative integers, "
                         "found ",
                         what)));
      case State::kOffsetsValue:
      case State::kOffsets:
        return Fail(TensorError(
            source_, entry_.name,
            absl::StrCat("data_offsets must be two integers, found ", what)));
      default:
        return Fail(HeaderError(source_, absl::StrCat("unexpected ", what)));
    }
  }

  // Checks a complete tensor entry against the data section.
  bool FinishEntry() {
    if (fields_seen_ != (kHasDtype | kHasShape | kHasOffsets)) {
      std::vector<std::string> missing;
      if (!(fields_seen_ & kHasDtype)) missing.push_back("dtype");
      if (!(fields_seen_ & kHasShape)) missing.push_back("shape");
      if (!(fields_seen_ & kHasOffsets)) missing.push_back("data_offsets");
      return Fail(TensorError(
          source_, entry_.name,
          absl::StrCat("missing field ", absl::StrJoin(missing, ", "))));
    }
    const std::string offsets =
        absl::StrCat("data_offsets [", entry_.begin, ", ", entry_.end, "]");
    if (entry_.begin > entry_.end) {
      return Fail(TensorError(source_, entry_.name,
                              absl::StrCat(offsets, " begin after end")));
    }
    if (entry_.end > data_size_) {
      return Fail(TensorError(
          source_, entry_.name,
          absl::StrCat(offsets, " run past the end of the data section (",
                       data_size_, " bytes)")));
    }
    absl::StatusOr<uint64_t> bytes =
        ByteSize(entry_.shape, DtypeSize(entry_.dtype));
    if (!bytes.ok()) {
      return Fail(
          TensorError(source_, entry_.name, SV(bytes.status().message())));
    }
    if (*bytes != entry_.end - entry_.begin) {
      return Fail(TensorError(
          source_, entry_.name,
          absl::StrCat(offsets, " hold ", entry_.end - entry_.begin,
                       " bytes, but ", AName(entry_.dtype), " shape ",
                       ShapeString(entry_.shape), " needs ", *bytes)));
    }
    header_.tensors.push_back(std::move(entry_));
    return true;
  }

  const uint64_t data_size_;
  const std::string_view source_;
  State state_ = State::kStart;
  absl::Status error_;
  SafetensorsHeader header_;
  std::set<std::string, std::less<>> top_keys_;
  TensorEntry entry_ = NewEntry("");
  int fields_seen_ = 0;
  int offsets_seen_ = 0;
  std::string key_;       // the current __metadata__ key
  std::string last_key_;  // the last top-level key, for syntax errors
};

// ---------------------------------------------------------------------------
// Writing.

// A JSON string literal for `s`, escaped as the reference (serde_json) writes
// it; an error when `s` is not valid UTF-8.
absl::StatusOr<std::string> JsonString(std::string_view s,
                                       std::string_view what) {
  try {
    return Json(std::string(s)).dump();
  } catch (const Json::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat(AV(what), " ", Quote(s), " is not valid UTF-8"));
  }
}

// The header (padded) and the file-order entries for `specs`.
struct Layout {
  std::string header;  // the JSON, padded with spaces to a multiple of 8
  std::vector<TensorEntry> entries;
  std::vector<size_t> order;  // entries[i] describes specs[order[i]]
};

absl::StatusOr<Layout> PlanLayout(
    const std::vector<TensorSpec>& specs,
    const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> names;
  for (const TensorSpec& spec : specs) {
    if (!names.insert(spec.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quote(spec.name), ": appears twice"));
    }
  }
  Layout layout;
  layout.order.resize(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) layout.order[i] = i;
  std::sort(layout.order.begin(), layout.order.end(), [&](size_t a, size_t b) {
    const int rank_a = ReferenceRank(specs[a].dtype);
    const int rank_b = ReferenceRank(specs[b].dtype);
    if (rank_a != rank_b) return rank_a > rank_b;
    return specs[a].name < specs[b].name;
  });

  std::string& json = layout.header;
  json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      ASSIGN_OR_RETURN(std::string key_json, JsonString(key, "metadata key"));
      ASSIGN_OR_RETURN(std::string value_json,
                       JsonString(value, "metadata value"));
      absl::StrAppend(&json, first ? "" : ",", key_json, ":", value_json);
      first = false;
    }
    json += "}";
  }
  uint64_t offset = 0;
  layout.entries.reserve(specs.size());
  for (size_t i = 0; i < layout.order.size(); ++i) {
    const TensorSpec& spec = specs[layout.order[i]];
    auto error = [&](std::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quote(spec.name), ": ", AV(what)));
    };
    if (spec.name == "__metadata__") {
      return error("the name __metadata__ is reserved");
    }
    ASSIGN_OR_RETURN(std::string name_json, JsonString(spec.name, "name"));
    absl::StatusOr<uint64_t> bytes =
        ByteSize(spec.shape, DtypeSize(spec.dtype));
    if (!bytes.ok()) return error(SV(bytes.status().message()));
    TensorEntry entry{.name = spec.name,
                      .dtype = spec.dtype,
                      .shape = spec.shape,
                      .begin = offset};
    if (__builtin_add_overflow(offset, *bytes, &entry.end)) {
      return error("the file would be too big");
    }
    offset = entry.end;
    absl::StrAppend(&json, json.size() > 1 ? "," : "", name_json,
                    ":{\"dtype\":\"", AName(spec.dtype), "\",\"shape\":[",
                    absl::StrJoin(spec.shape, ","), "],\"data_offsets\":[",
                    entry.begin, ",", entry.end, "]}");
    layout.entries.push_back(std::move(entry));
  }
  json += "}";
  json.append((8 - json.size() % 8) % 8, ' ');
  return layout;
}

std::string LengthPrefix(uint64_t n) {
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>(n >> (8 * i));
  return prefix;
}

absl::Status WriteAll(int fd, const void* data, size_t size,
                      std::string_view path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux writes at most about 2 GiB at a time.
    const size_t chunk = std::min<size_t>(size, size_t{1} << 30);
    const ssize_t n = ::write(fd, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "writing", path);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::vector<TensorSpec> SpecsOf(const std::vector<TensorToWrite>& tensors) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) {
    specs.push_back({.name = t.name, .dtype = t.dtype, .shape = t.shape});
  }
  return specs;
}

// Checks that each tensor's bytes match its shape (after PlanLayout, so the
// sizes are known to be valid).
absl::Status CheckSizes(const std::vector<TensorToWrite>& tensors,
                        const Layout& layout) {
  for (size_t i = 0; i < layout.entries.size(); ++i) {
    const TensorEntry& entry = layout.entries[i];
    const TensorToWrite& tensor = tensors[layout.order[i]];
    if (tensor.data.size() != entry.end - entry.begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", Quote(entry.name), ": ", tensor.data.size(),
          " bytes given, but ", AName(entry.dtype), " shape ",
          ShapeString(entry.shape), " needs ", entry.end - entry.begin));
    }
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------
// Dtypes.

std::string_view DtypeName(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kF64:
      return "F64";
    case SafetensorsDtype::kF32:
      return "F32";
    case SafetensorsDtype::kF16:
      return "F16";
    case SafetensorsDtype::kBF16:
      return "BF16";
    case SafetensorsDtype::kI64:
      return "I64";
    case SafetensorsDtype::kI32:
      return "I32";
    case SafetensorsDtype::kI16:
      return "I16";
    case SafetensorsDtype::kI8:
      return "I8";
    case SafetensorsDtype::kU8:
      return "U8";
    case SafetensorsDtype::kBool:
      return "BOOL";
  }
  return "?";
}

size_t DtypeSize(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kF64:
    case SafetensorsDtype::kI64:
      return 8;
    case SafetensorsDtype::kF32:
    case SafetensorsDtype::kI32:
      return 4;
    case SafetensorsDtype::kF16:
    case SafetensorsDtype::kBF16:
    case SafetensorsDtype::kI16:
      return 2;
    case SafetensorsDtype::kI8:
    case SafetensorsDtype::kU8:
    case SafetensorsDtype::kBool:
      return 1;
  }
  return 1;
}

absl::StatusOr<SafetensorsDtype> ParseDtype(std::string_view name) {
  static constexpr SafetensorsDtype kAll[] = {
      SafetensorsDtype::kF64,  SafetensorsDtype::kF32, SafetensorsDtype::kF16,
      SafetensorsDtype::kBF16, SafetensorsDtype::kI64, SafetensorsDtype::kI32,
      SafetensorsDtype::kI16,  SafetensorsDtype::kI8,  SafetensorsDtype::kU8,
      SafetensorsDtype::kBool};
  for (SafetensorsDtype dtype : kAll) {
    if (DtypeName(dtype) == name) return dtype;
  }
  static constexpr std::string_view kUnsupported[] = {
      "U16", "U32", "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "C64"};
  for (std::string_view other : kUnsupported) {
    if (other == name) {
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", AV(name), " is not supported"));
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype ", Quote(name)));
}

int64_t TensorEntry::NumElements() const {
  uint64_t n = 1;  // unsigned: no undefined behaviour on unchecked shapes
  for (int64_t dim : shape) n *= static_cast<uint64_t>(dim);
  return static_cast<int64_t>(n);
}

// ---------------------------------------------------------------------------
// Header.

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(
    std::string_view header_json, uint64_t data_size, std::string_view source) {
  if (header_json.size() > kMaxHeaderBytes) {
    return HeaderError(
        source, absl::StrCat("header of ", header_json.size(),
                             " bytes exceeds the bound of ", kMaxHeaderBytes));
  }
  HeaderSax sax(data_size, source);
  bool ok = false;
  try {
    ok = Json::sax_parse(header_json.begin(), header_json.end(), &sax,
                         Json::input_format_t::json, /*strict=*/true);
  } catch (const std::exception& e) {
    return HeaderError(source, absl::StrCat("cannot parse: ", e.what()));
  }
  if (!ok) {
    if (!sax.error().ok()) return sax.error();
    return HeaderError(source, "not valid JSON");
  }
  SafetensorsHeader header = sax.TakeHeader();
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) {
              return std::tie(a.begin, a.end, a.name) <
                     std::tie(b.begin, b.end, b.name);
            });
  // Sorted by begin: a tensor overlaps an earlier one if and only if it
  // begins before the furthest end so far. Empty tensors hold no bytes.
  const TensorEntry* furthest = nullptr;
  for (const TensorEntry& entry : header.tensors) {
    if (entry.begin == entry.end) continue;
    if (furthest != nullptr && entry.begin < furthest->end) {
      return TensorError(
          source, entry.name,
          absl::StrCat("data_offsets [", entry.begin, ", ", entry.end,
                       "] overlap those of tensor ", Quote(furthest->name),
                       " [", furthest->begin, ", ", furthest->end, "]"));
    }
    if (furthest == nullptr || entry.end > furthest->end) furthest = &entry;
  }
  return header;
}

// ---------------------------------------------------------------------------
// SafetensorsFile.

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return ErrnoError(error, "cannot stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::DataLossError(
        absl::StrCat(path, ": truncated: ", size,
                     " bytes, too short for the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_error = errno;
  ::close(fd);
  if (map == MAP_FAILED) return ErrnoError(map_error, "cannot map", path);
  file->map_ = map;
  file->map_size_ = size;

  const auto* bytes = static_cast<const unsigned char*>(map);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxHeaderBytes) {
    return HeaderError(
        path, absl::StrCat("header length ", n, " exceeds the bound of ",
                           kMaxHeaderBytes, " bytes"));
  }
  if (n > size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": truncated: header length ",
                                            n, " but only ", size - 8,
                                            " bytes follow the length"));
  }
  const uint64_t data_size = size - 8 - n;
  // Offsets are checked against the data actually present below, to tell a
  // truncated file (DataLoss) from a malformed header.
  ASSIGN_OR_RETURN(
      file->header_,
      ParseSafetensorsHeader(
          std::string_view(reinterpret_cast<const char*>(bytes) + 8, n),
          std::numeric_limits<uint64_t>::max(), path));
  for (const TensorEntry& entry : file->header_.tensors) {
    if (entry.end > data_size) {
      return absl::DataLossError(absl::StrCat(
          path, ": tensor ", Quote(entry.name), ": data_offsets [", entry.begin,
          ", ", entry.end, "] run past the end of the data (", data_size,
          " bytes): the file is truncated or its header corrupt"));
    }
  }
  file->data_ = reinterpret_cast<const std::byte*>(bytes) + 8 + n;
  for (size_t i = 0; i < file->header_.tensors.size(); ++i) {
    file->index_.emplace(file->header_.tensors[i].name, i);
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorEntry* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const std::byte> SafetensorsFile::Bytes(
    const TensorEntry& entry) const {
  return {data_ + entry.begin, static_cast<size_t>(entry.end - entry.begin)};
}

// ---------------------------------------------------------------------------
// SafetensorsCheckpoint.

absl::StatusOr<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(
    const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a folder"));
  }
  constexpr std::string_view kIndexSuffix = ".safetensors.index.json";
  constexpr std::string_view kFileSuffix = ".safetensors";
  std::vector<std::string> indexes, singles;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.ends_with(kIndexSuffix)) indexes.push_back(name);
    if (name.ends_with(kFileSuffix)) singles.push_back(name);
  }
  if (ec) {
    return absl::UnknownError(
        absl::StrCat(dir, ": cannot list: ", ec.message()));
  }
  std::sort(indexes.begin(), indexes.end());
  std::sort(singles.begin(), singles.end());
  const std::string preferred = "diffusion_pytorch_model.safetensors";
  const std::string preferred_index = preferred + ".index.json";

  std::string index_name, single_name;
  if (std::find(indexes.begin(), indexes.end(), preferred_index) !=
      indexes.end()) {
    index_name = preferred_index;
  } else if (std::find(singles.begin(), singles.end(), preferred) !=
             singles.end()) {
    single_name = preferred;
  } else if (indexes.size() == 1) {
    index_name = indexes[0];
  } else if (indexes.empty() && singles.size() == 1) {
    single_name = singles[0];
  } else if (indexes.empty() && singles.empty()) {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no *.safetensors file or index"));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": several checkpoints and none named ", preferred, "[",
        ".index.json]: ", absl::StrJoin(indexes, ", "),
        indexes.empty() ? "" : ", ", absl::StrJoin(singles, ", ")));
  }

  SafetensorsCheckpoint checkpoint;
  const std::string base = dir.ends_with('/') ? dir : dir + "/";
  if (!single_name.empty()) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open(base + single_name));
    for (const TensorEntry& entry : file->header().tensors) {
      checkpoint.tensors_.emplace(entry.name, Located{file.get(), &entry});
    }
    checkpoint.files_.push_back(std::move(file));
    return checkpoint;
  }

  // Sharded: read and check the index.
  const std::string index_path = base + index_name;
  std::string text;
  {
    const int fd =
        ::open(index_path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return ErrnoError(errno, "cannot open", index_path);
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": not a regular file"));
    }
    char buffer[1 << 16];
    while (true) {
      const ssize_t n = ::read(fd, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int error = errno;
        ::close(fd);
        return ErrnoError(error, "cannot read", index_path);
      }
      if (n == 0) break;
      text.append(buffer, static_cast<size_t>(n));
      if (text.size() > kMaxHeaderBytes) {
        ::close(fd);
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": index larger than ", kMaxHeaderBytes, " bytes"));
      }
    }
    ::close(fd);
  }
  auto index_error = [&](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", AV(what)));
  };
  Json index;
  try {
    index = Json::parse(text);
  } catch (const Json::exception& e) {
    return index_error(absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!index.is_object()) return index_error("not a JSON object");
  auto weight_map_it = index.find("weight_map");
  if (weight_map_it == index.end() || !weight_map_it->is_object()) {
    return index_error("no \"weight_map\" object");
  }
  // Shard file name -> the tensors the index puts there.
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [name, shard] : weight_map_it->items()) {
    if (!shard.is_string()) {
      return index_error(absl::StrCat("weight_map entry for tensor ",
                                      Quote(name), " is not a string"));
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    if (shard_name.empty() || shard_name.find('/') != std::string::npos ||
        shard_name.find('\\') != std::string::npos ||
        shard_name.find("..") != std::string::npos ||
        shard_name.find('\0') != std::string::npos) {
      return index_error(absl::StrCat("tensor ", Quote(name), ": shard name ",
                                      Quote(shard_name),
                                      " is not a plain file name"));
    }
    shards[shard_name].push_back(name);
  }
  for (const auto& [shard_name, names] : shards) {
    const std::string shard_path = base + shard_name;
    if (!fs::exists(shard_path, ec)) {
      return absl::NotFoundError(
          absl::StrCat(index_path, ": shard ", Quote(shard_name), " of tensor ",
                       Quote(names.front()), " is missing from ", dir));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open(shard_path));
    for (const std::string& name : names) {
      const TensorEntry* entry = file->Find(name);
      if (entry == nullptr) {
        return index_error(absl::StrCat(
            "tensor ", Quote(name), " is absent from its shard ", shard_path));
      }
      checkpoint.tensors_.emplace(name, Located{file.get(), entry});
    }
    checkpoint.files_.push_back(std::move(file));
  }
  // Be strict: every tensor of every shard is in the weight_map, for that
  // shard, so no weight is silently ignored.
  for (const auto& file : checkpoint.files_) {
    for (const TensorEntry& entry : file->header().tensors) {
      auto it = checkpoint.tensors_.find(entry.name);
      if (it == checkpoint.tensors_.end()) {
        return index_error(absl::StrCat("tensor ", Quote(entry.name),
                                        " of shard ", file->path(),
                                        " is not in the weight_map"));
      }
      if (it->second.file != file.get()) {
        return index_error(absl::StrCat(
            "tensor ", Quote(entry.name), " is in both ", file->path(), " and ",
            it->second.file->path(), " (the weight_map names ",
            it->second.file->path(), ")"));
      }
    }
  }
  return checkpoint;
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, located] : tensors_) names.push_back(name);
  return names;
}

SafetensorsCheckpoint::Located SafetensorsCheckpoint::Find(
    std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? Located{nullptr, nullptr} : it->second;
}

// ---------------------------------------------------------------------------
// Writing.

absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata) {
  ASSIGN_OR_RETURN(Layout layout, PlanLayout(SpecsOf(tensors), metadata));
  RETURN_IF_ERROR(CheckSizes(tensors, layout));
  const uint64_t data_size =
      layout.entries.empty() ? 0 : layout.entries.back().end;
  std::string out = LengthPrefix(layout.header.size());
  out.reserve(8 + layout.header.size() + data_size);
  out += layout.header;
  for (size_t i = 0; i < layout.entries.size(); ++i) {
    const auto& data = tensors[layout.order[i]].data;
    out.append(reinterpret_cast<const char*>(data.data()), data.size());
  }
  return out;
}

absl::Status WriteSafetensorsFile(
    const std::string& path, const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata) {
  // Check every size before creating anything; Create checks the rest.
  for (const TensorToWrite& t : tensors) {
    absl::StatusOr<uint64_t> bytes = ByteSize(t.shape, DtypeSize(t.dtype));
    if (bytes.ok() && *bytes != t.data.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", Quote(t.name), ": ", t.data.size(),
                       " bytes given, but ", AName(t.dtype), " shape ",
                       ShapeString(t.shape), " needs ", *bytes));
    }
  }
  std::map<std::string_view, const TensorToWrite*> by_name;
  for (const TensorToWrite& t : tensors) by_name.emplace(t.name, &t);
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path, SpecsOf(tensors), metadata));
  for (const TensorEntry& entry : writer->entries()) {
    RETURN_IF_ERROR(writer->Write(entry.name, by_name.at(entry.name)->data));
  }
  return writer->Finish();
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, const std::vector<TensorSpec>& tensors,
    const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<Layout> layout = PlanLayout(tensors, metadata);
  if (!layout.ok()) {
    return absl::Status(layout.status().code(),
                        absl::StrCat(path, ": ", layout.status().message()));
  }
  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
  writer->path_ = path;
  writer->entries_ = std::move(layout->entries);

  // A fresh name beside `path`, created with O_EXCL (and the umask).
  static std::atomic<uint64_t> counter{0};
  for (int attempt = 0; writer->fd_ < 0; ++attempt) {
    writer->temp_path_ = absl::StrCat(
        path, ".tmp.", ::getpid(), ".", counter.fetch_add(1), ".",
        std::chrono::steady_clock::now().time_since_epoch().count());
    writer->fd_ = ::open(writer->temp_path_.c_str(),
                         O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (writer->fd_ < 0 && (errno != EEXIST || attempt > 100)) {
      const int error = errno;
      writer->temp_path_.clear();  // nothing to remove
      return ErrnoError(error, "cannot create a temporary file for", path);
    }
  }
  const std::string prefix = LengthPrefix(layout->header.size());
  RETURN_IF_ERROR(writer->Fail(
      WriteAll(writer->fd_, prefix.data(), prefix.size(), writer->temp_path_)));
  RETURN_IF_ERROR(
      writer->Fail(WriteAll(writer->fd_, layout->header.data(),
                            layout->header.size(), writer->temp_path_)));
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

absl::Status SafetensorsWriter::Fail(absl::Status status) {
  if (!status.ok() && error_.ok()) error_ = status;
  return status;
}

absl::Status SafetensorsWriter::Write(std::string_view name,
                                      std::span<const std::byte> bytes) {
  if (!error_.ok()) return error_;
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": already finished"));
  }
  const TensorEntry* entry = next();
  if (entry == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": tensor ", Quote(name),
                     " given after all tensors were written"));
  }
  if (entry->name != name) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": tensor ", Quote(name), " given, but tensor ",
                     Quote(entry->name), " comes next"));
  }
  if (bytes.size() != entry->end - entry->begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor ", Quote(name), ": ", bytes.size(),
        " bytes given, but ", AName(entry->dtype), " shape ",
        ShapeString(entry->shape), " needs ", entry->end - entry->begin));
  }
  RETURN_IF_ERROR(Fail(WriteAll(fd_, bytes.data(), bytes.size(), temp_path_)));
  ++next_;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (!error_.ok()) return error_;
  if (finished_) return absl::OkStatus();
  if (const TensorEntry* entry = next(); entry != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        path_, ": tensor ", Quote(entry->name), " was not written (",
        entries_.size() - next_, " tensors missing)"));
  }
  if (::fsync(fd_) != 0) {
    return Fail(ErrnoError(errno, "cannot fsync", temp_path_));
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    return Fail(ErrnoError(errno, "cannot close", temp_path_));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int error = errno;
    return Fail(ErrnoError(
        error, absl::StrCat("cannot rename ", temp_path_, " to"), path_));
  }
  finished_ = true;
  // Make the rename itself durable.
  std::string dir = std::filesystem::path(path_).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    const int result = ::fsync(dir_fd);
    const int error = errno;
    ::close(dir_fd);
    if (result != 0 && error != EINVAL) {
      return ErrnoError(error, "cannot fsync the folder of", path_);
    }
  }
  return absl::OkStatus();
}

}  // namespace lpd::engine

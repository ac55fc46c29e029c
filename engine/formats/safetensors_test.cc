#include "engine/formats/safetensors.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

const std::string kGolden = std::string(LPD_TESTDATA_DIR) + "/unet-golden";

// `status` is an error with `code` whose message contains every one of
// `parts`.
testing::AssertionResult IsError(const absl::Status& status,
                                 absl::StatusCode code,
                                 std::initializer_list<std::string> parts) {
  if (status.ok()) return testing::AssertionFailure() << "status is OK";
  if (status.code() != code) {
    return testing::AssertionFailure()
           << "code " << absl::StatusCodeToString(status.code())
           << " instead of " << absl::StatusCodeToString(code) << ": "
           << status;
  }
  for (const std::string& part : parts) {
    if (!absl::StrContains(status.message(), part)) {
      return testing::AssertionFailure()
             << "message lacks \"" << part << "\": " << status;
    }
  }
  return testing::AssertionSuccess();
}

// The 8-byte little-endian length prefix of `n`.
std::string Prefix(uint64_t n) {
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>(n >> (8 * i));
  return prefix;
}

// A file image: length prefix, `header`, then `data_bytes` bytes of data.
std::string Image(std::string_view header, size_t data_bytes) {
  std::string image = Prefix(header.size());
  image += header;
  for (size_t i = 0; i < data_bytes; ++i) image += static_cast<char>(i * 7);
  return image;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::span<const std::byte> AsBytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string HexOf(std::span<const std::byte> bytes) {
  return absl::BytesToHexString(absl::string_view(
      reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::string Float32Bytes(std::initializer_list<float> values) {
  std::string bytes;
  for (float v : values) {
    char b[4];
    std::memcpy(b, &v, 4);
    bytes.append(b, 4);
  }
  return bytes;
}

// ---------------------------------------------------------------------------
// Reference data.

TEST(SafetensorsReferenceTest, OpensTinySd15Float16File) {
  const std::string path =
      kGolden + "/tiny-sd15/diffusion_pytorch_model.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsHeader& header = (*file)->header();
  EXPECT_EQ(header.tensors.size(), 684u);
  for (const TensorEntry& entry : header.tensors) {
    EXPECT_EQ(entry.dtype, SafetensorsDtype::kF16) << entry.name;
  }
  EXPECT_EQ(header.metadata,
            (std::map<std::string, std::string>{{"format", "pt"}}));
  const TensorEntry* conv_in = (*file)->Find("conv_in.weight");
  ASSERT_NE(conv_in, nullptr);
  EXPECT_EQ(conv_in->shape, (std::vector<int64_t>{32, 4, 3, 3}));
  EXPECT_EQ(conv_in->begin, 64u);
  EXPECT_EQ(conv_in->end, 2368u);
  EXPECT_EQ(conv_in->NumElements(), 32 * 4 * 3 * 3);
  const TensorEntry* to_q = (*file)->Find(
      "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight");
  ASSERT_NE(to_q, nullptr);
  EXPECT_EQ(to_q->shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(header.tensors.back().end, 6500680u);
  EXPECT_EQ((*file)->Find("no.such.tensor"), nullptr);
}

TEST(SafetensorsReferenceTest, HeaderTensorsAreSortedByOffset) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(
      kGolden + "/tiny-sd15/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& tensors = (*file)->header().tensors;
  for (size_t i = 1; i < tensors.size(); ++i) {
    EXPECT_EQ(tensors[i].begin, tensors[i - 1].end) << tensors[i].name;
  }
}

TEST(SafetensorsReferenceTest, BytesAreTheStoredLittleEndianValues) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(
      kGolden + "/tiny-sd15/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorEntry* bias = (*file)->Find("conv_in.bias");
  ASSERT_NE(bias, nullptr);
  std::span<const std::byte> bytes = (*file)->Bytes(*bias);
  ASSERT_EQ(bytes.size(), 64u);
  // As Python's struct module reads them: -0.15002, 0.018188, ...
  EXPECT_EQ(HexOf(bytes.first(8)), "cdb0a824f230a1b0");
}

TEST(SafetensorsReferenceTest, OpensVectorsFileWithFloat32AndInt64) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(kGolden + "/tiny-sd15/vectors.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().tensors.size(), 14u);
  EXPECT_TRUE((*file)->header().metadata.empty());
  const TensorEntry* timestep = (*file)->Find("input.timestep");
  ASSERT_NE(timestep, nullptr);
  EXPECT_EQ(timestep->dtype, SafetensorsDtype::kI64);
  EXPECT_EQ(timestep->shape, (std::vector<int64_t>{2}));
  int64_t values[2];
  std::memcpy(values, (*file)->Bytes(*timestep).data(), sizeof(values));
  EXPECT_EQ(values[0], 999);
  EXPECT_EQ(values[1], 37);
  const TensorEntry* sample = (*file)->Find("output.sample");
  ASSERT_NE(sample, nullptr);
  EXPECT_EQ(sample->dtype, SafetensorsDtype::kF32);
  EXPECT_EQ(sample->shape, (std::vector<int64_t>{2, 4, 16, 16}));
}

TEST(SafetensorsReferenceTest, CheckpointPrefersDiffusionPytorchModelFile) {
  // The folder also holds vectors.safetensors and removal.safetensors.
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(kGolden + "/tiny-sd15");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  ASSERT_EQ(checkpoint->files().size(), 1u);
  EXPECT_TRUE(absl::EndsWith(checkpoint->files()[0]->path(),
                             "/diffusion_pytorch_model.safetensors"));
  const std::vector<std::string> names = checkpoint->Names();
  EXPECT_EQ(names.size(), 684u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  SafetensorsCheckpoint::Located conv_in = checkpoint->Find("conv_in.weight");
  ASSERT_NE(conv_in.file, nullptr);
  EXPECT_EQ(conv_in.entry->shape, (std::vector<int64_t>{32, 4, 3, 3}));
}

TEST(SafetensorsReferenceTest, CheckpointOpensShardedSdxlBfloat16) {
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(kGolden + "/tiny-sdxl");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->files().size(), 3u);
  const std::vector<std::string> names = checkpoint->Names();
  EXPECT_EQ(names.size(), 840u);  // 362 + 288 + 190, as in the weight_map
  for (const std::string& name : names) {
    SafetensorsCheckpoint::Located found = checkpoint->Find(name);
    ASSERT_NE(found.file, nullptr) << name;
    EXPECT_EQ(found.entry->dtype, SafetensorsDtype::kBF16) << name;
    EXPECT_EQ(found.entry->name, name);
  }
  const std::pair<std::string, std::string> expected[] = {
      {"add_embedding.linear_1.bias", "00001-of-00003"},
      {"up_blocks.0.attentions.0.proj_out.bias", "00002-of-00003"},
      {"conv_norm_out.bias", "00003-of-00003"},
  };
  for (const auto& [name, shard] : expected) {
    SafetensorsCheckpoint::Located found = checkpoint->Find(name);
    ASSERT_NE(found.file, nullptr) << name;
    EXPECT_TRUE(absl::StrContains(found.file->path(), shard))
        << name << " in " << found.file->path();
  }
  SafetensorsCheckpoint::Located conv_in = checkpoint->Find("conv_in.weight");
  ASSERT_NE(conv_in.file, nullptr);
  EXPECT_EQ(conv_in.entry->shape, (std::vector<int64_t>{32, 4, 3, 3}));
  EXPECT_EQ(conv_in.entry->begin, 55872u);
  EXPECT_EQ(HexOf(conv_in.file->Bytes(*conv_in.entry).first(8)),
            "163d413d93bde13c");
}

TEST(SafetensorsReferenceTest, CheckpointFindOfUnknownNameIsNull) {
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(kGolden + "/tiny-sdxl");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  SafetensorsCheckpoint::Located found = checkpoint->Find("no.such.weight");
  EXPECT_EQ(found.file, nullptr);
  EXPECT_EQ(found.entry, nullptr);
}

// ---------------------------------------------------------------------------
// Dtypes and the header parser.

TEST(SafetensorsDtypeTest, NamesAndSizesRoundTrip) {
  const std::pair<SafetensorsDtype, size_t> all[] = {
      {SafetensorsDtype::kF64, 8}, {SafetensorsDtype::kF32, 4},
      {SafetensorsDtype::kF16, 2}, {SafetensorsDtype::kBF16, 2},
      {SafetensorsDtype::kI64, 8}, {SafetensorsDtype::kI32, 4},
      {SafetensorsDtype::kI16, 2}, {SafetensorsDtype::kI8, 1},
      {SafetensorsDtype::kU8, 1},  {SafetensorsDtype::kBool, 1}};
  for (const auto& [dtype, size] : all) {
    absl::StatusOr<SafetensorsDtype> parsed = ParseDtype(DtypeName(dtype));
    ASSERT_TRUE(parsed.ok()) << DtypeName(dtype);
    EXPECT_EQ(*parsed, dtype);
    EXPECT_EQ(DtypeSize(dtype), size) << DtypeName(dtype);
  }
  EXPECT_EQ(DtypeName(SafetensorsDtype::kBool), "BOOL");
  EXPECT_EQ(DtypeName(SafetensorsDtype::kBF16), "BF16");
}

TEST(SafetensorsDtypeTest, UnknownNameIsInvalidArgument) {
  EXPECT_TRUE(IsError(ParseDtype("f32").status(),
                      absl::StatusCode::kInvalidArgument, {"f32"}));
  EXPECT_TRUE(IsError(ParseDtype("U16").status(),
                      absl::StatusCode::kInvalidArgument, {"U16"}));
}

TEST(SafetensorsHeaderTest, ChecksOffsetsAgainstTheDataSize) {
  const std::string json =
      R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_TRUE(ParseSafetensorsHeader(json, 8, "src").ok());
  EXPECT_TRUE(IsError(ParseSafetensorsHeader(json, 7, "src").status(),
                      absl::StatusCode::kInvalidArgument,
                      {"src", "\"t\"", "past the end"}));
}

TEST(SafetensorsHeaderTest, AcceptsEmptyObjectAndTrailingSpaces) {
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader("{}      ", 0, "src");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_TRUE(header->tensors.empty());
  EXPECT_TRUE(header->metadata.empty());
}

TEST(SafetensorsHeaderTest, AcceptsScalarAndZeroSizedTensors) {
  // A zero-sized tensor holds no bytes, so it overlaps nothing.
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(
      R"({"scalar":{"dtype":"F64","shape":[],"data_offsets":[0,8]},)"
      R"("empty":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]}})",
      8, "src");
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->tensors.size(), 2u);
  EXPECT_EQ(header->tensors[0].name, "scalar");
  EXPECT_EQ(header->tensors[0].NumElements(), 1);
  EXPECT_EQ(header->tensors[1].name, "empty");
  EXPECT_EQ(header->tensors[1].NumElements(), 0);
}

TEST(SafetensorsHeaderTest, AcceptsNullMetadata) {
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(R"({"__metadata__":null})", 0, "src");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_TRUE(header->metadata.empty());
}

TEST(SafetensorsHeaderTest, RejectsHeaderOverTheBound) {
  const std::string json(kMaxHeaderBytes + 1, ' ');
  EXPECT_TRUE(IsError(ParseSafetensorsHeader(json, 0, "src").status(),
                      absl::StatusCode::kInvalidArgument, {"src", "bound"}));
}

TEST(SafetensorsHeaderTest, RejectsDeeplyNestedJsonWithoutRecursing) {
  const std::string json =
      std::string(1 << 20, '[') + std::string(1 << 20, ']');
  EXPECT_TRUE(IsError(ParseSafetensorsHeader(json, 0, "src").status(),
                      absl::StatusCode::kInvalidArgument, {"src", "object"}));
}

// ---------------------------------------------------------------------------
// The writer's format.

TEST(SafetensorsSerializeTest, MatchesReferenceBytesForOneFloat32Tensor) {
  const std::string data = Float32Bytes({1.0f, -2.0f});
  absl::StatusOr<std::string> out =
      SerializeSafetensors({{.name = "a",
                             .dtype = SafetensorsDtype::kF32,
                             .shape = {2},
                             .data = AsBytes(data)}});
  ASSERT_TRUE(out.ok()) << out.status();
  // 54 bytes of JSON, padded with 2 spaces to 56 (0x38).
  const std::string expected =
      std::string("\x38\0\0\0\0\0\0\0", 8) +
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})" + "  " +
      std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);
  EXPECT_EQ(absl::BytesToHexString(*out), absl::BytesToHexString(expected));
}

TEST(SafetensorsSerializeTest, MatchesReferenceBytesWhenNoPaddingIsNeeded) {
  const std::string data = Float32Bytes({0, 1, 2, 3, 4, 5});
  absl::StatusOr<std::string> out =
      SerializeSafetensors({{.name = "attn.0",
                             .dtype = SafetensorsDtype::kF32,
                             .shape = {1, 2, 3},
                             .data = AsBytes(data)}});
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string json =
      R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  ASSERT_EQ(json.size(), 64u);
  EXPECT_EQ(*out, Prefix(64) + json + data);
}

TEST(SafetensorsSerializeTest, MatchesReferenceBytesForMetadataOnly) {
  absl::StatusOr<std::string> out =
      SerializeSafetensors({}, {{"framework", "pt"}});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, Prefix(40) + R"({"__metadata__":{"framework":"pt"}})" +
                      std::string(5, ' '));
}

TEST(SafetensorsSerializeTest, EmptyFileIsAnEmptyObject) {
  absl::StatusOr<std::string> out = SerializeSafetensors({});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, Prefix(8) + "{}      ");
}

TEST(SafetensorsSerializeTest, OrdersByDescendingAlignmentThenName) {
  const std::string bytes(64, '\x01');
  auto tensor = [&](std::string name, SafetensorsDtype dtype) {
    return TensorToWrite{.name = std::move(name),
                         .dtype = dtype,
                         .shape = {1},
                         .data = AsBytes(bytes).first(DtypeSize(dtype))};
  };
  absl::StatusOr<std::string> out = SerializeSafetensors({
      tensor("a_bool", SafetensorsDtype::kBool),
      tensor("b_f16", SafetensorsDtype::kF16),
      tensor("c_f32", SafetensorsDtype::kF32),
      tensor("d_i64", SafetensorsDtype::kI64),
      tensor("e_f64", SafetensorsDtype::kF64),
      tensor("a_f32", SafetensorsDtype::kF32),
      tensor("f_bf16", SafetensorsDtype::kBF16),
  });
  ASSERT_TRUE(out.ok()) << out.status();
  const size_t data_size = 8 + 8 + 4 + 4 + 2 + 2 + 1;
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(
      std::string_view(*out).substr(8, out->size() - 8 - data_size), data_size,
      "out");
  ASSERT_TRUE(header.ok()) << header.status();
  std::vector<std::string> order;
  for (const TensorEntry& entry : header->tensors) {
    order.push_back(entry.name);
    EXPECT_EQ(entry.begin % DtypeSize(entry.dtype), 0u) << entry.name;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"d_i64", "e_f64", "a_f32", "c_f32",
                                             "f_bf16", "b_f16", "a_bool"}));
  // The header lists the tensors in that order too.
  EXPECT_LT(out->find("\"d_i64\""), out->find("\"e_f64\""));
  EXPECT_LT(out->find("\"b_f16\""), out->find("\"a_bool\""));
}

TEST(SafetensorsSerializeTest, EscapesNamesAsJson) {
  const std::string name = "q\"b\\s\n\x01\xc3\xa9";
  absl::StatusOr<std::string> out =
      SerializeSafetensors({{.name = name,
                             .dtype = SafetensorsDtype::kU8,
                             .shape = {0},
                             .data = {}}});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(absl::StrContains(*out, "\"q\\\"b\\\\s\\n\\u0001\xc3\xa9\""))
      << *out;
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(out->substr(8), 0, "out");
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->tensors.size(), 1u);
  EXPECT_EQ(header->tensors[0].name, name);
}

TEST(SafetensorsSerializeTest, RejectsDuplicateNames) {
  const std::string data(4, '\0');
  TensorToWrite t{.name = "w",
                  .dtype = SafetensorsDtype::kF32,
                  .shape = {1},
                  .data = AsBytes(data)};
  TensorToWrite other = t;
  other.dtype = SafetensorsDtype::kI32;
  EXPECT_TRUE(IsError(SerializeSafetensors({t, other}).status(),
                      absl::StatusCode::kInvalidArgument, {"\"w\"", "twice"}));
}

TEST(SafetensorsSerializeTest, RejectsSizeMismatch) {
  const std::string data(6, '\0');
  EXPECT_TRUE(IsError(SerializeSafetensors({{.name = "w",
                                             .dtype = SafetensorsDtype::kF32,
                                             .shape = {2},
                                             .data = AsBytes(data)}})
                          .status(),
                      absl::StatusCode::kInvalidArgument,
                      {"\"w\"", "6 bytes", "needs 8"}));
}

TEST(SafetensorsSerializeTest, RejectsReservedMetadataName) {
  EXPECT_TRUE(IsError(SerializeSafetensors({{.name = "__metadata__",
                                             .dtype = SafetensorsDtype::kU8,
                                             .shape = {0},
                                             .data = {}}})
                          .status(),
                      absl::StatusCode::kInvalidArgument,
                      {"__metadata__", "reserved"}));
}

TEST(SafetensorsSerializeTest, RejectsNegativeDimension) {
  EXPECT_TRUE(IsError(SerializeSafetensors({{.name = "w",
                                             .dtype = SafetensorsDtype::kU8,
                                             .shape = {2, -1},
                                             .data = {}}})
                          .status(),
                      absl::StatusCode::kInvalidArgument,
                      {"\"w\"", "negative"}));
}

TEST(SafetensorsSerializeTest, RejectsNameThatIsNotUtf8) {
  EXPECT_TRUE(IsError(SerializeSafetensors({{.name = "bad\xff",
                                             .dtype = SafetensorsDtype::kU8,
                                             .shape = {0},
                                             .data = {}}})
                          .status(),
                      absl::StatusCode::kInvalidArgument, {"UTF-8"}));
}

// ---------------------------------------------------------------------------
// Files in a temporary folder.

class SafetensorsFileTest : public testing::Test {
 protected:
  void SetUp() override { dir_ = temp_.path(); }

  // Writes `contents` to `name` in the folder; returns its path.
  std::string Put(const std::string& name, std::string_view contents) {
    const std::string path = dir_ + "/" + name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }

  // Opens a file holding `image`; returns the error.
  absl::Status OpenImage(std::string_view image,
                         const std::string& name = "bad.safetensors") {
    return SafetensorsFile::Open(Put(name, image)).status();
  }

  std::vector<std::string> FolderContents() const {
    std::vector<std::string> names;
    for (const auto& item : fs::directory_iterator(dir_)) {
      names.push_back(item.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  test::TempFolder temp_{"safetensors_test."};
  std::string dir_;
};

// A valid two-tensor header for a data section of 24 bytes.
constexpr std::string_view kTwoTensors =
    R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
    R"("b":{"dtype":"I64","shape":[1],"data_offsets":[16,24]}})";

TEST_F(SafetensorsFileTest, WriteThenOpenRoundTripsEveryDtypeWithMetadata) {
  std::vector<std::string> storage;
  std::vector<TensorToWrite> tensors;
  const SafetensorsDtype dtypes[] = {
      SafetensorsDtype::kF64,  SafetensorsDtype::kF32, SafetensorsDtype::kF16,
      SafetensorsDtype::kBF16, SafetensorsDtype::kI64, SafetensorsDtype::kI32,
      SafetensorsDtype::kI16,  SafetensorsDtype::kI8,  SafetensorsDtype::kU8,
      SafetensorsDtype::kBool};
  storage.reserve(std::size(dtypes));
  for (SafetensorsDtype dtype : dtypes) {
    std::string bytes;
    for (size_t i = 0; i < 3 * 5 * DtypeSize(dtype); ++i) {
      bytes += static_cast<char>(dtype == SafetensorsDtype::kBool
                                     ? i % 2
                                     : i * 31 + static_cast<int>(dtype));
    }
    storage.push_back(std::move(bytes));
    tensors.push_back({.name = "t." + std::string(DtypeName(dtype)),
                       .dtype = dtype,
                       .shape = {3, 5},
                       .data = AsBytes(storage.back())});
  }
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "quote \" and é"}};
  const std::string path = dir_ + "/all.safetensors";
  ASSERT_TRUE(WriteSafetensorsFile(path, tensors, metadata).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().metadata, metadata);
  ASSERT_EQ((*file)->header().tensors.size(), tensors.size());
  for (const TensorToWrite& t : tensors) {
    const TensorEntry* entry = (*file)->Find(t.name);
    ASSERT_NE(entry, nullptr) << t.name;
    EXPECT_EQ(entry->dtype, t.dtype) << t.name;
    EXPECT_EQ(entry->shape, t.shape) << t.name;
    EXPECT_EQ(HexOf((*file)->Bytes(*entry)), HexOf(t.data)) << t.name;
    // The header is padded so that every tensor is aligned in the file.
    const size_t offset = (*file)->Bytes(*entry).data() -
                          (*file)->Bytes((*file)->header().tensors[0]).data();
    EXPECT_EQ(offset % DtypeSize(entry->dtype), 0u) << t.name;
  }
  // Streaming and serializing in memory produce the same bytes.
  absl::StatusOr<std::string> serialized =
      SerializeSafetensors(tensors, metadata);
  ASSERT_TRUE(serialized.ok()) << serialized.status();
  EXPECT_EQ(ReadFile(path), *serialized);
}

TEST_F(SafetensorsFileTest, WriteReplacesFileAndLeavesNoTemporaryFile) {
  const std::string path = Put("out.safetensors", "old contents");
  const std::string data = Float32Bytes({1, 2});
  ASSERT_TRUE(WriteSafetensorsFile(path, {{.name = "x",
                                           .dtype = SafetensorsDtype::kF32,
                                           .shape = {2},
                                           .data = AsBytes(data)}})
                  .ok());
  EXPECT_EQ(FolderContents(), std::vector<std::string>{"out.safetensors"});
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_NE((*file)->Find("x"), nullptr);
}

TEST_F(SafetensorsFileTest, WriteRejectsSizeMismatchWithoutCreatingAFile) {
  const std::string data(3, '\0');
  const std::string path = dir_ + "/out.safetensors";
  EXPECT_TRUE(
      IsError(WriteSafetensorsFile(path, {{.name = "x",
                                           .dtype = SafetensorsDtype::kF32,
                                           .shape = {1},
                                           .data = AsBytes(data)}}),
              absl::StatusCode::kInvalidArgument, {path, "\"x\"", "needs 4"}));
  EXPECT_TRUE(FolderContents().empty());
}

TEST_F(SafetensorsFileTest, WriteIntoMissingFolderNamesThePath) {
  const std::string path = dir_ + "/missing/out.safetensors";
  EXPECT_TRUE(IsError(WriteSafetensorsFile(path, {}),
                      absl::StatusCode::kNotFound, {path}));
}

TEST_F(SafetensorsFileTest, StreamingWriterWritesInEntriesOrder) {
  const std::string path = dir_ + "/out.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(
          path,
          {{.name = "small", .dtype = SafetensorsDtype::kU8, .shape = {3}},
           {.name = "big", .dtype = SafetensorsDtype::kI64, .shape = {2}}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_EQ((*writer)->entries().size(), 2u);
  EXPECT_EQ((*writer)->next()->name, "big");  // I64 before U8
  EXPECT_EQ((*writer)->entries()[1].begin, 16u);
  ASSERT_TRUE((*writer)->Write("big", AsBytes(std::string(16, 'b'))).ok());
  ASSERT_TRUE((*writer)->Write("small", AsBytes("abc")).ok());
  EXPECT_EQ((*writer)->next(), nullptr);
  // Nothing is visible at `path` before Finish().
  EXPECT_FALSE(fs::exists(path));
  ASSERT_TRUE((*writer)->Finish().ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorEntry* small = (*file)->Find("small");
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(HexOf((*file)->Bytes(*small)), "616263");
}

TEST_F(SafetensorsFileTest, StreamingWriterRejectsTensorOutOfOrder) {
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(
          dir_ + "/out.safetensors",
          {{.name = "a", .dtype = SafetensorsDtype::kU8, .shape = {1}},
           {.name = "b", .dtype = SafetensorsDtype::kU8, .shape = {1}}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_TRUE(IsError((*writer)->Write("b", AsBytes("x")),
                      absl::StatusCode::kFailedPrecondition,
                      {"\"b\"", "\"a\" comes next"}));
}

TEST_F(SafetensorsFileTest, StreamingWriterRejectsWrongByteCount) {
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(
          dir_ + "/out.safetensors",
          {{.name = "a", .dtype = SafetensorsDtype::kF16, .shape = {2}}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_TRUE(IsError((*writer)->Write("a", AsBytes("xyz")),
                      absl::StatusCode::kInvalidArgument,
                      {"\"a\"", "3 bytes", "needs 4"}));
}

TEST_F(SafetensorsFileTest, StreamingWriterFinishFailsWhileTensorsMissing) {
  const std::string path = dir_ + "/out.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(
          path, {{.name = "a", .dtype = SafetensorsDtype::kU8, .shape = {1}}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_TRUE(IsError((*writer)->Finish(),
                      absl::StatusCode::kFailedPrecondition,
                      {path, "\"a\"", "not written"}));
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(SafetensorsFileTest, AbandonedWriterRemovesItsTemporaryFile) {
  {
    absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
        SafetensorsWriter::Create(
            dir_ + "/out.safetensors",
            {{.name = "a", .dtype = SafetensorsDtype::kU8, .shape = {1}}});
    ASSERT_TRUE(writer.ok()) << writer.status();
    EXPECT_EQ(FolderContents().size(), 1u);  // the temporary file
  }
  EXPECT_TRUE(FolderContents().empty());
}

TEST_F(SafetensorsFileTest, ReadsUnalignedHeaderLength) {
  // 61 bytes of JSON: the data section starts at an odd offset.
  std::string json =
      R"({"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  json.append(61 - json.size(), ' ');
  const std::string data = Float32Bytes({3.5f, -1.0f});
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(Put("odd.safetensors", Prefix(61) + json + data));
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorEntry* v = (*file)->Find("v");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(HexOf((*file)->Bytes(*v)), absl::BytesToHexString(data));
}

// --- Malformed files: each error names the file, and the tensor if any. ---

TEST_F(SafetensorsFileTest, MissingFileIsNotFound) {
  const std::string path = dir_ + "/none.safetensors";
  EXPECT_TRUE(IsError(SafetensorsFile::Open(path).status(),
                      absl::StatusCode::kNotFound, {path}));
}

TEST_F(SafetensorsFileTest, FolderIsNotASafetensorsFile) {
  EXPECT_TRUE(IsError(SafetensorsFile::Open(dir_).status(),
                      absl::StatusCode::kInvalidArgument,
                      {dir_, "regular file"}));
}

TEST_F(SafetensorsFileTest, TruncatedWithinLengthPrefixIsDataLoss) {
  const std::string image = Image(kTwoTensors, 24);
  for (size_t size : {0, 1, 3, 7}) {
    EXPECT_TRUE(IsError(OpenImage(image.substr(0, size)),
                        absl::StatusCode::kDataLoss,
                        {"bad.safetensors", "truncated"}))
        << size;
  }
}

TEST_F(SafetensorsFileTest, TruncatedWithinHeaderIsDataLoss) {
  const std::string image = Image(kTwoTensors, 24);
  for (size_t size : {size_t{8}, size_t{9}, 8 + kTwoTensors.size() / 2,
                      8 + kTwoTensors.size() - 1}) {
    EXPECT_TRUE(IsError(OpenImage(image.substr(0, size)),
                        absl::StatusCode::kDataLoss,
                        {"bad.safetensors", "truncated"}))
        << size;
  }
}

TEST_F(SafetensorsFileTest, TruncatedWithinDataIsDataLossNamingTheTensor) {
  const std::string image = Image(kTwoTensors, 24);
  EXPECT_TRUE(IsError(OpenImage(image.substr(0, image.size() - 1)),
                      absl::StatusCode::kDataLoss,
                      {"bad.safetensors", "\"b\"", "truncated"}));
  EXPECT_TRUE(IsError(OpenImage(image.substr(0, image.size() - 9)),
                      absl::StatusCode::kDataLoss,
                      {"bad.safetensors", "\"a\"", "truncated"}));
}

TEST_F(SafetensorsFileTest, EveryTruncationIsAnError) {
  const std::string image = Image(kTwoTensors, 24);
  ASSERT_TRUE(SafetensorsFile::Open(Put("good.safetensors", image)).ok());
  for (size_t size = 0; size < image.size(); ++size) {
    absl::Status status = OpenImage(image.substr(0, size));
    EXPECT_FALSE(status.ok()) << size;
    EXPECT_TRUE(absl::StrContains(status.message(), "bad.safetensors"))
        << status;
  }
}

TEST_F(SafetensorsFileTest, HeaderLengthLargerThanFileIsDataLoss) {
  const std::string image = Prefix(1000) + "{}";
  EXPECT_TRUE(IsError(OpenImage(image), absl::StatusCode::kDataLoss,
                      {"bad.safetensors", "header length 1000"}));
}

TEST_F(SafetensorsFileTest, HeaderLengthOverTheBoundIsRejected) {
  for (uint64_t n : {kMaxHeaderBytes + 1, uint64_t{1} << 63,
                     std::numeric_limits<uint64_t>::max()}) {
    EXPECT_TRUE(IsError(OpenImage(Prefix(n) + "{}      "),
                        absl::StatusCode::kInvalidArgument,
                        {"bad.safetensors", "exceeds the bound"}))
        << n;
  }
}

TEST_F(SafetensorsFileTest, InvalidJsonIsRejected) {
  EXPECT_TRUE(
      IsError(OpenImage(Image(R"({"a":{"dtype":"F32","shape":[1],)", 4)),
              absl::StatusCode::kInvalidArgument,
              {"bad.safetensors", "not valid JSON", "\"a\""}));
  EXPECT_TRUE(IsError(OpenImage(Image("garbage!", 0)),
                      absl::StatusCode::kInvalidArgument,
                      {"bad.safetensors", "not valid JSON"}));
}

TEST_F(SafetensorsFileTest, HeaderThatIsNotUtf8IsRejected) {
  EXPECT_TRUE(IsError(OpenImage(Image("{\"\xff\xfe\":1}", 0)),
                      absl::StatusCode::kInvalidArgument,
                      {"bad.safetensors", "not valid JSON"}));
}

TEST_F(SafetensorsFileTest, NonObjectJsonIsRejected) {
  for (std::string_view json : {"[]", "\"text\"", "42", "null", "true"}) {
    EXPECT_TRUE(IsError(OpenImage(Image(json, 0)),
                        absl::StatusCode::kInvalidArgument,
                        {"bad.safetensors", "must be a JSON object"}))
        << json;
  }
}

TEST_F(SafetensorsFileTest, UnknownDtypeNamesTheTensor) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(
          R"({"w":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}})", 4)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"w\"", "unknown dtype", "F17"}));
}

TEST_F(SafetensorsFileTest, UnsupportedDtypeNamesTheTensor) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(
          R"({"w":{"dtype":"U16","shape":[1],"data_offsets":[0,2]}})", 2)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"w\"", "U16", "not supported"}));
}

TEST_F(SafetensorsFileTest, NegativeDimensionNamesTheTensor) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(
          R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]}})", 4)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"w\"", "negative dimension -1"}));
}

TEST_F(SafetensorsFileTest, FractionalDimensionNamesTheTensor) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(
          R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4)),
      absl::StatusCode::kInvalidArgument, {"bad.safetensors", "\"w\"", "1.5"}));
}

TEST_F(SafetensorsFileTest, ShapeWhoseSizeOverflowsNamesTheTensor) {
  // 2^32 * 2^32 elements wrap to 0 in 64 bits: must not match [0, 0].
  EXPECT_TRUE(
      IsError(OpenImage(Image(R"({"w":{"dtype":"F32","shape":[4294967296,)"
                              R"(4294967296],"data_offsets":[0,0]}})",
                              0)),
              absl::StatusCode::kInvalidArgument,
              {"bad.safetensors", "\"w\"", "too many elements"}));
  EXPECT_TRUE(IsError(
      OpenImage(Image(R"({"w":{"dtype":"F64","shape":[4611686018427387904],)"
                      R"("data_offsets":[0,0]}})",
                      0)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"w\"", "too many"}));
}

TEST_F(SafetensorsFileTest, OffsetsPastTheEndNameTheTensor) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(
          R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16)),
      absl::StatusCode::kDataLoss,
      {"bad.safetensors", "\"w\"", "[8, 24]", "past the end"}));
}

TEST_F(SafetensorsFileTest, BeginAfterEndNamesTheTensor) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(
          R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 16)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"w\"", "begin after end"}));
}

TEST_F(SafetensorsFileTest, OverlappingTensorsNameBoth) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(
          R"({"first":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
          R"("second":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
          24)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"first\"", "\"second\"", "overlap"}));
}

TEST_F(SafetensorsFileTest, TensorInsideAnotherIsAnOverlap) {
  EXPECT_TRUE(IsError(
      OpenImage(
          Image(R"({"outer":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},)"
                R"("mid":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                R"("inner":{"dtype":"U8","shape":[2],"data_offsets":[8,10]}})",
                16)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"outer\"", "overlap"}));
}

TEST_F(SafetensorsFileTest, SizeMismatchNamesTheTensor) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(
          R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}})", 8)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"w\"", "hold 8 bytes", "needs 6"}));
}

TEST_F(SafetensorsFileTest, MetadataThatIsNotAStringMapIsRejected) {
  EXPECT_TRUE(IsError(OpenImage(Image(R"({"__metadata__":{"k":1}})", 0)),
                      absl::StatusCode::kInvalidArgument,
                      {"bad.safetensors", "__metadata__", "\"k\""}));
  EXPECT_TRUE(IsError(OpenImage(Image(R"({"__metadata__":["k"]})", 0)),
                      absl::StatusCode::kInvalidArgument,
                      {"bad.safetensors", "__metadata__"}));
  EXPECT_TRUE(IsError(
      OpenImage(Image(R"({"__metadata__":{"k":{"nested":"v"}}})", 0)),
      absl::StatusCode::kInvalidArgument, {"bad.safetensors", "__metadata__"}));
}

TEST_F(SafetensorsFileTest, DuplicateTensorNameIsRejected) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                      R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                      2)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"w\"", "twice"}));
}

TEST_F(SafetensorsFileTest, MissingFieldNamesTheTensor) {
  EXPECT_TRUE(
      IsError(OpenImage(Image(R"({"w":{"dtype":"U8","shape":[1]}})", 1)),
              absl::StatusCode::kInvalidArgument,
              {"bad.safetensors", "\"w\"", "missing field data_offsets"}));
}

TEST_F(SafetensorsFileTest, UnknownFieldNamesTheTensor) {
  EXPECT_TRUE(IsError(
      OpenImage(Image(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],)"
                      R"("stride":[1]}})",
                      1)),
      absl::StatusCode::kInvalidArgument,
      {"bad.safetensors", "\"w\"", "unknown field", "stride"}));
}

TEST_F(SafetensorsFileTest, DataOffsetsOfWrongLengthNameTheTensor) {
  for (std::string_view offsets : {"[0]", "[0,1,2]", "[]"}) {
    EXPECT_TRUE(IsError(
        OpenImage(Image(
            std::string(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":)") +
                std::string(offsets) + "}}",
            1)),
        absl::StatusCode::kInvalidArgument,
        {"bad.safetensors", "\"w\"", "data_offsets"}))
        << offsets;
  }
}

TEST_F(SafetensorsFileTest, TensorEntryThatIsNotAnObjectNamesTheTensor) {
  EXPECT_TRUE(IsError(OpenImage(Image(R"({"w":[1,2]})", 0)),
                      absl::StatusCode::kInvalidArgument,
                      {"bad.safetensors", "\"w\"", "must be an object"}));
}

// --- Checkpoint folders. ---

class SafetensorsCheckpointTest : public SafetensorsFileTest {
 protected:
  // Writes a shard holding one U8 tensor of 2 bytes per name.
  void PutShard(const std::string& name,
                const std::vector<std::string>& tensors) {
    static const std::string kBytes = "xy";
    std::vector<TensorToWrite> list;
    for (const std::string& t : tensors) {
      list.push_back({.name = t,
                      .dtype = SafetensorsDtype::kU8,
                      .shape = {2},
                      .data = AsBytes(kBytes)});
    }
    ASSERT_TRUE(WriteSafetensorsFile(dir_ + "/" + name, list).ok());
  }
  void PutIndex(const std::string& weight_map) {
    Put("diffusion_pytorch_model.safetensors.index.json",
        absl::StrCat(R"({"metadata":{"total_size":8},"weight_map":)",
                     weight_map, "}"));
  }
  std::string IndexPath() const {
    return dir_ + "/diffusion_pytorch_model.safetensors.index.json";
  }
};

TEST_F(SafetensorsCheckpointTest, OpensWrittenShardedFolder) {
  PutShard("m-1.safetensors", {"a", "b"});
  PutShard("m-2.safetensors", {"c"});
  PutIndex(R"({"a":"m-1.safetensors","b":"m-1.safetensors",)"
           R"("c":"m-2.safetensors"})");
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->Names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(
      absl::EndsWith(checkpoint->Find("c").file->path(), "/m-2.safetensors"));
  // Moving the checkpoint keeps its lookups valid.
  SafetensorsCheckpoint moved = *std::move(checkpoint);
  ASSERT_NE(moved.Find("a").entry, nullptr);
  EXPECT_EQ(HexOf(moved.Find("a").file->Bytes(*moved.Find("a").entry)), "7879");
}

TEST_F(SafetensorsCheckpointTest, OpensFolderWithOneUnusuallyNamedFile) {
  PutShard("model.safetensors", {"a"});
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->Names(), std::vector<std::string>{"a"});
}

TEST_F(SafetensorsCheckpointTest, IndexNamingAMissingShardIsNotFound) {
  PutShard("m-1.safetensors", {"a"});
  PutIndex(R"({"a":"m-1.safetensors","b":"m-2.safetensors"})");
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kNotFound,
                      {IndexPath(), "m-2.safetensors", "\"b\"", "missing"}));
}

TEST_F(SafetensorsCheckpointTest, IndexNamingATensorAbsentFromItsShard) {
  PutShard("m-1.safetensors", {"a"});
  PutShard("m-2.safetensors", {"c"});
  PutIndex(R"({"a":"m-1.safetensors","b":"m-2.safetensors",)"
           R"("c":"m-2.safetensors"})");
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kInvalidArgument,
                      {IndexPath(), "\"b\"", "absent", "m-2.safetensors"}));
}

TEST_F(SafetensorsCheckpointTest, ShardTensorMissingFromTheIndexIsRejected) {
  PutShard("m-1.safetensors", {"a", "extra"});
  PutIndex(R"({"a":"m-1.safetensors"})");
  EXPECT_TRUE(IsError(
      SafetensorsCheckpoint::Open(dir_).status(),
      absl::StatusCode::kInvalidArgument,
      {IndexPath(), "\"extra\"", "m-1.safetensors", "not in the weight_map"}));
}

TEST_F(SafetensorsCheckpointTest, TensorInTwoShardsIsRejectedNamingBoth) {
  PutShard("m-1.safetensors", {"a"});
  PutShard("m-2.safetensors", {"a", "b"});
  PutIndex(R"({"a":"m-1.safetensors","b":"m-2.safetensors"})");
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kInvalidArgument,
                      {"\"a\"", "m-1.safetensors", "m-2.safetensors"}));
}

TEST_F(SafetensorsCheckpointTest, ShardNameWithSlashIsRejected) {
  fs::create_directory(dir_ + "/sub");
  PutShard("sub/m.safetensors", {"a"});
  PutIndex(R"({"a":"sub/m.safetensors"})");
  EXPECT_TRUE(
      IsError(SafetensorsCheckpoint::Open(dir_).status(),
              absl::StatusCode::kInvalidArgument,
              {IndexPath(), "\"a\"", "sub/m.safetensors", "plain file name"}));
}

TEST_F(SafetensorsCheckpointTest, ShardNameWithDotDotIsRejected) {
  PutIndex(R"({"a":"..m.safetensors"})");
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kInvalidArgument,
                      {IndexPath(), "\"a\"", "plain file name"}));
}

TEST_F(SafetensorsCheckpointTest, IndexThatIsNotJsonIsRejected) {
  Put("diffusion_pytorch_model.safetensors.index.json", "{weight_map");
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kInvalidArgument,
                      {IndexPath(), "not valid JSON"}));
}

TEST_F(SafetensorsCheckpointTest, IndexWithoutWeightMapIsRejected) {
  Put("diffusion_pytorch_model.safetensors.index.json", R"({"metadata":{}})");
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kInvalidArgument,
                      {IndexPath(), "weight_map"}));
}

TEST_F(SafetensorsCheckpointTest, WeightMapValueThatIsNotAStringIsRejected) {
  PutIndex(R"({"a":7})");
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kInvalidArgument,
                      {IndexPath(), "\"a\"", "not a string"}));
}

TEST_F(SafetensorsCheckpointTest, MalformedShardErrorNamesTheShard) {
  Put("m-1.safetensors", Prefix(4) + "{}");
  PutIndex(R"({"a":"m-1.safetensors"})");
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kDataLoss, {"m-1.safetensors"}));
}

TEST_F(SafetensorsCheckpointTest, EmptyFolderIsNotFound) {
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kNotFound, {dir_}));
}

TEST_F(SafetensorsCheckpointTest, MissingFolderIsNotFound) {
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_ + "/none").status(),
                      absl::StatusCode::kNotFound, {dir_ + "/none"}));
}

TEST_F(SafetensorsCheckpointTest, SeveralUnpreferredFilesAreAmbiguous) {
  PutShard("one.safetensors", {"a"});
  PutShard("two.safetensors", {"b"});
  EXPECT_TRUE(IsError(SafetensorsCheckpoint::Open(dir_).status(),
                      absl::StatusCode::kInvalidArgument,
                      {dir_, "one.safetensors", "two.safetensors"}));
}

}  // namespace
}  // namespace lpd::engine

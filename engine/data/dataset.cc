#include "engine/data/dataset.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"
#include "nlohmann/json.hpp"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Debian's absl::string_view is not std::string_view.
absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

std::vector<int64_t> WithCount(int64_t n, const std::vector<int64_t>& shape) {
  std::vector<int64_t> full = {n};
  full.insert(full.end(), shape.begin(), shape.end());
  return full;
}

bool IsKnownTensor(const std::string& name) {
  return name == kLatents || name == kEncoderHiddenStates ||
         name == kTextEmbeds || name == kTimeIds;
}

bool IsFloat(SafetensorsDtype dtype) {
  return dtype == SafetensorsDtype::kF64 || dtype == SafetensorsDtype::kF32 ||
         dtype == SafetensorsDtype::kF16 || dtype == SafetensorsDtype::kBF16;
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Fisher–Yates with std::mt19937_64 (whose output the standard fixes);
// std::shuffle is avoided because its algorithm is implementation-defined.
void Shuffle(std::vector<int64_t>& v, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = rng() % i;
    std::swap(v[i - 1], v[j]);
  }
}

// Reads only the header of a safetensors file.
absl::StatusOr<SafetensorsHeader> ReadHeader(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("no such file ", path));
  }
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot stat ", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  unsigned char prefix[8];
  if (size < 8 || !in.read(reinterpret_cast<char*>(prefix), 8)) {
    return absl::DataLossError(
        absl::StrCat(path, ": truncated safetensors file"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  if (n > kMaxHeaderBytes || n > size - 8) {
    return absl::DataLossError(absl::StrCat(
        path, ": safetensors header length ", n, " exceeds the file"));
  }
  std::string header(n, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(n))) {
    return absl::DataLossError(absl::StrCat(path, ": truncated header"));
  }
  return ParseSafetensorsHeader(header, size - 8 - n, path);
}

// Checks a shard's header against the manifest; `label` names the shard.
absl::Status CheckShardHeader(const SafetensorsHeader& header,
                              const DatasetManifest& manifest,
                              const DatasetShardInfo& shard,
                              const std::string& label) {
  std::set<std::string> seen;
  for (const TensorEntry& entry : header.tensors) {
    auto it = manifest.tensors.find(entry.name);
    if (it == manifest.tensors.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": tensor \"", entry.name, "\" is not listed in ",
                       kDatasetManifestFile));
    }
    const std::vector<int64_t> expected =
        WithCount(shard.num_samples, it->second.shape);
    if (entry.shape != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": tensor \"", entry.name, "\" has shape ",
                       ShapeString(entry.shape), ", ", kDatasetManifestFile,
                       " says ", ShapeString(expected)));
    }
    if (entry.dtype != it->second.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": tensor \"", entry.name, "\" has dtype ",
                       AV(DtypeName(entry.dtype)), ", ", kDatasetManifestFile,
                       " says ", AV(DtypeName(it->second.dtype))));
    }
    seen.insert(entry.name);
  }
  for (const auto& [name, info] : manifest.tensors) {
    if (!seen.contains(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": tensor \"", name, "\" is missing"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string DatasetManifestToJson(const DatasetManifest& manifest) {
  json tensors = json::object();
  for (const auto& [name, info] : manifest.tensors) {
    tensors[name] = {{"shape", info.shape},
                     {"dtype", std::string(DtypeName(info.dtype))}};
  }
  json shards = json::array();
  for (const DatasetShardInfo& shard : manifest.shards) {
    shards.push_back(
        {{"file", shard.file}, {"num_samples", shard.num_samples}});
  }
  json j = {{"schema_version", manifest.schema_version},
            {"num_samples", manifest.num_samples},
            {"vae_scaling_factor", manifest.vae_scaling_factor},
            {"tensors", tensors},
            {"shards", shards}};
  return j.dump(2) + "\n";
}

absl::StatusOr<DatasetManifest> ParseDatasetManifest(std::string_view text,
                                                     std::string_view source) {
  const std::string src(source);
  auto error = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(src, ": ", what));
  };
  json j = json::parse(text.begin(), text.end(), nullptr,
                       /*allow_exceptions=*/false);
  if (j.is_discarded()) return error("invalid JSON");
  if (!j.is_object()) return error("expected a JSON object");
  for (const auto& [key, value] : j.items()) {
    if (key != "schema_version" && key != "num_samples" &&
        key != "vae_scaling_factor" && key != "tensors" && key != "shards") {
      return error(absl::StrCat("unknown field \"", key, "\""));
    }
  }
  auto get_int = [&](const json& obj, const std::string& key,
                     const std::string& path) -> absl::StatusOr<int64_t> {
    if (!obj.contains(key)) {
      return error(absl::StrCat("missing field \"", path, "\""));
    }
    const json& v = obj.at(key);
    if (!v.is_number_integer()) {
      return error(absl::StrCat("field \"", path, "\": expected an integer"));
    }
    return v.get<int64_t>();
  };
  DatasetManifest m;
  ASSIGN_OR_RETURN(int64_t version,
                   get_int(j, "schema_version", "schema_version"));
  if (version != kDatasetSchemaVersion) {
    return error(absl::StrCat("schema_version ", version,
                              " is not supported (expected ",
                              kDatasetSchemaVersion, ")"));
  }
  m.schema_version = static_cast<int>(version);
  ASSIGN_OR_RETURN(m.num_samples, get_int(j, "num_samples", "num_samples"));
  if (m.num_samples < 1) return error("num_samples must be ≥ 1");
  if (!j.contains("vae_scaling_factor") ||
      !j.at("vae_scaling_factor").is_number() ||
      !(j.at("vae_scaling_factor").get<double>() > 0)) {
    return error("field \"vae_scaling_factor\": expected a positive number");
  }
  m.vae_scaling_factor = j.at("vae_scaling_factor").get<double>();

  if (!j.contains("tensors") || !j.at("tensors").is_object()) {
    return error("field \"tensors\": expected an object");
  }
  for (const auto& [name, t] : j.at("tensors").items()) {
    const std::string path = absl::StrCat("tensors.", name);
    if (!IsKnownTensor(name)) {
      return error(absl::StrCat("unknown tensor \"", name,
                                "\" (known: latents, encoder_hidden_states, "
                                "text_embeds, time_ids)"));
    }
    if (!t.is_object()) return error(absl::StrCat(path, ": expected object"));
    for (const auto& [key, value] : t.items()) {
      if (key != "shape" && key != "dtype") {
        return error(absl::StrCat(path, ": unknown field \"", key, "\""));
      }
    }
    DatasetTensorInfo info;
    if (!t.contains("shape") || !t.at("shape").is_array()) {
      return error(absl::StrCat(path, ".shape: expected an array"));
    }
    for (const json& d : t.at("shape")) {
      if (!d.is_number_integer() || d.get<int64_t>() < 1) {
        return error(absl::StrCat(path, ".shape: expected positive integers"));
      }
      info.shape.push_back(d.get<int64_t>());
    }
    if (!t.contains("dtype") || !t.at("dtype").is_string()) {
      return error(absl::StrCat(path, ".dtype: expected a string"));
    }
    const std::string dtype_name = t.at("dtype").get<std::string>();
    auto dtype = ParseDtype(dtype_name);
    if (!dtype.ok() || !IsFloat(*dtype)) {
      return error(absl::StrCat(path, ".dtype: \"", dtype_name,
                                "\" is not F64, F32, F16 or BF16"));
    }
    info.dtype = *dtype;
    m.tensors[name] = std::move(info);
  }
  for (const char* required : {kLatents, kEncoderHiddenStates}) {
    if (!m.tensors.contains(required)) {
      return error(absl::StrCat("tensors: \"", required, "\" is missing"));
    }
  }
  if (m.tensors.contains(kTextEmbeds) != m.tensors.contains(kTimeIds)) {
    return error("tensors: text_embeds and time_ids come together");
  }

  if (!j.contains("shards") || !j.at("shards").is_array() ||
      j.at("shards").empty()) {
    return error("field \"shards\": expected a non-empty array");
  }
  std::set<std::string> files;
  int64_t total = 0;
  for (size_t i = 0; i < j.at("shards").size(); ++i) {
    const json& s = j.at("shards")[i];
    const std::string path = absl::StrCat("shards[", i, "]");
    if (!s.is_object()) return error(absl::StrCat(path, ": expected object"));
    for (const auto& [key, value] : s.items()) {
      if (key != "file" && key != "num_samples") {
        return error(absl::StrCat(path, ": unknown field \"", key, "\""));
      }
    }
    DatasetShardInfo shard;
    if (!s.contains("file") || !s.at("file").is_string()) {
      return error(absl::StrCat(path, ".file: expected a string"));
    }
    shard.file = s.at("file").get<std::string>();
    if (shard.file.empty() || shard.file.find('/') != std::string::npos ||
        shard.file.find('\\') != std::string::npos ||
        shard.file.find("..") != std::string::npos) {
      return error(absl::StrCat(path, ".file: \"", shard.file,
                                "\" is not a plain file name"));
    }
    if (!files.insert(shard.file).second) {
      return error(
          absl::StrCat(path, ".file: \"", shard.file, "\" is listed twice"));
    }
    ASSIGN_OR_RETURN(shard.num_samples,
                     get_int(s, "num_samples", path + ".num_samples"));
    if (shard.num_samples < 1) {
      return error(absl::StrCat(path, ".num_samples: must be ≥ 1"));
    }
    total += shard.num_samples;
    m.shards.push_back(std::move(shard));
  }
  if (total != m.num_samples) {
    return error(absl::StrCat("shards hold ", total,
                              " samples in all, num_samples says ",
                              m.num_samples));
  }
  return m;
}

absl::Status PrepareNewDatasetFolder(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  if (fs::exists(fs::path(dir) / kDatasetManifestFile)) {
    return absl::AlreadyExistsError(
        absl::StrCat(dir, " already holds a ", kDatasetManifestFile));
  }
  return absl::OkStatus();
}

absl::Status WriteDatasetManifest(const std::string& dir,
                                  const DatasetManifest& manifest) {
  const std::string path = (fs::path(dir) / kDatasetManifestFile).string();
  std::string temp = path + ".tmpXXXXXX";
  const int fd = mkstemp(temp.data());
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", temp));
  }
  const std::string text = DatasetManifestToJson(manifest);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      close(fd);
      unlink(temp.c_str());
      return absl::ErrnoToStatus(err, absl::StrCat("cannot write ", temp));
    }
    done += static_cast<size_t>(n);
  }
  fchmod(fd, 0644);
  if (fsync(fd) != 0 || close(fd) != 0) {
    const int err = errno;
    unlink(temp.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat("cannot sync ", temp));
  }
  if (rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    unlink(temp.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat("cannot rename to ", path));
  }
  if (const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY); dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return absl::OkStatus();
}

std::string Dataset::ShardLabel(int shard) const {
  return absl::StrCat("dataset shard ", shard, " (",
                      manifest_.shards[shard].file, ")");
}

absl::StatusOr<std::unique_ptr<Dataset>> Dataset::Open(const std::string& dir,
                                                       int max_mapped_shards) {
  if (max_mapped_shards < 1) {
    return absl::InvalidArgumentError("max_mapped_shards must be ≥ 1");
  }
  const std::string manifest_path =
      (fs::path(dir) / kDatasetManifestFile).string();
  std::ifstream in(manifest_path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("dataset ", dir, ": cannot open ", manifest_path));
  }
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(DatasetManifest manifest,
                   ParseDatasetManifest(text.str(), manifest_path));
  std::unique_ptr<Dataset> dataset(new Dataset());
  dataset->dir_ = dir;
  dataset->manifest_ = std::move(manifest);
  dataset->max_mapped_shards_ = max_mapped_shards;
  int64_t begin = 0;
  for (size_t i = 0; i < dataset->manifest_.shards.size(); ++i) {
    const DatasetShardInfo& shard = dataset->manifest_.shards[i];
    const std::string label = dataset->ShardLabel(static_cast<int>(i));
    const std::string path = (fs::path(dir) / shard.file).string();
    auto header = ReadHeader(path);
    if (!header.ok()) {
      return absl::Status(header.status().code(),
                          absl::StrCat(label, ": ", header.status().message()));
    }
    RETURN_IF_ERROR(
        CheckShardHeader(*header, dataset->manifest_, shard, label));
    dataset->shard_begin_.push_back(begin);
    begin += shard.num_samples;
  }
  return dataset;
}

absl::Status Dataset::Validate(const UNetConfig& config) const {
  const std::string label = ShardLabel(0);
  const int64_t n0 = manifest_.shards[0].num_samples;
  auto shape_of = [&](const char* name) {
    return ShapeString(WithCount(n0, manifest_.tensors.at(name).shape));
  };
  auto fail = [&](const char* name, const std::string& what) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": tensor \"", name, "\" has shape ",
                     shape_of(name), ", model expects ", what));
  };
  const std::vector<int64_t>& lat = manifest_.tensors.at(kLatents).shape;
  if (lat.size() != 3) return fail(kLatents, "[N,C,h,w]");
  if (lat[0] != config.in_channels) {
    return fail(kLatents, absl::StrCat(config.in_channels, " channels"));
  }
  const int64_t factor =
      int64_t{1} << std::max<int64_t>(
          0, static_cast<int64_t>(config.down_block_types.size()) - 1);
  if (lat[1] % factor != 0 || lat[2] % factor != 0) {
    return fail(kLatents,
                absl::StrCat("height and width divisible by ", factor));
  }
  const std::vector<int64_t>& ehs =
      manifest_.tensors.at(kEncoderHiddenStates).shape;
  if (ehs.size() != 2) return fail(kEncoderHiddenStates, "[N,L,D]");
  if (ehs[1] != config.cross_attention_dim) {
    return fail(kEncoderHiddenStates, absl::StrCat("D = cross_attention_dim ",
                                                   config.cross_attention_dim));
  }
  if (config.text_time_embedding) {
    if (!has_text_time()) {
      return absl::InvalidArgumentError(
          absl::StrCat("dataset ", dir_,
                       ": the model uses text_time conditioning but the "
                       "dataset has no \"text_embeds\" and \"time_ids\""));
    }
    const std::vector<int64_t>& te = manifest_.tensors.at(kTextEmbeds).shape;
    const std::vector<int64_t>& ti = manifest_.tensors.at(kTimeIds).shape;
    if (te.size() != 1) return fail(kTextEmbeds, "[N,P]");
    if (ti.size() != 1) return fail(kTimeIds, "[N,K]");
    const int64_t got = ti[0] * config.addition_time_embed_dim + te[0];
    if (got != config.projection_class_embeddings_input_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          label, ": tensors \"time_ids\" ", shape_of(kTimeIds),
          " and \"text_embeds\" ", shape_of(kTextEmbeds), " give K·",
          config.addition_time_embed_dim, " + P = ", got,
          ", model expects projection_class_embeddings_input_dim ",
          config.projection_class_embeddings_input_dim));
    }
  }
  return absl::OkStatus();
}

int64_t Dataset::shard_opens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return shard_opens_;
}

int Dataset::mapped_shards() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(lru_.size());
}

absl::StatusOr<const SafetensorsFile*> Dataset::AcquireShard(int shard) {
  for (auto it = lru_.begin(); it != lru_.end(); ++it) {
    if (it->first == shard) {
      lru_.splice(lru_.begin(), lru_, it);
      return lru_.front().second.get();
    }
  }
  const std::string label = ShardLabel(shard);
  auto file = SafetensorsFile::Open(
      (fs::path(dir_) / manifest_.shards[shard].file).string());
  ++shard_opens_;
  if (!file.ok()) {
    return absl::Status(file.status().code(),
                        absl::StrCat(label, ": ", file.status().message()));
  }
  if (absl::Status s = CheckShardHeader((*file)->header(), manifest_,
                                        manifest_.shards[shard], label);
      !s.ok()) {
    return absl::DataLossError(
        absl::StrCat("changed since the dataset was opened: ", s.message()));
  }
  while (static_cast<int>(lru_.size()) >= max_mapped_shards_) lru_.pop_back();
  lru_.emplace_front(shard, std::move(*file));
  return lru_.front().second.get();
}

absl::StatusOr<DatasetBatch> Dataset::GetSamples(
    std::span<const int64_t> indices, torch::Device device,
    torch::Dtype dtype) {
  // (shard, row within shard, batch position), sorted so each shard is
  // visited once.
  struct Row {
    int shard;
    int64_t row;
    int64_t pos;
  };
  std::vector<Row> rows;
  rows.reserve(indices.size());
  for (size_t pos = 0; pos < indices.size(); ++pos) {
    const int64_t index = indices[pos];
    if (index < 0 || index >= size()) {
      return absl::OutOfRangeError(
          absl::StrCat("dataset ", dir_, ": sample index ", index,
                       " is outside [0, ", size(), ")"));
    }
    const int shard = static_cast<int>(
        std::upper_bound(shard_begin_.begin(), shard_begin_.end(), index) -
        shard_begin_.begin() - 1);
    rows.push_back(
        {shard, index - shard_begin_[shard], static_cast<int64_t>(pos)});
  }
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return a.shard < b.shard;
  });
  return GuardTorch(
      "reading dataset samples", [&]() -> absl::StatusOr<DatasetBatch> {
        const int64_t batch = static_cast<int64_t>(indices.size());
        std::map<std::string, torch::Tensor> out;
        std::map<std::string, size_t> row_bytes;
        for (const auto& [name, info] : manifest_.tensors) {
          out[name] = torch::empty(WithCount(batch, info.shape),
                                   torch::dtype(ToTorchDtype(info.dtype)));
          size_t n = DtypeSize(info.dtype);
          for (int64_t d : info.shape) n *= static_cast<size_t>(d);
          row_bytes[name] = n;
        }
        std::lock_guard<std::mutex> lock(mu_);
        for (size_t i = 0; i < rows.size();) {
          const int shard = rows[i].shard;
          ASSIGN_OR_RETURN(const SafetensorsFile* file, AcquireShard(shard));
          size_t end = i;
          while (end < rows.size() && rows[end].shard == shard) ++end;
          for (auto& [name, tensor] : out) {
            const TensorEntry* entry = file->Find(name);
            std::span<const std::byte> bytes = file->Bytes(*entry);
            auto* dst = static_cast<std::byte*>(tensor.data_ptr());
            const size_t rb = row_bytes[name];
            for (size_t k = i; k < end; ++k) {
              std::memcpy(dst + rows[k].pos * rb,
                          bytes.data() + rows[k].row * rb, rb);
            }
          }
          i = end;
        }
        DatasetBatch result;
        auto convert = [&](const char* name) {
          auto it = out.find(name);
          return it == out.end() ? torch::Tensor()
                                 : it->second.to(device, dtype);
        };
        result.latents = convert(kLatents);
        result.encoder_hidden_states = convert(kEncoderHiddenStates);
        result.text_embeds = convert(kTextEmbeds);
        result.time_ids = convert(kTimeIds);
        return result;
      });
}

absl::StatusOr<DatasetSplit> SplitDataset(int64_t num_samples, uint64_t seed,
                                          int64_t calibration_samples,
                                          int64_t eval_samples) {
  if (calibration_samples < 0 || eval_samples < 0) {
    return absl::InvalidArgumentError(
        "calibration_samples and eval_samples must be ≥ 0");
  }
  if (calibration_samples + eval_samples >= num_samples) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration_samples (", calibration_samples, ") + eval_samples (",
        eval_samples, ") leave no training samples out of ", num_samples));
  }
  std::vector<int64_t> perm(static_cast<size_t>(num_samples));
  for (int64_t i = 0; i < num_samples; ++i) perm[i] = i;
  Shuffle(perm, seed);
  DatasetSplit split;
  const auto e = perm.begin() + eval_samples;
  const auto c = e + calibration_samples;
  split.eval.assign(perm.begin(), e);
  split.calibration.assign(e, c);
  split.train.assign(c, perm.end());
  std::sort(split.eval.begin(), split.eval.end());
  std::sort(split.calibration.begin(), split.calibration.end());
  std::sort(split.train.begin(), split.train.end());
  return split;
}

absl::StatusOr<BatchSampler> BatchSampler::Create(std::vector<int64_t> indices,
                                                  int64_t batch_size,
                                                  uint64_t seed) {
  if (indices.empty()) {
    return absl::InvalidArgumentError("batch sampler: no indices to sample");
  }
  if (batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch sampler: batch_size must be ≥ 1, got ", batch_size));
  }
  BatchSampler sampler;
  sampler.indices_ = std::move(indices);
  sampler.batch_size_ = batch_size;
  sampler.seed_ = seed;
  return sampler;
}

const std::vector<int64_t>& BatchSampler::EpochPermutation(
    int64_t epoch) const {
  if (epoch != cached_epoch_) {
    cached_ = indices_;
    Shuffle(cached_,
            SplitMix64(seed_ ^ SplitMix64(static_cast<uint64_t>(epoch))));
    cached_epoch_ = epoch;
  }
  return cached_;
}

int64_t BatchSampler::EpochOf(int64_t step) const {
  return step * batch_size_ / epoch_size();
}

std::vector<int64_t> BatchSampler::BatchIndices(int64_t step) const {
  std::vector<int64_t> batch;
  batch.reserve(static_cast<size_t>(batch_size_));
  const int64_t n = epoch_size();
  for (int64_t p = step * batch_size_; p < (step + 1) * batch_size_; ++p) {
    batch.push_back(EpochPermutation(p / n)[static_cast<size_t>(p % n)]);
  }
  return batch;
}

}  // namespace lpd::engine

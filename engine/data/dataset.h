// Training sets (DESIGN §4.7): a folder with `dataset.json` and safetensors
// shards, read shard by shard on demand; the seeded calibration / eval / train
// split and a resumable seeded batch sampler. Includes LibTorch types only.
//
// dataset.json:
//   {"schema_version": 1, "num_samples": N, "vae_scaling_factor": 0.13025,
//    "tensors": {"latents": {"shape": [4, 64, 64], "dtype": "F32"}, ...},
//    "shards": [{"file": "shard-00000.safetensors", "num_samples": 256}, ...]}
// Shapes in "tensors" are per sample; each shard holds every listed tensor
// with its shard's sample count prepended. Known tensors: `latents` [C,h,w]
// and `encoder_hidden_states` [L,D] (required), `text_embeds` [P] and
// `time_ids` [K] (both or neither; required by text_time models).
#ifndef LPD_ENGINE_DATA_DATASET_H_
#define LPD_ENGINE_DATA_DATASET_H_

#include <torch/types.h>

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/formats/safetensors.h"
#include "engine/formats/unet_config.h"

namespace lpd::engine {

inline constexpr int kDatasetSchemaVersion = 1;
inline constexpr char kDatasetManifestFile[] = "dataset.json";
inline constexpr char kLatents[] = "latents";
inline constexpr char kEncoderHiddenStates[] = "encoder_hidden_states";
inline constexpr char kTextEmbeds[] = "text_embeds";
inline constexpr char kTimeIds[] = "time_ids";
// VAE scaling factors (DESIGN §4.7).
inline constexpr double kSd1VaeScalingFactor = 0.18215;
inline constexpr double kSdxlVaeScalingFactor = 0.13025;

struct DatasetTensorInfo {
  std::vector<int64_t> shape;  // per sample
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
};

struct DatasetShardInfo {
  std::string file;  // a plain file name inside the dataset folder
  int64_t num_samples = 0;
};

struct DatasetManifest {
  int schema_version = kDatasetSchemaVersion;
  int64_t num_samples = 0;
  double vae_scaling_factor = 0;
  std::map<std::string, DatasetTensorInfo> tensors;
  std::vector<DatasetShardInfo> shards;
};

// dataset.json text (pretty-printed) and its strict parser: wrong types,
// unknown fields, unknown tensor names, a schema version other than 1, shard
// counts that do not sum to num_samples, shard names with '/', '\' or "..",
// duplicate shard names and float dtypes other than F64/F32/F16/BF16 are
// InvalidArgument naming `source` and the field.
std::string DatasetManifestToJson(const DatasetManifest& manifest);
absl::StatusOr<DatasetManifest> ParseDatasetManifest(std::string_view json,
                                                     std::string_view source);
// Creates `dir` (and its parents) for a new dataset. AlreadyExists when it
// already holds a dataset.json, Internal when it cannot be created.
absl::Status PrepareNewDatasetFolder(const std::string& dir);
// Writes `<dir>/dataset.json` atomically (temporary file, fsync, rename).
absl::Status WriteDatasetManifest(const std::string& dir,
                                  const DatasetManifest& manifest);

// A batch, one row per requested index in request order. text_embeds and
// time_ids are undefined tensors when the dataset has none.
struct DatasetBatch {
  torch::Tensor latents;                // [B, C, h, w]
  torch::Tensor encoder_hidden_states;  // [B, L, D]
  torch::Tensor text_embeds;            // [B, P]
  torch::Tensor time_ids;               // [B, K]
};

class Dataset {
 public:
  // Reads dataset.json and every shard's safetensors header (not the data)
  // and checks: each shard exists, holds exactly the tensors dataset.json
  // lists, with its dtype and shape [shard num_samples, per-sample shape...].
  // Errors name the shard: `dataset shard 3 (shard-00003.safetensors): tensor
  // "latents" has shape [8,4,32,32], dataset.json says [8,4,64,64]`.
  // At most `max_mapped_shards` (≥ 1) shards stay memory-mapped at once.
  static absl::StatusOr<std::unique_ptr<Dataset>> Open(
      const std::string& dir, int max_mapped_shards = 2);

  // Checks the tensors fit `config`: latent channels = in_channels, latent
  // h and w ≥ 1 and divisible by 2^(down blocks − 1), encoder_hidden_states
  // [L ≥ 1, cross_attention_dim]; for text_time models text_embeds [P] and
  // time_ids [K] present with K·addition_time_embed_dim + P =
  // projection_class_embeddings_input_dim. Errors are InvalidArgument in the
  // terms of shard 0, e.g. `dataset shard 0 (shard-00000.safetensors):
  // tensor "latents" has shape [8,3,64,64], model expects 4 channels`.
  // (Open already checked that every shard agrees with dataset.json.)
  absl::Status Validate(const UNetConfig& config) const;

  const std::string& dir() const { return dir_; }
  const DatasetManifest& manifest() const { return manifest_; }
  int64_t size() const { return manifest_.num_samples; }
  bool has_text_time() const { return manifest_.tensors.contains(kTextEmbeds); }

  // The samples at `indices` (each in [0, size()), repeats allowed), copied
  // from the shards that hold them and converted to `device` and `dtype`.
  // Shards are mapped on first use and kept in an LRU of max_mapped_shards.
  // OutOfRange for a bad index; NotFound/DataLoss when a shard disappeared or
  // changed since Open. Thread-safe (calls are serialized).
  absl::StatusOr<DatasetBatch> GetSamples(std::span<const int64_t> indices,
                                          torch::Device device = torch::kCPU,
                                          torch::Dtype dtype = torch::kFloat32);

  // How many times a shard file was opened (mapped) so far, and how many are
  // mapped now: for tests and metrics.
  int64_t shard_opens() const;
  int mapped_shards() const;

 private:
  Dataset() = default;
  // The mapped file of shard `shard`, opening it (and evicting the least
  // recently used one) if needed. Requires mu_.
  absl::StatusOr<const SafetensorsFile*> AcquireShard(int shard);
  std::string ShardLabel(int shard) const;

  std::string dir_;
  DatasetManifest manifest_;
  std::vector<int64_t> shard_begin_;  // first global index of each shard
  int max_mapped_shards_ = 2;

  mutable std::mutex mu_;
  std::list<std::pair<int, std::unique_ptr<SafetensorsFile>>>
      lru_;  // MRU first
  int64_t shard_opens_ = 0;
};

// The split of a training set's indices [0, num_samples) into three disjoint,
// ascending lists. Rule: P = a permutation of [0, N) by Fisher–Yates driven
// by std::mt19937_64 seeded with `seed` (for i = N−1 … 1: swap P[i] with
// P[rng() % (i + 1)]); eval = P[0, E), calibration = P[E, E + C), train =
// P[E + C, N); each list is then sorted. So eval depends only on (seed, N,
// E): changing calibration_samples never moves samples in or out of eval.
// InvalidArgument when E or C is negative or E + C ≥ N (train would be
// empty).
struct DatasetSplit {
  std::vector<int64_t> calibration;
  std::vector<int64_t> eval;
  std::vector<int64_t> train;
};
absl::StatusOr<DatasetSplit> SplitDataset(int64_t num_samples, uint64_t seed,
                                          int64_t calibration_samples,
                                          int64_t eval_samples);

// Seeded batches over a list of indices (the train split). The stream of
// samples is epoch 0's permutation of `indices`, then epoch 1's, ...; epoch
// e's permutation is Fisher–Yates with std::mt19937_64 seeded with
// SplitMix64(seed ⊕ SplitMix64(e)). Batch `step` is stream positions
// [step·B, (step+1)·B), so a batch may straddle two epochs. BatchIndices is a
// pure function of (indices, batch_size, seed, step): resuming at any step
// reproduces the run exactly. Not thread-safe (caches one epoch).
class BatchSampler {
 public:
  // InvalidArgument for empty `indices` or batch_size < 1.
  static absl::StatusOr<BatchSampler> Create(std::vector<int64_t> indices,
                                             int64_t batch_size, uint64_t seed);

  std::vector<int64_t> BatchIndices(int64_t step) const;
  // The epoch of the batch's first sample.
  int64_t EpochOf(int64_t step) const;
  int64_t batch_size() const { return batch_size_; }
  int64_t epoch_size() const { return static_cast<int64_t>(indices_.size()); }

 private:
  BatchSampler() = default;
  const std::vector<int64_t>& EpochPermutation(int64_t epoch) const;

  std::vector<int64_t> indices_;
  int64_t batch_size_ = 1;
  uint64_t seed_ = 0;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> cached_;
};

}  // namespace lpd::engine

#endif  // LPD_ENGINE_DATA_DATASET_H_

// Synthetic training sets of any shape for a model (tests, benchmarks, smoke
// runs of distillation): random tensors in the format of dataset.h.
#ifndef LPD_ENGINE_DATA_SYNTHETIC_DATASET_H_
#define LPD_ENGINE_DATA_SYNTHETIC_DATASET_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/data/dataset.h"
#include "engine/formats/safetensors.h"
#include "engine/formats/unet_config.h"

namespace lpd::engine {

struct SyntheticDatasetOptions {
  int64_t num_samples = 64;
  // Latent height and width; 0: the config's sample_size.
  int64_t latent_size = 0;
  // L of encoder_hidden_states [L, cross_attention_dim].
  int64_t seq_len = 77;
  // Samples per shard (the last shard may hold fewer).
  int64_t shard_size = 256;
  uint64_t seed = 0;
  // K of time_ids for text_time models; 0: 6 (SDXL base) unless only 5 gives
  // P = 1280 (the refiner), and 5 when 6 leaves no room for P.
  int64_t time_ids_dim = 0;
  // 0: 0.13025 for text_time models, else 0.18215.
  double vae_scaling_factor = 0;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
};

// Writes a dataset that fits `config` into `dir` (created if missing; an
// existing dataset.json there is AlreadyExists): shards
// `shard-00000.safetensors`, ... through the atomic writer, then dataset.json
// last. Content, per shard from a generator seeded by (seed, shard), so one
// shard is in memory at a time:
//   latents: 0.8·N(0,1) + 0.6·(N(0,1) on an 8× coarser grid, bilinearly
//     upsampled): unit variance with some low-frequency structure;
//   encoder_hidden_states: N(0,1);
//   text_embeds: N(0,1);
//   time_ids: SDXL's (original h, original w, crop top, crop left, target h,
//     target w) in pixels (target = 8·latent size, original ≥ target, crops
//     < original − target + 1); for K = 5 the last entry is an aesthetic
//     score in [5, 7); further entries (K > 6) are 0.
// Returns the manifest written.
absl::StatusOr<DatasetManifest> WriteSyntheticDataset(
    const UNetConfig& config, const SyntheticDatasetOptions& options,
    const std::string& dir);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_DATA_SYNTHETIC_DATASET_H_

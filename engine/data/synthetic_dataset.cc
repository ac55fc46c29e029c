#include "engine/data/synthetic_dataset.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<int64_t> ResolveTimeIdsDim(const UNetConfig& config,
                                          int64_t requested) {
  const int64_t a = config.addition_time_embed_dim;
  const int64_t total = config.projection_class_embeddings_input_dim;
  int64_t k = requested;
  if (k == 0) {
    if (total - 6 * a != 1280 && total - 5 * a == 1280) {
      k = 5;
    } else if (total - 6 * a > 0) {
      k = 6;
    } else {
      k = 5;
    }
  }
  if (k < 1 || total - k * a < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "time_ids dimension ", k, " leaves no room for text_embeds: ", k, "·",
        a, " ≥ projection_class_embeddings_input_dim ", total));
  }
  return k;
}

}  // namespace

absl::StatusOr<DatasetManifest> WriteSyntheticDataset(
    const UNetConfig& config, const SyntheticDatasetOptions& options,
    const std::string& dir) {
  const int64_t size =
      options.latent_size > 0 ? options.latent_size : config.sample_size;
  if (options.num_samples < 1 || options.shard_size < 1 ||
      options.seq_len < 1 || size < 1) {
    return absl::InvalidArgumentError(
        "synthetic dataset: samples, shard size, sequence length and latent "
        "size must be ≥ 1");
  }
  const int64_t factor =
      int64_t{1} << std::max<int64_t>(
          0, static_cast<int64_t>(config.down_block_types.size()) - 1);
  if (size % factor != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "synthetic dataset: latent size ", size,
        " is not divisible by the model's downsampling factor ", factor));
  }
  DatasetManifest m;
  m.num_samples = options.num_samples;
  m.vae_scaling_factor =
      options.vae_scaling_factor > 0
          ? options.vae_scaling_factor
          : (config.text_time_embedding ? kSdxlVaeScalingFactor
                                        : kSd1VaeScalingFactor);
  m.tensors[kLatents] = {{config.in_channels, size, size}, options.dtype};
  m.tensors[kEncoderHiddenStates] = {
      {options.seq_len, config.cross_attention_dim}, options.dtype};
  int64_t k = 0;
  if (config.text_time_embedding) {
    ASSIGN_OR_RETURN(k, ResolveTimeIdsDim(config, options.time_ids_dim));
    m.tensors[kTextEmbeds] = {{config.projection_class_embeddings_input_dim -
                               k * config.addition_time_embed_dim},
                              options.dtype};
    m.tensors[kTimeIds] = {{k}, options.dtype};
  }
  for (int64_t begin = 0, i = 0; begin < options.num_samples;
       begin += options.shard_size, ++i) {
    m.shards.push_back(
        {absl::StrFormat("shard-%05d.safetensors", i),
         std::min(options.shard_size, options.num_samples - begin)});
  }

  RETURN_IF_ERROR(PrepareNewDatasetFolder(dir));
  const torch::Dtype dtype = ToTorchDtype(options.dtype);
  for (size_t i = 0; i < m.shards.size(); ++i) {
    const int64_t n = m.shards[i].num_samples;
    RETURN_IF_ERROR(GuardTorch("generating a synthetic shard", [&]() {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
          options.seed * 0x9E3779B97F4A7C15ull + i + 1);
      const auto f32 = torch::dtype(torch::kFloat32);
      std::map<std::string, torch::Tensor> tensors;
      const int64_t coarse = std::max<int64_t>(1, size / 8);
      torch::Tensor low =
          torch::randn({n, config.in_channels, coarse, coarse}, gen, f32);
      low = torch::nn::functional::interpolate(
          low, torch::nn::functional::InterpolateFuncOptions()
                   .size(std::vector<int64_t>{size, size})
                   .mode(torch::kBilinear)
                   .align_corners(false));
      tensors[kLatents] =
          (0.8 * torch::randn({n, config.in_channels, size, size}, gen, f32) +
           0.6 * low)
              .to(dtype);
      tensors[kEncoderHiddenStates] =
          torch::randn({n, options.seq_len, config.cross_attention_dim}, gen,
                       f32)
              .to(dtype);
      if (config.text_time_embedding) {
        tensors[kTextEmbeds] =
            torch::randn({n, m.tensors[kTextEmbeds].shape[0]}, gen, f32)
                .to(dtype);
        const double target = 8.0 * static_cast<double>(size);
        torch::Tensor orig =
            (target * (1 + 0.5 * torch::rand({n, 2}, gen, f32))).floor();
        torch::Tensor crop =
            ((orig - target + 1) * torch::rand({n, 2}, gen, f32)).floor();
        torch::Tensor tail = k == 5 ? 5 + 2 * torch::rand({n, 1}, gen, f32)
                                    : torch::full({n, 2}, target, f32);
        torch::Tensor ids = torch::cat({orig, crop, tail}, 1);
        if (ids.size(1) < k) {
          ids = torch::cat({ids, torch::zeros({n, k - ids.size(1)}, f32)}, 1);
        }
        tensors[kTimeIds] = ids.narrow(1, 0, k).to(dtype);
      }
      return WriteTensors((fs::path(dir) / m.shards[i].file).string(), tensors,
                          {{"format", "pt"}});
    }));
  }
  RETURN_IF_ERROR(WriteDatasetManifest(dir, m));
  return m;
}

}  // namespace lpd::engine

// The configuration of a diffusers UNet2DConditionModel (`config.json`), for
// the variants SD-v1.x, SD-2.x and SDXL (base and refiner) use. Free of
// LibTorch.
#ifndef LPD_ENGINE_FORMATS_UNET_CONFIG_H_
#define LPD_ENGINE_FORMATS_UNET_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace lpd::engine {

enum class DownBlockType { kDownBlock2D, kCrossAttnDownBlock2D };
enum class UpBlockType { kUpBlock2D, kCrossAttnUpBlock2D };

// Every field is resolved to per-block lists where diffusers accepts an int
// or a list, so the model builder never has to broadcast.
struct UNetConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  int64_t sample_size = 64;
  std::vector<DownBlockType> down_block_types;
  std::vector<UpBlockType> up_block_types;
  std::vector<int64_t> block_out_channels;
  // Per down block (config may give one int).
  std::vector<int64_t> layers_per_block;
  // Per down block: number of attention heads. diffusers' config calls this
  // `attention_head_dim` (a historical misnomer); `num_attention_heads` must
  // be null in the configs it writes.
  std::vector<int64_t> attention_heads;
  // Per down block (config: int or list).
  std::vector<int64_t> transformer_layers_per_block;
  // Per up block, in up-block order (from
  // `reverse_transformer_layers_per_block` when given, else the reverse of
  // `transformer_layers_per_block`).
  std::vector<int64_t> up_transformer_layers_per_block;
  int64_t cross_attention_dim = 768;
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  bool flip_sin_to_cos = true;
  int64_t freq_shift = 0;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  // SDXL: addition_embed_type "text_time".
  bool text_time_embedding = false;
  int64_t addition_time_embed_dim = 0;
  int64_t projection_class_embeddings_input_dim = 0;

  // block_out_channels[0] * 4, the width of the timestep embedding.
  int64_t time_embed_dim() const { return block_out_channels.at(0) * 4; }
};

// Parses config.json text. Every field the engine reads is checked for type
// and range; every field it does not implement must hold the value that means
// "off" (null, false, "default", the standard activation ...), otherwise the
// error names the field and its value, e.g.
// `config.json: field "class_embed_type": value "timestep" is not supported`.
// Unknown fields (not part of UNet2DConditionModel's config) are also
// rejected by name, except ones starting with "_" (`_class_name`, ...).
// `source` names the file in messages.
//
// Missing fields take diffusers' defaults (e.g. cross_attention_dim 1280,
// block_out_channels [320, 640, 1280, 1280]); a null or missing sample_size
// gives 64 (the model does not depend on it). `dropout` is accepted in [0, 1]
// but never applied: the engine runs inference and distillation without it.
// `addition_embed_type_num_heads` (read only by the rejected "text" type) is
// checked for type only. Invalid JSON is reported as `source:line:column`.
absl::StatusOr<UNetConfig> ParseUNetConfig(std::string_view json_text,
                                           std::string_view source);

// Reads and parses `<dir>/config.json`.
absl::StatusOr<UNetConfig> LoadUNetConfig(const std::string& dir);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_FORMATS_UNET_CONFIG_H_

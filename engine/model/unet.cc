#include "engine/model/unet.h"

#include <ATen/ATen.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "selection/units.h"

namespace lpd::engine {
namespace {

// Parameter counts of the blocks, from their shapes (they must equal what
// the built modules hold: unet_test checks it).
int64_t ResnetParameters(int64_t in, int64_t out, int64_t temb) {
  int64_t n = 2 * in + (in * out * 9 + out) + (temb * out + out) + 2 * out +
              (out * out * 9 + out);
  if (in != out) n += in * out + out;
  return n;
}

int64_t TransformerBlockParameters(int64_t dim, int64_t cross) {
  const int64_t norms = 3 * 2 * dim;
  const int64_t attn1 = 3 * dim * dim + dim * dim + dim;
  const int64_t attn2 = dim * dim + 2 * cross * dim + dim * dim + dim;
  const int64_t ff = dim * 8 * dim + 8 * dim + 4 * dim * dim + dim;
  return norms + attn1 + attn2 + ff;
}

// Norm, proj_in and proj_out of a Transformer2DModel.
int64_t AttentionShellParameters(int64_t channels) {
  return 2 * channels + 2 * (channels * channels + channels);
}

std::string Join(const std::vector<std::string>& names, size_t limit = 20) {
  std::vector<std::string> shown(names.begin(),
                                 names.begin() + std::min(limit, names.size()));
  std::string text = absl::StrJoin(shown, ", ");
  if (names.size() > limit) {
    absl::StrAppend(&text, ", ... (", names.size() - limit, " more)");
  }
  return text;
}

}  // namespace

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNetOptions& options)
    : options_(options) {}

absl::StatusOr<std::shared_ptr<UNet2DConditionModelImpl>>
UNet2DConditionModelImpl::Create(const UNetOptions& options) {
  std::shared_ptr<UNet2DConditionModelImpl> model(
      new UNet2DConditionModelImpl(options));
  RETURN_IF_ERROR(model->Build());
  return model;
}

int UNet2DConditionModelImpl::AddUnit(const std::string& id, UnitKind kind,
                                      bool removable) {
  const int index = static_cast<int>(units_.size());
  units_.push_back(PrunableUnit{id, kind, 0, removable});
  unit_index_[id] = index;
  attention_of_block_.push_back(-1);
  return index;
}

absl::Status UNet2DConditionModelImpl::Build() {
  const UNetConfig& cfg = options_.config;
  const auto& to = options_.tensor_options;
  const int64_t n_blocks = static_cast<int64_t>(cfg.block_out_channels.size());
  if (n_blocks == 0 ||
      cfg.down_block_types.size() != cfg.block_out_channels.size() ||
      cfg.up_block_types.size() != cfg.block_out_channels.size()) {
    return absl::InvalidArgumentError(
        "config: down_block_types, up_block_types and block_out_channels must "
        "have the same, non-zero length");
  }
  const int64_t temb = cfg.time_embed_dim();
  const int64_t groups = cfg.norm_num_groups;
  const std::set<std::string>& removed = options_.removed_units;

  // First pass: the unit table, so removal can be resolved before building.
  // Each lambda records the unit and returns its index; the module is built
  // in the second half of each lambda when the unit is kept.
  std::vector<std::pair<int, int64_t>> block_params;  // (unit, params)
  auto resnet_step = [&](NumberedModulesImpl& container, const std::string& id,
                         int64_t index, int64_t in, int64_t out,
                         int64_t main_in, double scale, UNetStep::Op op) {
    const int unit = AddUnit(id, UnitKind::kResnet, main_in == out);
    units_[unit].num_parameters = ResnetParameters(in, out, temb);
    UNetStep step{op, id};
    step.resnet_unit = unit;
    steps_.push_back(step);
    if (!removed.contains(id)) {
      resnets_.emplace(
          id,
          container.Add(index, ResnetBlock2D(ResnetBlock2DOptions(in, out, temb)
                                                 .groups(groups)
                                                 .eps(cfg.norm_eps)
                                                 .output_scale_factor(scale)
                                                 .tensor_options(to))));
    }
  };
  auto attention_steps = [&](NumberedModulesImpl& container,
                             const std::string& id, int64_t index,
                             int64_t channels, int64_t heads, int64_t layers) {
    const int att = AddUnit(id, UnitKind::kAttention, true);
    int64_t params = AttentionShellParameters(channels);
    std::vector<int64_t> kept_blocks;
    UNetStep enter{UNetStep::Op::kAttnEnter, id};
    enter.attention_unit = att;
    steps_.push_back(enter);
    for (int64_t k = 0; k < layers; ++k) {
      const std::string block_id = absl::StrCat(id, ".transformer_blocks.", k);
      const int unit = AddUnit(block_id, UnitKind::kTransformerBlock, true);
      attention_of_block_[unit] = att;
      units_[unit].num_parameters =
          TransformerBlockParameters(channels, cfg.cross_attention_dim);
      params += units_[unit].num_parameters;
      UNetStep step{UNetStep::Op::kTransformerBlock, id};
      step.attention_unit = att;
      step.block_unit = unit;
      step.block_index = k;
      steps_.push_back(step);
      if (!removed.contains(block_id)) kept_blocks.push_back(k);
    }
    units_[att].num_parameters = params;
    UNetStep exit{UNetStep::Op::kAttnExit, id};
    exit.attention_unit = att;
    steps_.push_back(exit);
    if (!removed.contains(id) && !kept_blocks.empty()) {
      attentions_.emplace(
          id,
          container.Add(
              index, Transformer2DModel(
                         Transformer2DModelOptions(channels, heads,
                                                   cfg.cross_attention_dim)
                             .groups(groups)
                             .use_linear_projection(cfg.use_linear_projection)
                             .upcast_attention(cfg.upcast_attention)
                             .block_indices(kept_blocks)
                             .tensor_options(to))));
    }
  };
  auto capture = [&](const std::string& name) {
    steps_.push_back(UNetStep{UNetStep::Op::kCapture, name});
  };
  // A block container with numbered children lists, e.g. down_blocks.0 with
  // resnets / attentions / downsamplers.
  struct BlockContainers {
    NumberedModules resnets{nullptr}, attentions{nullptr}, samplers{nullptr};
  };
  auto new_block = [&](torch::nn::Module& parent, const std::string& name,
                       bool has_attention, const char* sampler_name) {
    auto block =
        parent.register_module(name, std::make_shared<torch::nn::Module>());
    BlockContainers c;
    c.resnets = block->register_module("resnets", NumberedModules());
    if (has_attention) {
      c.attentions = block->register_module("attentions", NumberedModules());
    }
    if (sampler_name != nullptr) {
      c.samplers = block->register_module(sampler_name, NumberedModules());
    }
    return c;
  };

  conv_in = register_module(
      "conv_in",
      Conv2d(Conv2dOptions(cfg.in_channels, cfg.block_out_channels[0], 3)
                 .padding(1)
                 .tensor_options(to)));
  time_embedding = register_module(
      "time_embedding", TimestepEmbedding(TimestepEmbeddingOptions(
                                              cfg.block_out_channels[0], temb)
                                              .tensor_options(to)));
  if (cfg.text_time_embedding) {
    add_embedding = register_module(
        "add_embedding",
        TimestepEmbedding(TimestepEmbeddingOptions(
                              cfg.projection_class_embeddings_input_dim, temb)
                              .tensor_options(to)));
  }
  steps_.push_back(UNetStep{UNetStep::Op::kConvIn, "conv_in"});
  capture("conv_in");

  // Down path.
  auto down_blocks = register_module("down_blocks", NumberedModules());
  int64_t output_channel = cfg.block_out_channels[0];
  for (int64_t i = 0; i < n_blocks; ++i) {
    const int64_t input_channel = output_channel;
    output_channel = cfg.block_out_channels[i];
    const bool is_final = i == n_blocks - 1;
    const bool cross =
        cfg.down_block_types[i] == DownBlockType::kCrossAttnDownBlock2D;
    const std::string prefix = absl::StrCat("down_blocks.", i);
    BlockContainers c = new_block(*down_blocks, std::to_string(i), cross,
                                  is_final ? nullptr : "downsamplers");
    for (int64_t j = 0; j < cfg.layers_per_block[i]; ++j) {
      const int64_t in = j == 0 ? input_channel : output_channel;
      resnet_step(*c.resnets, absl::StrCat(prefix, ".resnets.", j), j, in,
                  output_channel, in, 1.0, UNetStep::Op::kResnet);
      if (cross) {
        attention_steps(*c.attentions, absl::StrCat(prefix, ".attentions.", j),
                        j, output_channel, cfg.attention_heads[i],
                        cfg.transformer_layers_per_block[i]);
      }
      steps_.push_back(UNetStep{UNetStep::Op::kPushSkip, ""});
    }
    if (!is_final) {
      const std::string id = absl::StrCat(prefix, ".downsamplers.0");
      downsamplers_.emplace(
          id, c.samplers->Add(
                  0, Downsample2D(output_channel, cfg.downsample_padding, to)));
      steps_.push_back(UNetStep{UNetStep::Op::kDownsample, id});
    }
    capture(prefix);
  }

  // Mid block.
  {
    const int64_t channels = cfg.block_out_channels.back();
    auto mid =
        register_module("mid_block", std::make_shared<torch::nn::Module>());
    auto resnets = mid->register_module("resnets", NumberedModules());
    auto attentions = mid->register_module("attentions", NumberedModules());
    resnet_step(*resnets, "mid_block.resnets.0", 0, channels, channels,
                channels, cfg.mid_block_scale_factor, UNetStep::Op::kResnet);
    attention_steps(*attentions, "mid_block.attentions.0", 0, channels,
                    cfg.attention_heads.back(),
                    cfg.transformer_layers_per_block.back());
    resnet_step(*resnets, "mid_block.resnets.1", 1, channels, channels,
                channels, cfg.mid_block_scale_factor, UNetStep::Op::kResnet);
    capture("mid_block");
  }

  // Up path.
  std::vector<int64_t> rev_channels(cfg.block_out_channels.rbegin(),
                                    cfg.block_out_channels.rend());
  std::vector<int64_t> rev_heads(cfg.attention_heads.rbegin(),
                                 cfg.attention_heads.rend());
  std::vector<int64_t> rev_layers(cfg.layers_per_block.rbegin(),
                                  cfg.layers_per_block.rend());
  auto up_blocks = register_module("up_blocks", NumberedModules());
  output_channel = rev_channels[0];
  for (int64_t i = 0; i < n_blocks; ++i) {
    const bool is_final = i == n_blocks - 1;
    const int64_t prev_output_channel = output_channel;
    output_channel = rev_channels[i];
    const int64_t input_channel = rev_channels[std::min(i + 1, n_blocks - 1)];
    const bool cross =
        cfg.up_block_types[i] == UpBlockType::kCrossAttnUpBlock2D;
    const std::string prefix = absl::StrCat("up_blocks.", i);
    BlockContainers c = new_block(*up_blocks, std::to_string(i), cross,
                                  is_final ? nullptr : "upsamplers");
    const int64_t num_layers = rev_layers[i] + 1;
    for (int64_t j = 0; j < num_layers; ++j) {
      const int64_t skip_channels =
          j == num_layers - 1 ? input_channel : output_channel;
      const int64_t main_in = j == 0 ? prev_output_channel : output_channel;
      resnet_step(*c.resnets, absl::StrCat(prefix, ".resnets.", j), j,
                  main_in + skip_channels, output_channel, main_in, 1.0,
                  UNetStep::Op::kUpResnet);
      if (cross) {
        attention_steps(*c.attentions, absl::StrCat(prefix, ".attentions.", j),
                        j, output_channel, rev_heads[i],
                        cfg.up_transformer_layers_per_block[i]);
      }
    }
    if (!is_final) {
      const std::string id = absl::StrCat(prefix, ".upsamplers.0");
      upsamplers_.emplace(id,
                          c.samplers->Add(0, Upsample2D(output_channel, to)));
      steps_.push_back(UNetStep{UNetStep::Op::kUpsample, id});
    }
    capture(prefix);
  }

  conv_norm_out = register_module(
      "conv_norm_out",
      GroupNorm(
          GroupNormOptions(groups, cfg.block_out_channels[0], cfg.norm_eps)
              .tensor_options(to)));
  conv_out = register_module(
      "conv_out",
      Conv2d(Conv2dOptions(cfg.block_out_channels[0], cfg.out_channels, 3)
                 .padding(1)
                 .tensor_options(to)));
  steps_.push_back(UNetStep{UNetStep::Op::kConvOut, "conv_out"});

  // Validate the build-time removal against the finished unit table.
  ASSIGN_OR_RETURN(std::vector<std::string> effective,
                   EffectiveRemoval(removed));
  (void)effective;
  built_removed_.assign(units_.size(), false);
  for (const std::string& id : removed)
    built_removed_[unit_index_.at(id)] = true;
  PackContextProjections();
  return absl::OkStatus();
}

void UNet2DConditionModelImpl::PackContextProjections() {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> weights;
  int64_t row = 0;
  for (const auto& [id, attention] : attentions_) {
    for (const auto& [index, block] : attention->blocks) {
      Attention cross = block->attn2;
      cross->context_kv_offset = row;
      for (const torch::Tensor& w :
           {cross->to_k->weight, cross->to_v->weight}) {
        weights.push_back(w);
        row += w.size(0);
      }
      context_attentions_.push_back(cross);
    }
  }
  if (weights.empty()) return;
  context_kv_weight_ = at::cat(weights);
  row = 0;
  for (torch::Tensor& w : weights) {
    const int64_t rows = w.size(0);
    w.set_data(context_kv_weight_.narrow(0, row, rows));
    row += rows;
  }
}

bool UNet2DConditionModelImpl::ContextProjectionsPacked() const {
  if (!context_kv_weight_.defined()) return false;
  const auto* base = static_cast<const char*>(context_kv_weight_.data_ptr());
  const int64_t row_bytes =
      context_kv_weight_.stride(0) * context_kv_weight_.element_size();
  for (const Attention& cross : context_attentions_) {
    const torch::Tensor& k = cross->to_k->weight;
    const torch::Tensor& v = cross->to_v->weight;
    if (k.scalar_type() != context_kv_weight_.scalar_type() ||
        v.scalar_type() != context_kv_weight_.scalar_type() ||
        k.data_ptr() != base + cross->context_kv_offset * row_bytes ||
        v.data_ptr() !=
            base + (cross->context_kv_offset + k.size(0)) * row_bytes) {
      return false;
    }
  }
  return true;
}

std::vector<PrunableUnit> UNet2DConditionModelImpl::Units(
    const std::set<UnitKind>& kinds) const {
  std::vector<PrunableUnit> out;
  for (const PrunableUnit& unit : units_) {
    if (kinds.contains(unit.kind)) out.push_back(unit);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>>
UNet2DConditionModelImpl::EffectiveRemoval(
    const std::set<std::string>& remove) const {
  // The rule is selection's (selection/units.h); parameter counts play no
  // part in it.
  selection::ModelUnits units;
  units.units.reserve(units_.size());
  for (size_t u = 0; u < units_.size(); ++u) {
    selection::ModelUnit& unit = units.units.emplace_back();
    unit.id = units_[u].id;
    unit.kind = std::string(UnitKindName(units_[u].kind));
    unit.removable = units_[u].removable;
    if (attention_of_block_[u] >= 0) {
      unit.attention = units_[attention_of_block_[u]].id;
    }
  }
  return selection::EffectiveRemoval(units, remove);
}

int64_t UNet2DConditionModelImpl::NumParameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

absl::StatusOr<std::vector<bool>> UNet2DConditionModelImpl::MaskFor(
    const std::set<std::string>& masked_units) const {
  std::set<std::string> all = options_.removed_units;
  all.insert(masked_units.begin(), masked_units.end());
  ASSIGN_OR_RETURN(std::vector<std::string> effective, EffectiveRemoval(all));
  std::vector<bool> mask(units_.size(), false);
  for (const std::string& id : effective) {
    const int unit = unit_index_.at(id);
    mask[unit] = true;
    if (units_[unit].kind == UnitKind::kAttention) {
      for (size_t b = 0; b < units_.size(); ++b) {
        if (attention_of_block_[b] == unit) mask[b] = true;
      }
    }
  }
  return mask;
}

bool UNet2DConditionModelImpl::Skipped(const UNetStep& step,
                                       const std::vector<bool>& mask) const {
  switch (step.op) {
    case UNetStep::Op::kResnet:
    case UNetStep::Op::kUpResnet:
      return mask[step.resnet_unit];
    case UNetStep::Op::kAttnEnter:
    case UNetStep::Op::kAttnExit:
      return mask[step.attention_unit];
    case UNetStep::Op::kTransformerBlock:
      return mask[step.block_unit];
    default:
      return false;
  }
}

absl::Status UNet2DConditionModelImpl::ValidateInputs(
    const UNetInputs& in) const {
  const UNetConfig& cfg = options_.config;
  if (!in.sample.defined() || in.sample.dim() != 4 ||
      in.sample.size(1) != cfg.in_channels) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample: expected [B, ", cfg.in_channels, ", H, W], got ",
        in.sample.defined() ? ShapeString(in.sample.sizes()) : "nothing"));
  }
  const int64_t batch = in.sample.size(0);
  if (!in.timestep.defined() || in.timestep.dim() > 1 ||
      (in.timestep.dim() == 1 && in.timestep.size(0) != batch &&
       in.timestep.size(0) != 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "timestep: expected a scalar or [", batch, "], got ",
        in.timestep.defined() ? ShapeString(in.timestep.sizes()) : "nothing"));
  }
  const auto& ehs = in.encoder_hidden_states;
  if (!ehs.defined() || ehs.dim() != 3 || ehs.size(0) != batch ||
      ehs.size(2) != cfg.cross_attention_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("encoder_hidden_states: expected [", batch, ", L, ",
                     cfg.cross_attention_dim, "], got ",
                     ehs.defined() ? ShapeString(ehs.sizes()) : "nothing"));
  }
  if (cfg.text_time_embedding) {
    if (!in.text_embeds.defined() || !in.time_ids.defined() ||
        in.text_embeds.dim() != 2 || in.time_ids.dim() != 2 ||
        in.text_embeds.size(0) != batch || in.time_ids.size(0) != batch ||
        in.text_embeds.size(1) +
                in.time_ids.size(1) * cfg.addition_time_embed_dim !=
            cfg.projection_class_embeddings_input_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "text_time conditioning: expected text_embeds [", batch,
          ", P] and time_ids [", batch, ", K] with P + K·",
          cfg.addition_time_embed_dim, " = ",
          cfg.projection_class_embeddings_input_dim, ", got ",
          in.text_embeds.defined() ? ShapeString(in.text_embeds.sizes())
                                   : "no text_embeds",
          " and ",
          in.time_ids.defined() ? ShapeString(in.time_ids.sizes())
                                : "no time_ids"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<UNetState> UNet2DConditionModelImpl::Begin(
    const UNetInputs& in) {
  RETURN_IF_ERROR(ValidateInputs(in));
  const UNetConfig& cfg = options_.config;
  const auto dtype = conv_in->weight.scalar_type();
  const auto device = conv_in->weight.device();
  const int64_t batch = in.sample.size(0);
  UNetState state;
  state.h = in.sample.to(device, dtype);
  state.context = in.encoder_hidden_states.to(device, dtype);
  torch::Tensor t = in.timestep.to(device).reshape({-1});
  if (t.size(0) == 1 && batch > 1) t = t.expand({batch});
  torch::Tensor t_features = TimestepEmbeddingFeatures(
      t, cfg.block_out_channels[0], cfg.flip_sin_to_cos,
      static_cast<double>(cfg.freq_shift));
  state.emb = time_embedding(t_features.to(dtype));
  if (cfg.text_time_embedding) {
    torch::Tensor time_features = TimestepEmbeddingFeatures(
        in.time_ids.to(device).reshape({-1}), cfg.addition_time_embed_dim,
        cfg.flip_sin_to_cos, static_cast<double>(cfg.freq_shift));
    time_features = time_features.reshape({batch, -1});
    torch::Tensor add = torch::cat(
        {in.text_embeds.to(device, torch::kFloat32), time_features}, -1);
    state.emb = state.emb + add_embedding(add.to(dtype));
  }
  if (!torch::GradMode::is_enabled() && ContextProjectionsPacked()) {
    FlopCounter::Add(2 * (state.context.numel() / state.context.size(-1)) *
                     context_kv_weight_.numel());
    state.context_kv = at::linear(state.context, context_kv_weight_);
  }
  return state;
}

void UNet2DConditionModelImpl::Run(UNetState& s, size_t first, size_t last,
                                   const std::vector<bool>& mask,
                                   bool capture) {
  for (size_t i = first; i < last; ++i) {
    const UNetStep& step = steps_[i];
    if (Skipped(step, mask)) {
      if (step.op == UNetStep::Op::kUpResnet) s.skips.pop_back();
      continue;
    }
    switch (step.op) {
      case UNetStep::Op::kConvIn:
        s.h = conv_in(s.h);
        s.skips.push_back(s.h);
        break;
      case UNetStep::Op::kResnet:
        s.h = resnets_.at(step.name)(s.h, s.emb);
        break;
      case UNetStep::Op::kUpResnet: {
        torch::Tensor skip = std::move(s.skips.back());
        s.skips.pop_back();
        s.h = resnets_.at(step.name)(torch::cat({s.h, skip}, 1), s.emb);
        break;
      }
      case UNetStep::Op::kAttnEnter:
        s.residual = s.h;
        s.tokens = attentions_.at(step.name)->Enter(s.h);
        break;
      case UNetStep::Op::kTransformerBlock:
        s.tokens = attentions_.at(step.name)
                       ->Block(step.block_index)
                       ->forward(s.tokens, s.context, s.context_kv);
        break;
      case UNetStep::Op::kAttnExit:
        s.h = attentions_.at(step.name)->Exit(s.tokens, s.residual);
        s.tokens = torch::Tensor();
        s.residual = torch::Tensor();
        break;
      case UNetStep::Op::kPushSkip:
        s.skips.push_back(s.h);
        break;
      case UNetStep::Op::kDownsample:
        s.h = downsamplers_.at(step.name)(s.h);
        s.skips.push_back(s.h);
        break;
      case UNetStep::Op::kUpsample: {
        std::optional<std::vector<int64_t>> size;
        if (!s.skips.empty()) {
          size = std::vector<int64_t>{s.skips.back().size(2),
                                      s.skips.back().size(3)};
        }
        s.h = upsamplers_.at(step.name)(s.h, size);
        break;
      }
      case UNetStep::Op::kCapture:
        if (capture) s.captures[step.name] = s.h;
        break;
      case UNetStep::Op::kConvOut:
        s.h = conv_out(conv_norm_out->ForwardSilu(s.h));
        break;
    }
  }
}

torch::Tensor UNet2DConditionModelImpl::forward(
    const UNetInputs& inputs, const std::set<std::string>& masked_units,
    BlockOutputs* captures) {
  absl::StatusOr<std::vector<bool>> mask = MaskFor(masked_units);
  if (!mask.ok()) throw std::invalid_argument(mask.status().ToString());
  absl::StatusOr<UNetState> state = Begin(inputs);
  if (!state.ok()) throw std::invalid_argument(state.status().ToString());
  Run(*state, 0, steps_.size(), *mask, captures != nullptr);
  if (captures != nullptr) *captures = std::move(state->captures);
  return state->h;
}

absl::Status UNet2DConditionModelImpl::LoadWeights(
    const SafetensorsCheckpoint& checkpoint, bool allow_removed_extra) {
  std::vector<std::string> missing, mismatched, unexpected;
  auto params = named_parameters(/*recurse=*/true);
  for (const auto& item : params) {
    auto found = checkpoint.Find(item.key());
    if (found.file == nullptr) {
      missing.push_back(item.key());
      continue;
    }
    if (torch::IntArrayRef(found.entry->shape) != item.value().sizes()) {
      mismatched.push_back(absl::StrCat(
          item.key(), " (checkpoint ", ShapeString(found.entry->shape),
          ", model ", ShapeString(item.value().sizes()), ")"));
    }
  }
  for (const std::string& name : checkpoint.Names()) {
    if (params.find(name) != nullptr) continue;
    if (allow_removed_extra) {
      bool of_removed = false;
      for (const std::string& id : options_.removed_units) {
        if (absl::StartsWith(name, id + ".")) of_removed = true;
      }
      if (of_removed) continue;
    }
    unexpected.push_back(name);
  }
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty()) {
    std::vector<std::string> parts;
    if (!missing.empty()) {
      parts.push_back(
          absl::StrCat(missing.size(), " missing key(s): ", Join(missing)));
    }
    if (!unexpected.empty()) {
      parts.push_back(absl::StrCat(unexpected.size(),
                                   " unexpected key(s): ", Join(unexpected)));
    }
    if (!mismatched.empty()) {
      parts.push_back(absl::StrCat(mismatched.size(),
                                   " mis-shaped key(s): ", Join(mismatched)));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint does not match the model config: ",
                     absl::StrJoin(parts, "; ")));
  }
  torch::NoGradGuard no_grad;
  for (auto& item : params) {
    auto found = checkpoint.Find(item.key());
    ASSIGN_OR_RETURN(
        torch::Tensor value,
        MaterializeTensor(*found.file, *found.entry, item.value().device(),
                          item.value().scalar_type()));
    item.value().copy_(value);
  }
  return absl::OkStatus();
}

void UNet2DConditionModelImpl::ToChannelsLast() {
  torch::NoGradGuard no_grad;
  for (auto& p : parameters()) {
    if (p.dim() == 4) {
      p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    }
  }
}

void UNet2DConditionModelImpl::RandomizeParameters(uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  // CPU draws in reduced precision are scalar and ~5x slower than float
  // draws: draw float, a slice at a time, and round into the parameter.
  constexpr int64_t kSlice = int64_t{1} << 22;
  torch::Tensor scratch;
  auto fill = [&](torch::Tensor& p, const auto& draw) {
    if (p.scalar_type() == torch::kFloat32 || !p.device().is_cpu() ||
        !p.is_contiguous()) {
      draw(p);
      return;
    }
    torch::Tensor flat = p.view({-1});
    for (int64_t begin = 0; begin < flat.numel(); begin += kSlice) {
      const int64_t length = std::min(kSlice, flat.numel() - begin);
      if (!scratch.defined() || scratch.numel() < length) {
        scratch = torch::empty({kSlice}, torch::kFloat32);
      }
      torch::Tensor values = scratch.narrow(0, 0, length);
      draw(values);
      flat.narrow(0, begin, length).copy_(values);
    }
  };
  for (auto& item : named_parameters(/*recurse=*/true)) {
    torch::Tensor& p = item.value();
    const bool is_bias = absl::EndsWith(item.key(), ".bias");
    if (p.dim() >= 2) {
      const double stddev =
          1.0 / std::sqrt(static_cast<double>(p.numel() / p.size(0)));
      fill(p, [&](torch::Tensor& t) { t.normal_(0.0, stddev); });
    } else if (is_bias) {
      fill(p, [](torch::Tensor& t) { t.normal_(0.0, 0.02); });
    } else {
      fill(p, [](torch::Tensor& t) { t.uniform_(0.9, 1.1); });  // norm scales
    }
  }
}

}  // namespace lpd::engine

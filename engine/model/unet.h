// The diffusers UNet2DConditionModel in LibTorch, with prunable units.
//
// The forward pass is a flat program of steps (conv_in, each resnet, each
// transformer block with the attention's enter/exit around it, samplers,
// skip pushes, block-output captures, conv_out) over a small state (the main
// path `h`, the skip stack, the attention tokens). Removing a unit skips its
// steps with the semantics of DESIGN §4.2, and a caller can stop after any
// step and resume from the saved state: scoring caches the state at each
// unit boundary instead of recomputing the prefix.
//
// Two kinds of removal: units left out when the model is built (a pruned
// student: their parameters do not exist), and units masked at run time on
// a full model (scoring, the reference removal vectors). Both skip the same
// steps.
#ifndef LPD_ENGINE_MODEL_UNET_H_
#define LPD_ENGINE_MODEL_UNET_H_

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/formats/safetensors.h"
#include "engine/formats/unet_config.h"
#include "engine/model/unet_modules.h"
#include "selection/units.h"

namespace lpd::engine {

// The unit kinds and their names are selection's (selection/units.h).
using selection::ParseUnitKind;
using selection::UnitKind;
using selection::UnitKindName;

// One candidate for removal.
struct PrunableUnit {
  std::string id;  // its key prefix, e.g. "down_blocks.1.attentions.0"
  UnitKind kind;
  int64_t num_parameters = 0;
  // Whether its output has the shape of its main-path input, so removing it
  // means passing `h` through (channel-changing resnets are not removable).
  bool removable = false;
};

// What a block-output capture is called: "down_blocks.1", "mid_block",
// "up_blocks.0" (and "conv_in"). Reference vectors store them as "act.NAME".
using BlockOutputs = std::map<std::string, torch::Tensor>;

struct UNetInputs {
  torch::Tensor sample;                 // [B, in, H, W]
  torch::Tensor timestep;               // [B] or scalar, integer or float
  torch::Tensor encoder_hidden_states;  // [B, L, cross_attention_dim]
  torch::Tensor text_embeds;            // [B, P] (text_time models only)
  torch::Tensor time_ids;               // [B, K] (text_time models only)
};

// One step of the forward program.
struct UNetStep {
  enum class Op {
    kConvIn,            // h = conv_in(sample); push h
    kResnet,            // down/mid: h = resnet(h)
    kUpResnet,          // s = pop; h = removed ? h : resnet(cat(h, s))
    kAttnEnter,         // residual = h; tokens = enter(h)
    kTransformerBlock,  // tokens = block(tokens)
    kAttnExit,          // h = exit(tokens, residual)
    kPushSkip,          // push h
    kDownsample,        // h = downsample(h); push h
    kUpsample,          // h = upsample(h, size of the next skip)
    kCapture,           // outputs[name] = h
    kConvOut,           // h = conv_out(silu(norm(h)))
  };
  Op op;
  std::string name;      // module path or capture name
  int resnet_unit = -1;  // index into the unit table, or -1
  int attention_unit = -1;
  int block_unit = -1;  // transformer block unit
  int64_t block_index = -1;
};

// The state between steps.
struct UNetState {
  torch::Tensor h;
  std::vector<torch::Tensor> skips;
  torch::Tensor tokens, residual;
  torch::Tensor emb;      // time (+ text-time) embedding [B, time_embed_dim]
  torch::Tensor context;  // encoder hidden states
  // Without gradients: the context multiplied by every cross-attention's
  // k/v weights in one GEMM, [B, L, Σ 2·inner] (AttentionImpl::forward).
  torch::Tensor context_kv;
  BlockOutputs captures;
};

struct UNetOptions {
  UNetConfig config;
  // Units left out of the model (their ids, any kind and granularity).
  std::set<std::string> removed_units;
  torch::TensorOptions tensor_options =
      torch::TensorOptions().dtype(torch::kFloat32);
};

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  // Builds the model; parameters are uninitialized. InvalidArgument if a
  // removed unit is unknown or not removable.
  static absl::StatusOr<std::shared_ptr<UNet2DConditionModelImpl>> Create(
      const UNetOptions& options);

  // Every unit, at every granularity: resnets, attentions, transformer blocks
  // (units left out at build time included, with their parameter counts).
  const std::vector<PrunableUnit>& all_units() const { return units_; }
  // The units at the granularity of `kinds` ({resnet, attention} or
  // {resnet, transformer_block}, say), in forward order.
  std::vector<PrunableUnit> Units(const std::set<UnitKind>& kinds) const;
  // The units that `remove` removes in effect: an attention all of whose
  // transformer blocks are removed is itself removed (and its blocks are not
  // listed separately). Errors for unknown or non-removable ids.
  absl::StatusOr<std::vector<std::string>> EffectiveRemoval(
      const std::set<std::string>& remove) const;

  // Number of parameters the model holds (removed units excluded).
  int64_t NumParameters() const;

  // The full forward pass: the predicted noise [B, out, H, W]; with
  // `captures`, fills it with every block output.
  torch::Tensor forward(const UNetInputs& inputs,
                        const std::set<std::string>& masked_units = {},
                        BlockOutputs* captures = nullptr);

  // Program-level access (scoring resumes from saved states).
  const std::vector<UNetStep>& steps() const { return steps_; }
  // State before step 0: embeddings computed, `h` empty. Errors on inputs
  // that do not fit the config.
  absl::StatusOr<UNetState> Begin(const UNetInputs& inputs);
  // Runs steps [first, last) on `state`. A mask from MaskFor() selects the
  // units skipped in addition to those removed at build time.
  absl::StatusOr<std::vector<bool>> MaskFor(
      const std::set<std::string>& masked_units) const;
  void Run(UNetState& state, size_t first, size_t last,
           const std::vector<bool>& unit_mask, bool capture = true);

  // Checks the inputs' shapes against the config (clear messages).
  absl::Status ValidateInputs(const UNetInputs& inputs) const;

  // Copies weights by name from a checkpoint, strictly: every parameter must
  // be present with its shape, and no extra key may exist (except keys of
  // units removed at build time when `allow_removed_extra`). The error lists
  // missing, unexpected and mis-shaped keys. Tensors are converted to the
  // parameters' dtype and device as they are read.
  absl::Status LoadWeights(const SafetensorsCheckpoint& checkpoint,
                           bool allow_removed_extra = false);

  // Stores every convolution weight channels-last (NHWC), the layout the
  // GPU's convolutions and the fused group-norm kernel are fastest in.
  // Values and names are unchanged.
  void ToChannelsLast();

  // Fills parameters with seeded random values: weights N(0, 1/fan_in),
  // biases small, norm scales near 1. For benchmarks and tests.
  void RandomizeParameters(uint64_t seed);

  const UNetConfig& config() const { return options_.config; }
  const std::set<std::string>& removed_units() const {
    return options_.removed_units;
  }

 private:
  explicit UNet2DConditionModelImpl(const UNetOptions& options);
  absl::Status Build();
  int AddUnit(const std::string& id, UnitKind kind, bool removable);
  bool Skipped(const UNetStep& step, const std::vector<bool>& mask) const;
  // Moves every cross-attention's to_k and to_v weights into one buffer
  // (each parameter a view of its rows, names and values unchanged), so
  // that Begin projects the context for all of them in one GEMM.
  void PackContextProjections();
  // Whether the parameters still are views of that buffer (something that
  // replaced them, such as module->to(), would have undone it).
  bool ContextProjectionsPacked() const;

  UNetOptions options_;
  std::vector<PrunableUnit> units_;
  std::map<std::string, int> unit_index_;
  std::vector<int> attention_of_block_;  // block unit → attention unit
  std::vector<bool> built_removed_;      // per unit: left out at build
  std::vector<UNetStep> steps_;

  Conv2d conv_in{nullptr}, conv_out{nullptr};
  GroupNorm conv_norm_out{nullptr};
  TimestepEmbedding time_embedding{nullptr}, add_embedding{nullptr};
  std::map<std::string, ResnetBlock2D> resnets_;
  std::map<std::string, Transformer2DModel> attentions_;
  std::map<std::string, Downsample2D> downsamplers_;
  std::map<std::string, Upsample2D> upsamplers_;
  torch::Tensor context_kv_weight_;            // [Σ 2·inner, cross_dim]
  std::vector<Attention> context_attentions_;  // whose rows it holds
};

// The holder. `UNet2DConditionModelImpl::Create` builds the impl.
TORCH_MODULE(UNet2DConditionModel);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_MODEL_UNET_H_

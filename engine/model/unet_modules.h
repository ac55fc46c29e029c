// The building blocks of the diffusers UNet2DConditionModel as LibTorch
// modules. Every parameter is registered under the name the diffusers
// checkpoint uses for it, relative to its module (`norm1.weight`,
// `attn2.to_k.weight`, `ff.net.0.proj.bias`, ...), so a whole model's
// `named_parameters()` equals the checkpoint's key set.
//
// Modules allocate their parameters uninitialized with the tensor options
// they are given (device and dtype), so a model can be built directly on a
// GPU in bf16, or on the meta device to count parameters. Weights come from a
// checkpoint or from `RandomizeParameters` (unet.h).
//
// Numbered children (`resnets.0`, `transformer_blocks.3`) live in a
// `NumberedModules` container, which, unlike torch::nn::ModuleList, keeps the
// checkpoint's indices when some children are left out (a pruned student).
#ifndef LPD_ENGINE_MODEL_UNET_MODULES_H_
#define LPD_ENGINE_MODEL_UNET_MODULES_H_

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lpd::engine {

// Attention over [B, heads, N, head_dim] tensors with the 1/sqrt(head_dim)
// scale; uses the fused kernel (at::scaled_dot_product_attention) where the
// LibTorch version has it, the explicit softmax(QKᵀ)V otherwise. With
// `upcast`, computes in float32 and returns the input dtype.
torch::Tensor ScaledDotProductAttention(const torch::Tensor& q,
                                        const torch::Tensor& k,
                                        const torch::Tensor& v, bool upcast);

// Whether ScaledDotProductAttention uses LibTorch's fused kernel.
bool HasFusedAttention();

// Counts the floating-point operations (2 per multiply-add) of the
// convolutions, linear layers and attention products run on this thread
// between Start and Stop, from their shapes. Benchmarks use it to report
// achieved TFLOP/s; when not started it costs one branch per layer.
class FlopCounter {
 public:
  static void Start();
  static int64_t Stop();
  static bool active();
  static void Add(int64_t flops);
};

// Sinusoidal embedding of `timesteps` [B] into [B, dim], float32, as
// diffusers' get_timestep_embedding (max period 10000, scale 1).
torch::Tensor TimestepEmbeddingFeatures(const torch::Tensor& timesteps,
                                        int64_t dim, bool flip_sin_to_cos,
                                        double downscale_freq_shift);

// ---------------------------------------------------------------- leaves

struct Conv2dOptions {
  Conv2dOptions(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : in_channels_(in_channels),
        out_channels_(out_channels),
        kernel_size_(kernel_size) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(int64_t, kernel_size);
  TORCH_ARG(int64_t, stride) = 1;
  TORCH_ARG(int64_t, padding) = 0;
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// 2-D convolution with bias: `weight` [out, in, k, k], `bias` [out].
class Conv2dImpl : public torch::nn::Module {
 public:
  explicit Conv2dImpl(const Conv2dOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  // The convolution without its bias, for callers that apply the bias in a
  // later pass they make anyway (ResnetBlock2D).
  torch::Tensor ForwardWithoutBias(const torch::Tensor& x);
  // A 1×1 convolution applied to pixels given as rows [..., in_channels]
  // (a channels-last map's token view): one GEMM with the bias in its
  // epilogue, instead of a convolution plus a broadcast bias pass.
  torch::Tensor ForwardPointwise(const torch::Tensor& rows);

  Conv2dOptions options;
  torch::Tensor weight, bias;

 private:
  // The convolution with `with_bias` (bias or none), its FLOPs counted.
  torch::Tensor Convolve(const torch::Tensor& x,
                         const torch::Tensor& with_bias);
};
TORCH_MODULE(Conv2d);

struct LinearOptions {
  LinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// y = x Wᵀ + b: `weight` [out, in], `bias` [out] (if any).
class LinearImpl : public torch::nn::Module {
 public:
  explicit LinearImpl(const LinearOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  // out += x·weightᵀ in place, one GEMM that reads `out` as its addend;
  // the bias is not added (the caller folded it into `out`). `out` is
  // contiguous with x's leading shape and out_features columns.
  void AccumulateInto(const torch::Tensor& x, torch::Tensor& out);

  LinearOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(Linear);

struct GroupNormOptions {
  GroupNormOptions(int64_t num_groups, int64_t num_channels, double eps)
      : num_groups_(num_groups), num_channels_(num_channels), eps_(eps) {}
  TORCH_ARG(int64_t, num_groups);
  TORCH_ARG(int64_t, num_channels);
  TORCH_ARG(double, eps);
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// Group normalization with affine `weight`, `bias` [C] over [B, C, H, W].
class GroupNormImpl : public torch::nn::Module {
 public:
  explicit GroupNormImpl(const GroupNormOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  // silu(group_norm(x + add[:, :, None, None])) (`add` [B, C] optional), one
  // fused kernel on the GPU (fused_ops.h).
  torch::Tensor ForwardSilu(const torch::Tensor& x,
                            const torch::Tensor& add = {});

  GroupNormOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(GroupNorm);

struct LayerNormOptions {
  LayerNormOptions(int64_t dim, double eps) : dim_(dim), eps_(eps) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(double, eps);
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// Layer normalization over the last dimension with `weight`, `bias` [dim].
class LayerNormImpl : public torch::nn::Module {
 public:
  explicit LayerNormImpl(const LayerNormOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  LayerNormOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm);

// A container whose children are named by their checkpoint index ("0", "2",
// ...); indices may have gaps.
class NumberedModulesImpl : public torch::nn::Module {
 public:
  template <typename ModuleHolder>
  ModuleHolder Add(int64_t index, ModuleHolder module) {
    return register_module(std::to_string(index), std::move(module));
  }
};
TORCH_MODULE(NumberedModules);

// ---------------------------------------------------------------- blocks

struct TimestepEmbeddingOptions {
  TimestepEmbeddingOptions(int64_t in_channels, int64_t time_embed_dim)
      : in_channels_(in_channels), time_embed_dim_(time_embed_dim) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, time_embed_dim);
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// linear_1 → silu → linear_2 (diffusers' TimestepEmbedding).
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  explicit TimestepEmbeddingImpl(const TimestepEmbeddingOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

struct ResnetBlock2DOptions {
  ResnetBlock2DOptions(int64_t in_channels, int64_t out_channels,
                       int64_t temb_channels)
      : in_channels_(in_channels),
        out_channels_(out_channels),
        temb_channels_(temb_channels) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(int64_t, temb_channels);
  TORCH_ARG(int64_t, groups) = 32;
  TORCH_ARG(double, eps) = 1e-5;
  TORCH_ARG(double, output_scale_factor) = 1.0;
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// diffusers' ResnetBlock2D with the "default" time-embedding norm:
// out = (shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) +
// proj(silu(t))))))
//       / output_scale_factor, with a 1×1 `conv_shortcut` when channels change.
// The convolutions' biases ride on passes made anyway: conv1's joins the
// time embedding in norm2's [B, C] addend, conv2's and the shortcut's are
// applied in the residual add (AddChannelBias).
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  // x [B, in, H, W], temb [B, temb_channels] → [B, out, H, W].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb);

  ResnetBlock2DOptions options;
  GroupNorm norm1{nullptr}, norm2{nullptr};
  Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  Linear time_emb_proj{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

struct AttentionOptions {
  AttentionOptions(int64_t query_dim, int64_t heads, int64_t head_dim)
      : query_dim_(query_dim), heads_(heads), head_dim_(head_dim) {}
  TORCH_ARG(int64_t, query_dim);
  // Width of the key/value input; 0 means self-attention (query_dim).
  TORCH_ARG(int64_t, cross_attention_dim) = 0;
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(int64_t, head_dim);
  TORCH_ARG(bool, upcast) = false;
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// Multi-head attention: to_q/to_k/to_v without bias, to_out.0 with bias.
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  // x [B, N, query_dim], context [B, M, cross_dim] (or x itself) → x's shape.
  // `context_kv`, when given and no gradient is recorded, is the context
  // already multiplied by many cross-attentions' packed k/v weights
  // ([B, M, ...]); this attention takes its columns from
  // `context_kv_offset` on instead of projecting the context itself.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context,
                        const torch::Tensor& context_kv = {});

  AttentionOptions options;
  // Where this cross-attention's to_k rows (then to_v's) start in the
  // buffer the model packed them into (UNet2DConditionModelImpl), or -1.
  int64_t context_kv_offset = -1;
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  NumberedModules to_out{nullptr};
  Linear to_out_0{nullptr};

 private:
  // The weights one GEMM of forward multiplies: to_q, to_k, to_v
  // (self-attention) or to_k, to_v (cross-attention).
  std::vector<torch::Tensor> ProjectionWeights() const;
};
TORCH_MODULE(Attention);

struct BasicTransformerBlockOptions {
  BasicTransformerBlockOptions(int64_t dim, int64_t heads, int64_t head_dim,
                               int64_t cross_attention_dim)
      : dim_(dim),
        heads_(heads),
        head_dim_(head_dim),
        cross_attention_dim_(cross_attention_dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(int64_t, head_dim);
  TORCH_ARG(int64_t, cross_attention_dim);
  TORCH_ARG(bool, upcast_attention) = false;
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// Self-attention, cross-attention and a GEGLU feed-forward, each pre-norm
// (LayerNorm) with a residual.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  explicit BasicTransformerBlockImpl(const BasicTransformerBlockOptions& o);
  // x [B, N, dim], context [B, M, cross_attention_dim] → [B, N, dim];
  // `context_kv` as in AttentionImpl::forward, for attn2. Without gradients
  // the feed-forward's residual add is folded into its last GEMM.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context,
                        const torch::Tensor& context_kv = {});

  LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  // ff.net.0.proj [dim → 8·dim] (GEGLU), ff.net.2 [4·dim → dim].
  Linear ff_proj{nullptr}, ff_out{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

struct Transformer2DModelOptions {
  Transformer2DModelOptions(int64_t channels, int64_t heads,
                            int64_t cross_attention_dim)
      : channels_(channels),
        heads_(heads),
        cross_attention_dim_(cross_attention_dim) {}
  TORCH_ARG(int64_t, channels);
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(int64_t, cross_attention_dim);
  TORCH_ARG(int64_t, groups) = 32;
  TORCH_ARG(bool, use_linear_projection) = false;
  TORCH_ARG(bool, upcast_attention) = false;
  // Indices of the transformer blocks to build (0..num_layers-1); a pruned
  // student leaves some out.
  TORCH_ARG(std::vector<int64_t>, block_indices);
  TORCH_ARG(torch::TensorOptions, tensor_options) = {};
};

// diffusers' Transformer2DModel for continuous input, in three steps so that
// callers can stop and resume between transformer blocks:
//   Enter: [B, C, H, W] → tokens [B, HW, C] (norm, proj_in);
//   blocks: tokens → tokens;
//   Exit: proj_out, back to [B, C, H, W], plus the residual.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const Transformer2DModelOptions& options);
  torch::Tensor Enter(const torch::Tensor& x);
  torch::Tensor Exit(const torch::Tensor& tokens,
                     const torch::Tensor& residual);
  // The block with checkpoint index `index`, or nullptr if it was left out.
  BasicTransformerBlock Block(int64_t index) const;

  Transformer2DModelOptions options;
  GroupNorm norm{nullptr};
  Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  Linear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  NumberedModules transformer_blocks{nullptr};
  std::map<int64_t, BasicTransformerBlock> blocks;
};
TORCH_MODULE(Transformer2DModel);

// `conv` 3×3 with stride 2 (diffusers' Downsample2D with use_conv).
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t padding,
                   torch::TensorOptions tensor_options);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t padding;
  Conv2d conv{nullptr};
};
TORCH_MODULE(Downsample2D);

// Nearest 2× (or to `size`) upsampling, then `conv` 3×3.
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, torch::TensorOptions tensor_options);
  torch::Tensor forward(const torch::Tensor& x,
                        std::optional<std::vector<int64_t>> size);

  Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_MODEL_UNET_MODULES_H_

#include "engine/model/unet_modules.h"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>
#include <vector>

#include "engine/kernels/fused_ops.h"

namespace lpd::engine {
namespace {

// An uninitialized parameter of `shape` with `options`.
torch::Tensor NewParameter(torch::nn::Module& module, const std::string& name,
                           torch::IntArrayRef shape,
                           const torch::TensorOptions& options) {
  return module.register_parameter(name, torch::empty(shape, options));
}

// A plain container module, for name segments that hold no parameters of
// their own (`ff`, `ff.net.0`).
std::shared_ptr<torch::nn::Module> NewContainer(torch::nn::Module& parent,
                                                const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

thread_local bool flop_counter_active = false;
thread_local int64_t flop_counter_total = 0;

}  // namespace

void FlopCounter::Start() {
  flop_counter_active = true;
  flop_counter_total = 0;
}

int64_t FlopCounter::Stop() {
  flop_counter_active = false;
  return flop_counter_total;
}

bool FlopCounter::active() { return flop_counter_active; }

void FlopCounter::Add(int64_t flops) {
  if (flop_counter_active) flop_counter_total += flops;
}

bool HasFusedAttention() {
#if TORCH_VERSION_MAJOR >= 2
  return true;
#else
  return false;
#endif
}

torch::Tensor ScaledDotProductAttention(const torch::Tensor& q,
                                        const torch::Tensor& k,
                                        const torch::Tensor& v, bool upcast) {
  if (FlopCounter::active()) {
    // QKᵀ and (softmax)·V: 2 · 2 · B · H · N · M · D.
    FlopCounter::Add(4 * q.size(0) * q.size(1) * q.size(2) * k.size(2) *
                     q.size(3));
  }
  const auto dtype = q.scalar_type();
  const bool widen = upcast && dtype != torch::kFloat32;
  const torch::Tensor qq = widen ? q.to(torch::kFloat32) : q;
  const torch::Tensor kk = widen ? k.to(torch::kFloat32) : k;
  const torch::Tensor vv = widen ? v.to(torch::kFloat32) : v;
#if TORCH_VERSION_MAJOR >= 2
  torch::Tensor out = at::scaled_dot_product_attention(qq, kk, vv);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  torch::Tensor scores = at::matmul(qq, kk.transpose(-2, -1)) * scale;
  torch::Tensor out = at::matmul(at::softmax(scores, -1), vv);
#endif
  return widen ? out.to(dtype) : out;
}

torch::Tensor TimestepEmbeddingFeatures(const torch::Tensor& timesteps,
                                        int64_t dim, bool flip_sin_to_cos,
                                        double downscale_freq_shift) {
  const int64_t half = dim / 2;
  const auto f32 =
      torch::TensorOptions().dtype(torch::kFloat32).device(timesteps.device());
  torch::Tensor exponent = torch::arange(0, half, f32) * (-std::log(10000.0));
  exponent = exponent / (static_cast<double>(half) - downscale_freq_shift);
  torch::Tensor freqs = torch::exp(exponent);
  torch::Tensor args =
      timesteps.reshape({-1, 1}).to(torch::kFloat32) * freqs.unsqueeze(0);
  torch::Tensor emb = torch::cat({torch::sin(args), torch::cos(args)}, -1);
  if (flip_sin_to_cos) {
    emb = torch::cat({emb.slice(1, half), emb.slice(1, 0, half)}, -1);
  }
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0});
  return emb;
}

// ---------------------------------------------------------------- leaves

Conv2dImpl::Conv2dImpl(const Conv2dOptions& o) : options(o) {
  weight = NewParameter(
      *this, "weight",
      {o.out_channels(), o.in_channels(), o.kernel_size(), o.kernel_size()},
      o.tensor_options());
  bias = NewParameter(*this, "bias", {o.out_channels()}, o.tensor_options());
}

torch::Tensor Conv2dImpl::forward(const torch::Tensor& x) {
  return Convolve(x, bias);
}

torch::Tensor Conv2dImpl::ForwardWithoutBias(const torch::Tensor& x) {
  return Convolve(x, {});
}

torch::Tensor Conv2dImpl::Convolve(const torch::Tensor& x,
                                   const torch::Tensor& with_bias) {
  torch::Tensor y =
      at::conv2d(x, weight, with_bias, options.stride(), options.padding());
  if (FlopCounter::active()) {
    FlopCounter::Add(2 * y.numel() * weight.size(1) * weight.size(2) *
                     weight.size(3));
  }
  return y;
}

torch::Tensor Conv2dImpl::ForwardPointwise(const torch::Tensor& rows) {
  const int64_t out = weight.size(0), in = weight.size(1);
  FlopCounter::Add(2 * (rows.numel() / in) * out * in);
  return LinearOp(rows, weight.reshape({out, in}), bias);
}

LinearImpl::LinearImpl(const LinearOptions& o) : options(o) {
  weight = NewParameter(*this, "weight", {o.out_features(), o.in_features()},
                        o.tensor_options());
  if (o.bias()) {
    bias = NewParameter(*this, "bias", {o.out_features()}, o.tensor_options());
  }
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  if (FlopCounter::active()) {
    FlopCounter::Add(2 * (x.numel() / x.size(-1)) * weight.size(0) *
                     weight.size(1));
  }
  return LinearOp(x, weight, bias);
}

void LinearImpl::AccumulateInto(const torch::Tensor& x, torch::Tensor& out) {
  const int64_t rows = x.numel() / x.size(-1);
  FlopCounter::Add(2 * rows * weight.size(0) * weight.size(1));
  out.view({rows, weight.size(0)})
      .addmm_(x.reshape({rows, weight.size(1)}), weight.t());
}

GroupNormImpl::GroupNormImpl(const GroupNormOptions& o) : options(o) {
  weight =
      NewParameter(*this, "weight", {o.num_channels()}, o.tensor_options());
  bias = NewParameter(*this, "bias", {o.num_channels()}, o.tensor_options());
}

torch::Tensor GroupNormImpl::forward(const torch::Tensor& x) {
  return GroupNormAct(x, {}, options.num_groups(), weight, bias, options.eps(),
                      /*silu=*/false);
}

torch::Tensor GroupNormImpl::ForwardSilu(const torch::Tensor& x,
                                         const torch::Tensor& add) {
  return GroupNormAct(x, add, options.num_groups(), weight, bias, options.eps(),
                      /*silu=*/true);
}

LayerNormImpl::LayerNormImpl(const LayerNormOptions& o) : options(o) {
  weight = NewParameter(*this, "weight", {o.dim()}, o.tensor_options());
  bias = NewParameter(*this, "bias", {o.dim()}, o.tensor_options());
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  return at::layer_norm(x, {options.dim()}, weight, bias, options.eps());
}

// ---------------------------------------------------------------- blocks

TimestepEmbeddingImpl::TimestepEmbeddingImpl(
    const TimestepEmbeddingOptions& o) {
  linear_1 = register_module(
      "linear_1", Linear(LinearOptions(o.in_channels(), o.time_embed_dim())
                             .tensor_options(o.tensor_options())));
  linear_2 = register_module(
      "linear_2", Linear(LinearOptions(o.time_embed_dim(), o.time_embed_dim())
                             .tensor_options(o.tensor_options())));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& x) {
  return linear_2(at::silu(linear_1(x)));
}

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o)
    : options(o) {
  const auto& to = o.tensor_options();
  norm1 = register_module(
      "norm1", GroupNorm(GroupNormOptions(o.groups(), o.in_channels(), o.eps())
                             .tensor_options(to)));
  conv1 = register_module(
      "conv1", Conv2d(Conv2dOptions(o.in_channels(), o.out_channels(), 3)
                          .padding(1)
                          .tensor_options(to)));
  time_emb_proj = register_module(
      "time_emb_proj", Linear(LinearOptions(o.temb_channels(), o.out_channels())
                                  .tensor_options(to)));
  norm2 = register_module(
      "norm2", GroupNorm(GroupNormOptions(o.groups(), o.out_channels(), o.eps())
                             .tensor_options(to)));
  conv2 = register_module(
      "conv2", Conv2d(Conv2dOptions(o.out_channels(), o.out_channels(), 3)
                          .padding(1)
                          .tensor_options(to)));
  if (o.in_channels() != o.out_channels()) {
    conv_shortcut = register_module(
        "conv_shortcut",
        Conv2d(Conv2dOptions(o.in_channels(), o.out_channels(), 1)
                   .tensor_options(to)));
  }
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x,
                                         const torch::Tensor& temb) {
  torch::Tensor h = conv1->ForwardWithoutBias(norm1->ForwardSilu(x));
  // norm2 takes the time embedding, plus conv1's bias, as its addend:
  // silu(norm2(h + t)).
  h = norm2->ForwardSilu(h, time_emb_proj(at::silu(temb)) + conv1->bias);
  h = conv2->ForwardWithoutBias(h);
  torch::Tensor out = conv_shortcut
                          ? AddChannelBias(conv_shortcut->ForwardWithoutBias(x),
                                           h, conv2->bias + conv_shortcut->bias)
                          : AddChannelBias(x, h, conv2->bias);
  if (options.output_scale_factor() != 1.0) {
    out = out / options.output_scale_factor();
  }
  return out;
}

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options(o) {
  const auto& to = o.tensor_options();
  const int64_t inner = o.heads() * o.head_dim();
  const int64_t kv_dim =
      o.cross_attention_dim() > 0 ? o.cross_attention_dim() : o.query_dim();
  to_q = register_module(
      "to_q",
      Linear(
          LinearOptions(o.query_dim(), inner).bias(false).tensor_options(to)));
  to_k = register_module(
      "to_k",
      Linear(LinearOptions(kv_dim, inner).bias(false).tensor_options(to)));
  to_v = register_module(
      "to_v",
      Linear(LinearOptions(kv_dim, inner).bias(false).tensor_options(to)));
  to_out = register_module("to_out", NumberedModules());
  to_out_0 = to_out->Add(
      0, Linear(LinearOptions(inner, o.query_dim()).tensor_options(to)));
  // The weights forward multiplies in one GEMM live side by side in one
  // buffer (each parameter a slice of it, names and values unchanged), so
  // that a forward without gradients takes them as one matrix instead of
  // concatenating them on every call.
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts = ProjectionWeights();
  torch::Tensor packed = at::cat(parts);
  int64_t row = 0;
  for (torch::Tensor& part : parts) {
    const int64_t rows = part.size(0);
    part.set_data(packed.narrow(0, row, rows));
    row += rows;
  }
}

std::vector<torch::Tensor> AttentionImpl::ProjectionWeights() const {
  if (options.cross_attention_dim() > 0) return {to_k->weight, to_v->weight};
  return {to_q->weight, to_k->weight, to_v->weight};
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x,
                                     const torch::Tensor& context,
                                     const torch::Tensor& context_kv) {
  const int64_t batch = x.size(0);
  const int64_t heads = options.heads();
  const int64_t head_dim = options.head_dim();
  // [B, N, H·D] → [B, H, N, D]
  auto split_heads = [&](const torch::Tensor& t) {
    return t.view({batch, -1, heads, head_dim}).transpose(1, 2);
  };
  const bool self_attention = x.is_same(context);
  // q, k, v as [B, N, H·D]: k and v from the model's packed projection of
  // the context when given, otherwise one GEMM for q, k and v
  // (self-attention) or for k and v (cross).
  std::vector<torch::Tensor> qkv;
  if (!self_attention && context_kv.defined() && context_kv_offset >= 0 &&
      !torch::GradMode::is_enabled()) {
    qkv = context_kv.narrow(-1, context_kv_offset, 2 * heads * head_dim)
              .chunk(2, -1);
  } else {
    const std::vector<torch::Tensor> weights =
        self_attention ? std::vector<torch::Tensor>{to_q->weight, to_k->weight,
                                                    to_v->weight}
                       : std::vector<torch::Tensor>{to_k->weight, to_v->weight};
    const torch::Tensor& fused_input = self_attention ? x : context;
    if (FlopCounter::active()) {
      int64_t weight_numel = 0;
      for (const torch::Tensor& w : weights) weight_numel += w.numel();
      FlopCounter::Add(2 * (fused_input.numel() / fused_input.size(-1)) *
                       weight_numel);
    }
    qkv = LinearOfStacked(fused_input, weights)
              .chunk(static_cast<int64_t>(weights.size()), -1);
  }
  if (!self_attention) qkv.insert(qkv.begin(), to_q(x));
  torch::Tensor out =
      ScaledDotProductAttention(split_heads(qkv[0]), split_heads(qkv[1]),
                                split_heads(qkv[2]), options.upcast());
  out = out.transpose(1, 2).reshape({batch, -1, heads * head_dim});
  return to_out_0(out);
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(
    const BasicTransformerBlockOptions& o) {
  const auto& to = o.tensor_options();
  auto layer_norm = [&](const char* name) {
    return register_module(
        name, LayerNorm(LayerNormOptions(o.dim(), 1e-5).tensor_options(to)));
  };
  norm1 = layer_norm("norm1");
  attn1 = register_module(
      "attn1", Attention(AttentionOptions(o.dim(), o.heads(), o.head_dim())
                             .upcast(o.upcast_attention())
                             .tensor_options(to)));
  norm2 = layer_norm("norm2");
  attn2 = register_module(
      "attn2", Attention(AttentionOptions(o.dim(), o.heads(), o.head_dim())
                             .cross_attention_dim(o.cross_attention_dim())
                             .upcast(o.upcast_attention())
                             .tensor_options(to)));
  norm3 = layer_norm("norm3");
  auto ff = NewContainer(*this, "ff");
  auto net = ff->register_module("net", NumberedModules());
  auto geglu = net->Add(0, std::make_shared<torch::nn::Module>());
  const int64_t inner = 4 * o.dim();
  ff_proj = geglu->register_module(
      "proj", Linear(LinearOptions(o.dim(), 2 * inner).tensor_options(to)));
  ff_out =
      net->Add(2, Linear(LinearOptions(inner, o.dim()).tensor_options(to)));
}

torch::Tensor BasicTransformerBlockImpl::forward(
    const torch::Tensor& x, const torch::Tensor& context,
    const torch::Tensor& context_kv) {
  // Each residual add is fused with the layer norm that follows it.
  auto [h, n] = AddLayerNorm(x, {}, norm1->weight, norm1->bias, 1e-5);
  std::tie(h, n) =
      AddLayerNorm(attn1(n, n), h, norm2->weight, norm2->bias, 1e-5);
  const torch::Tensor cross = attn2(n, context, context_kv);
  if (torch::GradMode::is_enabled()) {
    std::tie(h, n) = AddLayerNorm(cross, h, norm3->weight, norm3->bias, 1e-5);
    return ff_out(Geglu(ff_proj(n))) + h;
  }
  // The last residual add rides on the feed-forward's last GEMM: the norm's
  // sum output carries ff_out's bias, and the GEMM accumulates onto it.
  std::tie(h, n) =
      AddLayerNorm(cross, h, norm3->weight, norm3->bias, 1e-5, ff_out->bias);
  ff_out->AccumulateInto(Geglu(ff_proj(n)), h);
  return h;
}

Transformer2DModelImpl::Transformer2DModelImpl(
    const Transformer2DModelOptions& o)
    : options(o) {
  const auto& to = o.tensor_options();
  const int64_t c = o.channels();
  norm = register_module(
      "norm",
      GroupNorm(GroupNormOptions(o.groups(), c, 1e-6).tensor_options(to)));
  if (o.use_linear_projection()) {
    proj_in_linear = register_module(
        "proj_in", Linear(LinearOptions(c, c).tensor_options(to)));
  } else {
    proj_in_conv = register_module(
        "proj_in", Conv2d(Conv2dOptions(c, c, 1).tensor_options(to)));
  }
  transformer_blocks = register_module("transformer_blocks", NumberedModules());
  for (int64_t index : o.block_indices()) {
    blocks.emplace(
        index,
        transformer_blocks->Add(
            index, BasicTransformerBlock(
                       BasicTransformerBlockOptions(c, o.heads(), c / o.heads(),
                                                    o.cross_attention_dim())
                           .upcast_attention(o.upcast_attention())
                           .tensor_options(to))));
  }
  if (o.use_linear_projection()) {
    proj_out_linear = register_module(
        "proj_out", Linear(LinearOptions(c, c).tensor_options(to)));
  } else {
    proj_out_conv = register_module(
        "proj_out", Conv2d(Conv2dOptions(c, c, 1).tensor_options(to)));
  }
}

torch::Tensor Transformer2DModelImpl::Enter(const torch::Tensor& x) {
  const int64_t b = x.size(0), c = x.size(1);
  // [B, HW, C]: a view when x is channels-last.
  torch::Tensor h = norm(x).permute({0, 2, 3, 1}).reshape({b, -1, c});
  return proj_in_conv ? proj_in_conv->ForwardPointwise(h) : proj_in_linear(h);
}

torch::Tensor Transformer2DModelImpl::Exit(const torch::Tensor& tokens,
                                           const torch::Tensor& residual) {
  const int64_t b = residual.size(0), c = residual.size(1);
  const int64_t height = residual.size(2), width = residual.size(3);
  torch::Tensor h = proj_out_conv ? proj_out_conv->ForwardPointwise(tokens)
                                  : proj_out_linear(tokens);
  return h.reshape({b, height, width, c}).permute({0, 3, 1, 2}) + residual;
}

BasicTransformerBlock Transformer2DModelImpl::Block(int64_t index) const {
  auto it = blocks.find(index);
  return it == blocks.end() ? BasicTransformerBlock(nullptr) : it->second;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t padding_,
                                   torch::TensorOptions tensor_options)
    : padding(padding_) {
  conv = register_module("conv", Conv2d(Conv2dOptions(channels, channels, 3)
                                            .stride(2)
                                            .padding(padding)
                                            .tensor_options(tensor_options)));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
  if (padding == 0) return conv(at::constant_pad_nd(x, {0, 1, 0, 1}));
  return conv(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels,
                               torch::TensorOptions tensor_options) {
  conv = register_module("conv", Conv2d(Conv2dOptions(channels, channels, 3)
                                            .padding(1)
                                            .tensor_options(tensor_options)));
}

torch::Tensor Upsample2DImpl::forward(
    const torch::Tensor& x, std::optional<std::vector<int64_t>> size) {
  const std::vector<int64_t> out_size =
      size ? *size : std::vector<int64_t>{x.size(2) * 2, x.size(3) * 2};
  // diffusers upsamples bf16 in float32 (nearest is exact either way).
  torch::Tensor h = at::upsample_nearest2d(x, out_size);
  return conv(h);
}

}  // namespace lpd::engine

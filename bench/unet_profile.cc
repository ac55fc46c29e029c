// Where a U-Net forward pass spends its time, for tuning the engine:
//  1. every step of the forward program timed alone (synchronized), summed
//     by kind of step and width;
//  2. the parts of one transformer block and one resnet at the widths SDXL
//     uses, timed in isolation;
//  3. the attention kernels LibTorch offers for the same shapes.
//
//   unet_profile [--case sd15|sdxl] [--device cuda] [--dtype bf16]
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/cli_args.h"
#include "engine/model/model_loader.h"
#include "engine/model/unet.h"

namespace {

using namespace lpd::engine;

torch::Device g_device = torch::kCPU;

void Sync() {
  if (g_device.is_cuda()) torch::cuda::synchronize();
}

// Median milliseconds of `fn` over `iters` synchronized runs.
double TimeMs(const std::function<void()>& fn, int iters = 20) {
  for (int i = 0; i < 3; ++i) fn();
  Sync();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    Sync();
    ms.push_back(std::chrono::duration<double, std::milli>(
                     std::chrono::steady_clock::now() - t0)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

UNetConfig ReadConfig(const std::string& file) {
  std::ifstream in(std::string(LPD_CONFIGS_DIR) + "/" + file);
  std::stringstream text;
  text << in.rdbuf();
  auto config = ParseUNetConfig(text.str(), file);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    std::exit(1);
  }
  return *config;
}

void ProfileSteps(const std::string& file, int64_t batch, int64_t size,
                  torch::TensorOptions to) {
  UNetOptions options;
  options.config = ReadConfig(file);
  options.tensor_options = to;
  auto impl = UNet2DConditionModelImpl::Create(options);
  UNet2DConditionModel model(*impl);
  model->RandomizeParameters(1);
  for (auto& p : model->parameters()) {
    if (p.dim() == 4)
      p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
  const UNetConfig& cfg = options.config;
  UNetInputs in;
  in.sample = torch::randn({batch, 4, size, size}, to)
                  .contiguous(torch::MemoryFormat::ChannelsLast);
  in.timestep = torch::full({batch}, 500, to.dtype(torch::kInt64));
  in.encoder_hidden_states =
      torch::randn({batch, 77, cfg.cross_attention_dim}, to);
  if (cfg.text_time_embedding) {
    in.text_embeds =
        torch::randn({batch, cfg.projection_class_embeddings_input_dim -
                                 6 * cfg.addition_time_embed_dim},
                     to);
    in.time_ids = torch::full({batch, 6}, 1024.0, to);
  }
  torch::NoGradGuard no_grad;
  auto mask = *model->MaskFor({});
  const auto& steps = model->steps();
  std::vector<double> total(steps.size(), 0.0);
  const int reps = 5;
  for (int r = 0; r < reps + 1; ++r) {
    auto state = *model->Begin(in);
    for (size_t i = 0; i < steps.size(); ++i) {
      Sync();
      auto t0 = std::chrono::steady_clock::now();
      model->Run(state, i, i + 1, mask, false);
      Sync();
      if (r > 0) {
        total[i] += std::chrono::duration<double, std::milli>(
                        std::chrono::steady_clock::now() - t0)
                        .count() /
                    reps;
      }
    }
  }
  static const char* kOpNames[] = {"conv_in",    "resnet",     "up_resnet",
                                   "attn_enter", "tblock",     "attn_exit",
                                   "push_skip",  "downsample", "upsample",
                                   "capture",    "conv_out"};
  std::map<std::string, std::pair<double, int>> by_kind;
  double sum = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    std::string key = kOpNames[static_cast<int>(s.op)];
    // Width from the block path: down_blocks.N / up_blocks.N / mid_block.
    std::string level =
        s.name.substr(0, s.name.find('.', s.name.find('.') + 1));
    if (s.op != UNetStep::Op::kCapture && s.op != UNetStep::Op::kPushSkip) {
      key = absl::StrCat(key, " ", level);
    }
    by_kind[key].first += total[i];
    by_kind[key].second += 1;
    sum += total[i];
  }
  std::printf(
      "\n%s batch %ld %ldx%ld: per-step times (synchronized), sum %.2f ms\n",
      file.c_str(), static_cast<long>(batch), static_cast<long>(size),
      static_cast<long>(size), sum);
  std::vector<std::pair<double, std::string>> rows;
  for (auto& [k, v] : by_kind)
    rows.push_back({v.first, absl::StrCat(k, " x", v.second)});
  std::sort(rows.rbegin(), rows.rend());
  for (auto& [ms, k] : rows) {
    if (ms < 0.05) continue;
    std::printf("  %8.2f ms  %5.1f%%  %s\n", ms, 100 * ms / sum, k.c_str());
  }
}

void ProfileTransformerBlock(int64_t dim, int64_t heads, int64_t tokens,
                             int64_t batch, int64_t cross,
                             torch::TensorOptions to) {
  BasicTransformerBlock block(
      BasicTransformerBlockOptions(dim, heads, dim / heads, cross)
          .tensor_options(to));
  torch::NoGradGuard no_grad;
  for (auto& p : block->parameters()) p.normal_(0, 0.02);
  torch::Tensor x = torch::randn({batch, tokens, dim}, to);
  torch::Tensor ctx = torch::randn({batch, 77, cross}, to);
  torch::Tensor n = block->norm1(x);
  auto split = [&](const torch::Tensor& t) {
    return t.view({batch, -1, heads, dim / heads}).transpose(1, 2);
  };
  torch::Tensor q = split(block->attn1->to_q(n));
  torch::Tensor k = split(block->attn1->to_k(n));
  torch::Tensor v = split(block->attn1->to_v(n));
  torch::Tensor o = ScaledDotProductAttention(q, k, v, false);
  torch::Tensor o2 = o.transpose(1, 2).reshape({batch, -1, dim});
  torch::Tensor proj = block->ff_proj(n);
  auto parts = proj.chunk(2, -1);
  torch::Tensor g = parts[0] * at::gelu(parts[1]);
  const double flop_lin = 2.0 * batch * tokens * dim * dim;
  const double flop_attn = 4.0 * batch * tokens * tokens * dim;
  std::printf("\ntransformer block dim %ld, %ld tokens, batch %ld:\n",
              static_cast<long>(dim), static_cast<long>(tokens),
              static_cast<long>(batch));
  auto row = [&](const char* name, double ms, double flops) {
    std::printf(
        "  %-28s %8.3f ms %s\n", name, ms,
        flops > 0 ? absl::StrCat(flops / ms / 1e9, " TFLOP/s").c_str() : "");
  };
  row("whole block", TimeMs([&] { block(x, ctx); }), 0);
  row("layer_norm", TimeMs([&] { block->norm1(x); }), 0);
  row("to_q (linear dxd)", TimeMs([&] { block->attn1->to_q(n); }), flop_lin);
  row("self-attn sdpa",
      TimeMs([&] { ScaledDotProductAttention(q, k, v, false); }), flop_attn);
  row("out transpose+reshape", TimeMs([&] {
        o.transpose(1, 2).reshape({batch, -1, dim});
      }),
      0);
  row("to_out (linear+bias)", TimeMs([&] { block->attn1->to_out_0(o2); }),
      flop_lin);
  row("attn1 total", TimeMs([&] { block->attn1(n, n); }), 0);
  row("attn2 (cross) total", TimeMs([&] { block->attn2(n, ctx); }), 0);
  row("ff proj (d->8d)", TimeMs([&] { block->ff_proj(n); }), 8 * flop_lin);
  row("geglu chunk*gelu", TimeMs([&] {
        auto p = proj.chunk(2, -1);
        (void)(p[0] * at::gelu(p[1]));
      }),
      0);
  row("ff out (4d->d)", TimeMs([&] { block->ff_out(g); }), 4 * flop_lin);
  row("residual add", TimeMs([&] { (void)(x + o2); }), 0);
#if TORCH_VERSION_MAJOR >= 2
  auto& ctx_ = at::globalContext();
  auto try_backend = [&](const char* name, bool flash, bool mem, bool cudnn,
                         bool math) {
    ctx_.setSDPUseFlash(flash);
    ctx_.setSDPUseMemEfficient(mem);
    ctx_.setSDPUseCuDNN(cudnn);
    ctx_.setSDPUseMath(math);
    try {
      row(name, TimeMs([&] { ScaledDotProductAttention(q, k, v, false); }),
          flop_attn);
    } catch (const std::exception& e) {
      std::printf("  %-28s unavailable\n", name);
    }
  };
  try_backend("sdpa flash only", true, false, false, false);
  try_backend("sdpa mem-efficient only", false, true, false, false);
  try_backend("sdpa cudnn only", false, false, true, false);
  try_backend("sdpa default", true, true, true, true);
#endif
}

void ProfileResnet(int64_t channels, int64_t hw, int64_t batch,
                   torch::TensorOptions to) {
  ResnetBlock2D resnet(
      ResnetBlock2DOptions(channels, channels, 1280).tensor_options(to));
  torch::NoGradGuard no_grad;
  for (auto& p : resnet->parameters()) p.normal_(0, 0.02);
  for (auto& p : resnet->parameters()) {
    if (p.dim() == 4)
      p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
  torch::Tensor x = torch::randn({batch, channels, hw, hw}, to)
                        .contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor xn = torch::randn({batch, channels, hw, hw}, to);
  torch::Tensor temb = torch::randn({batch, 1280}, to);
  const double conv_flops = 2.0 * batch * hw * hw * channels * channels * 9;
  std::printf("\nresnet %ld ch, %ldx%ld, batch %ld:\n",
              static_cast<long>(channels), static_cast<long>(hw),
              static_cast<long>(hw), static_cast<long>(batch));
  auto row = [&](const char* name, double ms, double flops) {
    std::printf(
        "  %-28s %8.3f ms %s\n", name, ms,
        flops > 0 ? absl::StrCat(flops / ms / 1e9, " TFLOP/s").c_str() : "");
  };
  row("whole resnet", TimeMs([&] { resnet(x, temb); }), 0);
  row("conv3x3 channels_last", TimeMs([&] { resnet->conv1(x); }), conv_flops);
  row("group_norm channels_last", TimeMs([&] { resnet->norm1(x); }), 0);
  row("group_norm NCHW", TimeMs([&] { resnet->norm1(xn); }), 0);
  row("silu", TimeMs([&] { at::silu(x); }), 0);
  row("add (broadcast temb)", TimeMs([&] {
        (void)(x + temb.narrow(1, 0, channels).unsqueeze(-1).unsqueeze(-1));
      }),
      0);
  row("add (residual)", TimeMs([&] { (void)(x + x); }), 0);
  row("copy (bandwidth ref)", TimeMs([&] { x.clone(); }), 0);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<lpd::FlagSpec> specs = {
      {"device", false, false, "cuda (default when available) or cpu"},
      {"dtype", false, false, "bf16 (default)"},
      {"case", false, false, "sd15, sdxl or all (default)"},
  };
  auto flags = lpd::CliArgs::Parse(
      std::vector<std::string>(argv + 1, argv + argc), specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n", flags.status().ToString().c_str());
    return 2;
  }
  g_device = *ParseTorchDevice(
      flags->Get("device", torch::cuda::is_available() ? "cuda" : "cpu"));
  const auto to = torch::TensorOptions().device(g_device).dtype(
      *ParseTorchDtype(flags->Get("dtype", "bf16")));
  at::globalContext().setBenchmarkCuDNN(true);
  const std::string which = flags->Get("case", "all");
  if (which == "all" || which == "sd15")
    ProfileSteps("sd15-unet.json", 8, 64, to);
  if (which == "all" || which == "sdxl")
    ProfileSteps("sdxl-base-unet.json", 4, 128, to);
  ProfileTransformerBlock(640, 10, 4096, 4, 2048, to);
  ProfileTransformerBlock(1280, 20, 1024, 4, 2048, to);
  ProfileTransformerBlock(320, 8, 4096, 8, 768, to);
  ProfileResnet(320, 128, 4, to);
  ProfileResnet(640, 64, 4, to);
  ProfileResnet(1280, 32, 4, to);
  return 0;
}

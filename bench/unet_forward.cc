// Forward-pass latency and achieved TFLOP/s of full-size U-Nets with random
// weights. Default cases: SD-v1.5 batch 8 at 64×64 latents and SDXL batch 4
// at 128×128, 77 text tokens, bf16 on the GPU.
//
//   unet_forward [--device cuda] [--dtype bf16] [--iters 20] [--warmup 5]
//                [--case sd15|sdxl|all] [--batch N --size S]
//                [--mode plain|eager|graph|all] [--channels-last 0|1]
//                [--profile PREFIX]
// Modes: plain = eager with LibTorch ops only; eager = with the engine's
// fused kernels; graph = fused kernels replayed from a CUDA graph.
// --profile writes a Kineto trace of three forward passes per case and mode
// to PREFIX-<case>-<mode>.json (bench/trace_summary.py reads it).
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/cli_args.h"
#include "bench/kineto_trace.h"
#include "engine/core/cpu_threads.h"
#include "engine/kernels/fused_ops.h"
#include "engine/model/graphed_forward.h"
#include "engine/model/model_loader.h"
#include "engine/model/unet.h"

namespace {

using lpd::engine::GraphedForward;
using lpd::engine::UNet2DConditionModel;
using lpd::engine::UNet2DConditionModelImpl;
using lpd::engine::UNetInputs;

struct Case {
  std::string name;
  std::string config_file;
  int64_t batch;
  int64_t size;
};

void Synchronize(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

double MedianMs(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int RunCase(const Case& c, torch::Device device, torch::Dtype dtype,
            const std::string& mode, bool channels_last, int warmup, int iters,
            const std::string& profile_prefix) {
  std::ifstream in(std::string(LPD_CONFIGS_DIR) + "/" + c.config_file);
  std::stringstream text;
  text << in.rdbuf();
  auto config = lpd::engine::ParseUNetConfig(text.str(), c.config_file);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 1;
  }
  lpd::engine::UNetOptions options;
  options.config = *config;
  options.tensor_options = torch::TensorOptions().device(device).dtype(dtype);
  auto impl = UNet2DConditionModelImpl::Create(options);
  if (!impl.ok()) {
    std::fprintf(stderr, "%s\n", impl.status().ToString().c_str());
    return 1;
  }
  UNet2DConditionModel model(*impl);
  model->RandomizeParameters(1);
  model->eval();
  if (channels_last) {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      if (p.dim() == 4)
        p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    }
  }
  const auto to = torch::TensorOptions().device(device).dtype(dtype);
  UNetInputs inputs;
  inputs.sample =
      torch::randn({c.batch, config->in_channels, c.size, c.size}, to);
  if (channels_last) {
    inputs.sample = inputs.sample.contiguous(torch::MemoryFormat::ChannelsLast);
  }
  inputs.timestep = torch::full({c.batch}, 500, to.dtype(torch::kInt64));
  inputs.encoder_hidden_states =
      torch::randn({c.batch, 77, config->cross_attention_dim}, to);
  if (config->text_time_embedding) {
    const int64_t k = 6;
    inputs.text_embeds =
        torch::randn({c.batch, config->projection_class_embeddings_input_dim -
                                   k * config->addition_time_embed_dim},
                     to);
    inputs.time_ids = torch::full({c.batch, k}, 1024.0, to);
  }

  torch::NoGradGuard no_grad;
  lpd::engine::FlopCounter::Start();
  model->forward(inputs);
  const double flops = static_cast<double>(lpd::engine::FlopCounter::Stop());
  std::printf(
      "%s: batch %ld, %ldx%ld latents, %s, %.3f G parameters, "
      "%.2f TFLOP per forward\n",
      c.name.c_str(), static_cast<long>(c.batch), static_cast<long>(c.size),
      static_cast<long>(c.size), torch::toString(dtype),
      model->NumParameters() / 1e9, flops / 1e12);

  // The fused kernels against the plain ops, on the whole model.
  lpd::engine::SetFusedKernelsEnabled(false);
  torch::Tensor plain = model->forward(inputs).to(torch::kFloat32);
  lpd::engine::SetFusedKernelsEnabled(true);
  torch::Tensor fused = model->forward(inputs).to(torch::kFloat32);
  std::printf(
      "  fused vs plain ops: max |diff| %.3e, output max |y| %.3e, "
      "relative L2 %.3e\n",
      (fused - plain).abs().max().item<double>(),
      plain.abs().max().item<double>(),
      ((fused - plain).norm() / plain.norm()).item<double>());

  for (const std::string m : {"plain", "eager", "graph"}) {
    if (mode != "all" && mode != m) continue;
    lpd::engine::SetFusedKernelsEnabled(m != "plain");
    auto runner = GraphedForward::Create(model, inputs, m == "graph");
    if (!runner.ok()) {
      std::fprintf(stderr, "%s\n", runner.status().ToString().c_str());
      return 1;
    }
    if (m == "graph" && !(*runner)->graphed()) {
      std::printf("  graph: not available on this device/build\n");
      continue;
    }
    for (int i = 0; i < warmup; ++i) (void)(*runner)->Run(inputs);
    Synchronize(device);
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      auto start = std::chrono::steady_clock::now();
      auto out = (*runner)->Run(inputs);
      Synchronize(device);
      auto end = std::chrono::steady_clock::now();
      if (!out.ok()) {
        std::fprintf(stderr, "%s\n", out.status().ToString().c_str());
        return 1;
      }
      ms.push_back(
          std::chrono::duration<double, std::milli>(end - start).count());
    }
    const double median = MedianMs(ms);
    std::printf(
        "  %-5s channels_last=%d: median %.2f ms (min %.2f) over %d "
        "runs, %.1f TFLOP/s\n",
        m.c_str(), channels_last ? 1 : 0, median,
        *std::min_element(ms.begin(), ms.end()), iters,
        flops / (median / 1e3) / 1e12);
    if (!profile_prefix.empty()) {
      lpd::bench::ProfileToFile(
          absl::StrCat(profile_prefix, "-", c.name, "-", m, ".json"), [&] {
            for (int i = 0; i < 3; ++i) (void)(*runner)->Run(inputs);
          });
    }
  }
  lpd::engine::SetFusedKernelsEnabled(true);
  return 0;
}

// Each fused kernel against the plain ops on random bf16 data: the largest
// difference relative to the output's largest magnitude.
void CheckKernels(torch::Device device, torch::Dtype dtype) {
  if (!device.is_cuda() || !lpd::engine::HasFusedCudaKernels()) return;
  torch::NoGradGuard no_grad;
  const auto to = torch::TensorOptions().device(device).dtype(dtype);
  auto compare = [&](const char* name,
                     const std::function<torch::Tensor()>& f) {
    lpd::engine::SetFusedKernelsEnabled(false);
    torch::Tensor plain = f().to(torch::kFloat32);
    lpd::engine::SetFusedKernelsEnabled(true);
    torch::Tensor fused = f().to(torch::kFloat32);
    std::printf(
        "  kernel check %-28s max|diff|/max|y| = %.2e\n", name,
        ((fused - plain).abs().max() / plain.abs().max()).item<double>());
  };
  torch::Tensor x = torch::randn({4, 320, 64, 64}, to)
                        .contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor add = torch::randn({4, 320}, to);
  torch::Tensor w = torch::rand({320}, to) + 0.5, b = torch::randn({320}, to);
  compare("group_norm+add+silu", [&] {
    return lpd::engine::GroupNormAct(x, add, 32, w, b, 1e-5, true);
  });
  compare("group_norm", [&] {
    return lpd::engine::GroupNormAct(x, {}, 32, w, b, 1e-6, false);
  });
  torch::Tensor t = torch::randn({4, 1024, 640}, to),
                r = torch::randn({4, 1024, 640}, to);
  torch::Tensor lw = torch::rand({640}, to) + 0.5, lb = torch::randn({640}, to);
  compare("add+layer_norm",
          [&] { return lpd::engine::AddLayerNorm(t, r, lw, lb, 1e-5).second; });
  compare("add+layer_norm sum+addend", [&] {
    return lpd::engine::AddLayerNorm(t, r, lw, lb, 1e-5, lb).first;
  });
  torch::Tensor y = torch::randn({4, 320, 64, 64}, to)
                        .contiguous(torch::MemoryFormat::ChannelsLast);
  compare("add+channel bias",
          [&] { return lpd::engine::AddChannelBias(x, y, b); });
  torch::Tensor g = torch::randn({4, 1024, 5120}, to);
  compare("geglu", [&] { return lpd::engine::Geglu(g); });
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<lpd::FlagSpec> specs = {
      {"device", false, false, "cuda (default when available) or cpu"},
      {"dtype", false, false, "bf16 (default), fp16 or fp32"},
      {"case", false, false, "sd15, sdxl or all (default)"},
      {"batch", false, false, "override the case's batch"},
      {"size", false, false, "override the case's latent size"},
      {"mode", false, false, "eager, graph or all (default)"},
      {"channels-last", false, false, "1 (default) or 0"},
      {"warmup", false, false, "warm-up runs (default 5)"},
      {"iters", false, false, "timed runs (default 20)"},
      {"threads", false, false, "CPU threads"},
      {"profile", false, false,
       "write Kineto traces to PREFIX-<case>-<mode>.json"},
  };
  auto flags = lpd::CliArgs::Parse(
      std::vector<std::string>(argv + 1, argv + argc), specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n%s", flags.status().ToString().c_str(),
                 lpd::CliArgs::Usage(specs).c_str());
    return 2;
  }
  auto device = lpd::engine::ParseTorchDevice(
      flags->Get("device", torch::cuda::is_available() ? "cuda" : "cpu"));
  auto dtype = lpd::engine::ParseTorchDtype(flags->Get("dtype", "bf16"));
  if (!device.ok() || !dtype.ok()) {
    std::fprintf(
        stderr, "%s\n",
        (!device.ok() ? device.status() : dtype.status()).ToString().c_str());
    return 2;
  }
  if (auto threads = flags->GetInt("threads", 0);
      threads.ok() && *threads > 0) {
    lpd::engine::SetCpuThreads(static_cast<int>(*threads));
  }
  at::globalContext().setBenchmarkCuDNN(true);
  CheckKernels(*device, *dtype);
  const int warmup = static_cast<int>(flags->GetInt("warmup", 5).value_or(5));
  const int iters = static_cast<int>(flags->GetInt("iters", 20).value_or(20));
  const bool channels_last = flags->Get("channels-last", "1") != "0";
  const std::string which = flags->Get("case", "all");
  std::vector<Case> cases = {{"SD-v1.5", "sd15-unet.json", 8, 64},
                             {"SDXL", "sdxl-base-unet.json", 4, 128}};
  int rc = 0;
  for (Case c : cases) {
    if (which != "all" && !((which == "sd15" && c.name == "SD-v1.5") ||
                            (which == "sdxl" && c.name == "SDXL"))) {
      continue;
    }
    c.batch = flags->GetInt("batch", c.batch).value_or(c.batch);
    c.size = flags->GetInt("size", c.size).value_or(c.size);
    rc |= RunCase(c, *device, *dtype, flags->Get("mode", "all"), channels_last,
                  warmup, iters, flags->Get("profile", ""));
  }
  return rc;
}

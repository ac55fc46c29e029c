// Distillation step throughput and peak GPU memory (teacher forward + student
// forward/backward + clipping + AdamW, feature terms on every down, mid and
// up block output), random weights and batches, bf16 weights and AdamW state
// by default. Cases: SD-v1.5 batch 8 64×64 unpruned; SDXL batch 4 128×128
// unpruned; SDXL with the deepest attentions cut to 4 transformer blocks.
//
//   distill_step [--case sd15|sdxl|sdxl-pruned|all] [--steps 10]
//                [--precision bf16|bf16-master|fp32] [--fused-training off]
//                [--profile PREFIX] [--check-kernels] [--cuda-graph off]
//                [--concurrent-teacher off]
//
// --fused-training off records the plain ops for the student's group norms
// and GEGLUs (the fused autograd nodes are the default); --profile writes a
// Kineto trace of two steps per case to PREFIX-<case>.json (LibTorch 2.x with
// CUDA; bench/trace_summary.py reads it); --check-kernels compares, on the
// GPU, the fused nodes' gradients and the fused AdamW step with the plain
// ones, and six graphed steps against six eager ones, before measuring.
// --cuda-graph off keeps every step eager (the trainer captures the step in
// a CUDA graph by default).
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#ifdef LPD_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "base/cli_args.h"
#include "bench/kineto_trace.h"
#include "bench/random_unet.h"
#include "engine/compress/scoring.h"
#include "engine/kernels/fused_ops.h"
#include "engine/model/model_loader.h"
#include "engine/model/unet.h"
#include "engine/train/distill.h"

namespace {

using namespace lpd::engine;

bool g_concurrent_teacher = true;

void Sync(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Starts the peak-memory count from what is in use now: blocks cached by
// earlier cases or checks in this process are released first.
void ResetPeak(torch::Device device) {
#ifdef LPD_WITH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::emptyCache();
    c10::cuda::CUDACachingAllocator::resetPeakStats(
        device.index() < 0 ? 0 : device.index());
  }
#endif
}

double PeakGiB(torch::Device device) {
#ifdef LPD_WITH_CUDA
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        device.index() < 0 ? 0 : device.index());
    // Index 0 is the aggregate over pool types.
    return static_cast<double>(stats.reserved_bytes[0].peak) / (1 << 30);
  }
#endif
  return 0;
}

// Largest difference of b from a relative to a's largest magnitude.
double RelativeDiff(const torch::Tensor& a, const torch::Tensor& b) {
  torch::Tensor fa = a.to(torch::kFloat32), fb = b.to(torch::kFloat32);
  return ((fa - fb).abs().max() / fa.abs().max().clamp_min(1e-30))
      .item<double>();
}

// The fused autograd nodes against autograd through the plain ops, and the
// fused AdamW step against the multi-tensor one, on the GPU.
void CheckKernels(torch::Device device) {
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
    const auto to = torch::TensorOptions().device(device).dtype(dtype);
    auto grads = [&](const std::vector<torch::Tensor>& inputs,
                     const torch::Tensor& probe, bool fused,
                     const std::function<torch::Tensor(
                         const std::vector<torch::Tensor>&)>& f) {
      SetFusedTrainingKernelsEnabled(fused);
      std::vector<torch::Tensor> leaves;
      for (const auto& t : inputs) {
        leaves.push_back(t.detach().clone().set_requires_grad(true));
      }
      torch::Tensor y = f(leaves);
      (y * probe).sum().backward();
      std::vector<torch::Tensor> out = {y.detach()};
      for (auto& l : leaves) out.push_back(l.grad());
      SetFusedTrainingKernelsEnabled(true);
      return out;
    };
    auto compare = [&](const char* name, const std::vector<torch::Tensor>& in,
                       const torch::Tensor& probe, const auto& f) {
      auto plain = grads(in, probe, false, f);
      auto fused = grads(in, probe, true, f);
      std::printf("  check %-5s %-22s", torch::toString(dtype), name);
      // The output, then the gradient of each input in order.
      for (size_t i = 0; i < plain.size(); ++i) {
        std::printf(" %s %.1e",
                    i == 0 ? "y" : ("d" + std::to_string(i)).c_str(),
                    RelativeDiff(plain[i], fused[i]));
      }
      std::printf("\n");
    };
    torch::manual_seed(1);
    torch::Tensor x = torch::randn({4, 320, 32, 32}, to)
                          .contiguous(torch::MemoryFormat::ChannelsLast);
    std::vector<torch::Tensor> in = {x, torch::rand({320}, to) + 0.5,
                                     torch::randn({320}, to),
                                     torch::randn({4, 320}, to)};
    torch::Tensor probe = torch::randn_like(x);
    compare("group_norm+add+silu", in, probe,
            [](const std::vector<torch::Tensor>& v) {
              return GroupNormAct(v[0], v[3], 32, v[1], v[2], 1e-5, true);
            });
    in.pop_back();
    compare("group_norm", in, probe, [](const std::vector<torch::Tensor>& v) {
      return GroupNormAct(v[0], {}, 32, v[1], v[2], 1e-6, false);
    });
    torch::Tensor g = torch::randn({4, 256, 2560}, to);
    compare("geglu", {g}, torch::randn({4, 256, 1280}, to),
            [](const std::vector<torch::Tensor>& v) { return Geglu(v[0]); });
    torch::Tensor t = torch::randn({4, 1024, 1280}, to);
    compare("linear",
            {t, torch::randn({640, 1280}, to) * 0.03, torch::randn({640}, to)},
            torch::randn({4, 1024, 640}, to),
            [](const std::vector<torch::Tensor>& v) {
              return LinearOp(v[0], v[1], v[2]);
            });
    compare("add+layer_norm",
            {t, torch::randn_like(t), torch::rand({1280}, to) + 0.5,
             torch::randn({1280}, to)},
            torch::randn({4, 1024, 2560}, to),
            [](const std::vector<torch::Tensor>& v) {
              auto [sum, y] = AddLayerNorm(v[0], v[1], v[2], v[3], 1e-5);
              return torch::cat({sum, y}, -1);
            });

    // AdamW: three steps each way from the same start.
    std::vector<torch::Tensor> params = {
        torch::randn({640, 320, 3, 3}, to)
            .contiguous(torch::MemoryFormat::ChannelsLast),
        torch::randn({1280}, to)};
    std::vector<torch::Tensor> result[2];
    for (int fused = 0; fused < 2; ++fused) {
      std::vector<torch::Tensor> p;
      for (auto& t : params) p.push_back(t.clone().set_requires_grad(true));
      torch::optim::AdamW opt(
          p, torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
      torch::manual_seed(2);
      for (int step = 0; step < 3; ++step) {
        for (auto& t : p) t.mutable_grad() = torch::randn_like(t);
        MultiTensorAdamWStep(opt, fused == 1);
      }
      result[fused] = p;
    }
    std::printf("  check %-5s %-22s p0 %.1e p1 %.1e (change %.1e)\n",
                torch::toString(dtype), "fused AdamW",
                RelativeDiff(result[0][0], result[1][0]),
                RelativeDiff(result[0][1], result[1][1]),
                RelativeDiff(params[0], result[0][0]));
  }
}

// A random batch for `teacher`'s config.
TrainingBatch RandomBatch(const UNet2DConditionModelImpl& teacher,
                          int64_t batch, int64_t size,
                          const torch::TensorOptions& to) {
  TrainingBatch b;
  b.noised.sample = torch::randn({batch, 4, size, size}, to);
  b.noised.timestep = torch::randint(0, 1000, {batch}, to.dtype(torch::kInt64));
  b.noised.encoder_hidden_states =
      torch::randn({batch, 77, teacher.config().cross_attention_dim}, to);
  if (teacher.config().text_time_embedding) {
    b.noised.text_embeds = torch::randn(
        {batch, teacher.config().projection_class_embeddings_input_dim -
                    6 * teacher.config().addition_time_embed_dim},
        to);
    b.noised.time_ids = torch::full({batch, 6}, 1024.0, to);
  }
  b.target = torch::randn({batch, 4, size, size}, to);
  return b;
}

// Six steps with the CUDA graph and six eager, from the same student and on
// the same batches (one of another shape in between): the weights must agree
// to bf16 rounding.
void CheckGraphedSteps(torch::Device device) {
  auto teacher = lpd::bench::RandomUNetFromConfigFile("sd15-unet.json", device,
                                                      torch::kBFloat16);
  if (!teacher.ok()) return;
  const auto to = torch::TensorOptions().device(device).dtype(torch::kBFloat16);
  std::vector<TrainingBatch> batches;
  torch::manual_seed(5);
  for (int i = 0; i < 6; ++i) {
    batches.push_back(RandomBatch(**teacher, i == 4 ? 1 : 2, 32, to));
  }
  std::vector<torch::Tensor> weights[2];
  std::vector<double> losses[2];
  for (int graphed = 0; graphed < 2; ++graphed) {
    DistillTrainerOptions o;
    o.device = device;
    o.precision = TrainingPrecision::kBFloat16;
    o.learning_rate = 1e-4;
    o.cuda_graph = graphed == 1;
    auto trainer =
        DistillTrainer::Create(UNet2DConditionModel(*teacher), {}, o);
    if (!trainer.ok()) return;
    for (const TrainingBatch& b : batches) {
      auto r = (*trainer)->Step(b);
      if (!r.ok()) {
        std::printf("  graph check: %s\n", r.status().ToString().c_str());
        return;
      }
      losses[graphed].push_back(r->loss.total);
    }
    if (graphed == 1) {
      std::printf("  graph check: replaying %d, capture status %s\n",
                  (*trainer)->replaying_cuda_graph() ? 1 : 0,
                  (*trainer)->cuda_graph_failure().ToString().c_str());
    }
    for (const auto& p : (*trainer)->student()->parameters()) {
      weights[graphed].push_back(p.detach().clone());
    }
  }
  double worst = 0;
  for (size_t i = 0; i < weights[0].size(); ++i) {
    worst = std::max(worst, RelativeDiff(weights[0][i], weights[1][i]));
  }
  std::printf(
      "  graph check: weights after 6 steps, max rel diff %.2e; "
      "losses eager/graphed:",
      worst);
  for (size_t i = 0; i < losses[0].size(); ++i) {
    std::printf(" %.5f/%.5f", losses[0][i], losses[1][i]);
  }
  std::printf("\n");
}

int RunCase(const std::string& name, const std::string& file, int64_t batch,
            int64_t size, double prune_ratio, torch::Device device,
            TrainingPrecision precision, int steps,
            const std::string& profile_prefix, bool cuda_graph) {
  const torch::Dtype dtype = precision == TrainingPrecision::kFloat32
                                 ? torch::kFloat32
                                 : torch::kBFloat16;
  const auto to = torch::TensorOptions().device(device).dtype(dtype);
  auto teacher = lpd::bench::RandomUNetFromConfigFile(file, device, dtype);
  if (!teacher.ok()) {
    std::fprintf(stderr, "%s\n", teacher.status().ToString().c_str());
    return 1;
  }
  ResetPeak(device);  // after CUDA is initialized; teacher weights count
  std::set<std::string> removed;
  if (prune_ratio > 0) {
    auto plan = HandcraftedSelection(**teacher, prune_ratio);
    if (!plan.ok()) {
      std::fprintf(stderr, "%s\n", plan.status().ToString().c_str());
      return 1;
    }
    removed.insert(plan->removed.begin(), plan->removed.end());
    std::printf(
        "%s: removed %.1f%% of parameters (%d trailing blocks of each "
        "deepest attention)\n",
        name.c_str(), 100 * plan->achieved_ratio, plan->trailing_blocks);
  }
  DistillTrainerOptions trainer_options;
  trainer_options.device = device;
  trainer_options.precision = precision;
  trainer_options.learning_rate = 1e-5;
  trainer_options.cuda_graph = cuda_graph;
  trainer_options.concurrent_teacher = g_concurrent_teacher;
  auto trainer = DistillTrainer::Create(UNet2DConditionModel(*teacher), removed,
                                        trainer_options);
  if (!trainer.ok()) {
    std::fprintf(stderr, "%s\n", trainer.status().ToString().c_str());
    return 1;
  }
  TrainingBatch b = RandomBatch(**teacher, batch, size, to);
  // Warm-up: cuDNN choices, AdamW state, the graph's capture.
  for (int i = 0; i <= trainer_options.graph_warmup_steps; ++i) {
    auto r = (*trainer)->Step(b);
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
  }
  Sync(device);
  std::vector<double> seconds;
  for (int i = 0; i < steps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = (*trainer)->Step(b);
    Sync(device);
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count());
    if (!r.ok()) return 1;
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  std::printf(
      "%s: batch %ld %ldx%ld, student %.3f G params: %.1f ms/step, "
      "%.1f samples/s, peak GPU memory %.2f GiB\n",
      name.c_str(), static_cast<long>(batch), static_cast<long>(size),
      static_cast<long>(size), (*trainer)->student()->NumParameters() / 1e9,
      median * 1e3, batch / median, PeakGiB(device));
  if (!(*trainer)->cuda_graph_failure().ok()) {
    std::printf("  CUDA graph capture failed: %s\n",
                (*trainer)->cuda_graph_failure().ToString().c_str());
  } else {
    std::printf("  CUDA graph: %s\n",
                (*trainer)->replaying_cuda_graph() ? "replayed" : "not used");
  }
  if (!profile_prefix.empty()) {
    std::string tag = name;
    for (char& c : tag) c = c == ' ' ? '-' : c;
    lpd::bench::ProfileToFile(profile_prefix + "-" + tag + ".json", [&] {
      for (int i = 0; i < 2; ++i) (void)(*trainer)->Step(b);
    });
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<lpd::FlagSpec> specs = {
      {"device", false, false, "cuda (default when available) or cpu"},
      {"case", false, false, "sd15, sdxl, sdxl-pruned or all (default)"},
      {"steps", false, false, "timed steps (default 10)"},
      {"precision", false, false, "bf16 (default), bf16-master or fp32"},
      {"fused-training", false, false,
       "on (default) or off: the student's fused autograd nodes"},
      {"profile", false, false, "write Kineto traces to PREFIX-<case>.json"},
      {"check-kernels", false, true, "compare fused and plain gradients"},
      {"cuda-graph", false, false, "on (default) or off"},
      {"concurrent-teacher", false, false,
       "on (default) or off: the teacher's forward on its own stream"},
  };
  auto flags = lpd::CliArgs::Parse(
      std::vector<std::string>(argv + 1, argv + argc), specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n", flags.status().ToString().c_str());
    return 2;
  }
  auto device = ParseTorchDevice(
      flags->Get("device", torch::cuda::is_available() ? "cuda" : "cpu"));
  if (!device.ok()) return 2;
  const std::string p = flags->Get("precision", "bf16");
  const TrainingPrecision precision =
      p == "fp32"
          ? TrainingPrecision::kFloat32
          : (p == "bf16-master" ? TrainingPrecision::kBFloat16MasterFloat32
                                : TrainingPrecision::kBFloat16);
  const int steps = static_cast<int>(flags->GetInt("steps", 10).value_or(10));
  at::globalContext().setBenchmarkCuDNN(true);
  SetFusedTrainingKernelsEnabled(flags->Get("fused-training", "on") != "off");
  if (flags->Has("check-kernels") && device->is_cuda()) {
    CheckKernels(*device);
    CheckGraphedSteps(*device);
  }
  const bool cuda_graph = flags->Get("cuda-graph", "on") != "off";
  g_concurrent_teacher = flags->Get("concurrent-teacher", "on") != "off";
  const std::string profile = flags->Get("profile", "");
  const std::string which = flags->Get("case", "all");
  int rc = 0;
  if (which == "all" || which == "sd15") {
    rc |= RunCase("SD-v1.5", "sd15-unet.json", 8, 64, 0, *device, precision,
                  steps, profile, cuda_graph);
  }
  if (which == "all" || which == "sdxl") {
    rc |= RunCase("SDXL", "sdxl-base-unet.json", 4, 128, 0, *device, precision,
                  steps, profile, cuda_graph);
  }
  if (which == "all" || which == "sdxl-pruned") {
    rc |= RunCase("SDXL pruned", "sdxl-base-unet.json", 4, 128, 0.487, *device,
                  precision, steps, profile, cuda_graph);
  }
  return rc;
}

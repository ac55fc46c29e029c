// Distillation step throughput and peak GPU memory (teacher forward + student
// forward/backward + clipping + AdamW, feature terms on every down, mid and
// up block output), random weights and batches, bf16 weights and AdamW state
// by default. Cases: SD-v1.5 batch 8 64×64 unpruned; SDXL batch 4 128×128
// unpruned; SDXL with the deepest attentions cut to 4 transformer blocks.
//
//   distill_step [--case sd15|sdxl|sdxl-pruned|all] [--steps 10]
//                [--precision bf16|bf16-master|fp32]
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifdef LPD_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "bench/random_unet.h"
#include "common/cli_args.h"
#include "engine/distill.h"
#include "engine/model_loader.h"
#include "engine/scoring.h"
#include "engine/unet.h"

namespace {

using namespace lpd::engine;

void Sync(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

void ResetPeak(torch::Device device) {
#ifdef LPD_WITH_CUDA
  if (device.is_cuda()) {
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

int RunCase(const std::string& name, const std::string& file, int64_t batch,
            int64_t size, double prune_ratio, torch::Device device,
            TrainingPrecision precision, int steps) {
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
  auto trainer = DistillTrainer::Create(UNet2DConditionModel(*teacher), removed,
                                        trainer_options);
  if (!trainer.ok()) {
    std::fprintf(stderr, "%s\n", trainer.status().ToString().c_str());
    return 1;
  }
  TrainingBatch b;
  b.noised.sample = torch::randn({batch, 4, size, size}, to);
  b.noised.timestep = torch::randint(0, 1000, {batch}, to.dtype(torch::kInt64));
  b.noised.encoder_hidden_states =
      torch::randn({batch, 77, (*teacher)->config().cross_attention_dim}, to);
  if ((*teacher)->config().text_time_embedding) {
    b.noised.text_embeds = torch::randn(
        {batch, (*teacher)->config().projection_class_embeddings_input_dim -
                    6 * (*teacher)->config().addition_time_embed_dim},
        to);
    b.noised.time_ids = torch::full({batch, 6}, 1024.0, to);
  }
  b.target = torch::randn({batch, 4, size, size}, to);
  for (int i = 0; i < 2; ++i) {  // warm-up: cuDNN choices, AdamW state
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
      "%.1f samples/s, peak GPU memory %.1f GiB\n",
      name.c_str(), static_cast<long>(batch), static_cast<long>(size),
      static_cast<long>(size), (*trainer)->student()->NumParameters() / 1e9,
      median * 1e3, batch / median, PeakGiB(device));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<lpd::FlagSpec> specs = {
      {"device", false, false, "cuda (default when available) or cpu"},
      {"case", false, false, "sd15, sdxl, sdxl-pruned or all (default)"},
      {"steps", false, false, "timed steps (default 10)"},
      {"precision", false, false, "bf16 (default), bf16-master or fp32"},
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
  const std::string which = flags->Get("case", "all");
  int rc = 0;
  if (which == "all" || which == "sd15") {
    rc |= RunCase("SD-v1.5", "sd15-unet.json", 8, 64, 0, *device, precision,
                  steps);
  }
  if (which == "all" || which == "sdxl") {
    rc |= RunCase("SDXL", "sdxl-base-unet.json", 4, 128, 0, *device, precision,
                  steps);
  }
  if (which == "all" || which == "sdxl-pruned") {
    rc |= RunCase("SDXL pruned", "sdxl-base-unet.json", 4, 128, 0.487, *device,
                  precision, steps);
  }
  return rc;
}

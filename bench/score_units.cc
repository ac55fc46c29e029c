// Time to score every prunable unit of a full-size U-Net (output_loss) on
// one calibration batch: the engine's cached scoring (resume from each
// unit's boundary) against its naive scoring (one full forward per unit).
// Random bf16 weights; SD-v1.5 batch 8 64×64 (34 units, resnet + attention),
// SDXL batch 4 128×128 (83 units, resnet + transformer_block).
//
//   score_units [--case sd15|sdxl|all] [--device cuda] [--dtype bf16]
#include <torch/cuda.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/cli_args.h"
#include "engine/compress/scoring.h"
#include "engine/model/model_loader.h"
#include "engine/model/unet.h"

namespace {

using namespace lpd::engine;

void Sync(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

int RunCase(const std::string& name, const std::string& file, int64_t batch,
            int64_t size, std::set<UnitKind> kinds, torch::Device device,
            torch::Dtype dtype) {
  std::ifstream in(std::string(LPD_CONFIGS_DIR) + "/" + file);
  std::stringstream text;
  text << in.rdbuf();
  auto config = ParseUNetConfig(text.str(), file);
  if (!config.ok()) return 1;
  UNetOptions options;
  options.config = *config;
  const auto to = torch::TensorOptions().device(device).dtype(dtype);
  options.tensor_options = to;
  auto model = UNet2DConditionModelImpl::Create(options);
  if (!model.ok()) return 1;
  (*model)->RandomizeParameters(1);
  for (auto& p : (*model)->parameters()) {
    if (p.dim() == 4)
      p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
  UNetInputs batch_inputs;
  batch_inputs.sample = torch::randn({batch, 4, size, size}, to)
                            .contiguous(torch::MemoryFormat::ChannelsLast);
  batch_inputs.timestep =
      torch::randint(0, 1000, {batch}, to.dtype(torch::kInt64));
  batch_inputs.encoder_hidden_states =
      torch::randn({batch, 77, config->cross_attention_dim}, to);
  if (config->text_time_embedding) {
    batch_inputs.text_embeds =
        torch::randn({batch, config->projection_class_embeddings_input_dim -
                                 6 * config->addition_time_embed_dim},
                     to);
    batch_inputs.time_ids = torch::full({batch, 6}, 1024.0, to);
  }
  const std::vector<std::string> units = ScorableUnitIds(**model, kinds);
  std::printf("%s: %zu units, batch %ld, %ldx%ld\n", name.c_str(), units.size(),
              static_cast<long>(batch), static_cast<long>(size),
              static_cast<long>(size));
  double times[2] = {0, 0};
  std::vector<double> scores[2];
  for (int m = 0; m < 2; ++m) {
    ScoreOptions so;
    so.method = m == 0 ? OutputLossMethod::kNaive : OutputLossMethod::kCached;
    // Warm-up (cuDNN algorithm choice, allocator), then the timed run.
    auto warm = ScoreUnits(**model, {units.front()}, {batch_inputs}, so);
    if (!warm.ok()) {
      std::fprintf(stderr, "%s\n", warm.status().ToString().c_str());
      return 1;
    }
    Sync(device);
    auto t0 = std::chrono::steady_clock::now();
    auto result = ScoreUnits(**model, units, {batch_inputs}, so);
    Sync(device);
    times[m] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    if (!result.ok()) {
      std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
      return 1;
    }
    for (const auto& u : result->units) scores[m].push_back(u.score);
  }
  double worst = 0;
  for (size_t i = 0; i < scores[0].size(); ++i) {
    worst = std::max(worst, std::abs(scores[0][i] - scores[1][i]) /
                                std::max(1e-30, std::abs(scores[0][i])));
  }
  std::printf("  naive  (one forward per unit): %.3f s per batch\n", times[0]);
  std::printf("  cached (resume at each unit):  %.3f s per batch  (%.2fx)\n",
              times[1], times[0] / times[1]);
  std::printf("  largest relative score difference cached vs naive: %.2e\n",
              worst);
  return 0;
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
  if (!flags.ok()) return 2;
  auto device = ParseTorchDevice(
      flags->Get("device", torch::cuda::is_available() ? "cuda" : "cpu"));
  auto dtype = ParseTorchDtype(flags->Get("dtype", "bf16"));
  if (!device.ok() || !dtype.ok()) return 2;
  at::globalContext().setBenchmarkCuDNN(true);
  torch::NoGradGuard no_grad;
  const std::string which = flags->Get("case", "all");
  int rc = 0;
  if (which == "all" || which == "sd15") {
    rc |= RunCase("SD-v1.5", "sd15-unet.json", 8, 64,
                  {UnitKind::kResnet, UnitKind::kAttention}, *device, *dtype);
  }
  if (which == "all" || which == "sdxl") {
    rc |= RunCase("SDXL", "sdxl-base-unet.json", 4, 128,
                  {UnitKind::kResnet, UnitKind::kTransformerBlock}, *device,
                  *dtype);
  }
  return rc;
}

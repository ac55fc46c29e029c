// What the distillation benchmarks share: a full-size U-Net from configs/
// with random weights, the same on every process (seed 1).
#ifndef LPD_BENCH_RANDOM_UNET_H_
#define LPD_BENCH_RANDOM_UNET_H_

#include <torch/torch.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "base/status_macros.h"
#include "engine/formats/unet_config.h"
#include "engine/model/unet.h"

namespace lpd::bench {

// The U-Net of `<LPD_CONFIGS_DIR>/<file>` in `dtype` on `device`, weights
// drawn by RandomizeParameters(1).
inline absl::StatusOr<engine::UNet2DConditionModel> RandomUNetFromConfigFile(
    const std::string& file, torch::Device device, torch::Dtype dtype) {
  std::ifstream in(std::string(LPD_CONFIGS_DIR) + "/" + file);
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(engine::UNetConfig config,
                   engine::ParseUNetConfig(text.str(), file));
  engine::UNetOptions options;
  options.config = config;
  options.tensor_options = torch::TensorOptions().device(device).dtype(dtype);
  ASSIGN_OR_RETURN(auto model,
                   engine::UNet2DConditionModelImpl::Create(options));
  model->RandomizeParameters(1);
  return engine::UNet2DConditionModel(model);
}

}  // namespace lpd::bench

#endif  // LPD_BENCH_RANDOM_UNET_H_

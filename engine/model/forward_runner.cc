#include "engine/model/forward_runner.h"

#include <torch/torch.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"
#include "engine/model/model_loader.h"

namespace lpd::engine {

absl::StatusOr<UNetInputs> InputsFromTensors(
    const std::map<std::string, torch::Tensor>& tensors, absl::string_view path,
    bool text_time) {
  auto get = [&](const std::string& key,
                 bool required) -> absl::StatusOr<torch::Tensor> {
    auto it = tensors.find(key);
    if (it != tensors.end()) return it->second;
    if (!required) return torch::Tensor();
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no tensor \"", key, "\""));
  };
  UNetInputs inputs;
  ASSIGN_OR_RETURN(inputs.sample, get("input.sample", true));
  ASSIGN_OR_RETURN(inputs.timestep, get("input.timestep", true));
  ASSIGN_OR_RETURN(inputs.encoder_hidden_states,
                   get("input.encoder_hidden_states", true));
  ASSIGN_OR_RETURN(inputs.text_embeds, get("input.text_embeds", text_time));
  ASSIGN_OR_RETURN(inputs.time_ids, get("input.time_ids", text_time));
  return inputs;
}

absl::Status RunForward(const ForwardRequest& request) {
  ASSIGN_OR_RETURN(torch::Device device, ParseTorchDevice(request.device));
  ASSIGN_OR_RETURN(torch::Dtype dtype, ParseTorchDtype(request.dtype));
  if (dtype == torch::kFloat32) {
    // A debugging tool computes float32 as float32: no TF32 shortcuts.
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  LoadModelOptions load_options;
  load_options.device = device;
  load_options.dtype = dtype;
  ASSIGN_OR_RETURN(UNet2DConditionModel model,
                   LoadModel(request.model_dir, load_options));
  ASSIGN_OR_RETURN(auto tensors, ReadAllTensors(request.inputs_path));
  ASSIGN_OR_RETURN(UNetInputs inputs,
                   InputsFromTensors(tensors, request.inputs_path,
                                     model->config().text_time_embedding));
  if (absl::Status valid = model->ValidateInputs(inputs); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(request.inputs_path, ": ", valid.message()));
  }
  // Unknown or non-removable units are reported before any work runs.
  RETURN_IF_ERROR(model->MaskFor(request.remove_units).status());
  std::map<std::string, torch::Tensor> outputs;
  RETURN_IF_ERROR(GuardTorch("forward pass", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    BlockOutputs captures;
    torch::Tensor sample =
        model->forward(inputs, request.remove_units, &captures);
    outputs["output.sample"] = sample.to(torch::kCPU, torch::kFloat32);
    for (auto& [name, value] : captures) {
      outputs["act." + name] = value.to(torch::kCPU, torch::kFloat32);
    }
    return absl::OkStatus();
  }));
  return WriteTensors(request.output_path, outputs);
}

}  // namespace lpd::engine

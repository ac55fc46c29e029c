// `lpd-worker forward`: one forward pass of a model folder on stored inputs,
// writing the prediction and every block output. Users debug with it; tests
// run it on the reference vectors.
#ifndef LPD_ENGINE_MODEL_FORWARD_RUNNER_H_
#define LPD_ENGINE_MODEL_FORWARD_RUNNER_H_

#include <torch/types.h>

#include <map>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/unet.h"

namespace lpd::engine {

struct ForwardRequest {
  std::string model_dir;
  // A safetensors file with `input.sample`, `input.timestep`,
  // `input.encoder_hidden_states` (and `input.text_embeds`, `input.time_ids`
  // for text_time models); other keys are ignored.
  std::string inputs_path;
  // Written with `output.sample` and `act.<block>` for conv_in and every
  // down, mid and up block, in float32.
  std::string output_path;
  std::set<std::string> remove_units;  // masked at run time
  std::string device = "cpu";
  std::string dtype = "float32";
};

// The U-Net inputs stored under the `input.*` keys of an inputs or
// reference-vector file (`input.text_embeds`, `input.time_ids` required for
// text_time models); `source` names the file in errors.
absl::StatusOr<UNetInputs> InputsFromTensors(
    const std::map<std::string, torch::Tensor>& tensors,
    absl::string_view source, bool text_time);

// Runs the request. Every failure, LibTorch's included, is a status.
absl::Status RunForward(const ForwardRequest& request);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_MODEL_FORWARD_RUNNER_H_

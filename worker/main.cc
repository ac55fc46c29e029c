// lpd-worker: the GPU worker process. Subcommands wire the engine library:
//   forward  one forward pass of a model folder on stored inputs
//   units    the prunable units of a model folder
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include <ATen/Parallel.h>

#include "absl/status/status.h"
#include "common/cli_args.h"
#include "engine/forward_runner.h"
#include "engine/model_loader.h"
#include "engine/unet.h"

namespace {

const std::vector<lpd::FlagSpec> kForwardFlags = {
    {"model", true, false, "model folder: config.json + safetensors"},
    {"inputs", true, false,
     "safetensors file with input.sample, input.timestep, "
     "input.encoder_hidden_states (+ input.text_embeds, input.time_ids)"},
    {"out", true, false, "output safetensors: output.sample and act.* blocks"},
    {"remove", false, false, "comma-separated unit ids to remove"},
    {"device", false, false, "cpu (default) or cuda[:N]"},
    {"dtype", false, false, "float32 (default), float16 or bfloat16"},
    {"threads", false, false, "CPU threads (default: all cores)"},
};

const std::vector<lpd::FlagSpec> kUnitsFlags = {
    {"model", true, false, "model folder (only config.json is read)"},
    {"granularity", false, false,
     "unit kinds, comma-separated (default resnet,attention; or "
     "resnet,transformer_block)"},
};

void PrintUsage() {
  std::fprintf(stderr,
               "usage: lpd-worker COMMAND [flags]\n\n"
               "lpd-worker forward --model DIR --inputs FILE --out FILE\n%s\n"
               "lpd-worker units --model DIR [--granularity KINDS]\n%s",
               lpd::CliArgs::Usage(kForwardFlags).c_str(),
               lpd::CliArgs::Usage(kUnitsFlags).c_str());
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "lpd-worker: %s\n", status.ToString().c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

int RunForwardCommand(const std::vector<std::string>& args) {
  auto flags = lpd::CliArgs::Parse(args, kForwardFlags);
  if (!flags.ok()) {
    PrintUsage();
    return Fail(flags.status());
  }
  auto threads = flags->GetInt("threads", 0);
  if (!threads.ok()) return Fail(threads.status());
  if (*threads > 0) at::set_num_threads(static_cast<int>(*threads));
  lpd::engine::ForwardRequest request;
  request.model_dir = flags->Get("model");
  request.inputs_path = flags->Get("inputs");
  request.output_path = flags->Get("out");
  for (const std::string& unit : flags->GetList("remove")) {
    request.remove_units.insert(unit);
  }
  request.device = flags->Get("device", "cpu");
  request.dtype = flags->Get("dtype", "float32");
  if (absl::Status status = lpd::engine::RunForward(request); !status.ok()) {
    return Fail(status);
  }
  std::printf("wrote %s\n", request.output_path.c_str());
  return 0;
}

int RunUnitsCommand(const std::vector<std::string>& args) {
  auto flags = lpd::CliArgs::Parse(args, kUnitsFlags);
  if (!flags.ok()) {
    PrintUsage();
    return Fail(flags.status());
  }
  std::set<lpd::engine::UnitKind> kinds;
  for (const std::string& name : flags->GetList("granularity")) {
    auto kind = lpd::engine::ParseUnitKind(name);
    if (!kind.ok()) return Fail(kind.status());
    kinds.insert(*kind);
  }
  if (kinds.empty()) {
    kinds = {lpd::engine::UnitKind::kResnet, lpd::engine::UnitKind::kAttention};
  }
  if (kinds.contains(lpd::engine::UnitKind::kAttention) &&
      kinds.contains(lpd::engine::UnitKind::kTransformerBlock)) {
    return Fail(absl::InvalidArgumentError(
        "--granularity: attention and transformer_block overlap; pick one"));
  }
  auto model = lpd::engine::BuildModelStructure(flags->Get("model"));
  if (!model.ok()) return Fail(model.status());
  int removable = 0;
  int64_t removable_params = 0;
  std::printf("%-55s %-18s %14s  %s\n", "unit", "kind", "parameters",
              "removable");
  for (const auto& unit : (*model)->Units(kinds)) {
    std::printf("%-55s %-18s %14lld  %s\n", unit.id.c_str(),
                std::string(lpd::engine::UnitKindName(unit.kind)).c_str(),
                static_cast<long long>(unit.num_parameters),
                unit.removable ? "yes" : "no");
    if (unit.removable) {
      ++removable;
      removable_params += unit.num_parameters;
    }
  }
  const int64_t total = (*model)->NumParameters();
  std::printf("%d removable units holding %lld of %lld parameters (%.1f%%)\n",
              removable, static_cast<long long>(removable_params),
              static_cast<long long>(total), 100.0 * removable_params / total);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage();
    return 2;
  }
  const std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "forward") return RunForwardCommand(args);
  if (command == "units") return RunUnitsCommand(args);
  if (command == "--help" || command == "help") {
    PrintUsage();
    return 0;
  }
  std::fprintf(stderr, "lpd-worker: unknown command \"%s\"\n", command.c_str());
  PrintUsage();
  return 2;
}

// Data-parallel distillation throughput: the distillation step of
// bench/distill_step (same configs, per-GPU batch sizes and precision) run
// over W ranks, one process per GPU (cuda:<rank>), gradients all-reduced
// through NCCL (gloo on the CPU), global batch = W × per-GPU batch. Prints
// samples/s per world size and the scaling against one rank, and whether the
// ranks' weights agree afterwards (checksums).
//
//   distill_ddp [--case sd15|sdxl|sdxl-pruned|tiny] [--world-sizes 1,2]
//               [--steps 10] [--precision bf16|bf16-master|fp32]
//               [--device cuda|cpu] [--overlap 0|1] [--bucket-mb 25]
//
// The launcher forks and execs itself once per rank with --rank,
// --world-size and --rendezvous tcp://127.0.0.1:PORT (NCCL_NVLS_ENABLE=0 in
// the ranks' environment: NVLink multicast stays off).
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/cli_args.h"
#include "bench/random_unet.h"
#include "engine/compress/scoring.h"
#include "engine/model/model_loader.h"
#include "engine/model/unet.h"
#include "engine/train/data_parallel.h"
#include "engine/train/distill.h"
#include "testing/free_port.h"

namespace {

using namespace lpd::engine;

struct Case {
  std::string name, file;
  int64_t batch, size;  // per rank
  double prune_ratio;
};

bool FindCase(const std::string& id, Case* out) {
  static const std::map<std::string, Case> cases = {
      {"sd15", {"SD-v1.5", "sd15-unet.json", 8, 64, 0}},
      {"sdxl", {"SDXL", "sdxl-base-unet.json", 4, 128, 0}},
      {"sdxl-pruned", {"SDXL pruned", "sdxl-base-unet.json", 4, 128, 0.487}},
      // A small model, for trying the launcher on the CPU.
      {"tiny", {"tiny SD", "study-sd15-tiny/config.json", 2, 16, 0}},
  };
  auto it = cases.find(id);
  if (it == cases.end()) return false;
  *out = it->second;
  return true;
}

void Sync(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

int Fail(int rank, const absl::Status& status) {
  std::fprintf(stderr, "rank %d: %s\n", rank, status.ToString().c_str());
  return 1;
}

// One rank: the benchmark, its samples/s written to `result_file` (rank 0).
int RunRank(const lpd::CliArgs& flags) {
  const int rank = static_cast<int>(flags.GetInt("rank", 0).value_or(0));
  const int world = static_cast<int>(flags.GetInt("world-size", 1).value_or(1));
  Case c;
  if (!FindCase(flags.Get("case", "sd15"), &c)) {
    std::fprintf(stderr, "unknown --case\n");
    return 2;
  }
  const bool cuda =
      flags.Get("device", torch::cuda::is_available() ? "cuda" : "cpu") ==
      "cuda";
  const torch::Device device =
      cuda ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(rank))
           : torch::Device(torch::kCPU);
  const std::string p = flags.Get("precision", "bf16");
  const TrainingPrecision precision =
      p == "fp32"
          ? TrainingPrecision::kFloat32
          : (p == "bf16-master" ? TrainingPrecision::kBFloat16MasterFloat32
                                : TrainingPrecision::kBFloat16);
  const int steps = static_cast<int>(flags.GetInt("steps", 10).value_or(10));
  at::globalContext().setBenchmarkCuDNN(true);

  auto dp_options = MakeDataParallelOptions(
      rank, world, flags.Get("rendezvous"), flags.Get("backend"));
  if (!dp_options.ok()) return Fail(rank, dp_options.status());
  dp_options->timeout = absl::Minutes(5);
  dp_options->overlap_backward = flags.Get("overlap", "0") == "1";
  dp_options->bucket_bytes =
      flags.GetInt("bucket-mb", 25).value_or(25) * (int64_t{1} << 20);
  auto group = DataParallelGroup::Create(*dp_options, device);
  if (!group.ok()) return Fail(rank, group.status());

  const torch::Dtype dtype = precision == TrainingPrecision::kFloat32
                                 ? torch::kFloat32
                                 : torch::kBFloat16;
  const auto to = torch::TensorOptions().device(device).dtype(dtype);
  // The same weights on every rank.
  auto teacher = lpd::bench::RandomUNetFromConfigFile(c.file, device, dtype);
  if (!teacher.ok()) return Fail(rank, teacher.status());
  std::set<std::string> removed;
  if (c.prune_ratio > 0) {
    auto plan = HandcraftedSelection(**teacher, c.prune_ratio);
    if (!plan.ok()) return Fail(rank, plan.status());
    removed.insert(plan->removed.begin(), plan->removed.end());
  }
  DistillTrainerOptions trainer_options;
  trainer_options.device = device;
  trainer_options.precision = precision;
  trainer_options.learning_rate = 1e-5;
  trainer_options.data_parallel = group->get();
  auto trainer = DistillTrainer::Create(UNet2DConditionModel(*teacher), removed,
                                        trainer_options);
  if (!trainer.ok()) return Fail(rank, trainer.status());

  // The global batch, drawn on the CPU from one seed: the same on every rank.
  const int64_t batch = c.batch * world;
  torch::manual_seed(1234);
  const auto cpu = torch::TensorOptions().dtype(torch::kFloat32);
  TrainingBatch b;
  b.noised.sample = torch::randn({batch, 4, c.size, c.size}, cpu).to(to);
  b.noised.timestep =
      torch::randint(0, 1000, {batch}, cpu.dtype(torch::kInt64)).to(device);
  b.noised.encoder_hidden_states =
      torch::randn({batch, 77, (*teacher)->config().cross_attention_dim}, cpu)
          .to(to);
  if ((*teacher)->config().text_time_embedding) {
    b.noised.text_embeds =
        torch::randn(
            {batch, (*teacher)->config().projection_class_embeddings_input_dim -
                        6 * (*teacher)->config().addition_time_embed_dim},
            cpu)
            .to(to);
    b.noised.time_ids = torch::full({batch, 6}, 1024.0, to);
  }
  b.target = torch::randn({batch, 4, c.size, c.size}, cpu).to(to);

  for (int i = 0; i < 2; ++i) {  // warm-up: cuDNN choices, AdamW state, NCCL
    auto r = (*trainer)->Step(b);
    if (!r.ok()) return Fail(rank, r.status());
  }
  Sync(device);
  std::vector<double> seconds;
  double last_loss = 0;
  for (int i = 0; i < steps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = (*trainer)->Step(b);
    Sync(device);
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count());
    if (!r.ok()) return Fail(rank, r.status());
    last_loss = r->loss.total;
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];

  // Do the replicas agree? Each rank's checksum against rank 0's.
  double checksum = 0;
  {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> sums;
    for (const auto& p : (*trainer)->student()->parameters()) {
      sums.push_back(p.sum(torch::kFloat64));
    }
    checksum = torch::stack(sums).sum().to(torch::kCPU).item<double>();
  }
  std::vector<torch::Tensor> mine = {torch::full(
      {1}, checksum,
      torch::TensorOptions().dtype(torch::kFloat64).device(device))};
  std::vector<torch::Tensor> rank0 = {mine[0].clone()};
  if (auto s = (*group)->Broadcast(rank0, 0); !s.ok()) return Fail(rank, s);
  std::vector<torch::Tensor> differs = {torch::full(
      {1}, rank0[0].to(torch::kCPU).item<double>() == checksum ? 0.0 : 1.0,
      torch::TensorOptions().dtype(torch::kFloat64).device(device))};
  if (auto s = (*group)->AllReduceSum(differs); !s.ok()) return Fail(rank, s);
  const double differing = differs[0].to(torch::kCPU).item<double>();

  if (rank == 0) {
    std::printf(
        "%s W=%d: global batch %ld (%ld per rank) %ldx%ld, student %.3f G "
        "params, %s: %.1f ms/step, %.1f samples/s, loss %.6g; weights agree "
        "across ranks: %s (checksum %.17g)\n",
        c.name.c_str(), world, static_cast<long>(batch),
        static_cast<long>(c.batch), static_cast<long>(c.size),
        static_cast<long>(c.size), (*trainer)->student()->NumParameters() / 1e9,
        (*group)->backend().c_str(), median * 1e3, batch / median, last_loss,
        differing == 0 ? "yes" : "NO", checksum);
    std::fflush(stdout);
    const std::string result_file = flags.Get("result-file");
    if (!result_file.empty()) {
      std::ofstream out(result_file);
      out << batch / median << "\n";
    }
  }
  return differing == 0 ? 0 : 3;
}

// A TCP port free now on 127.0.0.1 (for the ranks' rendezvous); 29500,
// torch's usual one, when none could be had.
int RendezvousPort() {
  const int port = lpd::test::FreePort();
  return port > 0 ? port : 29500;
}

// Launches `world` ranks of this binary; returns rank 0's samples/s (or a
// negative number when a rank failed).
double LaunchRanks(int world, const std::vector<std::string>& passed) {
  const std::string rendezvous =
      absl::StrCat("tcp://127.0.0.1:", RendezvousPort());
  char result_template[] = "/tmp/lpd-distill-ddp-XXXXXX";
  const int result_fd = ::mkstemp(result_template);
  if (result_fd >= 0) ::close(result_fd);
  const std::string result_file = result_template;
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> args = {"/proc/self/exe"};
    args.insert(args.end(), passed.begin(), passed.end());
    for (const std::string& a :
         {std::string("--rank"), std::to_string(rank),
          std::string("--world-size"), std::to_string(world),
          std::string("--rendezvous"), rendezvous, std::string("--result-file"),
          result_file}) {
      args.push_back(a);
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      // NVLink multicast stays off (it can take a shared host's GPUs out of
      // service).
      ::setenv("NCCL_NVLS_ENABLE", "0", 1);
      ::setenv("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1", 1);
      ::setenv("NVSHMEM_DISABLE_NVLS", "1", 1);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::perror("execv");
      ::_exit(127);
    }
    if (pid < 0) {
      std::perror("fork");
      break;
    }
    pids.push_back(pid);
  }
  bool ok = static_cast<int>(pids.size()) == world;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = false;
  }
  double rate = -1;
  std::ifstream in(result_file);
  if (ok && !(in >> rate)) rate = -1;
  ::unlink(result_file.c_str());
  return ok ? rate : -1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<lpd::FlagSpec> specs = {
      {"device", false, false, "cuda (default when available) or cpu"},
      {"case", false, false, "sd15 (default), sdxl, sdxl-pruned or tiny"},
      {"steps", false, false, "timed steps (default 10)"},
      {"precision", false, false, "bf16 (default), bf16-master or fp32"},
      {"world-sizes", false, false,
       "comma-separated rank counts (default 1,2 capped at the GPU count)"},
      {"backend", false, false, "gloo or nccl (default: by device)"},
      {"overlap", false, false,
       "1: all-reduce gradients during backward; 0 (default): after it"},
      {"bucket-mb", false, false, "all-reduce bucket size in MiB (25)"},
      // Set by the launcher for each rank:
      {"rank", false, false, "this rank (launcher-internal)"},
      {"world-size", false, false, "ranks (launcher-internal)"},
      {"rendezvous", false, false, "tcp://host:port (launcher-internal)"},
      {"result-file", false, false, "where rank 0 writes (launcher-internal)"},
  };
  const std::vector<std::string> args(argv + 1, argv + argc);
  auto flags = lpd::CliArgs::Parse(args, specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n%s", flags.status().ToString().c_str(),
                 lpd::CliArgs::Usage(specs).c_str());
    return 2;
  }
  if (flags->Has("rank")) return RunRank(*flags);

  // The launcher: the user's flags, passed on to every rank.
  std::vector<std::string> passed;
  for (const char* name : {"device", "case", "steps", "precision", "backend",
                           "overlap", "bucket-mb"}) {
    if (flags->Has(name)) {
      passed.push_back(absl::StrCat("--", name));
      passed.push_back(flags->Get(name));
    }
  }
  const bool cuda =
      flags->Get("device", torch::cuda::is_available() ? "cuda" : "cpu") ==
      "cuda";
  const int gpus = cuda ? static_cast<int>(torch::cuda::device_count()) : 0;
  std::vector<int> worlds;
  for (const std::string& w : flags->GetList("world-sizes")) {
    int n = 0;
    if (!absl::SimpleAtoi(w, &n) || n < 1) {
      std::fprintf(stderr, "bad --world-sizes item %s\n", w.c_str());
      return 2;
    }
    worlds.push_back(n);
  }
  if (worlds.empty()) {
    worlds = {1};
    if (!cuda || gpus >= 2) worlds.push_back(2);
  }
  std::vector<std::pair<int, double>> rates;
  int rc = 0;
  for (int w : worlds) {
    if (cuda && w > gpus) {
      std::printf("W=%d: skipped, %d GPU(s)\n", w, gpus);
      continue;
    }
    const double rate = LaunchRanks(w, passed);
    if (rate < 0) {
      std::printf("W=%d: a rank failed\n", w);
      rc = 1;
      continue;
    }
    rates.emplace_back(w, rate);
  }
  double base = 0;
  for (const auto& [w, rate] : rates) {
    if (w == 1) base = rate;
  }
  std::printf("world size  samples/s  speedup vs 1  efficiency\n");
  for (const auto& [w, rate] : rates) {
    if (base > 0) {
      std::printf("%10d  %9.1f  %11.2fx  %9.1f%%\n", w, rate, rate / base,
                  100 * rate / base / w);
    } else {
      std::printf("%10d  %9.1f\n", w, rate);
    }
  }
  return rc;
}

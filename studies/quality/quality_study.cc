// The quality study of issue 6: does LAPTOP-Diff's one-shot output-loss
// selection beat the alternatives on a model we train ourselves? One process
// does:
//
//   1. generates the shapes dataset (studies/quality/shapes_dataset.h): train
//   and
//      held-out scenes, the fixed text encoder, the empty prompt (~1 s);
//   2. trains the teacher from scratch (studies/quality/train_scratch.h; ε-MSE
//   with
//      conditioning dropout for classifier-free guidance), or loads it from
//      --teacher DIR, and saves it to OUT/teacher (diffusers layout);
//   3. trains the adherence classifier
//   (studies/quality/adherence_classifier.h), or
//      loads it (--classifier FILE), saves it to OUT/classifier.safetensors
//      and measures it on held-out real data: per-head accuracy, the
//      adherence of real images to their own prompts (the ceiling) and to
//      other samples' prompts (the chance level);
//   4. gates the teacher with a guidance sweep: DDIM samples of the same
//      prompts from the same noise at every --guidance-scales scale (default
//      1,1.5,2,3); the scale with the highest attribute adherence is chosen
//      (--guidance-scale G forces one, no sweep) and must close at least
//      --gate-fraction of the gap from chance to the ceiling, else the study
//      stops (exit 3) unless --allow-failed-gate. Every scale's samples go to
//      OUT/teacher_samples.safetensors (the PSNR reference of the rows);
//   5. measures additivity (engine/compress/additivity.h) of the output-loss
//   scores:
//      OUT/additivity.json and OUT/additivity.csv; writes OUT/study.json
//      (teacher, classifier, gate with the sweep and the chosen scale,
//      timings);
//   6. for every row and seed: scores the units (output_loss, magnitude or
//      random; handcrafted = BK-SDM-Base's rule), selects with the knapsack at
//      the row's ratio, distills the student with the same budget for every
//      row (steps, batch, learning rate, data stream of the seed), then
//      evaluates it: adherence of DDIM samples at the chosen guidance scale
//      from fixed noise and prompts, relative output error and denoising loss
//      on held-out noised data, and PSNR of its samples against the teacher's
//      from the same noise; writes OUT/<row>/seed-<s>/report.json.
//
// Split runs (what studies/quality/quality_study_gpus.sh does on a multi-GPU
// host):
//   --gate-only: steps 1-5, then stops;
//   --rows-only: steps 1 and 6 only, from what the gate run left in OUT:
//     the teacher (--teacher, default OUT/teacher), the classifier
//     (--classifier, default OUT/classifier.safetensors; loaded, not
//     trained), the chosen scale (OUT/study.json, or --guidance-scale for
//     another swept one) and the teacher's samples. It checks that its data
//     and sampling flags match the gate run's, refuses a failed gate (exit 3)
//     unless --allow-failed-gate, runs --row-seeds ROW:SEED,... (or
//     --rows/--first-seed/--seeds) and writes only OUT/<row>/seed-<s>/ and
//     OUT/runs/<--run-name>.json (every file atomically), so many rows-only
//     processes can share one OUT.
// Without either flag one process does steps 1-6.
//
// Rows: at R_h (the ratio BK-SDM-Base's rule removes on this layout):
// output_loss, magnitude, random, handcrafted; at 50%: output_loss,
// magnitude, random; output_loss at both ratios also with plain (BK-SDM) in
// place of normalized feature KD. Row ids: rh-output_loss-nkd,
// rh-output_loss-pkd, rh-magnitude-nkd, rh-random-nkd, rh-handcrafted-nkd,
// r50-output_loss-nkd, r50-output_loss-pkd, r50-magnitude-nkd,
// r50-random-nkd.
//
// A tiny CPU smoke run (a few seconds; quality_study_test runs it split):
//   quality_study --out /tmp/qs --device cpu --config configs/study-sd15-tiny
//     --image-size 16 --threads 1 --train-samples 256 --heldout-samples 64
//     --teacher-steps 6 --teacher-batch 8 --classifier-steps 10
//     --classifier-batch 16 --classifier-width 8 --distill-steps 2
//     --distill-batch 4 --samples 8 --ddim-steps 2 --eval-samples 8
//     --eval-batch 8 --calibration-samples 4 --additivity-sets 2 --seeds 1
//     --allow-failed-gate
//
// Measured on one H200 (LibTorch 2.11, 2026-11-28), defaults: teacher
// (8.6 M parameters, bf16 mixed) ~120 ms per step of batch 256 (~2100
// samples/s; probably launch-bound), so 3000 steps ≈ 6 min;
// classifier 1500 steps ≈ 15 s; gate sampling (256 prompts, 25 steps, twice)
// ≈ 13 s, so the four-scale sweep should take about as long again (not
// measured); output-loss scoring ≈ 2 s; distillation (bf16-master) ~146 ms
// per step of batch 128, so a row of 500 steps ≈ 75 s + ~10 s of evaluation.
// The 27 row-seeds in one process therefore take ~45 min; the split flow
// runs them as several processes per GPU
// (studies/quality/quality_study_gpus.sh). In that run, with g = 3 forced, the
// teacher failed the gate (adherence 0.415, threshold 0.588) while its unguided
// samples read 0.611: hence the sweep. The timings printed while it runs give
// the estimate for other sizes. studies/quality/quality_table.py turns the
// reports into the table.
#include <torch/cuda.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/cli_args.h"
#include "base/status_macros.h"
#include "engine/compress/additivity.h"
#include "engine/compress/evaluation.h"
#include "engine/compress/scoring.h"
#include "engine/core/cpu_threads.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"
#include "engine/data/dataset.h"
#include "engine/data/noise_schedule.h"
#include "engine/model/model_loader.h"
#include "engine/train/distill.h"
#include "nlohmann/json.hpp"
#include "selection/correlation.h"
#include "selection/knapsack.h"
#include "studies/quality/adherence_classifier.h"
#include "studies/quality/ddim_sampler.h"
#include "studies/quality/shapes_dataset.h"
#include "studies/quality/train_scratch.h"

namespace {

using namespace lpd::engine;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

// Streams of the study's seeds (xored into BatchSeed's seed).
constexpr uint64_t kTeacherStream = 0x7EAC4E5ull;
constexpr uint64_t kCalibrationStream = 0xCA11B5ull;
constexpr uint64_t kDistillStream = 0xD1571ull;
constexpr uint64_t kEvalStream = 0xE7A1ull;
constexpr uint64_t kSampleNoiseStream = 0x5A3D1Eull;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

void Sync(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Prints with the elapsed wall time.
Clock::time_point g_start;
template <typename... Args>
void Log(const absl::FormatSpec<Args...>& format, const Args&... args) {
  std::printf("[%7.1fs] %s\n", Seconds(g_start),
              absl::StrFormat(format, args...).c_str());
  std::fflush(stdout);
}

struct Flags {
  std::string out, device_name, config_dir, teacher_dir, write_dataset, rows;
  int64_t seeds = 3;
  int64_t train_samples = 50000, heldout_samples = 2000;
  int64_t image_size = kShapesImageSize;
  uint64_t data_seed = 1;
  int64_t teacher_steps = 3000, teacher_batch = 256, teacher_warmup = 200;
  double teacher_lr = 1e-3, teacher_ema = 0.999;
  std::string teacher_precision, distill_precision;
  double cond_dropout = 0.1;
  int64_t classifier_steps = 1500, classifier_batch = 256,
          classifier_width = 32;
  int64_t distill_steps = 500, distill_batch = 128, distill_warmup = 20;
  double distill_lr = 2e-4;
  int64_t samples = 256, ddim_steps = 25;
  // The gate samples the teacher at every scale and keeps the one with the
  // highest attribute adherence; --guidance-scale forces one.
  std::vector<double> guidance_scales = {1, 1.5, 2, 3};
  std::optional<double> forced_guidance;
  int64_t calibration_samples = 64, eval_samples = 1024, eval_batch = 256;
  int64_t additivity_sets = 8;
  double gate_fraction = 0.5;
  bool allow_failed_gate = false;
  int64_t log_every = 250;
  int64_t threads = 0;
  int64_t first_seed = 0;
  bool gate_only = false, rows_only = false;
  std::string classifier_path;  // load the classifier from this file
  std::string row_seeds;        // "row:seed,..." (rows-only runs)
  std::string run_name;         // OUT/runs/<run_name>.json (rows-only runs)
};

absl::StatusOr<double> GetDouble(const lpd::CliArgs& args,
                                 const std::string& name, double fallback) {
  if (!args.Has(name)) return fallback;
  double v;
  if (!absl::SimpleAtod(args.Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flag --", name, ": expected a number, got \"", args.Get(name), "\""));
  }
  return v;
}

const std::vector<lpd::FlagSpec>& FlagSpecs() {
  static const std::vector<lpd::FlagSpec> specs = {
      {"out", true, false, "output folder (reports, teacher, study.json)"},
      {"device", false, false, "cuda (default when available) or cpu"},
      {"config", false, false,
       "U-Net config folder (default configs/study-sd15-small)"},
      {"teacher", false, false, "load the teacher from this folder"},
      {"write-dataset", false, false,
       "also write the train set in the dataset format here"},
      {"rows", false, false, "comma-separated row ids (default: all)"},
      {"seeds", false, false, "seeds per row (default 3)"},
      {"train-samples", false, false, "training scenes (default 50000)"},
      {"heldout-samples", false, false, "held-out scenes (default 2000)"},
      {"image-size", false, false,
       "scene size in pixels, a multiple of 16 (default 32; 16 for tests)"},
      {"data-seed", false, false, "seed of the scenes (default 1)"},
      {"teacher-steps", false, false, "teacher steps (default 3000)"},
      {"teacher-batch", false, false, "teacher batch (default 256)"},
      {"teacher-lr", false, false, "teacher peak learning rate (1e-3)"},
      {"teacher-warmup", false, false, "teacher warmup steps (200)"},
      {"teacher-ema", false, false, "teacher EMA decay (0.999; 0: none)"},
      {"teacher-precision", false, false,
       "bf16 (mixed, default on CUDA) or fp32"},
      {"cond-dropout", false, false, "conditioning dropout (0.1)"},
      {"classifier-steps", false, false, "classifier steps (1500)"},
      {"classifier-batch", false, false, "classifier batch (256)"},
      {"classifier-width", false, false, "classifier width (32)"},
      {"distill-steps", false, false, "distillation steps per row (500)"},
      {"distill-batch", false, false, "distillation batch (128)"},
      {"distill-lr", false, false, "distillation learning rate (2e-4)"},
      {"distill-warmup", false, false, "distillation warmup steps (20)"},
      {"distill-precision", false, false,
       "bf16-master (default on CUDA), bf16 or fp32"},
      {"samples", false, false, "DDIM samples per model (256)"},
      {"ddim-steps", false, false, "DDIM steps (25)"},
      {"guidance-scales", false, false,
       "comma-separated guidance scales the gate tries; the one with the "
       "highest attribute adherence is used for every row (1,1.5,2,3)"},
      {"guidance-scale", false, false,
       "force this one guidance scale (no sweep); with --rows-only, one the "
       "gate run sampled"},
      {"calibration-samples", false, false, "scoring calibration samples (64)"},
      {"eval-samples", false, false, "held-out evaluation samples (1024)"},
      {"eval-batch", false, false, "evaluation batch (256)"},
      {"additivity-sets", false, false, "random sets per size (8)"},
      {"gate-fraction", false, false,
       "share of the chance-to-ceiling gap the teacher must close (0.5)"},
      {"allow-failed-gate", false, true, "go on when the teacher fails"},
      {"log-every", false, false, "log every N training steps (250)"},
      {"threads", false, false, "CPU threads (default: LibTorch's choice)"},
      {"first-seed", false, false,
       "run seeds first-seed .. first-seed+seeds-1 (default 0), to split "
       "the study over several runs"},
      {"gate-only", false, true,
       "first half of a split study: teacher, classifier, gate (with the "
       "guidance sweep) and additivity; saves OUT/teacher, "
       "OUT/classifier.safetensors, OUT/teacher_samples.safetensors, "
       "OUT/study.json for --rows-only runs"},
      {"rows-only", false, true,
       "second half: only the rows, from what a --gate-only run saved in "
       "OUT (teacher, classifier, guidance scale, teacher samples); writes "
       "only OUT/<row>/seed-<s>/ and OUT/runs/<run-name>.json, so many can "
       "run at once on one OUT"},
      {"classifier", false, false,
       "load the adherence classifier from this file instead of training it "
       "(--rows-only: default OUT/classifier.safetensors)"},
      {"row-seeds", false, false,
       "--rows-only: comma-separated row:seed pairs to run, in this order "
       "(instead of --rows/--first-seed/--seeds)"},
      {"run-name", false, false,
       "--rows-only: name of this run's summary OUT/runs/NAME.json (default "
       "rows-<pid>)"},
  };
  return specs;
}

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  ASSIGN_OR_RETURN(
      lpd::CliArgs args,
      lpd::CliArgs::Parse(std::vector<std::string>(argv + 1, argv + argc),
                          FlagSpecs()));
  Flags f;
  f.out = args.Get("out");
  f.device_name =
      args.Get("device", torch::cuda::is_available() ? "cuda" : "cpu");
  f.config_dir =
      args.Get("config", std::string(LPD_CONFIGS_DIR) + "/study-sd15-small");
  f.teacher_dir = args.Get("teacher");
  f.write_dataset = args.Get("write-dataset");
  f.rows = args.Get("rows");
  const bool cuda = f.device_name.rfind("cuda", 0) == 0;
  f.teacher_precision = args.Get("teacher-precision", cuda ? "bf16" : "fp32");
  f.distill_precision =
      args.Get("distill-precision", cuda ? "bf16-master" : "fp32");
  f.allow_failed_gate = args.Has("allow-failed-gate");
  auto integer = [&](const char* name, int64_t& v) -> absl::Status {
    ASSIGN_OR_RETURN(v, args.GetInt(name, v));
    return absl::OkStatus();
  };
  auto number = [&](const char* name, double& v) -> absl::Status {
    ASSIGN_OR_RETURN(v, GetDouble(args, name, v));
    return absl::OkStatus();
  };
  int64_t data_seed = static_cast<int64_t>(f.data_seed);
  RETURN_IF_ERROR(integer("seeds", f.seeds));
  RETURN_IF_ERROR(integer("train-samples", f.train_samples));
  RETURN_IF_ERROR(integer("heldout-samples", f.heldout_samples));
  RETURN_IF_ERROR(integer("image-size", f.image_size));
  RETURN_IF_ERROR(integer("data-seed", data_seed));
  f.data_seed = static_cast<uint64_t>(data_seed);
  RETURN_IF_ERROR(integer("teacher-steps", f.teacher_steps));
  RETURN_IF_ERROR(integer("teacher-batch", f.teacher_batch));
  RETURN_IF_ERROR(integer("teacher-warmup", f.teacher_warmup));
  RETURN_IF_ERROR(number("teacher-lr", f.teacher_lr));
  RETURN_IF_ERROR(number("teacher-ema", f.teacher_ema));
  RETURN_IF_ERROR(number("cond-dropout", f.cond_dropout));
  RETURN_IF_ERROR(integer("classifier-steps", f.classifier_steps));
  RETURN_IF_ERROR(integer("classifier-batch", f.classifier_batch));
  RETURN_IF_ERROR(integer("classifier-width", f.classifier_width));
  RETURN_IF_ERROR(integer("distill-steps", f.distill_steps));
  RETURN_IF_ERROR(integer("distill-batch", f.distill_batch));
  RETURN_IF_ERROR(integer("distill-warmup", f.distill_warmup));
  RETURN_IF_ERROR(number("distill-lr", f.distill_lr));
  RETURN_IF_ERROR(integer("samples", f.samples));
  RETURN_IF_ERROR(integer("ddim-steps", f.ddim_steps));
  if (args.Has("guidance-scale")) {
    if (args.Has("guidance-scales")) {
      return absl::InvalidArgumentError(
          "--guidance-scale (one forced scale) and --guidance-scales (a "
          "sweep) exclude each other");
    }
    double g = 0;
    RETURN_IF_ERROR(number("guidance-scale", g));
    f.forced_guidance = g;
    f.guidance_scales = {g};
  } else if (args.Has("guidance-scales")) {
    f.guidance_scales.clear();
    for (const std::string& item : args.GetList("guidance-scales")) {
      double g = 0;
      if (!absl::SimpleAtod(item, &g)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--guidance-scales: \"", item, "\" is not a number"));
      }
      if (std::find(f.guidance_scales.begin(), f.guidance_scales.end(), g) ==
          f.guidance_scales.end()) {
        f.guidance_scales.push_back(g);
      }
    }
  }
  for (double g : f.guidance_scales) {
    if (!(g >= 1.0 && g <= 100.0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("guidance scales must lie in [1, 100], got ", g));
    }
  }
  if (f.guidance_scales.empty()) {
    return absl::InvalidArgumentError("--guidance-scales: no scale given");
  }
  RETURN_IF_ERROR(integer("calibration-samples", f.calibration_samples));
  RETURN_IF_ERROR(integer("eval-samples", f.eval_samples));
  RETURN_IF_ERROR(integer("eval-batch", f.eval_batch));
  RETURN_IF_ERROR(integer("additivity-sets", f.additivity_sets));
  RETURN_IF_ERROR(number("gate-fraction", f.gate_fraction));
  RETURN_IF_ERROR(integer("log-every", f.log_every));
  RETURN_IF_ERROR(integer("threads", f.threads));
  RETURN_IF_ERROR(integer("first-seed", f.first_seed));
  f.gate_only = args.Has("gate-only");
  f.rows_only = args.Has("rows-only");
  f.classifier_path = args.Get("classifier");
  f.row_seeds = args.Get("row-seeds");
  f.run_name = args.Get("run-name");
  if (f.gate_only && f.rows_only) {
    return absl::InvalidArgumentError(
        "--gate-only and --rows-only exclude each other");
  }
  if (!f.rows_only && (!f.row_seeds.empty() || !f.run_name.empty())) {
    return absl::InvalidArgumentError(
        "--row-seeds and --run-name go with --rows-only");
  }
  if (!f.row_seeds.empty() &&
      (args.Has("rows") || args.Has("seeds") || args.Has("first-seed"))) {
    return absl::InvalidArgumentError(
        "--row-seeds replaces --rows, --seeds and --first-seed");
  }
  if (f.rows_only) {
    if (f.teacher_dir.empty()) {
      f.teacher_dir = (fs::path(f.out) / "teacher").string();
    }
    if (f.classifier_path.empty()) {
      f.classifier_path = (fs::path(f.out) / "classifier.safetensors").string();
    }
    if (f.run_name.empty()) f.run_name = absl::StrCat("rows-", ::getpid());
    for (char c : f.run_name) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' &&
          c != '_' && c != '.') {
        return absl::InvalidArgumentError(
            "--run-name: letters, digits, '-', '_' and '.' only");
      }
    }
  }
  if (f.seeds < 1 || f.first_seed < 0 || f.train_samples < 16 ||
      f.heldout_samples < 2 || f.teacher_steps < 0 || f.teacher_batch < 1 ||
      f.distill_steps < 1 || f.distill_batch < 1 || f.samples < 1 ||
      f.samples > f.heldout_samples || f.eval_samples < 1 ||
      f.eval_samples > f.heldout_samples || f.calibration_samples < 1 ||
      f.calibration_samples > f.train_samples || f.eval_batch < 1 ||
      f.classifier_steps < 1 || f.additivity_sets < 1 || f.log_every < 1) {
    return absl::InvalidArgumentError(
        "flags out of range: counts must be positive, --samples and "
        "--eval-samples at most --heldout-samples, --calibration-samples at "
        "most --train-samples");
  }
  if (f.teacher_precision != "bf16" && f.teacher_precision != "fp32") {
    return absl::InvalidArgumentError("--teacher-precision: bf16 or fp32");
  }
  if (f.distill_precision != "bf16-master" && f.distill_precision != "bf16" &&
      f.distill_precision != "fp32") {
    return absl::InvalidArgumentError(
        "--distill-precision: bf16-master, bf16 or fp32");
  }
  return f;
}

struct Row {
  std::string id;
  std::string ratio_label;  // "rh" or "r50"
  std::string criterion;    // output_loss, magnitude, random, handcrafted
  bool normalized_kd = true;
};

std::vector<Row> AllRows() {
  return {
      {"rh-output_loss-nkd", "rh", "output_loss", true},
      {"rh-output_loss-pkd", "rh", "output_loss", false},
      {"rh-magnitude-nkd", "rh", "magnitude", true},
      {"rh-random-nkd", "rh", "random", true},
      {"rh-handcrafted-nkd", "rh", "handcrafted", true},
      {"r50-output_loss-nkd", "r50", "output_loss", true},
      {"r50-output_loss-pkd", "r50", "output_loss", false},
      {"r50-magnitude-nkd", "r50", "magnitude", true},
      {"r50-random-nkd", "r50", "random", true},
  };
}

// Writes atomically (a temporary name beside the file, then a rename), so
// concurrent runs and readers never see half a file.
absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);  // may race: checked below
  const fs::path temp = path.string() + absl::StrCat(".tmp-", ::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out.good()) {
      fs::remove(temp, ec);
      return absl::InternalError(absl::StrCat("cannot write ", path.string()));
    }
  }
  fs::rename(temp, path, ec);
  if (ec) {
    fs::remove(temp, ec);
    return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  }
  return absl::OkStatus();
}

// The (row, seed) pairs a run does: --row-seeds in its order, else every
// selected row (--rows, default all) for every seed of --first-seed/--seeds.
absl::StatusOr<std::vector<std::pair<Row, int64_t>>> WorkList(const Flags& f) {
  std::map<std::string, Row> by_id;
  for (const Row& row : AllRows()) by_id[row.id] = row;
  std::vector<std::pair<Row, int64_t>> work;
  if (!f.row_seeds.empty()) {
    std::set<std::pair<std::string, int64_t>> seen;
    for (absl::string_view item : absl::StrSplit(f.row_seeds, ',')) {
      if (item.empty()) continue;
      const std::vector<std::string> parts = absl::StrSplit(item, ':');
      int64_t seed = -1;
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &seed) || seed < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("--row-seeds: expected ROW:SEED, got \"", item, "\""));
      }
      auto row = by_id.find(parts[0]);
      if (row == by_id.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--row-seeds: unknown row ", parts[0]));
      }
      if (!seen.insert({parts[0], seed}).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("--row-seeds: ", item, " given twice"));
      }
      work.push_back({row->second, seed});
    }
    if (work.empty()) {
      return absl::InvalidArgumentError("--row-seeds: no pair given");
    }
    return work;
  }
  std::set<std::string> wanted;
  for (absl::string_view r : absl::StrSplit(f.rows, ',')) {
    if (r.empty()) continue;
    if (!by_id.contains(std::string(r))) {
      return absl::InvalidArgumentError(
          absl::StrCat("--rows: unknown row ", r));
    }
    wanted.insert(std::string(r));
  }
  for (int64_t seed = f.first_seed; seed < f.first_seed + f.seeds; ++seed) {
    for (const Row& row : AllRows()) {
      if (wanted.empty() || wanted.contains(row.id))
        work.push_back({row, seed});
    }
  }
  return work;
}

absl::StatusOr<std::string> ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// An 8-wide grid of the first ≤ 64 images' RGB channels as a binary PPM.
absl::Status WriteGrid(const fs::path& path, const torch::Tensor& images) {
  return GuardTorch("writing a sample grid", [&]() -> absl::Status {
    const int64_t n = std::min<int64_t>(64, images.size(0));
    const int64_t s = images.size(2), cols = 8, rows = (n + cols - 1) / cols;
    const torch::Tensor rgb = ((images.narrow(0, 0, n)
                                    .narrow(1, 0, 3)
                                    .to(torch::kCPU, torch::kFloat32)
                                    .clamp(-1, 1) +
                                1) *
                               127.5)
                                  .round()
                                  .to(torch::kUInt8)
                                  .contiguous();
    const int64_t width = cols * (s + 2), height = rows * (s + 2);
    std::vector<uint8_t> pixels(width * height * 3, 40);
    auto a = rgb.accessor<uint8_t, 4>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t x0 = (i % cols) * (s + 2) + 1,
                    y0 = (i / cols) * (s + 2) + 1;
      for (int64_t y = 0; y < s; ++y) {
        for (int64_t x = 0; x < s; ++x) {
          for (int c = 0; c < 3; ++c) {
            pixels[((y0 + y) * width + x0 + x) * 3 + c] = a[i][c][y][x];
          }
        }
      }
    }
    std::string text = absl::StrCat("P6\n", width, " ", height, "\n255\n");
    text.append(reinterpret_cast<const char*>(pixels.data()), pixels.size());
    return WriteText(path, text);
  });
}

// PSNR (dB) per sample of the RGB channels clamped to [-1, 1] (peak-to-peak
// 2), capped at 100 dB.
torch::Tensor SamplePsnr(const torch::Tensor& a, const torch::Tensor& b) {
  auto rgb = [](const torch::Tensor& t) {
    return t.narrow(1, 0, 3).to(torch::kCPU, torch::kFloat64).clamp(-1, 1);
  };
  const torch::Tensor mse = (rgb(a) - rgb(b)).pow(2).mean({1, 2, 3});
  return (10 * torch::log10(4.0 / mse.clamp_min(4e-10))).clamp_max(100.0);
}

class Study {
 public:
  explicit Study(Flags flags) : f_(std::move(flags)) {}

  absl::Status Run();

 private:
  absl::Status Setup();
  absl::Status MakeData();
  absl::Status MakeTeacher();
  absl::Status MakeClassifier();
  absl::Status SaveClassifier(const fs::path& path);
  absl::Status LoadClassifier(const std::string& path);
  absl::Status PrepareSampling();
  absl::Status GateTeacher();
  // Rows-only runs: OUT/study.json's gate, the saved teacher samples.
  absl::Status LoadGate();
  absl::Status MakeUnits();
  absl::Status MakeEvaluationSets();
  absl::StatusOr<std::vector<UNetInputs>> Calibration(int64_t seed);
  absl::StatusOr<Scores> ScoresFor(const std::string& criterion, int64_t seed);
  absl::Status RunRows();
  absl::Status RunRow(const Row& row, int64_t seed);
  absl::Status MeasureAdditivityPoints();
  absl::Status WriteStudy(bool gate_passed);
  absl::Status WriteRunSummary();

  absl::StatusOr<torch::Tensor> Sample(UNet2DConditionModel model,
                                       double guidance);
  absl::StatusOr<AdherenceScore> Adherence(const torch::Tensor& images);
  // A batch of `n` training rows for `step` of a stream.
  absl::StatusOr<TrainingBatch> TrainBatch(const BatchSampler& sampler,
                                           uint64_t seed, int64_t step);

  Flags f_;
  torch::Device device_ = torch::kCPU;
  UNetConfig config_;
  std::string config_text_;
  NoiseSchedule schedule_ = NoiseSchedule::ScaledLinear();
  std::optional<ShapesTextEncoder> encoder_;
  ShapesData train_, heldout_;
  torch::Tensor train_latents_, train_context_;    // on the device
  torch::Tensor uncond_;                           // [1, L, D] on the device
  UNet2DConditionModel teacher_{nullptr};          // fp32, device
  UNet2DConditionModel teacher_distill_{nullptr};  // the distillation copy
  ShapesClassifier classifier_{nullptr};
  // Sampling: fixed noise, prompts (held-out rows), their attributes.
  torch::Tensor sample_noise_, sample_context_;
  QuadrantAttributes sample_requested_;
  // The guidance scale of every row's samples (the gate's choice or
  // --guidance-scale) and the teacher's samples at that scale.
  double guidance_ = 1;
  torch::Tensor teacher_samples_;
  AdherenceScore teacher_adherence_, teacher_adherence_unguided_;
  std::vector<TrainingBatch> eval_batches_;
  std::vector<std::string> unit_ids_;
  HandcraftedRemoval handcrafted_;
  double ratio_h_ = 0;
  std::map<std::pair<std::string, int64_t>, Scores> scores_;
  std::map<int64_t, std::vector<UNetInputs>> calibration_;
  json study_;
  json run_;  // rows-only runs: OUT/runs/<run-name>.json
  json rows_done_ = json::array();
  std::map<std::string, double> timings_;
};

absl::Status Study::Setup() {
  ASSIGN_OR_RETURN(device_, ParseTorchDevice(f_.device_name));
  lpd::engine::SetCpuThreads(static_cast<int>(f_.threads));
  ASSIGN_OR_RETURN(config_text_,
                   ReadText(fs::path(f_.config_dir) / "config.json"));
  ASSIGN_OR_RETURN(config_, ParseUNetConfig(config_text_, f_.config_dir));
  if (config_.in_channels != kShapesChannels ||
      config_.out_channels != kShapesChannels) {
    return absl::InvalidArgumentError(
        absl::StrCat(f_.config_dir, ": the study needs in/out channels 4"));
  }
  if (device_.is_cuda()) {
    at::globalContext().setBenchmarkCuDNN(true);
    at::globalContext().setAllowTF32CuBLAS(true);
    at::globalContext().setAllowTF32CuDNN(true);
  }
  std::error_code ec;
  fs::create_directories(f_.out, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", f_.out));
  return absl::OkStatus();
}

absl::Status Study::MakeData() {
  const auto t0 = Clock::now();
  ShapesDatasetOptions o;
  o.embedding_dim = config_.cross_attention_dim;
  o.image_size = f_.image_size;
  o.num_samples = f_.train_samples;
  o.seed = f_.data_seed;
  ASSIGN_OR_RETURN(train_, GenerateShapesData(o));
  o.num_samples = f_.heldout_samples;
  o.seed = f_.data_seed + 0x100000;
  ASSIGN_OR_RETURN(heldout_, GenerateShapesData(o));
  ASSIGN_OR_RETURN(
      ShapesTextEncoder encoder,
      ShapesTextEncoder::Create(o.embedding_dim, o.embedding_seed));
  encoder_ = encoder;
  if (!f_.write_dataset.empty()) {
    RETURN_IF_ERROR(WriteShapesDataset(train_, f_.write_dataset).status());
    Log("wrote the train set to %s", f_.write_dataset);
  }
  RETURN_IF_ERROR(GuardTorch("moving the data", [&]() {
    train_latents_ = train_.latents.to(device_);
    train_context_ = train_.encoder_hidden_states.to(device_);
    uncond_ = encoder_->Unconditional(1).to(device_);
    return absl::OkStatus();
  }));
  timings_["data"] = Seconds(t0);
  Log("data: %d train and %d held-out scenes of %dx%d (%.1fs)",
      f_.train_samples, f_.heldout_samples, f_.image_size, f_.image_size,
      timings_["data"]);
  return absl::OkStatus();
}

absl::StatusOr<TrainingBatch> Study::TrainBatch(const BatchSampler& sampler,
                                                uint64_t seed, int64_t step) {
  const std::vector<int64_t> indices = sampler.BatchIndices(step);
  torch::Tensor idx;
  RETURN_IF_ERROR(GuardTorch("indexing the train set", [&]() {
    idx = torch::tensor(indices, torch::kInt64).to(device_);
    return absl::OkStatus();
  }));
  DiffusionBatchOptions o;
  o.cond_dropout = f_.cond_dropout;
  return MakeDiffusionBatch(train_latents_.index_select(0, idx),
                            train_context_.index_select(0, idx), uncond_,
                            schedule_, BatchSeed(seed, step), o);
}

absl::Status Study::MakeTeacher() {
  const auto t0 = Clock::now();
  json info;
  if (!f_.teacher_dir.empty()) {
    LoadModelOptions o;
    o.device = device_;
    ASSIGN_OR_RETURN(teacher_, LoadModel(f_.teacher_dir, o));
    if (teacher_->config().cross_attention_dim != config_.cross_attention_dim) {
      return absl::InvalidArgumentError(
          "--teacher: its cross_attention_dim differs from --config's");
    }
    ASSIGN_OR_RETURN(config_text_,
                     ReadText(fs::path(f_.teacher_dir) / "config.json"));
    config_ = teacher_->config();
    info["loaded_from"] = f_.teacher_dir;
    Log("teacher: loaded from %s (%d parameters)", f_.teacher_dir,
        teacher_->NumParameters());
  } else {
    UNetOptions options;
    options.config = config_;
    ASSIGN_OR_RETURN(auto impl, UNet2DConditionModelImpl::Create(options));
    impl->RandomizeParameters(f_.data_seed ^ kTeacherStream);
    RETURN_IF_ERROR(GuardTorch("moving the teacher", [&]() {
      impl->to(device_);
      return absl::OkStatus();
    }));
    UNet2DConditionModel model(impl);
    Log("teacher: %d parameters, training %d steps of batch %d (%s)",
        model->NumParameters(), f_.teacher_steps, f_.teacher_batch,
        f_.teacher_precision);
    ScratchTrainerOptions o;
    o.learning_rate = f_.teacher_lr;
    o.warmup_steps = std::min(f_.teacher_warmup, f_.teacher_steps / 4);
    o.total_steps = f_.teacher_steps;
    o.ema_decay = f_.teacher_ema;
    o.precision = f_.teacher_precision == "bf16"
                      ? ScratchPrecision::kBFloat16Mixed
                      : ScratchPrecision::kFloat32;
    ASSIGN_OR_RETURN(auto trainer, ScratchTrainer::Create(model, o));
    std::vector<int64_t> all(f_.train_samples);
    for (int64_t i = 0; i < f_.train_samples; ++i) all[i] = i;
    ASSIGN_OR_RETURN(BatchSampler sampler,
                     BatchSampler::Create(all, f_.teacher_batch,
                                          f_.data_seed ^ kTeacherStream));
    auto window = Clock::now();
    int64_t window_steps = 0;
    double last_loss = 0;
    json curve = json::array();
    for (int64_t step = 0; step < f_.teacher_steps; ++step) {
      ASSIGN_OR_RETURN(
          TrainingBatch batch,
          TrainBatch(sampler, f_.data_seed ^ kTeacherStream, step));
      ASSIGN_OR_RETURN(ScratchStepReport report, trainer->Step(batch));
      ++window_steps;
      if ((step + 1) % f_.log_every == 0 || step + 1 == f_.teacher_steps ||
          step == 19) {
        last_loss = report.loss.item<double>();  // synchronizes
        const double dt = Seconds(window) / window_steps;
        Log("teacher step %d/%d: loss %.4f, lr %.2e, %.1f ms/step, %.0f "
            "samples/s, ~%.0fs left",
            step + 1, f_.teacher_steps, last_loss, report.learning_rate,
            1e3 * dt, f_.teacher_batch / dt,
            dt * (f_.teacher_steps - step - 1));
        curve.push_back({{"step", step + 1}, {"loss", last_loss}});
        window = Clock::now();
        window_steps = 0;
      }
    }
    ASSIGN_OR_RETURN(teacher_, trainer->AveragedModel());
    info["train_steps"] = f_.teacher_steps;
    info["train_batch"] = f_.teacher_batch;
    info["learning_rate"] = f_.teacher_lr;
    info["ema_decay"] = f_.teacher_ema;
    info["precision"] = f_.teacher_precision;
    info["cond_dropout"] = f_.cond_dropout;
    info["final_train_loss"] = last_loss;
    info["loss_curve"] = curve;
    const fs::path dir = fs::path(f_.out) / "teacher";
    RETURN_IF_ERROR(SaveModelFolder(*teacher_, config_text_, dir.string()));
    Log("teacher: saved to %s", dir.string());
  }
  teacher_->eval();
  info["parameters"] = teacher_->NumParameters();
  timings_["teacher"] = Seconds(t0);
  // The copy distillation reads (bf16 on the GPU: only its forward runs).
  if (f_.distill_precision == "fp32") {
    teacher_distill_ = teacher_;
  } else {
    ASSIGN_OR_RETURN(
        teacher_distill_,
        CopyModel(
            *teacher_,
            torch::TensorOptions().dtype(torch::kBFloat16).device(device_)));
  }
  study_["teacher"] = info;
  return absl::OkStatus();
}

absl::StatusOr<AdherenceScore> Study::Adherence(const torch::Tensor& images) {
  ASSIGN_OR_RETURN(QuadrantAttributes read,
                   ReadAttributes(*classifier_, images));
  return ScoreAdherence(read, sample_requested_);
}

absl::Status Study::MakeClassifier() {
  const auto t0 = Clock::now();
  json info;
  if (!f_.classifier_path.empty()) {
    RETURN_IF_ERROR(LoadClassifier(f_.classifier_path));
    info["loaded_from"] = f_.classifier_path;
    Log("classifier: loaded from %s (not trained)", f_.classifier_path);
  } else {
    ClassifierTrainOptions o;
    o.steps = f_.classifier_steps;
    o.batch_size = f_.classifier_batch;
    o.width = f_.classifier_width;
    o.device = device_;
    o.seed = f_.data_seed;
    o.log_every = std::max<int64_t>(1, f_.classifier_steps / 4);
    o.log = [](int64_t step, double loss) {
      Log("classifier step %d: loss %.4f", step + 1, loss);
    };
    ASSIGN_OR_RETURN(classifier_, TrainShapesClassifier(train_, o));
    info["steps"] = f_.classifier_steps;
    info["batch"] = f_.classifier_batch;
    info["width"] = f_.classifier_width;
  }
  if (f_.rows_only) {
    timings_["classifier"] = Seconds(t0);
    run_["classifier"] = info;
    return absl::OkStatus();
  }
  // Saved for --rows-only runs (unless it was loaded from there).
  const fs::path saved = fs::path(f_.out) / "classifier.safetensors";
  std::error_code ec;
  if (f_.classifier_path.empty() ||
      !fs::equivalent(f_.classifier_path, saved, ec)) {
    RETURN_IF_ERROR(SaveClassifier(saved));
  }
  info["saved_to"] = saved.string();
  ASSIGN_OR_RETURN(QuadrantAttributes read,
                   ReadAttributes(*classifier_, heldout_.latents));
  ASSIGN_OR_RETURN(ClassifierAccuracy accuracy,
                   MeasureClassifierAccuracy(read, heldout_.attributes));
  ASSIGN_OR_RETURN(AdherenceScore ceiling,
                   ScoreAdherence(read, heldout_.attributes));
  // Chance: the same images against another sample's prompt.
  QuadrantAttributes shuffled;
  RETURN_IF_ERROR(GuardTorch("shuffling prompts", [&]() {
    const torch::Tensor perm =
        torch::roll(torch::arange(heldout_.size(), torch::kInt64), 1);
    shuffled = {heldout_.attributes.present.index_select(0, perm),
                heldout_.attributes.kind.index_select(0, perm),
                heldout_.attributes.colour.index_select(0, perm),
                heldout_.attributes.size.index_select(0, perm)};
    return absl::OkStatus();
  }));
  ASSIGN_OR_RETURN(AdherenceScore chance, ScoreAdherence(read, shuffled));
  timings_["classifier"] = Seconds(t0);
  Log("classifier: held-out accuracy present %.3f kind %.3f colour %.3f size "
      "%.3f (chance 0.25 kind, 0.167 colour, 0.5 size)",
      accuracy.present, accuracy.kind, accuracy.colour, accuracy.size);
  Log("classifier: adherence of real images %.3f attributes / %.3f exact; "
      "with shuffled prompts (chance) %.3f / %.3f",
      ceiling.attribute_accuracy, ceiling.exact_rate, chance.attribute_accuracy,
      chance.exact_rate);
  info["heldout_accuracy"] = ClassifierAccuracyToJson(accuracy);
  info["chance_accuracy"] = {{"kind", 1.0 / kShapeKinds},
                             {"colour", 1.0 / kShapeColours},
                             {"size", 1.0 / kShapeSizes}};
  info["real_adherence"] = AdherenceToJson(ceiling);
  info["chance_adherence"] = AdherenceToJson(chance);
  study_["classifier"] = info;
  return absl::OkStatus();
}

absl::Status Study::SaveClassifier(const fs::path& path) {
  std::map<std::string, torch::Tensor> tensors;
  RETURN_IF_ERROR(GuardTorch("collecting the classifier's weights", [&]() {
    for (const auto& p : classifier_->named_parameters()) {
      tensors[p.key()] = p.value().detach();
    }
    for (const auto& b : classifier_->named_buffers()) {
      tensors[b.key()] = b.value().detach();
    }
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(WriteTensors(path.string(), tensors,
                               {{"format", "lpd shapes classifier"}}));
  Log("classifier: saved to %s", path.string());
  return absl::OkStatus();
}

absl::Status Study::LoadClassifier(const std::string& path) {
  ASSIGN_OR_RETURN(auto tensors,
                   ReadAllTensors(path, device_, torch::kFloat32));
  auto quadrant = tensors.find("quadrant.weight");
  if (quadrant == tensors.end() || quadrant->second.dim() != 2 ||
      quadrant->second.size(1) % 4 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a shapes classifier (no quadrant.weight)"));
  }
  const int64_t width = quadrant->second.size(1) / 4;
  return GuardTorch("loading the classifier", [&]() -> absl::Status {
    ShapesClassifier model(width);
    model->to(device_);
    torch::NoGradGuard no_grad;
    size_t used = 0;
    auto assign = [&](const std::string& name,
                      torch::Tensor& target) -> absl::Status {
      auto found = tensors.find(name);
      if (found == tensors.end() || found->second.sizes() != target.sizes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": tensor ", name,
            found == tensors.end() ? " is missing" : " has the wrong shape"));
      }
      target.copy_(found->second);
      ++used;
      return absl::OkStatus();
    };
    for (auto& p : model->named_parameters()) {
      RETURN_IF_ERROR(assign(p.key(), p.value()));
    }
    for (auto& b : model->named_buffers()) {
      RETURN_IF_ERROR(assign(b.key(), b.value()));
    }
    if (used != tensors.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", tensors.size() - used,
                       " tensors the classifier does not have"));
    }
    model->eval();
    classifier_ = model;
    return absl::OkStatus();
  });
}

absl::StatusOr<torch::Tensor> Study::Sample(UNet2DConditionModel model,
                                            double guidance) {
  DdimOptions o;
  o.num_inference_steps = static_cast<int>(f_.ddim_steps);
  o.guidance_scale = guidance;
  o.clip_sample = true;  // the data lies in [-1, 1]
  o.max_batch = 512;
  // g = 1 is the conditional prediction alone: no unconditional pass.
  return DdimSample(UNetNoisePredictor(model), schedule_, sample_noise_,
                    sample_context_,
                    guidance == 1.0 ? torch::Tensor() : uncond_, o);
}

absl::Status Study::PrepareSampling() {
  return GuardTorch("preparing the sampling set", [&]() {
    at::Generator gen =
        at::detail::createCPUGenerator(f_.data_seed ^ kSampleNoiseStream);
    sample_noise_ = torch::randn({f_.samples, kShapesChannels, f_.image_size,
                                  f_.image_size},
                                 gen, torch::kFloat32)
                        .to(device_);
    sample_context_ =
        heldout_.encoder_hidden_states.narrow(0, 0, f_.samples).to(device_);
    sample_requested_ = {heldout_.attributes.present.narrow(0, 0, f_.samples),
                         heldout_.attributes.kind.narrow(0, 0, f_.samples),
                         heldout_.attributes.colour.narrow(0, 0, f_.samples),
                         heldout_.attributes.size.narrow(0, 0, f_.samples)};
    return absl::OkStatus();
  });
}

// The name of the teacher's samples at scale g in teacher_samples.safetensors.
std::string SamplesKey(double g) { return absl::StrFormat("guidance_%g", g); }

absl::Status Study::GateTeacher() {
  const auto t0 = Clock::now();
  const double chance =
      study_["classifier"]["chance_adherence"]["attribute_accuracy"];
  const double ceiling =
      study_["classifier"]["real_adherence"]["attribute_accuracy"];
  const double threshold = chance + f_.gate_fraction * (ceiling - chance);
  // Every scale from the same noise and prompts; the best attribute
  // adherence wins (the first of equals).
  std::map<std::string, torch::Tensor> saved;
  json sweep = json::array();
  int best = -1;
  std::optional<AdherenceScore> unguided;
  for (size_t i = 0; i < f_.guidance_scales.size(); ++i) {
    const double g = f_.guidance_scales[i];
    const auto ts = Clock::now();
    ASSIGN_OR_RETURN(torch::Tensor samples, Sample(teacher_, g));
    Sync(device_);
    const double seconds = Seconds(ts);
    ASSIGN_OR_RETURN(AdherenceScore a, Adherence(samples));
    const bool passes = a.attribute_accuracy >= threshold;
    Log("teacher gate: g=%g: adherence %.3f attributes / %.3f exact (%s the "
        "threshold %.3f; %.1fs)",
        g, a.attribute_accuracy, a.exact_rate, passes ? "meets" : "below",
        threshold, seconds);
    sweep.push_back({{"guidance", g},
                     {"adherence", AdherenceToJson(a)},
                     {"passed", passes},
                     {"sampling_seconds", seconds}});
    saved[SamplesKey(g)] = samples;
    if (f_.guidance_scales.size() > 1) {
      RETURN_IF_ERROR(WriteGrid(
          fs::path(f_.out) / absl::StrFormat("teacher_samples_g%g.ppm", g),
          samples));
    }
    if (g == 1.0) unguided = a;
    if (best < 0 ||
        a.attribute_accuracy > teacher_adherence_.attribute_accuracy) {
      best = static_cast<int>(i);
      guidance_ = g;
      teacher_adherence_ = a;
      teacher_samples_ = samples;
    }
  }
  if (!unguided.has_value()) {  // a forced scale other than 1
    ASSIGN_OR_RETURN(torch::Tensor samples, Sample(teacher_, 1.0));
    ASSIGN_OR_RETURN(unguided, Adherence(samples));
  }
  teacher_adherence_unguided_ = *unguided;
  const double sample_seconds = Seconds(t0);
  // What --rows-only runs compare their students with (PSNR).
  RETURN_IF_ERROR(WriteTensors(
      (fs::path(f_.out) / "teacher_samples.safetensors").string(), saved,
      {{"format", "lpd quality study teacher samples"},
       {"chosen", SamplesKey(guidance_)},
       {"samples", absl::StrCat(f_.samples)},
       {"ddim_steps", absl::StrCat(f_.ddim_steps)},
       {"data_seed", absl::StrCat(f_.data_seed)}}));
  RETURN_IF_ERROR(
      WriteGrid(fs::path(f_.out) / "teacher_samples.ppm", teacher_samples_));
  RETURN_IF_ERROR(WriteGrid(fs::path(f_.out) / "real_samples.ppm",
                            heldout_.latents.narrow(0, 0, f_.samples)));
  const bool passed = teacher_adherence_.attribute_accuracy >= threshold;
  Log("teacher gate: %s g=%g: adherence %.3f attributes / %.3f exact, "
      "unguided %.3f / %.3f; chance %.3f, real images %.3f, threshold %.3f: "
      "%s",
      f_.forced_guidance.has_value() ? "forced" : "best", guidance_,
      teacher_adherence_.attribute_accuracy, teacher_adherence_.exact_rate,
      teacher_adherence_unguided_.attribute_accuracy,
      teacher_adherence_unguided_.exact_rate, chance, ceiling, threshold,
      passed ? "PASSED" : "FAILED");
  std::vector<std::string> prompts;
  for (int64_t i = 0; i < std::min<int64_t>(64, f_.samples); ++i) {
    const torch::Tensor t = heldout_.tokens[i].contiguous();
    prompts.push_back(PromptText(std::vector<int64_t>(
        t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + kShapesSeqLen)));
  }
  study_["gate"] = {{"guidance", guidance_},
                    {"guidance_forced", f_.forced_guidance.has_value()},
                    {"guidance_scales", f_.guidance_scales},
                    {"sweep", sweep},
                    {"ddim_steps", f_.ddim_steps},
                    {"samples", f_.samples},
                    {"teacher_adherence", AdherenceToJson(teacher_adherence_)},
                    {"teacher_adherence_unguided",
                     AdherenceToJson(teacher_adherence_unguided_)},
                    {"chance", chance},
                    {"ceiling", ceiling},
                    {"gate_fraction", f_.gate_fraction},
                    {"threshold", threshold},
                    {"passed", passed},
                    {"sampling_seconds", sample_seconds},
                    {"teacher_samples", "teacher_samples.safetensors"},
                    {"grid_prompts", prompts}};
  timings_["gate"] = Seconds(t0);
  return absl::OkStatus();
}

absl::Status Study::LoadGate() {
  const auto t0 = Clock::now();
  const fs::path path = fs::path(f_.out) / "study.json";
  ASSIGN_OR_RETURN(std::string text, ReadText(path));
  const json study = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (study.is_discarded() || !study.contains("gate") ||
      !study["gate"].contains("sweep") || !study.contains("data")) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(),
        ": no gate with a guidance sweep; run a --gate-only run on this "
        "--out first"));
  }
  const json& gate = study["gate"];
  const json& data = study["data"];
  // The rows must see the gate's data, prompts and noise.
  auto same = [&](const json& j, const char* key, int64_t value,
                  const char* flag) -> absl::Status {
    if (!j.contains(key) || j[key].get<int64_t>() != value) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.string(), " was written with --", flag, " ",
                       j.contains(key) ? j[key].dump() : "(absent)",
                       ", this run has ", value));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(
      same(data, "train_samples", f_.train_samples, "train-samples"));
  RETURN_IF_ERROR(
      same(data, "heldout_samples", f_.heldout_samples, "heldout-samples"));
  RETURN_IF_ERROR(
      same(data, "seed", static_cast<int64_t>(f_.data_seed), "data-seed"));
  RETURN_IF_ERROR(same(data, "image_size", f_.image_size, "image-size"));
  RETURN_IF_ERROR(same(gate, "samples", f_.samples, "samples"));
  RETURN_IF_ERROR(same(gate, "ddim_steps", f_.ddim_steps, "ddim-steps"));
  if (!gate.value("passed", false) && !f_.allow_failed_gate) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the teacher failed the adherence gate (see ", path.string(),
        "); pass --allow-failed-gate to run the rows anyway"));
  }
  guidance_ = f_.forced_guidance.value_or(gate["guidance"].get<double>());
  json gate_adherence;
  for (const json& entry : gate["sweep"]) {
    if (entry["guidance"].get<double>() == guidance_) {
      gate_adherence = entry["adherence"];
    }
  }
  const fs::path samples_path =
      fs::path(f_.out) / "teacher_samples.safetensors";
  ASSIGN_OR_RETURN(auto samples, ReadAllTensors(samples_path.string(), device_,
                                                torch::kFloat32));
  auto found = samples.find(SamplesKey(guidance_));
  if (found == samples.end() || gate_adherence.is_null()) {
    std::vector<std::string> have;
    for (const auto& [name, t] : samples) have.push_back(name);
    return absl::InvalidArgumentError(absl::StrCat(
        samples_path.string(), " has no teacher samples at guidance ",
        guidance_, " (it has ", absl::StrJoin(have, ", "),
        "); rerun the gate with that scale in --guidance-scales"));
  }
  if (found->second.sizes() != sample_noise_.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        samples_path.string(), ": the samples' shape differs from this run's"));
  }
  teacher_samples_ = found->second;
  // Re-read with this run's classifier: the rows are compared with this.
  ASSIGN_OR_RETURN(teacher_adherence_, Adherence(teacher_samples_));
  const double recorded = gate_adherence["attribute_accuracy"];
  Log("gate (from %s): guidance %g (%s), teacher adherence %.3f attributes "
      "(the gate run read %.3f)",
      path.string(), guidance_,
      f_.forced_guidance.has_value() ? "--guidance-scale" : "the gate's choice",
      teacher_adherence_.attribute_accuracy, recorded);
  if (std::abs(recorded - teacher_adherence_.attribute_accuracy) > 1e-9) {
    Log("warning: the teacher samples read differently than in the gate run "
        "(a few near-ties may flip on a GPU; a large gap means another "
        "classifier or other samples)");
  }
  run_["study"] = path.string();
  run_["gate_passed"] = gate.value("passed", false);
  run_["guidance"] = guidance_;
  run_["guidance_source"] =
      f_.forced_guidance.has_value() ? "--guidance-scale" : "gate";
  run_["teacher_samples"] = samples_path.string();
  run_["teacher_adherence"] = AdherenceToJson(teacher_adherence_);
  run_["gate_teacher_adherence"] = gate_adherence;
  timings_["gate_load"] = Seconds(t0);
  return absl::OkStatus();
}

absl::Status Study::MakeUnits() {
  unit_ids_ =
      ScorableUnitIds(*teacher_, {UnitKind::kResnet, UnitKind::kAttention});
  ASSIGN_OR_RETURN(handcrafted_, HandcraftedSelection(*teacher_, 0.3));
  ratio_h_ = handcrafted_.achieved_ratio;
  Log("units: %d scorable (resnet + attention); BK-SDM-Base rule removes %d "
      "units, R_h = %.4f of %d parameters",
      unit_ids_.size(), handcrafted_.removed.size(), ratio_h_,
      handcrafted_.total_params);
  return absl::OkStatus();
}

absl::Status Study::MakeEvaluationSets() {
  // Held-out noised batches (conditional, fixed seed).
  for (int64_t begin = 0, b = 0; begin < f_.eval_samples;
       begin += f_.eval_batch, ++b) {
    const int64_t n = std::min(f_.eval_batch, f_.eval_samples - begin);
    DiffusionBatchOptions o;
    o.cond_dropout = 0;
    ASSIGN_OR_RETURN(
        TrainingBatch batch,
        MakeDiffusionBatch(
            heldout_.latents.narrow(0, begin, n).to(device_),
            heldout_.encoder_hidden_states.narrow(0, begin, n).to(device_), {},
            schedule_, BatchSeed(f_.data_seed ^ kEvalStream, b), o));
    eval_batches_.push_back(batch);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<UNetInputs>> Study::Calibration(int64_t seed) {
  auto found = calibration_.find(seed);
  if (found != calibration_.end()) return found->second;
  const uint64_t s = BatchSeed(f_.data_seed ^ kCalibrationStream, seed);
  ASSIGN_OR_RETURN(BatchSampler sampler,
                   BatchSampler::Create(
                       [&] {
                         std::vector<int64_t> all(f_.train_samples);
                         for (int64_t i = 0; i < f_.train_samples; ++i) {
                           all[i] = i;
                         }
                         return all;
                       }(),
                       f_.calibration_samples, s));
  DiffusionBatchOptions o;
  o.cond_dropout = 0;
  std::vector<UNetInputs> batches;
  const std::vector<int64_t> indices = sampler.BatchIndices(0);
  for (size_t begin = 0; begin < indices.size(); begin += 64) {
    const size_t end = std::min(indices.size(), begin + 64);
    torch::Tensor idx;
    RETURN_IF_ERROR(GuardTorch("calibration indices", [&]() {
      idx = torch::tensor(std::vector<int64_t>(indices.begin() + begin,
                                               indices.begin() + end),
                          torch::kInt64)
                .to(device_);
      return absl::OkStatus();
    }));
    ASSIGN_OR_RETURN(TrainingBatch b,
                     MakeDiffusionBatch(train_latents_.index_select(0, idx),
                                        train_context_.index_select(0, idx), {},
                                        schedule_, BatchSeed(s, begin), o));
    batches.push_back(b.noised);
  }
  calibration_[seed] = batches;
  return batches;
}

absl::StatusOr<Scores> Study::ScoresFor(const std::string& criterion,
                                        int64_t seed) {
  const int64_t key_seed = criterion == "magnitude" ? 0 : seed;
  auto found = scores_.find({criterion, key_seed});
  if (found != scores_.end()) return found->second;
  ASSIGN_OR_RETURN(ScoreCriterion c, ParseScoreCriterion(criterion));
  std::vector<UNetInputs> calibration;
  if (c == ScoreCriterion::kOutputLoss) {
    ASSIGN_OR_RETURN(calibration, Calibration(seed));
  }
  ScoreOptions o;
  o.criterion = c;
  o.seed = static_cast<uint64_t>(seed);
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(Scores scores,
                   ScoreUnits(*teacher_, unit_ids_, calibration, o));
  Log("scores: %s, seed %d: %d units in %.2fs", criterion, seed,
      scores.units.size(), Seconds(t0));
  scores_[{criterion, key_seed}] = scores;
  return scores;
}

absl::Status Study::RunRow(const Row& row, int64_t seed) {
  const auto t0 = Clock::now();
  const double ratio = row.ratio_label == "rh" ? ratio_h_ : 0.5;
  json report;
  report["row"] = row.id;
  report["ratio_label"] = row.ratio_label;
  report["criterion"] = row.criterion;
  report["feature_kd"] = row.normalized_kd ? "normalized" : "plain";
  report["seed"] = seed;
  report["target_ratio"] = ratio;
  std::set<std::string> removed;
  if (row.criterion == "handcrafted") {
    removed.insert(handcrafted_.removed.begin(), handcrafted_.removed.end());
    report["plan"] = {{"criterion", "handcrafted"},
                      {"rule", handcrafted_.rule},
                      {"removed", handcrafted_.removed},
                      {"removed_params", handcrafted_.removed_params},
                      {"total_params", handcrafted_.total_params},
                      {"achieved_ratio", handcrafted_.achieved_ratio}};
    report["achieved_ratio"] = handcrafted_.achieved_ratio;
  } else {
    ASSIGN_OR_RETURN(Scores scores, ScoresFor(row.criterion, seed));
    ASSIGN_OR_RETURN(lpd::selection::Plan plan,
                     lpd::selection::SelectUnits(ToScoredUnits(scores),
                                                 scores.total_params, ratio));
    plan.criterion = row.criterion;
    removed.insert(plan.removed.begin(), plan.removed.end());
    report["plan"] = lpd::selection::PlanToJson(plan);
    report["achieved_ratio"] = plan.achieved_ratio;
  }

  // Distillation, the same budget and data stream (per seed) for every row.
  DistillTrainerOptions o;
  o.loss.task_weight = 1;
  o.loss.output_kd_weight = 1;
  o.loss.feature_kd_weight = 1;
  o.loss.normalize_features = row.normalized_kd;
  o.learning_rate = f_.distill_lr;
  o.warmup_steps = std::min(f_.distill_warmup, f_.distill_steps / 4);
  o.device = device_;
  o.seed = static_cast<uint64_t>(seed);
  o.precision = f_.distill_precision == "fp32"
                    ? TrainingPrecision::kFloat32
                    : (f_.distill_precision == "bf16"
                           ? TrainingPrecision::kBFloat16
                           : TrainingPrecision::kBFloat16MasterFloat32);
  ASSIGN_OR_RETURN(auto trainer,
                   DistillTrainer::Create(teacher_distill_, removed, o));
  std::vector<int64_t> all(f_.train_samples);
  for (int64_t i = 0; i < f_.train_samples; ++i) all[i] = i;
  const uint64_t stream = BatchSeed(f_.data_seed ^ kDistillStream, seed);
  ASSIGN_OR_RETURN(BatchSampler sampler,
                   BatchSampler::Create(all, f_.distill_batch, stream));
  DistillLossValues last;
  json curve = json::array();
  const auto train_start = Clock::now();
  RETURN_IF_ERROR(trainer->Train(
      f_.distill_steps,
      [&](int64_t step) { return TrainBatch(sampler, stream, step); },
      [&](const StepReport& r) -> absl::Status {
        last = r.loss;
        if ((r.step + 1) % f_.log_every == 0 ||
            r.step + 1 == f_.distill_steps) {
          curve.push_back({{"step", r.step + 1},
                           {"total", r.loss.total},
                           {"task", r.loss.task},
                           {"output_kd", r.loss.output_kd},
                           {"feature_kd", r.loss.feature_kd}});
        }
        return absl::OkStatus();
      }));
  Sync(device_);
  const double train_seconds = Seconds(train_start);
  report["distill"] = {
      {"steps", f_.distill_steps},
      {"batch", f_.distill_batch},
      {"learning_rate", f_.distill_lr},
      {"warmup_steps", o.warmup_steps},
      {"precision", f_.distill_precision},
      {"cond_dropout", f_.cond_dropout},
      {"loss_weights", {{"task", 1}, {"output_kd", 1}, {"feature_kd", 1}}},
      {"final_loss",
       {{"total", last.total},
        {"task", last.task},
        {"output_kd", last.output_kd},
        {"feature_kd", last.feature_kd}}},
      {"loss_curve", curve},
      {"seconds", train_seconds}};

  // Evaluation, on an fp32 copy of the student.
  ASSIGN_OR_RETURN(
      UNet2DConditionModel student,
      CopyModel(*trainer->student(),
                torch::TensorOptions().dtype(torch::kFloat32).device(device_)));
  trainer.reset();
  student->eval();
  EvaluationOptions eo;
  eo.latency_runs = device_.is_cuda() ? 5 : 0;
  ASSIGN_OR_RETURN(EvaluationReport eval,
                   Evaluate(*teacher_, *student, eval_batches_, eo));
  report["evaluation"] = ReportToJson(eval);
  ASSIGN_OR_RETURN(torch::Tensor samples, Sample(student, guidance_));
  ASSIGN_OR_RETURN(AdherenceScore adherence, Adherence(samples));
  report["sampling"] = {{"guidance", guidance_},
                        {"ddim_steps", f_.ddim_steps},
                        {"samples", f_.samples}};
  report["adherence"] = AdherenceToJson(adherence);
  report["teacher_adherence"] = AdherenceToJson(teacher_adherence_);
  torch::Tensor psnr;
  RETURN_IF_ERROR(GuardTorch("PSNR", [&]() {
    psnr = SamplePsnr(samples, teacher_samples_);
    return absl::OkStatus();
  }));
  report["sample_psnr_db"] = {{"mean", psnr.mean().item<double>()},
                              {"median", psnr.median().item<double>()},
                              {"samples", psnr.size(0)}};
  report["seconds"] = Seconds(t0);
  const fs::path dir = fs::path(f_.out) / row.id / absl::StrCat("seed-", seed);
  RETURN_IF_ERROR(WriteText(dir / "report.json", report.dump(2) + "\n"));
  if (seed == 0) RETURN_IF_ERROR(WriteGrid(dir / "samples.ppm", samples));
  Log("%s seed %d: ratio %.3f, adherence %.3f (teacher %.3f), exact %.3f, "
      "rel. error %.4f, student loss %.4f (teacher %.4f), PSNR %.1f dB; "
      "distill %.1fs, row %.1fs",
      row.id, seed, static_cast<double>(report["achieved_ratio"]),
      adherence.attribute_accuracy, teacher_adherence_.attribute_accuracy,
      adherence.exact_rate, eval.overall.relative_error,
      eval.overall.student_loss, eval.overall.teacher_loss,
      psnr.mean().item<double>(), train_seconds, Seconds(t0));
  return absl::OkStatus();
}

absl::Status Study::MeasureAdditivityPoints() {
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(Scores scores, ScoresFor("output_loss", 0));
  ASSIGN_OR_RETURN(std::vector<UNetInputs> calibration, Calibration(0));
  std::vector<int> sizes;
  for (double ratio : {ratio_h_, 0.5}) {
    ASSIGN_OR_RETURN(lpd::selection::Plan plan,
                     lpd::selection::SelectUnits(ToScoredUnits(scores),
                                                 scores.total_params, ratio));
    for (int s : SetSizesAround(static_cast<int>(plan.removed.size()),
                                static_cast<int>(scores.units.size()))) {
      if (std::find(sizes.begin(), sizes.end(), s) == sizes.end()) {
        sizes.push_back(s);
      }
    }
  }
  std::sort(sizes.begin(), sizes.end());
  AdditivityOptions o;
  o.set_sizes = sizes;
  o.sets_per_size = static_cast<int>(f_.additivity_sets);
  o.seed = f_.data_seed;
  ASSIGN_OR_RETURN(auto points,
                   MeasureAdditivity(*teacher_, scores, calibration, o));
  ASSIGN_OR_RETURN(auto rows, lpd::selection::AdditivityReport(points));
  json result = lpd::selection::AdditivityReportToJson(rows);
  std::vector<double> predicted, measured;
  std::string csv = "set_size,predicted,measured\n";
  for (const auto& p : points) {
    predicted.push_back(p.predicted);
    measured.push_back(p.measured);
    absl::StrAppend(&csv, p.set_size, ",", absl::StrFormat("%.9g", p.predicted),
                    ",", absl::StrFormat("%.9g", p.measured), "\n");
  }
  auto pearson = lpd::selection::PearsonCorrelation(predicted, measured);
  auto spearman = lpd::selection::SpearmanCorrelation(predicted, measured);
  result["pooled"] = {
      {"samples", points.size()},
      {"pearson", pearson.ok() ? json(*pearson) : json(nullptr)},
      {"spearman", spearman.ok() ? json(*spearman) : json(nullptr)},
      {"note", "all set sizes pooled (size alone inflates this)"}};
  result["set_sizes"] = sizes;
  result["sets_per_size"] = f_.additivity_sets;
  result["calibration_samples"] = f_.calibration_samples;
  RETURN_IF_ERROR(
      WriteText(fs::path(f_.out) / "additivity.json", result.dump(2) + "\n"));
  RETURN_IF_ERROR(WriteText(fs::path(f_.out) / "additivity.csv", csv));
  timings_["additivity"] = Seconds(t0);
  Log("additivity: %d sets of sizes %s; pooled Pearson %s, Spearman %s "
      "(%.1fs)",
      points.size(), absl::StrJoin(sizes, ","),
      pearson.ok() ? absl::StrFormat("%.3f", *pearson) : "n/a",
      spearman.ok() ? absl::StrFormat("%.3f", *spearman) : "n/a",
      timings_["additivity"]);
  return absl::OkStatus();
}

absl::Status Study::WriteStudy(bool gate_passed) {
  study_["device"] = device_.str();
  study_["config"] = json::parse(config_text_, nullptr, false);
  study_["config_dir"] = f_.config_dir;
  study_["ratio_h"] = ratio_h_;
  study_["handcrafted_rule"] = handcrafted_.rule;
  study_["units"] = unit_ids_.size();
  study_["seeds"] = f_.seeds;
  study_["data"] = {{"train_samples", f_.train_samples},
                    {"heldout_samples", f_.heldout_samples},
                    {"seed", f_.data_seed},
                    {"image_size", f_.image_size},
                    {"seq_len", kShapesSeqLen},
                    {"latents",
                     "RGB in [-1,1] (channels 0-2) + occupancy mask in "
                     "[-1,1] (channel 3)"}};
  study_["distill"] = {{"steps", f_.distill_steps},
                       {"batch", f_.distill_batch},
                       {"learning_rate", f_.distill_lr},
                       {"precision", f_.distill_precision}};
  study_["evaluation"] = {{"eval_samples", f_.eval_samples},
                          {"calibration_samples", f_.calibration_samples}};
  study_["mode"] = f_.gate_only ? "gate-only" : "full";
  study_["gate_passed"] = gate_passed;
  study_["timings_seconds"] = timings_;
  study_["total_seconds"] = Seconds(g_start);
  return WriteText(fs::path(f_.out) / "study.json", study_.dump(2) + "\n");
}

absl::Status Study::WriteRunSummary() {
  run_["run_name"] = f_.run_name;
  run_["device"] = device_.str();
  run_["pid"] = static_cast<int64_t>(::getpid());
  run_["teacher"] = study_["teacher"];
  run_["rows"] = rows_done_;
  run_["timings_seconds"] = timings_;
  run_["total_seconds"] = Seconds(g_start);
  return WriteText(
      fs::path(f_.out) / "runs" / absl::StrCat(f_.run_name, ".json"),
      run_.dump(2) + "\n");
}

absl::Status Study::RunRows() {
  ASSIGN_OR_RETURN(auto work, WorkList(f_));
  const auto rows_start = Clock::now();
  const int64_t total = static_cast<int64_t>(work.size());
  for (int64_t done = 0; done < total;) {
    const auto& [row, seed] = work[done];
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(RunRow(row, seed));
    rows_done_.push_back(
        {{"row", row.id}, {"seed", seed}, {"seconds", Seconds(t0)}});
    ++done;
    timings_["rows"] = Seconds(rows_start);
    if (f_.rows_only) RETURN_IF_ERROR(WriteRunSummary());
    const double per_row = Seconds(rows_start) / done;
    if (done == 1 || done % 5 == 0 || done == total) {
      Log("rows: %d/%d done, %.1fs per row, ~%.0fs left", done, total, per_row,
          per_row * (total - done));
    }
  }
  return absl::OkStatus();
}

absl::Status Study::Run() {
  RETURN_IF_ERROR(Setup());
  RETURN_IF_ERROR(MakeData());
  RETURN_IF_ERROR(MakeTeacher());
  RETURN_IF_ERROR(MakeClassifier());
  RETURN_IF_ERROR(PrepareSampling());
  if (f_.rows_only) {
    // Everything shared comes from the gate run; this run writes only its
    // rows' folders and OUT/runs/<run-name>.json.
    RETURN_IF_ERROR(LoadGate());
    RETURN_IF_ERROR(MakeUnits());
    RETURN_IF_ERROR(MakeEvaluationSets());
    RETURN_IF_ERROR(RunRows());
    RETURN_IF_ERROR(WriteRunSummary());
    Log("done: %d reports under %s (summary runs/%s.json)", rows_done_.size(),
        f_.out, f_.run_name);
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(GateTeacher());
  const bool passed = study_["gate"]["passed"];
  if (!passed && !f_.allow_failed_gate) {
    RETURN_IF_ERROR(WriteStudy(false));
    return absl::FailedPreconditionError(
        "the teacher failed the adherence gate (see study.json); train it "
        "longer or pass --allow-failed-gate");
  }
  RETURN_IF_ERROR(MakeUnits());
  RETURN_IF_ERROR(MeasureAdditivityPoints());
  RETURN_IF_ERROR(WriteStudy(passed));
  if (f_.gate_only) {
    Log("gate run done (--gate-only): the rows follow with --rows-only on "
        "this --out");
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(MakeEvaluationSets());
  RETURN_IF_ERROR(RunRows());
  study_["rows"] = rows_done_;
  RETURN_IF_ERROR(WriteStudy(passed));
  Log("done: %d reports under %s", rows_done_.size(), f_.out);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  g_start = Clock::now();
  auto flags = ParseFlags(argc, argv);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n\nflags:\n%s", flags.status().ToString().c_str(),
                 lpd::CliArgs::Usage(FlagSpecs()).c_str());
    return 2;
  }
  // Bad row names fail now, not after the teacher's training.
  if (auto work = WorkList(*flags); !work.ok()) {
    std::fprintf(stderr, "%s\n", work.status().ToString().c_str());
    return 2;
  }
  Study study(*flags);
  const absl::Status status = study.Run();
  if (!status.ok()) {
    std::fprintf(stderr, "quality_study: %s\n", status.ToString().c_str());
    return status.code() == absl::StatusCode::kFailedPrecondition ? 3 : 1;
  }
  return 0;
}

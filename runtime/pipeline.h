// The local pipeline (`lpd-worker run JOB.yaml`): one compression job run on
// one machine, phase after phase (DESIGN §3.2), as the tasks of
// runtime/job_tasks.h and runtime/select_phase.h run in sequence (one SCORE
// shard), so the local run and the service share one code path:
//
//   SCORE     units.json, scores/shard-0-of-1.json (handcrafted:
//             handcrafted.json)
//   SELECT    scores.json, plan.json   knapsack over the scores (or the
//                                      handcrafted rule)
//   DISTILL   additivity.json (output_loss), checkpoints/step-N/...,
//             checkpoints/LATEST, distill.json
//   EVALUATE  report.json   held-out evaluation (engine/compress/evaluation.h)
//   EXPORT    final/        the student in the diffusers layout
//
// everything written through the storage interface under spec.output.uri.
// Each task loads the teacher itself (the price of sharing the code path).
//
// Determinism. The split of the training set, the calibration batches (x_t,
// timesteps and noise), the training batches (BatchSampler over the train
// split; timesteps and noise from BatchSeed(seed, step)) and the held-out
// batches are functions of spec.seed only. So a re-run of the same job gives
// the same scores and plan (the scores of an earlier run are reused when
// they were made from the same calibration set and units) and resumes
// distillation from the newest complete checkpoint, continuing exactly as an
// uninterrupted run would.
//
// plan.json: the knapsack's `removed` ids and predicted loss, with
// removed_params / achieved_ratio / overshoot recomputed from the units the
// removal takes out in effect (removing every block of an attention removes
// its norm and projections too, which the knapsack's unit sizes do not
// count), so they match the exported student's parameter count exactly.
//
// Errors: every failure is a status whose message starts with the phase
// (`SCORE: ...`, `DISTILL: ...`), keeping the code of the cause (each task
// loads the model and the data it needs, so their errors name the first
// phase needing them: SCORE).
#ifndef LPD_RUNTIME_PIPELINE_H_
#define LPD_RUNTIME_PIPELINE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/compress/evaluation.h"
#include "lpd/v1/job_spec.pb.h"
#include "runtime/job_tasks.h"
#include "runtime/select_phase.h"
#include "selection/knapsack.h"

namespace lpd::engine {

struct PipelineOptions {
  // "cpu", "cuda", "cuda:N"; empty: the spec's device ("auto": a GPU when
  // there is one, else the CPU).
  std::string device;
  // CPU threads for LibTorch (0: LibTorch's default).
  int threads = 0;
  // Receives one line per phase and the distillation progress (no trailing
  // newline). Null: lines go to stdout.
  std::function<void(const std::string&)> progress;
  // Distillation progress every this many steps (0: about 20 lines per run,
  // at most every 100 steps); the last step is always reported.
  int64_t log_every = 0;
  // Samples per calibration and per held-out batch.
  int64_t eval_batch_size = 8;
  // Timed forwards per model for the latency in report.json.
  int latency_runs = 3;
  // Runs DISTILL in place of RunDistillTask when set: lpd-worker's
  // data-parallel launcher for spec.distill.gpus > 1. Unset, DISTILL runs in
  // this process whatever spec.distill.gpus says (the result is the same,
  // to float rounding, on one device).
  std::function<absl::StatusOr<nlohmann::json>(const lpd::v1::CompressionJob&,
                                               const TaskContext&)>
      run_distill;
};

struct PipelineResult {
  std::string output_uri;  // where the artifacts went
  selection::Plan plan;
  // The checkpoint step distillation resumed from, if any.
  std::optional<int64_t> resumed_from;
  int64_t steps_run = 0;  // distillation steps taken by this run
  int64_t final_step = 0;
  EvaluationReport evaluation;  // overall.samples == 0: no eval samples
};

// Runs `job` (already validated and with defaults applied, as
// job::ParseJobSpecYaml gives it) to the end. The model and the data must
// be file:// folders for now (s3:// there is Unimplemented); the output may
// be file:// or s3:// (credentials from the AWS_* variables).
absl::StatusOr<PipelineResult> RunJob(const lpd::v1::CompressionJob& job,
                                      const PipelineOptions& options = {});

}  // namespace lpd::engine

#endif  // LPD_RUNTIME_PIPELINE_H_

// The phases of a compression job (DESIGN §3.2) as separately runnable
// tasks: a worker process runs one task and may die; a retry of the task (in
// this or another process) picks up what earlier attempts left. All state
// between tasks goes through the job's output (spec.output.uri, opened with
// storage::OpenStoreLocation):
//
//   SCORE shard I of N  units.json                 (every task, same bytes)
//                       scores/shard-I-of-N.json   (ScoresToJson of shard I)
//                       handcrafted.json           (handcrafted: N is 1, and
//                                                   no shard file is written)
//   SELECT              scores.json, plan.json     (runtime/select_phase.h,
//                                                   no LibTorch)
//   DISTILL             additivity.json (output_loss, when missing or made
//                       for another plan size), checkpoints/step-N/...,
//                       checkpoints/LATEST, distill.json
//   EVALUATE            report.json
//   EXPORT              final/
//
// Determinism is that of the local pipeline (runtime/pipeline.h): the split of
// the training set, the calibration batches, the training batches and the
// held-out batches are functions of spec.seed only, so a retried task
// computes what the failed attempt would have. A SCORE task reuses its shard
// file when it was made from the same calibration set, units, criterion,
// seed and model (for one shard, also a scores.json of an earlier run).
//
// The additivity check (additivity.json, needs the teacher) runs at the
// start of DISTILL, before training, when spec.prune.additivity_sets > 0,
// the criterion is output_loss and additivity.json is missing or was
// made for another plan set size or sets per size; its failure fails DISTILL.
//
// Errors: every failure is a status whose message starts with the phase
// (`SCORE: ...`, `DISTILL: ...`); LibTorch exceptions are caught (GuardTorch:
// out of memory is ResourceExhausted, naming what failed). Codes a retry of
// the same task cannot fix: InvalidArgument (a bad job, model, dataset, task
// argument or file), NotFound (the model or data folder or a file in it),
// FailedPrecondition (an earlier phase's output missing or made for another
// job: plan.json, scores, checkpoints), DataLoss (a checkpoint that fails
// its checks), Unimplemented (an s3:// model or data URI), Internal (a bug).
// Storage failures keep their codes (Unavailable, DeadlineExceeded,
// Aborted, ...: retry); ResourceExhausted may succeed on another worker. A
// stop requested through TaskContext::progress returns that status (e.g.
// Cancelled) with its code, the message prefixed with the phase.
#ifndef LPD_RUNTIME_JOB_TASKS_H_
#define LPD_RUNTIME_JOB_TASKS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/compress/evaluation.h"
#include "engine/train/data_parallel.h"
#include "lpd/v1/job_spec.pb.h"
#include "nlohmann/json.hpp"

namespace lpd::engine {

struct TaskContext {
  // "cpu", "cuda", "cuda:N"; empty: the spec's device ("auto": a GPU when
  // there is one, else the CPU).
  std::string device;
  // CPU threads for LibTorch (0: leave LibTorch's setting). Process-wide
  // (torch::set_num_threads).
  int threads = 0;
  // Called often (each scored unit and calibration batch, each distillation
  // step, each held-out batch prepared) with the task's fraction done in
  // [0, 1] and a progress line. A non-OK return (e.g. absl::CancelledError)
  // stops the task as soon as possible with that status; DISTILL first
  // writes a checkpoint at the current step, so no work is lost. May be
  // null.
  std::function<absl::Status(double fraction, const std::string& line)>
      progress;
  // Receives the task's log lines (phase start and end, distillation every
  // log_every steps), without trailing newline. Null: lines go to stdout.
  std::function<void(const std::string&)> log;
  // Distillation log lines every this many steps (0: about 20 per run, at
  // most every 100 steps); the last step is always logged.
  int64_t log_every = 0;
  // Samples per calibration and per held-out batch (>= 1).
  int64_t eval_batch_size = 8;
  // Timed forwards per model for the latency in report.json (>= 0).
  int latency_runs = 3;
  // DISTILL only: this process is one rank of a data-parallel group
  // (engine/train/data_parallel.h; worker/data_parallel_launcher.h starts one
  // process per rank). The device becomes the rank's own
  // (DataParallelDevice: cuda:<local rank> for "cuda"/auto; the CPU stays
  // the CPU); every rank reads the plan, the checkpoint and the data, rank 0
  // alone measures additivity, logs and writes (checkpoints,
  // additivity.json, distill.json). A stop asked of any rank stops all of
  // them at one step, with a checkpoint. Unset or one rank: single-process.
  std::optional<DataParallelOptions> data_parallel;
  // For metrics (may be null): after each distillation step (rank 0 only),
  // the step's wall time and its loss values ("total", "task", "output_kd",
  // "feature_kd"); once per SCORE task, the units it scored (0 when it
  // reused earlier scores).
  std::function<void(double seconds,
                     const std::vector<std::pair<std::string, double>>& losses)>
      on_distill_step;
  std::function<void(int64_t units)> on_units_scored;
};

// SCORE shard `shard_index` of `shard_count` (round robin over the job's
// scorable units, engine::ScoreShard): writes units.json and
// scores/shard-<index>-of-<count>.json under the output. For criterion
// handcrafted there is exactly one SCORE task (count must be 1) and it
// writes units.json and handcrafted.json (the rule's removal for the job's
// target). Returns {"units_scored", "units_total", "reused", "seconds",
// "object"} (handcrafted: {"rule", "removed_units", "seconds", "object"}).
// The model and the data must be file:// folders (s3:// is Unimplemented).
absl::StatusOr<nlohmann::json> RunScoreTask(const lpd::v1::CompressionJob& job,
                                            int shard_index, int shard_count,
                                            const TaskContext& ctx);

// DISTILL: reads plan.json, runs the additivity check (see above), builds the
// student, resumes from the newest complete checkpoint (checkpoints/LATEST)
// and trains to spec.distill.steps with a checkpoint every
// spec.distill.checkpoint_every steps and at the end. In one process unless
// ctx.data_parallel makes it one rank of several (spec.distill.gpus is for
// the launcher: the run equals the single-process one to float rounding).
// Writes and returns distill.json: {"resumed_from": N or null, "final_step": M,
// "steps_run": K}. steps 0: no training, no checkpoint ({"resumed_from": null,
// "final_step": 0, "steps_run": 0}).
absl::StatusOr<nlohmann::json> RunDistillTask(
    const lpd::v1::CompressionJob& job, const TaskContext& ctx);

// EVALUATE: the student of the newest checkpoint (the pruned teacher when
// spec.distill.steps is 0) against the teacher on the held-out split ->
// report.json (parameter counts only when eval_samples is 0). Its
// "distill.resumed_from" comes from distill.json. FailedPrecondition when
// plan.json is missing or the newest checkpoint is short of the job's steps.
// Returns {"samples", "relative_error", "teacher_parameters",
// "student_parameters", "object"}.
absl::StatusOr<nlohmann::json> RunEvaluateTask(
    const lpd::v1::CompressionJob& job, const TaskContext& ctx);
// The same, also giving the report (for the local pipeline).
absl::StatusOr<nlohmann::json> RunEvaluateTask(
    const lpd::v1::CompressionJob& job, const TaskContext& ctx,
    EvaluationReport* report);

// EXPORT: the student of the newest checkpoint (as EVALUATE) -> final/
// (ExportStudent: config.json, weights, lpd_pruning.json, manifest.json).
// Needs no data. Returns {"student_parameters", "object"}.
absl::StatusOr<nlohmann::json> RunExportTask(const lpd::v1::CompressionJob& job,
                                             const TaskContext& ctx);

// "42s", "3m07s", "2h05m"; "?" for a negative or absurd value (an ETA not
// known yet).
std::string FormatSeconds(double seconds);

}  // namespace lpd::engine

#endif  // LPD_RUNTIME_JOB_TASKS_H_

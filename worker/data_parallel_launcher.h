// Runs a job's DISTILL task data-parallel (spec.distill.gpus ranks, DESIGN
// §8): one child process per rank, all started by the process that holds the
// task (a service worker, or `lpd-worker run`), which supervises them and
// never itself waits in a collective. No LibTorch here.
//
// Each child runs `<executable> distill-rank` (worker/main.cc) with the job
// (a binary CompressionJob file), its rank, the world size, a file://
// rendezvous in a private work folder, its device (cuda:<rank> for a GPU
// job, else the CPU) and a result file. Children get their own process
// group (a terminal's Ctrl-C reaches only the supervisor) and SIGTERM when
// the supervisor dies (PR_SET_PDEATHSIG), so no rank outlives its task.
//
// Rank 0 reports on its standard output, one line each:
//   @progress <fraction> <text>   the task's progress
//   @log <text>                   a log line
//   @step <seconds> <name>=<value> ...  a distillation step (for metrics)
// and any other line of any rank is passed on as a log line "rank R: ...".
//
// Stopping. When the progress callback returns non-OK (a cancel, the
// worker's SIGTERM), every child gets SIGTERM; the ranks agree to stop at
// one step, write that step's checkpoint and exit, and the callback's status
// is returned. When a rank fails, the others get SIGTERM and, if they are
// stuck in a collective, SIGKILL after `failure_grace`; the first failing
// rank's status is returned ("rank R: ..."), or Aborted (retryable) when it
// died without writing one (a signal, e.g. the out-of-memory killer).
#ifndef LPD_WORKER_DATA_PARALLEL_LAUNCHER_H_
#define LPD_WORKER_DATA_PARALLEL_LAUNCHER_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lpd/v1/job_spec.pb.h"

namespace lpd::worker {

// The result file a rank writes: {"ok": true, "result": {...}} or
// {"ok": false, "code": <absl::StatusCode>, "message": "..."}.
std::string RankResultJson(const absl::StatusOr<std::string>& result);
// Reads it back: the result JSON text, or the rank's status.
absl::StatusOr<std::string> ParseRankResult(const std::string& text);

struct DataParallelLaunchOptions {
  // The lpd-worker binary (default: this process's, /proc/self/exe).
  std::string executable;
  // Ranks (>= 2).
  int world_size = 2;
  // The job's device as the worker was told: "cpu", "cuda", or ""/"auto"
  // (a GPU when the children see one). A device with an index (cuda:1) is
  // InvalidArgument: each rank takes cuda:<rank>.
  std::string device;
  // LibTorch CPU threads per rank (0: the children's default).
  int threads_per_rank = 0;
  // Extra flags for every child (e.g. --s3-endpoint), and "NAME=value"
  // variables set in their environment over this process's (secrets such as
  // AWS_SECRET_ACCESS_KEY go there, not on command lines).
  std::vector<std::string> extra_args;
  std::vector<std::string> extra_env;
  // After asking the ranks to stop: how long they may take to write their
  // checkpoint before SIGKILL.
  absl::Duration stop_grace = absl::Minutes(3);
  // After a rank failed: how long the others may take to exit.
  absl::Duration failure_grace = absl::Seconds(15);
  // As engine::TaskContext's: called with rank 0's progress (at least once
  // a second while the ranks run); non-OK stops them.
  std::function<absl::Status(double fraction, const std::string& line)>
      progress;
  // Log lines (no trailing newline). Null: stderr.
  std::function<void(const std::string&)> log;
  // Rank 0's distillation steps, as engine::TaskContext::on_distill_step.
  std::function<void(double seconds,
                     const std::vector<std::pair<std::string, double>>& losses)>
      on_distill_step;
};

// Runs DISTILL of `job` over options.world_size child processes and returns
// rank 0's result (the JSON text RunDistillTask returns), or the status
// described above.
absl::StatusOr<std::string> RunDataParallelDistill(
    const lpd::v1::CompressionJob& job,
    const DataParallelLaunchOptions& options);

}  // namespace lpd::worker

#endif  // LPD_WORKER_DATA_PARALLEL_LAUNCHER_H_

// The service side of lpd-worker (`lpd-worker serve`): register with the
// scheduler, lease tasks (long poll), run each with a TaskRunner while a
// heartbeat thread renews the lease and reports progress, then report the
// result (DESIGN §2, §3.2). Independent of LibTorch: the runner is injected
// (worker/main.cc passes the engine's job tasks; tests pass their own).
//
// Failures.
// - The scheduler unreachable (restarting, network): the running task goes
//   on; heartbeats, the result report and registration are retried with
//   backoff until the scheduler answers again.
// - Heartbeat answers CANCEL (the job was cancelled) or LEASE_LOST (the
//   lease ran out and the task went elsewhere): the runner's progress
//   callback returns Cancelled, so the task stops at its next progress
//   point; nothing is reported.
// - The runner fails: FailTask, retryable unless the code says a retry
//   cannot help (IsRetryableTaskError).
// - Stop requested (SIGTERM): no new lease; the running task is stopped the
//   same way (DISTILL writes a checkpoint first) and reported as a
//   retryable failure so that it is requeued at once.
#ifndef LPD_WORKER_WORKER_LOOP_H_
#define LPD_WORKER_WORKER_LOOP_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lpd/v1/worker_service.pb.h"

namespace lpd::worker {

// Receives the task's fraction done in [0, 1] and a progress line; a non-OK
// return (Cancelled) asks the runner to stop and return that status.
using TaskProgress =
    std::function<absl::Status(double fraction, const std::string& line)>;
// Runs one task to its end; returns the small JSON summary for CompleteTask.
using TaskRunner = std::function<absl::StatusOr<std::string>(
    const lpd::v1::Task& task, const TaskProgress& progress)>;

struct WorkerLoopOptions {
  std::string scheduler_address;  // host:port
  std::string name;               // for people (host name by default)
  std::string device;             // reported at registration
  // GPUs one task may use (a data-parallel DISTILL takes one per rank);
  // reported at registration so the scheduler hands this worker only the
  // DISTILL tasks it can run. < 0: not reported.
  int gpus = -1;
  absl::Duration lease_wait = absl::Seconds(10);  // long-poll length
  // Longest pause between retries of a call the scheduler did not answer.
  absl::Duration max_backoff = absl::Seconds(2);
  // Stop after this many tasks (0: never); for tests and batch use.
  int max_tasks = 0;
  // Receives log lines (null: stderr).
  std::function<void(const std::string&)> log;
};

// Errors a retry on another worker cannot fix: a bad spec or model, missing
// inputs, an unsupported feature.
bool IsRetryableTaskError(const absl::Status& status);

// Runs until `stop` becomes true (then returns OK after stopping the task
// in hand as described above) or max_tasks tasks ran. An error only for
// unusable options.
absl::Status RunWorkerLoop(const WorkerLoopOptions& options,
                           const TaskRunner& runner,
                           const std::atomic<bool>& stop);

}  // namespace lpd::worker

#endif  // LPD_WORKER_WORKER_LOOP_H_

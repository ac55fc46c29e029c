// The scheduler's durable job store (DESIGN §2, §3.2): one SQLite database,
// `<state_dir>/jobs.db`, in WAL mode with `synchronous=FULL`, so that every
// Write() is on disk before it returns.
//
// Tables (schema version kSchemaVersion, kept in `PRAGMA user_version` and
// created on first open):
//   jobs     one row per job: id, request_id (unique when set), the spec as a
//            serialized lpd.v1.CompressionJob, state, phase, progress, error,
//            output_uri, created/updated ms, last_event.
//   tasks    one row per task: task_id, job_id, phase, shard index/count,
//            state (queued/leased/done/failed/cancelled), attempt, lease_id,
//            worker_id, lease_expires_ms, progress, result_json, last_error.
//   events   the job's history: (job_id, sequence) primary key, unix_ms,
//            state, phase, progress, message.
//   workers  registered workers, so that a worker can re-register with its
//            id after a scheduler restart.
//
// The store is a plain durable copy: it knows nothing of the state machine
// (server/scheduler.h), which keeps everything in memory and writes each
// change here, as one transaction, before acknowledging it. All SQL is
// prepared with bound parameters; nothing is built from user strings.
//
// Errors: a store that cannot be opened or written gives UNAVAILABLE with
// the SQLite message and the database path; a newer schema than this build
// knows gives FAILED_PRECONDITION; a constraint violation (a bug in the
// caller, e.g. an event sequence written twice) gives INTERNAL.
//
// Thread safety: every method may be called from any thread. Writes are
// serialized on one connection; EventsAfter() reads on a second connection,
// so readers are not held up by a write's fsync (WAL).
#ifndef LPD_SERVER_JOB_STORE_H_
#define LPD_SERVER_JOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "base/folder_lock.h"
#include "lpd/v1/job_service.pb.h"

struct sqlite3;

namespace lpd::server {

// Where a task is in its life. Stored by name ("queued", ...).
enum class TaskState {
  kQueued,     // waiting for a worker
  kLeased,     // held by a worker until lease_expires_ms
  kDone,       // finished; result_json holds the worker's summary
  kFailed,     // failed for good (not retryable, or out of attempts)
  kCancelled,  // its job was cancelled or failed before it finished
};

// "queued", "leased", "done", "failed", "cancelled".
absl::string_view TaskStateName(TaskState state);

// One row of the tasks table.
struct TaskRecord {
  std::string task_id;  // "<job id>/<phase>[-<shard>]"
  std::string job_id;
  lpd::v1::Phase phase = lpd::v1::PHASE_UNSPECIFIED;
  int shard_index = 0;
  int shard_count = 1;
  TaskState state = TaskState::kQueued;
  int attempt = 0;        // leases handed out so far (the current one included)
  std::string lease_id;   // the current or last lease; empty before the first
  std::string worker_id;  // the worker of that lease
  int64_t lease_expires_ms = 0;
  double progress = 0;  // of this task, in [0, 1], from heartbeats
  std::string result_json;
  std::string last_error;
};

// One row of the workers table.
struct WorkerRecord {
  std::string worker_id;
  std::string name;
  std::string device;
  int64_t registered_ms = 0;
  // GPUs the worker said it can give a task (RegisterWorkerRequest.gpus);
  // -1: not said. Kept in memory only (not a column of the store): a
  // worker says it again when it registers after a scheduler restart.
  int gpus = -1;
};

// The rows one Write() stores, in one transaction: jobs and tasks are
// upserted by id (a job's spec, request_id and created time are written
// once, when it is first inserted), events are inserted (a (job_id,
// sequence) that exists already is an error), workers are upserted.
struct StoreWrite {
  std::vector<lpd::v1::Job> jobs;
  std::vector<TaskRecord> tasks;
  std::vector<lpd::v1::JobEvent> events;
  std::vector<WorkerRecord> workers;

  bool empty() const {
    return jobs.empty() && tasks.empty() && events.empty() && workers.empty();
  }
};

class JobStore {
 public:
  static constexpr int kSchemaVersion = 1;
  static constexpr absl::string_view kFileName = "jobs.db";

  // Opens (creating the folder, the database and its schema as needed)
  // `<state_dir>/jobs.db`, holding `<state_dir>/lock` (base/folder_lock.h)
  // for as long as the store is open, with `holder` in it (empty: this
  // process's pid and host). FAILED_PRECONDITION, naming the holder, when
  // another open store holds the folder: two schedulers on one state would
  // each serve and change the same jobs. UNAVAILABLE when the folder or
  // database cannot be created, opened or written.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      const std::string& state_dir, const std::string& holder = "");

  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;
  ~JobStore();

  // Stores `write` in one transaction, durably (fsync) before returning.
  // Nothing is stored when it fails. An empty write does nothing.
  absl::Status Write(const StoreWrite& write);

  // Every job, task and worker, for loading the scheduler's memory.
  absl::StatusOr<std::vector<lpd::v1::Job>> LoadJobs();
  absl::StatusOr<std::vector<TaskRecord>> LoadTasks();
  absl::StatusOr<std::vector<WorkerRecord>> LoadWorkers();

  // The events of `job_id` with sequence > after_sequence, oldest first (at
  // most `limit` of them when limit > 0). Empty for an unknown job.
  absl::StatusOr<std::vector<lpd::v1::JobEvent>> EventsAfter(
      absl::string_view job_id, int64_t after_sequence, int limit = 0);

  // A small durable write (a row in a `meta` table), to check that the
  // store can be written again after a failure.
  absl::Status Probe(int64_t now_ms);

  // `<state_dir>/jobs.db`.
  const std::string& path() const { return path_; }

 private:
  class Statement;
  JobStore(std::string path, FolderLock lock, sqlite3* db, sqlite3* reader);

  // UNAVAILABLE (INTERNAL for a constraint violation) naming the database,
  // what was being done and SQLite's message for `rc`.
  absl::Status Error(sqlite3* db, int rc, absl::string_view what) const;
  absl::Status Exec(sqlite3* db, const char* sql, absl::string_view what);
  absl::Status WriteLocked(const StoreWrite& write)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  const std::string path_;
  const FolderLock lock_;
  absl::Mutex write_mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(write_mu_);
  absl::Mutex read_mu_;
  sqlite3* reader_ ABSL_PT_GUARDED_BY(read_mu_);  // set once in Open()
};

}  // namespace lpd::server

#endif  // LPD_SERVER_JOB_STORE_H_

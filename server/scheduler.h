// The core of lpd-scheduler (DESIGN §2, §3.2), without gRPC: the job state
// machine and the task queue with leases, over the durable JobStore
// (server/job_store.h). The gRPC services (server/grpc_*.h) are thin
// adapters around this class.
//
// A job's life:
//   Submit       -> QUEUED, phase SCORE, `score_shards` SCORE tasks queued
//                   (1 for criterion handcrafted; at most kMaxScoreShards).
//   first lease  -> RUNNING (phase SCORE); shards go to any workers, in
//                   parallel.
//   all SCORE done -> phase SELECT: options.run_select runs on the
//                   scheduler's own SELECT thread (a SELECT that was running
//                   when the scheduler stopped runs again at Open: it is
//                   idempotent).
//   SELECT done  -> phase DISTILL (one task) -> EVALUATE (one task) ->
//                   EXPORT (one task) -> SUCCEEDED, progress 1.
//   Cancel       -> CANCELLED from QUEUED or RUNNING; queued tasks are
//                   cancelled, leased ones learn it at their next heartbeat
//                   (ACTION_CANCEL).
//   a task failing for good -> FAILED with its error; the job's other tasks
//                   are cancelled (their workers get ACTION_CANCEL). A task
//                   fails for good on Fail(retryable=false), or when its
//                   lease ran out / it failed retryably for the
//                   max_attempts-th time.
// A failure or cancel of one job never touches another job.
//
// Job.progress weighs the phases (job::kPhases: SCORE 0.10, SELECT 0.02,
// DISTILL 0.75, EVALUATE 0.08, EXPORT 0.05) and, within the current phase,
// uses the tasks' heartbeat progress (SCORE: the mean over its shards).
//
// Events (JobEvent, sequence 1, 2, ... per job): "submitted"; every task
// lease ("SCORE shard 2/4 leased to worker w-… (attempt 1)", with the
// QUEUED -> RUNNING change), task completion (with the worker's result_json:
// "DISTILL done on worker w-…: {...}"), phase change, requeue ("lease
// expired on worker w-…, attempt 1 of 3; requeued"), failure, cancel,
// success; and, batched, "progress" events.
//
// Durability. Everything except heartbeat progress is written to the store
// (one SQLite transaction, fsync'd) before the call that caused it returns,
// and before anything else can see it: submissions, worker registrations,
// every job state/phase change, every task lease / completion / failure /
// requeue / cancel, and their events. When the write fails the call fails
// with UNAVAILABLE and nothing changes (memory follows the store, not the
// other way round). Batched: heartbeats only renew leases and record
// progress in memory (no disk write, no fsync); every
// progress_flush_interval the background thread writes, for each job whose
// progress changed, its progress, its tasks' progress and at most one
// "progress" event. Lease deadlines are written with each task change but
// not on renewal.
//
// Restart. Open() loads every job, task and worker from the store. Tasks
// that were leased keep their lease (same lease_id and worker) with a fresh
// deadline of now + max(lease_duration, restart_grace), so live workers,
// which reconnect with backoff, keep heartbeating and can complete them;
// workers re-register with their old worker_id. Done tasks never run again;
// queued tasks are queued again; jobs that were in SELECT run SELECT again. At
// most progress_flush_interval of heartbeat progress is lost.
//
// Threads. Every public method may be called from any number of threads
// (gRPC handlers). Reads (Get, List, Heartbeat) are served from memory and
// never wait for a disk write; writes are serialized and each holds the
// in-memory lock only briefly, never across an fsync. Callbacks (LeaseAsync
// `done`, Subscribe `notify`) are always called without the scheduler's
// locks held, so they may call back into the scheduler (except that a
// `notify` must not Unsubscribe itself). The scheduler runs two threads of
// its own: a timer thread (lease expiries, long-poll deadlines, progress
// flushes, handing queued tasks to waiting workers; see Tick()) and a
// SELECT thread.
#ifndef LPD_SERVER_SCHEDULER_H_
#define LPD_SERVER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "job/names.h"
#include "lpd/v1/job_service.pb.h"
#include "lpd/v1/worker_service.pb.h"
#include "server/job_store.h"

namespace lpd::server {

// Most SCORE shards per job.
inline constexpr int kMaxScoreShards = 64;
// Longest LeaseAsync wait (LeaseTaskRequest.wait_ms is 0..60000).
inline constexpr absl::Duration kMaxLeaseWait = absl::Seconds(60);
// ListJobsRequest.page_size: 0 gives the default, larger values the maximum.
inline constexpr int kDefaultPageSize = 100;
inline constexpr int kMaxPageSize = 1000;
// Longest SubmitJobRequest.request_id.
inline constexpr int kMaxRequestIdLength = 128;

// The phases' names and progress weights are the job's (job/names.h).
using job::PhaseName;
using job::PhaseWeight;

struct SchedulerOptions {
  // Folder of the job store (`<state_dir>/jobs.db`); created if missing.
  // One scheduler at a time: Open fails (FAILED_PRECONDITION, naming the
  // holder) while another holds it (server/job_store.h).
  std::string state_dir;
  // Who holds state_dir, as its lock file and a refused second scheduler
  // say (e.g. "lpd-scheduler --listen 127.0.0.1:50051").
  std::string holder;
  // A lease runs out this long after it was handed out or last renewed.
  absl::Duration lease_duration = absl::Seconds(30);
  // After a restart, leases run out no sooner than this: workers need time
  // to reconnect (their gRPC channels back off while the scheduler is down).
  absl::Duration restart_grace = absl::Seconds(30);
  // Told to workers (RegisterWorkerResponse): how often to heartbeat.
  absl::Duration heartbeat_interval = absl::Seconds(2);
  // Leases per task (and runs per SELECT on UNAVAILABLE); after the last
  // one fails or runs out, the job FAILS with the last error. >= 1.
  int max_attempts = 3;
  // SCORE tasks per job, clamped to [1, kMaxScoreShards]; 1 for criterion
  // handcrafted (nothing to score).
  int score_shards = 4;
  // A worker not heard from (no call, no long poll waiting) for this long
  // counts as lost in the metrics; after worker_forget_after it is no
  // longer counted at all. Zero: 2 x lease_duration, and 10 minutes.
  absl::Duration worker_lost_after = absl::ZeroDuration();
  absl::Duration worker_forget_after = absl::ZeroDuration();
  // How often heartbeat progress is written to the store (see above).
  absl::Duration progress_flush_interval = absl::Seconds(2);
  // How often the timer thread wakes up on its own (real time) to expire
  // leases and long polls and flush progress. Also woken whenever a task is
  // queued.
  absl::Duration tick_interval = absl::Milliseconds(20);
  // The time, for every timestamp, lease deadline and long-poll deadline.
  // Tests inject a fake clock and call Tick(). Default: absl::Now.
  std::function<absl::Time()> clock;
  // Required: runs SELECT for `job` (whose SCORE tasks, `score_shards` of
  // them, are done) and returns a short summary for the job's events (e.g.
  // the plan's figures). Called on the scheduler's SELECT thread, never on a
  // caller's thread, without locks held. Non-OK fails the job with that
  // error, except UNAVAILABLE, which runs SELECT again (up to
  // max_attempts runs in all).
  std::function<absl::StatusOr<std::string>(const lpd::v1::Job& job,
                                            int score_shards)>
      run_select;
};

class Scheduler {
 public:
  // Opens the store in options.state_dir, loads every job, task and worker
  // (see "Restart" above) and starts the scheduler's threads.
  // INVALID_ARGUMENT for bad options; UNAVAILABLE when the store cannot be
  // opened or written.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Open(
      SchedulerOptions options);

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;
  // Shutdown().
  ~Scheduler();

  // ---- JobService ----

  // Validates `spec` (job::ValidateJobSpec: INVALID_ARGUMENT with the
  // field path), applies its defaults and stores the job, its "submitted"
  // event and its SCORE tasks durably before returning the job (QUEUED,
  // phase SCORE, output_uri = spec.output.uri).
  // request_id (optional, at most 128 characters): a request_id seen before
  // with the same spec (after defaults) returns that job, whatever its state
  // now; with a different spec, ALREADY_EXISTS. FAILED_PRECONDITION when a
  // QUEUED or RUNNING job writes to the same spec.output.uri (trailing '/'
  // ignored). UNAVAILABLE when the store cannot be written.
  absl::StatusOr<lpd::v1::Job> Submit(const lpd::v1::CompressionJob& spec,
                                      const std::string& request_id);
  // NOT_FOUND for an unknown id. From memory.
  absl::StatusOr<lpd::v1::Job> Get(const std::string& job_id);
  // Newest first (by creation time, then id), only request.state unless it
  // is UNSPECIFIED; request.page_size jobs (0: kDefaultPageSize; more than
  // kMaxPageSize: kMaxPageSize). next_page_token is opaque (the keyset of
  // the last job returned), empty on the last page. INVALID_ARGUMENT for a
  // negative page size, an unknown state or a page_token that is not one of
  // ours. From memory.
  absl::StatusOr<lpd::v1::ListJobsResponse> List(
      const lpd::v1::ListJobsRequest& request);
  // QUEUED/RUNNING -> CANCELLED (durably, with its event), returning the
  // job. NOT_FOUND for an unknown id, FAILED_PRECONDITION for a job that
  // has already ended.
  absl::StatusOr<lpd::v1::Job> Cancel(const std::string& job_id);
  // The job's events with sequence > after_sequence, oldest first (all for
  // 0). Only events already in the store. NOT_FOUND for an unknown id.
  absl::StatusOr<std::vector<lpd::v1::JobEvent>> EventsAfter(
      const std::string& job_id, int64_t after_sequence);
  // WatchJob support: `notify` is called each time `job_id` gets new events
  // (they are in the store by then: call EventsAfter), from whichever
  // thread appended them; it must not block, and must not call Unsubscribe.
  // Returns an id for Unsubscribe. The job need not exist.
  int64_t Subscribe(const std::string& job_id, std::function<void()> notify);
  // After this returns, the subscription's `notify` is not running and
  // will not be called again. Unknown ids are ignored.
  void Unsubscribe(int64_t subscription);

  // ---- WorkerService ----

  // Registers a worker (durably). A request carrying a worker_id the
  // scheduler knows (registered before, also before a restart) keeps it;
  // otherwise a new "w-<16 hex>" id is assigned.
  // What the metrics endpoint shows (server/scheduler_metrics.h).
  struct Stats {
    std::map<lpd::v1::JobState, int64_t> jobs;  // every state, 0 included
    // Progress of each QUEUED or RUNNING job.
    std::vector<std::pair<std::string, double>> active_progress;
    int64_t workers_busy = 0;  // registered, holding a live lease
    int64_t workers_idle = 0;  // registered, holding none, heard from lately
    // Holding none, silent for worker_lost_after (but not yet for
    // worker_forget_after, after which a worker is not counted at all).
    int64_t workers_lost = 0;
    // Since this process started.
    int64_t jobs_submitted = 0;
    int64_t tasks_requeued_lease_expired = 0;
    int64_t tasks_requeued_failed = 0;
  };
  Stats GetStats() const;

  absl::StatusOr<lpd::v1::RegisterWorkerResponse> RegisterWorker(
      const lpd::v1::RegisterWorkerRequest& request);
  // A long poll that does not block the caller. `done` is called exactly
  // once (unless CancelLease() returns true first):
  //  * with a task, as soon as one is queued for this worker: synchronously
  //    inside LeaseAsync when one is ready now, else later from the timer
  //    thread. The lease is in the store before `done` is called.
  //  * with an empty response (no task) once `wait` (capped at
  //    kMaxLeaseWait) has passed on the scheduler's clock, from the timer
  //    thread; synchronously when `wait` <= 0 and nothing is ready, or after
  //    Shutdown().
  //  * with an error: INVALID_ARGUMENT for an empty worker_id, NOT_FOUND for
  //    one that never registered, UNAVAILABLE when the lease cannot be
  //    stored (synchronously, or from the timer thread).
  // Waiters are served first come, first served; tasks oldest job first.
  // Note: when a task is ready now, the lease is stored (one fsync) on the
  // calling thread before `done` runs.
  // Returns an id for CancelLease.
  int64_t LeaseAsync(
      const std::string& worker_id, absl::Duration wait,
      std::function<void(absl::StatusOr<lpd::v1::LeaseTaskResponse>)> done);
  // Drops a waiter (its RPC was cancelled). True: it was still waiting, and
  // its `done` will never be called. False: `done` has been called or is
  // being called (a task it got runs out its lease and is requeued).
  bool CancelLease(int64_t waiter);
  // Renews the lease (deadline now + lease_duration) and records the task's
  // progress and message (in memory; written in batches). ACTION_CANCEL when
  // the task's job was cancelled or has failed; ACTION_LEASE_LOST when the
  // lease is unknown, superseded, ran out, belongs to another worker, or the
  // task has finished. Never writes to disk. INVALID_ARGUMENT for an empty
  // lease_id.
  absl::StatusOr<lpd::v1::HeartbeatResponse> Heartbeat(
      const lpd::v1::HeartbeatRequest& request);
  // Marks the leased task done (storing result_json and an event quoting
  // it) and moves the job on (next phase, SELECT, or SUCCEEDED), durably.
  // FAILED_PRECONDITION (and nothing changes) when the lease is not the
  // task's current, live lease of this worker, or the job has ended.
  absl::Status Complete(const lpd::v1::CompleteTaskRequest& request);
  // The leased task failed: retryable -> requeued (a new attempt) until
  // max_attempts, then the job FAILS with this error; not retryable -> the
  // job FAILS at once with it; handed_back (a worker shutting down) ->
  // requeued without counting the attempt. Durable. FAILED_PRECONDITION for a
  // stale lease, as Complete.
  absl::Status Fail(const lpd::v1::FailTaskRequest& request);

  // False while the store cannot be written (the last write failed and no
  // write or probe has succeeded since).
  bool Healthy() const;

  // One pass of the timer thread's work, on the calling thread, at
  // options.clock(): requeues (or fails) tasks whose lease ran out, answers
  // long polls whose wait has passed, flushes batched progress when due,
  // hands queued tasks to waiting workers, probes an unhealthy store. The
  // timer thread calls it every tick_interval; tests with a fake clock call
  // it after moving the clock. Safe to call concurrently with anything.
  void Tick();

  // Stops the threads, flushes batched progress and answers pending long
  // polls with no task. Later LeaseAsync calls answer at once with no task;
  // other methods keep working. Idempotent.
  void Shutdown();

 private:
  struct JobEntry;
  struct Waiter;
  struct Subscription;
  class Change;
  using Job = lpd::v1::Job;
  // Queue order of ready tasks: oldest job first, then phase, then shard.
  using ReadyKey = std::tuple<int64_t, std::string, int, int>;

  explicit Scheduler(SchedulerOptions options, std::unique_ptr<JobStore> store);

  absl::Status Load();
  int64_t NowMs() const;
  void TimerLoop();
  void SelectLoop();
  void Wake();
  // Records that `worker_id` called (for the lost/idle split of Stats).
  void Seen(const std::string& worker_id);

  // Builds a change with `build` (write_mu_ held, mu_ read-held), stores it
  // and applies it, then (no locks held) notifies subscribers. Returns
  // build's error, or the store's.
  absl::Status Mutate(const std::function<absl::Status(Change&)>& build);
  // Working copies within a change, copied from memory on first use
  // (mu_ read-held).
  Job& MutableJob(Change& change, const std::string& job_id)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  TaskRecord& MutableTask(Change& change, const std::string& task_id)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The job's tasks as the change leaves them.
  std::vector<const TaskRecord*> TasksIn(const Change& change,
                                         const std::string& job_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Appends an event with the job's state, phase and (recomputed) progress.
  void AddEvent(Change& change, Job& job, int64_t now_ms, std::string message)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Writes `change` to the store, then applies it to memory and notifies
  // subscribers. On a failed write nothing changes in memory.
  absl::Status Commit(Change& change) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void Apply(const Change& change) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void RecordStoreResult(const absl::Status& status);
  void Notify(const std::vector<std::string>& job_ids);

  // Memory helpers; need mu_ (read).
  double ComputeProgress(const lpd::v1::Job& job,
                         const std::vector<const TaskRecord*>& tasks) const;
  std::vector<const TaskRecord*> TasksOf(const std::string& job_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  ReadyKey ReadyKeyOf(const TaskRecord& task) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Whether `worker_id` can run `task`: a DISTILL with spec.distill.gpus
  // N > 1 on the GPU needs a worker that said it has at least N GPUs (or,
  // for device auto, none: its ranks then run on the CPU); anything else
  // fits any worker, as does any task a worker that said nothing.
  bool Fits(const TaskRecord& task, const std::string& worker_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The first ready task (queue order) that `worker_id` fits and that is not
  // in `taken`; null when none.
  const std::string* FirstReadyFor(
      const std::string& worker_id,
      const absl::flat_hash_set<std::string>& taken) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Change builders (write_mu_ held, mu_ read-held).
  void AddLease(Change& change, const std::string& task_id,
                const std::string& worker_id, int64_t now_ms,
                lpd::v1::LeaseTaskResponse* response)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void AddRequeueOrFail(Change& change, const std::string& task_id,
                        const std::string& error, bool retryable,
                        int64_t now_ms) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void AddJobFailure(Change& change, const std::string& job_id,
                     const std::string& error, int64_t now_ms)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void AddNextPhase(Change& change, const std::string& job_id,
                    lpd::v1::Phase phase, int64_t now_ms)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Finds the task of a live lease for Complete/Fail.
  absl::StatusOr<const TaskRecord*> LiveLease(absl::string_view worker_id,
                                              absl::string_view lease_id,
                                              int64_t now_ms) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Timer work.
  void ExpireLeases();
  void ExpireWaiters();
  void FlushProgress(bool force);
  void Dispatch();

  const SchedulerOptions options_;
  const std::unique_ptr<JobStore> store_;
  std::atomic<bool> healthy_{true};
  absl::BitGen gen_ ABSL_GUARDED_BY(write_mu_);
  // SELECT runs so far per job (since Open).
  absl::flat_hash_map<std::string, int> select_attempts_
      ABSL_GUARDED_BY(write_mu_);

  // Serializes every durable change: compute (under mu_ read), write to the
  // store (no mu_), apply (under mu_ write). Order: write_mu_, mu_,
  // wait_mu_; sub_mu_ and bg_mu_ are leaves.
  absl::Mutex write_mu_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<JobEntry>> jobs_
      ABSL_GUARDED_BY(mu_);
  // (created_ms, id) of every job; List walks it backwards.
  std::set<std::pair<int64_t, std::string>> by_created_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> by_request_id_
      ABSL_GUARDED_BY(mu_);
  // Normalized output uri -> id of the QUEUED/RUNNING job writing there.
  absl::flat_hash_map<std::string, std::string> active_outputs_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, TaskRecord> tasks_ ABSL_GUARDED_BY(mu_);
  std::map<ReadyKey, std::string> ready_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> leased_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, WorkerRecord> workers_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> jobs_submitted_{0};
  std::atomic<int64_t> requeued_lease_expired_{0};
  std::atomic<int64_t> requeued_failed_{0};
  // Jobs whose progress changed since the last flush.
  absl::flat_hash_set<std::string> progress_dirty_ ABSL_GUARDED_BY(mu_);
  int64_t next_flush_ms_ ABSL_GUARDED_BY(write_mu_) = 0;
  // The newest job's created_unix_ms.
  int64_t last_created_ms_ ABSL_GUARDED_BY(write_mu_) = 0;

  // When each worker last called (since Open; loaded workers: at Open).
  mutable absl::Mutex seen_mu_;  // a leaf
  absl::flat_hash_map<std::string, int64_t> last_seen_ms_
      ABSL_GUARDED_BY(seen_mu_);

  mutable absl::Mutex wait_mu_;
  std::map<int64_t, Waiter> waiters_ ABSL_GUARDED_BY(wait_mu_);
  bool waiters_closed_ ABSL_GUARDED_BY(wait_mu_) = false;  // Shutdown()
  std::atomic<int64_t> next_id_{1};

  absl::Mutex sub_mu_;
  std::multimap<std::string, std::shared_ptr<Subscription>> subscribers_
      ABSL_GUARDED_BY(sub_mu_);
  absl::flat_hash_map<int64_t, std::shared_ptr<Subscription>> subscriptions_
      ABSL_GUARDED_BY(sub_mu_);

  // Background threads.
  absl::Mutex bg_mu_;
  bool stop_ ABSL_GUARDED_BY(bg_mu_) = false;
  bool wake_ ABSL_GUARDED_BY(bg_mu_) = false;
  std::deque<std::string> select_queue_ ABSL_GUARDED_BY(bg_mu_);
  std::atomic<bool> shut_down_{false};
  std::thread timer_thread_;
  std::thread select_thread_;
};

}  // namespace lpd::server

#endif  // LPD_SERVER_SCHEDULER_H_

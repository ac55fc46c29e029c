#include "server/scheduler.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "base/random_token.h"
#include "base/status_macros.h"
#include "google/protobuf/util/message_differencer.h"
#include "job/spec.h"

namespace lpd::server {

using ::lpd::v1::Job;
using ::lpd::v1::JobEvent;
using ::lpd::v1::JobState;
using ::lpd::v1::Phase;

namespace {

bool IsActive(JobState state) {
  return state == lpd::v1::JOB_STATE_QUEUED ||
         state == lpd::v1::JOB_STATE_RUNNING;
}

// spec.output.uri without trailing '/', so "a/" and "a" are the same folder.
std::string NormalizeUri(absl::string_view uri) {
  while (uri.size() > 1 && uri.back() == '/') uri.remove_suffix(1);
  return std::string(uri);
}

// "SCORE shard 2/4" (1-based for people) or "DISTILL".
std::string TaskLabel(const TaskRecord& task) {
  if (task.phase == lpd::v1::PHASE_SCORE) {
    return absl::StrCat("SCORE shard ", task.shard_index + 1, "/",
                        task.shard_count);
  }
  return std::string(PhaseName(task.phase));
}

std::string Hex16(absl::BitGen& gen) {
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
}

}  // namespace

struct Scheduler::JobEntry {
  Job job;
  std::vector<std::string> task_ids;
  std::string progress_message;  // the latest heartbeat message
};

struct Scheduler::Waiter {
  std::string worker_id;
  absl::Time deadline;
  std::function<void(absl::StatusOr<lpd::v1::LeaseTaskResponse>)> done;
};

struct Scheduler::Subscription {
  std::string job_id;
  absl::Mutex mu;
  bool active ABSL_GUARDED_BY(mu) = true;
  std::function<void()> notify;
};

// A durable change being built: working copies of the jobs and tasks it
// touches, the events it appends, workers it registers, and what to do once
// it is stored.
class Scheduler::Change {
 public:
  std::map<std::string, Job> jobs;
  std::map<std::string, TaskRecord> tasks;
  std::vector<std::string> new_tasks;
  std::vector<JobEvent> events;
  std::vector<WorkerRecord> workers;
  std::vector<std::string> selects;  // jobs whose SELECT is to run
  std::vector<std::string> flushed;  // jobs whose progress was flushed

  bool empty() const {
    return jobs.empty() && tasks.empty() && events.empty() && workers.empty() &&
           flushed.empty();
  }
  StoreWrite ToWrite() const {
    StoreWrite write;
    for (const auto& [id, job] : jobs) write.jobs.push_back(job);
    for (const auto& [id, task] : tasks) write.tasks.push_back(task);
    write.events = events;
    write.workers = workers;
    return write;
  }
  std::vector<std::string> EventJobs() const {
    std::vector<std::string> ids;
    for (const JobEvent& e : events) {
      if (ids.empty() || ids.back() != e.job_id()) ids.push_back(e.job_id());
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    return ids;
  }
};

// ---------------------------------------------------------------------------
// Opening and loading.

Scheduler::Scheduler(SchedulerOptions options, std::unique_ptr<JobStore> store)
    : options_(std::move(options)), store_(std::move(store)) {}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Open(
    SchedulerOptions options) {
  if (options.state_dir.empty()) {
    return absl::InvalidArgumentError("scheduler: state_dir is empty");
  }
  if (options.lease_duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("scheduler: lease_duration must be > 0");
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("scheduler: max_attempts must be >= 1");
  }
  if (!options.run_select) {
    return absl::InvalidArgumentError("scheduler: run_select is not set");
  }
  if (options.tick_interval <= absl::ZeroDuration()) {
    options.tick_interval = absl::Milliseconds(20);
  }
  if (!options.clock) options.clock = [] { return absl::Now(); };
  options.score_shards = std::clamp(options.score_shards, 1, kMaxScoreShards);

  ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store,
                   JobStore::Open(options.state_dir, options.holder));
  std::unique_ptr<Scheduler> scheduler(
      new Scheduler(std::move(options), std::move(store)));
  RETURN_IF_ERROR(scheduler->Load());
  scheduler->timer_thread_ =
      std::thread([s = scheduler.get()] { s->TimerLoop(); });
  scheduler->select_thread_ =
      std::thread([s = scheduler.get()] { s->SelectLoop(); });
  return scheduler;
}

absl::Status Scheduler::Load() {
  ASSIGN_OR_RETURN(std::vector<Job> jobs, store_->LoadJobs());
  ASSIGN_OR_RETURN(std::vector<TaskRecord> tasks, store_->LoadTasks());
  ASSIGN_OR_RETURN(std::vector<WorkerRecord> workers, store_->LoadWorkers());
  const int64_t now = NowMs();
  const int64_t lease_ms = absl::ToInt64Milliseconds(
      std::max(options_.lease_duration, options_.restart_grace));

  absl::MutexLock write_lock(&write_mu_);
  absl::MutexLock lock(&mu_);
  next_flush_ms_ =
      now + absl::ToInt64Milliseconds(options_.progress_flush_interval);
  for (WorkerRecord& worker : workers) {
    std::string id = worker.worker_id;
    {
      absl::MutexLock seen_lock(&seen_mu_);
      last_seen_ms_[id] = now;  // live workers call again within a lease
    }
    workers_[id] = std::move(worker);
  }
  for (Job& job : jobs) {
    auto entry = std::make_unique<JobEntry>();
    const std::string id = job.id();
    by_created_.emplace(job.created_unix_ms(), id);
    last_created_ms_ = std::max(last_created_ms_, job.created_unix_ms());
    if (!job.request_id().empty()) by_request_id_[job.request_id()] = id;
    if (IsActive(job.state())) {
      active_outputs_[NormalizeUri(job.spec().spec().output().uri())] = id;
    }
    entry->job = std::move(job);
    jobs_[id] = std::move(entry);
  }
  for (TaskRecord& task : tasks) {
    auto job = jobs_.find(task.job_id);
    if (job == jobs_.end()) continue;  // cannot happen: written together
    job->second->task_ids.push_back(task.task_id);
    if (IsActive(job->second->job.state())) {
      if (task.state == TaskState::kLeased) {
        // Live workers keep their lease: a fresh deadline to reconnect.
        task.lease_expires_ms = now + lease_ms;
        leased_.insert(task.task_id);
      } else if (task.state == TaskState::kQueued) {
        ready_[ReadyKeyOf(task)] = task.task_id;
      }
    }
    std::string id = task.task_id;
    tasks_[id] = std::move(task);
  }
  absl::MutexLock bg(&bg_mu_);
  for (auto& [id, entry] : jobs_) {
    Job& job = entry->job;
    if (!IsActive(job.state())) continue;
    job.set_progress(ComputeProgress(job, TasksOf(id)));
    if (job.state() == lpd::v1::JOB_STATE_RUNNING &&
        job.phase() == lpd::v1::PHASE_SELECT) {
      select_queue_.push_back(id);
    }
  }
  return absl::OkStatus();
}

Scheduler::~Scheduler() { Shutdown(); }

int64_t Scheduler::NowMs() const {
  return absl::ToUnixMillis(options_.clock());
}

void Scheduler::Seen(const std::string& worker_id) {
  const int64_t now = NowMs();
  absl::MutexLock lock(&seen_mu_);
  last_seen_ms_[worker_id] = now;
}

bool Scheduler::Healthy() const { return healthy_.load(); }

// ---------------------------------------------------------------------------
// Memory helpers.

std::vector<const TaskRecord*> Scheduler::TasksOf(
    const std::string& job_id) const {
  std::vector<const TaskRecord*> tasks;
  auto job = jobs_.find(job_id);
  if (job == jobs_.end()) return tasks;
  for (const std::string& id : job->second->task_ids) {
    auto task = tasks_.find(id);
    if (task != tasks_.end()) tasks.push_back(&task->second);
  }
  return tasks;
}

Scheduler::ReadyKey Scheduler::ReadyKeyOf(const TaskRecord& task) const {
  int64_t created = 0;
  auto job = jobs_.find(task.job_id);
  if (job != jobs_.end()) created = job->second->job.created_unix_ms();
  return ReadyKey(created, task.job_id, static_cast<int>(task.phase),
                  task.shard_index);
}

double Scheduler::ComputeProgress(
    const Job& job, const std::vector<const TaskRecord*>& tasks) const {
  if (job.state() == lpd::v1::JOB_STATE_SUCCEEDED) return 1.0;
  if (!IsActive(job.state())) return job.progress();
  double progress = 0;
  if (job::FindPhase(job.phase()) != nullptr) {
    for (const job::PhaseInfo& phase : job::kPhases) {
      if (phase.phase == job.phase()) break;
      progress += phase.progress_weight;  // the phases before it, in full
    }
  }
  double sum = 0;
  int count = 0;
  for (const TaskRecord* task : tasks) {
    if (task->phase != job.phase()) continue;
    ++count;
    if (task->state == TaskState::kDone) {
      sum += 1;
    } else if (task->state == TaskState::kLeased) {
      sum += std::clamp(task->progress, 0.0, 1.0);
    }
  }
  if (count > 0) progress += PhaseWeight(job.phase()) * sum / count;
  return std::clamp(progress, 0.0, 1.0);
}

// ---------------------------------------------------------------------------
// Changes: build under write_mu_ + mu_ (read), store, then apply.

absl::Status Scheduler::Commit(Change& change) {
  if (change.empty()) return absl::OkStatus();
  const StoreWrite write = change.ToWrite();
  absl::Status status = store_->Write(write);
  if (!write.empty()) RecordStoreResult(status);
  if (!status.ok()) return status;
  Apply(change);
  return absl::OkStatus();
}

void Scheduler::RecordStoreResult(const absl::Status& status) {
  if (status.ok()) {
    healthy_ = true;
  } else if (absl::IsUnavailable(status)) {
    healthy_ = false;
  }
}

void Scheduler::Apply(const Change& change) {
  bool queued = false;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : change.jobs) {
      auto& entry = jobs_[id];
      if (entry == nullptr) {
        entry = std::make_unique<JobEntry>();
        by_created_.emplace(job.created_unix_ms(), id);
        if (!job.request_id().empty()) by_request_id_[job.request_id()] = id;
      }
      entry->job = job;
      const std::string uri = NormalizeUri(job.spec().spec().output().uri());
      if (IsActive(job.state())) {
        active_outputs_[uri] = id;
      } else if (auto it = active_outputs_.find(uri);
                 it != active_outputs_.end() && it->second == id) {
        active_outputs_.erase(it);
      }
    }
    for (const auto& [id, task] : change.tasks) {
      TaskRecord updated = task;
      auto it = tasks_.find(id);
      if (it != tasks_.end()) {
        const TaskRecord& old = it->second;
        if (old.state == TaskState::kQueued) ready_.erase(ReadyKeyOf(old));
        if (old.state == TaskState::kLeased) leased_.erase(id);
        if (old.state == TaskState::kLeased &&
            updated.state == TaskState::kLeased &&
            old.lease_id == updated.lease_id) {
          // Heartbeats may have renewed the lease and moved the progress on
          // since the change was built: memory has the newer values.
          updated.lease_expires_ms =
              std::max(old.lease_expires_ms, updated.lease_expires_ms);
          updated.progress = old.progress;
        }
      } else {
        jobs_[task.job_id]->task_ids.push_back(id);
      }
      const bool active = IsActive(jobs_[task.job_id]->job.state());
      if (active && updated.state == TaskState::kQueued) {
        ready_[ReadyKeyOf(updated)] = id;
        queued = true;
      }
      if (active && updated.state == TaskState::kLeased) leased_.insert(id);
      tasks_[id] = std::move(updated);
    }
    for (const WorkerRecord& worker : change.workers) {
      workers_[worker.worker_id] = worker;
    }
    for (const std::string& id : change.flushed) progress_dirty_.erase(id);
    for (const auto& [id, job] : change.jobs) {
      JobEntry& entry = *jobs_[id];
      entry.job.set_progress(ComputeProgress(entry.job, TasksOf(id)));
    }
  }
  if (!change.selects.empty()) {
    absl::MutexLock lock(&bg_mu_);
    for (const std::string& id : change.selects) select_queue_.push_back(id);
  }
  if (queued) Wake();
}

absl::Status Scheduler::Mutate(
    const std::function<absl::Status(Change&)>& build) {
  std::vector<std::string> notify;
  {
    absl::MutexLock write_lock(&write_mu_);
    Change change;
    {
      absl::ReaderMutexLock lock(&mu_);
      RETURN_IF_ERROR(build(change));
    }
    RETURN_IF_ERROR(Commit(change));
    notify = change.EventJobs();
  }
  Notify(notify);
  return absl::OkStatus();
}

Job& Scheduler::MutableJob(Change& change, const std::string& job_id) {
  auto it = change.jobs.find(job_id);
  if (it != change.jobs.end()) return it->second;
  return change.jobs[job_id] = jobs_.at(job_id)->job;
}

TaskRecord& Scheduler::MutableTask(Change& change, const std::string& task_id) {
  auto it = change.tasks.find(task_id);
  if (it != change.tasks.end()) return it->second;
  return change.tasks[task_id] = tasks_.at(task_id);
}

std::vector<const TaskRecord*> Scheduler::TasksIn(
    const Change& change, const std::string& job_id) const {
  std::vector<const TaskRecord*> tasks;
  for (const TaskRecord* task : TasksOf(job_id)) {
    auto copy = change.tasks.find(task->task_id);
    tasks.push_back(copy != change.tasks.end() ? &copy->second : task);
  }
  for (const std::string& id : change.new_tasks) {
    const TaskRecord& task = change.tasks.at(id);
    if (task.job_id == job_id) tasks.push_back(&task);
  }
  return tasks;
}

void Scheduler::AddEvent(Change& change, Job& job, int64_t now_ms,
                         std::string message) {
  job.set_progress(ComputeProgress(job, TasksIn(change, job.id())));
  job.set_last_event(job.last_event() + 1);
  job.set_updated_unix_ms(now_ms);
  JobEvent& event = change.events.emplace_back();
  event.set_job_id(job.id());
  event.set_sequence(job.last_event());
  event.set_unix_ms(now_ms);
  event.set_state(job.state());
  event.set_phase(job.phase());
  event.set_progress(job.progress());
  event.set_message(std::move(message));
}

void Scheduler::AddLease(Change& change, const std::string& task_id,
                         const std::string& worker_id, int64_t now_ms,
                         lpd::v1::LeaseTaskResponse* response) {
  TaskRecord& task = MutableTask(change, task_id);
  Job& job = MutableJob(change, task.job_id);
  task.state = TaskState::kLeased;
  task.attempt += 1;
  // The task id first (Heartbeat and LiveLease look the task up by it),
  // then 128 random bits: a lease cannot be guessed from what events and
  // logs show (task ids, attempts, worker ids).
  task.lease_id =
      absl::StrCat(task.task_id, "#", task.attempt, ".", RandomHex(16));
  task.worker_id = worker_id;
  task.lease_expires_ms =
      now_ms + absl::ToInt64Milliseconds(options_.lease_duration);
  task.progress = 0;
  if (job.state() == lpd::v1::JOB_STATE_QUEUED) {
    job.set_state(lpd::v1::JOB_STATE_RUNNING);
  }
  AddEvent(change, job, now_ms,
           absl::StrCat(TaskLabel(task), " leased to worker ", worker_id,
                        " (attempt ", task.attempt, " of ",
                        options_.max_attempts, ")"));
  lpd::v1::Task* out = response->mutable_task();
  out->set_task_id(task.task_id);
  out->set_lease_id(task.lease_id);
  out->set_job_id(task.job_id);
  out->set_phase(task.phase);
  out->set_shard_index(task.shard_index);
  out->set_shard_count(task.shard_count);
  out->set_attempt(task.attempt);
  *out->mutable_spec() = job.spec();
  out->set_output_uri(job.output_uri());
  response->set_lease_expires_unix_ms(task.lease_expires_ms);
}

void Scheduler::AddJobFailure(Change& change, const std::string& job_id,
                              const std::string& error, int64_t now_ms) {
  Job& job = MutableJob(change, job_id);
  if (!IsActive(job.state())) return;
  job.set_state(lpd::v1::JOB_STATE_FAILED);
  job.set_error(error);
  for (const TaskRecord* task : TasksIn(change, job_id)) {
    if (task->state == TaskState::kQueued ||
        task->state == TaskState::kLeased) {
      MutableTask(change, task->task_id).state = TaskState::kCancelled;
    }
  }
  AddEvent(change, job, now_ms, absl::StrCat("failed: ", error));
}

void Scheduler::AddRequeueOrFail(Change& change, const std::string& task_id,
                                 const std::string& error, bool retryable,
                                 int64_t now_ms) {
  TaskRecord& task = MutableTask(change, task_id);
  Job& job = MutableJob(change, task.job_id);
  if (!IsActive(job.state()) || task.state != TaskState::kLeased) return;
  task.last_error = error;
  if (retryable && task.attempt < options_.max_attempts) {
    task.state = TaskState::kQueued;
    task.lease_expires_ms = 0;
    task.progress = 0;
    ++(absl::StartsWith(error, "lease expired") ? requeued_lease_expired_
                                                : requeued_failed_);
    AddEvent(change, job, now_ms,
             absl::StrCat(TaskLabel(task), ": ", error, "; requeued"));
    return;
  }
  task.state = TaskState::kFailed;
  const std::string job_error =
      retryable
          ? absl::StrCat(task.task_id, " failed after ", task.attempt,
                         " attempts; last error: ", error)
          : absl::StrCat(task.task_id, " failed (not retryable): ", error);
  AddEvent(change, job, now_ms,
           absl::StrCat(TaskLabel(task), ": ", error,
                        retryable ? "; no attempts left" : "; not retryable"));
  AddJobFailure(change, job.id(), job_error, now_ms);
}

void Scheduler::AddNextPhase(Change& change, const std::string& job_id,
                             Phase phase, int64_t now_ms) {
  Job& job = MutableJob(change, job_id);
  job.set_phase(phase);
  TaskRecord task;
  task.task_id = absl::StrCat(job_id, "/", job::PhaseLabel(phase));
  task.job_id = job_id;
  task.phase = phase;
  change.tasks[task.task_id] = task;
  change.new_tasks.push_back(task.task_id);
  std::string message = absl::StrCat(PhaseName(phase), " queued");
  const auto& spec = job.spec().spec();
  const int gpus = spec.distill().gpus();
  if (phase == lpd::v1::PHASE_DISTILL && gpus > 1 &&
      spec.device() != lpd::v1::DEVICE_CPU) {
    // Say so when no registered worker can take it yet (it waits for one).
    int most = -1;
    bool unknown = false;
    for (const auto& [id, worker] : workers_) {
      unknown = unknown || worker.gpus < 0;
      most = std::max(most, worker.gpus);
    }
    absl::StrAppend(&message, " (data-parallel over ", gpus, " GPUs");
    if (!unknown && most < gpus) {
      absl::StrAppend(&message, "; no registered worker has ", gpus, " GPUs",
                      most >= 0 ? absl::StrCat(" (most: ", most, ")") : "",
                      ": it waits for one");
    }
    absl::StrAppend(&message, ")");
  }
  AddEvent(change, job, now_ms, std::move(message));
}

absl::StatusOr<const TaskRecord*> Scheduler::LiveLease(
    absl::string_view worker_id, absl::string_view lease_id,
    int64_t now_ms) const {
  if (lease_id.empty()) return absl::InvalidArgumentError("lease_id: empty");
  const size_t hash = lease_id.rfind('#');
  auto it = hash == absl::string_view::npos
                ? tasks_.end()
                : tasks_.find(std::string(lease_id.substr(0, hash)));
  if (it == tasks_.end() || it->second.lease_id != lease_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease ", lease_id, " is not a current lease"));
  }
  const TaskRecord& task = it->second;
  if (task.worker_id != worker_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease ", lease_id, " belongs to worker ", task.worker_id,
                     ", not \"", worker_id, "\""));
  }
  const Job& job = jobs_.at(task.job_id)->job;
  if (!IsActive(job.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job.id(), " has ended (",
                     lpd::v1::JobState_Name(job.state()), ")"));
  }
  if (task.state != TaskState::kLeased) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease ", lease_id, " is over (task ", TaskStateName(task.state), ")"));
  }
  if (task.lease_expires_ms <= now_ms) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease ", lease_id, " ran out"));
  }
  return &task;
}

// ---------------------------------------------------------------------------
// JobService.

absl::StatusOr<Job> Scheduler::Submit(const lpd::v1::CompressionJob& spec,
                                      const std::string& request_id) {
  RETURN_IF_ERROR(job::ValidateJobSpec(spec));
  if (request_id.size() > static_cast<size_t>(kMaxRequestIdLength)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id: at most ", kMaxRequestIdLength,
                     " characters, got ", request_id.size()));
  }
  lpd::v1::CompressionJob full = spec;
  job::ApplyDefaults(&full);
  const int64_t now = NowMs();
  Job result;
  RETURN_IF_ERROR(Mutate([&](Change& change) -> absl::Status {
    if (!request_id.empty()) {
      if (auto it = by_request_id_.find(request_id);
          it != by_request_id_.end()) {
        const Job& existing = jobs_.at(it->second)->job;
        if (!google::protobuf::util::MessageDifferencer::Equals(existing.spec(),
                                                                full)) {
          return absl::AlreadyExistsError(
              absl::StrCat("request_id \"", request_id, "\" was used for job ",
                           existing.id(), " with a different spec"));
        }
        result = existing;
        return absl::OkStatus();
      }
    }
    const std::string& uri = full.spec().output().uri();
    if (auto it = active_outputs_.find(NormalizeUri(uri));
        it != active_outputs_.end()) {
      const Job& other = jobs_.at(it->second)->job;
      return absl::FailedPreconditionError(absl::StrCat(
          "spec.output.uri: job ", other.id(), " (",
          lpd::v1::JobState_Name(other.state()), ") already writes to ", uri));
    }
    std::string id;
    do {
      id = absl::StrCat("job-", Hex16(gen_));
    } while (jobs_.contains(id));
    Job& job = change.jobs[id];
    ++jobs_submitted_;
    job.set_id(id);
    *job.mutable_spec() = full;
    job.set_state(lpd::v1::JOB_STATE_QUEUED);
    job.set_phase(job::FirstPhase());
    job.set_request_id(request_id);
    // Strictly increasing, so that creation order is submission order
    // (List, and which job's tasks go first) even within a millisecond.
    const int64_t created = std::max(now, last_created_ms_ + 1);
    last_created_ms_ = created;
    job.set_created_unix_ms(created);
    job.set_updated_unix_ms(created);
    job.set_output_uri(uri);
    const int shards =
        full.spec().prune().criterion() == lpd::v1::CRITERION_HANDCRAFTED
            ? 1
            : options_.score_shards;
    for (int i = 0; i < shards; ++i) {
      TaskRecord task;
      task.task_id = absl::StrCat(id, "/score-", i);
      task.job_id = id;
      task.phase = lpd::v1::PHASE_SCORE;
      task.shard_index = i;
      task.shard_count = shards;
      change.new_tasks.push_back(task.task_id);
      change.tasks[task.task_id] = std::move(task);
    }
    AddEvent(change, job, created,
             absl::StrCat("submitted: ", shards, " SCORE shard",
                          shards == 1 ? "" : "s", " queued"));
    result = job;
    return absl::OkStatus();
  }));
  return result;
}

absl::StatusOr<Job> Scheduler::Get(const std::string& job_id) {
  absl::ReaderMutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
  }
  return it->second->job;
}

absl::StatusOr<lpd::v1::ListJobsResponse> Scheduler::List(
    const lpd::v1::ListJobsRequest& request) {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: must be >= 0, got ", request.page_size()));
  }
  if (!lpd::v1::JobState_IsValid(request.state())) {
    return absl::InvalidArgumentError(
        absl::StrCat("state: unknown value ", request.state()));
  }
  const int page_size = request.page_size() == 0
                            ? kDefaultPageSize
                            : std::min(request.page_size(), kMaxPageSize);
  std::pair<int64_t, std::string> after;
  const bool has_token = !request.page_token().empty();
  if (has_token) {
    std::string decoded;
    int64_t created = 0;
    const size_t slash = [&] {
      if (!absl::WebSafeBase64Unescape(request.page_token(), &decoded)) {
        return std::string::npos;
      }
      return decoded.find('/');
    }();
    if (slash == std::string::npos ||
        !absl::SimpleAtoi(absl::string_view(decoded).substr(0, slash),
                          &created) ||
        slash + 1 >= decoded.size()) {
      return absl::InvalidArgumentError(
          "page_token: not a token from ListJobs");
    }
    after = {created, decoded.substr(slash + 1)};
  }
  lpd::v1::ListJobsResponse response;
  absl::ReaderMutexLock lock(&mu_);
  auto it = has_token ? by_created_.lower_bound(after) : by_created_.end();
  const Job* last = nullptr;
  while (it != by_created_.begin()) {
    --it;
    const Job& job = jobs_.at(it->second)->job;
    if (request.state() != lpd::v1::JOB_STATE_UNSPECIFIED &&
        job.state() != request.state()) {
      continue;
    }
    if (response.jobs_size() == page_size) {
      // There is at least one more: the page is full.
      response.set_next_page_token(absl::WebSafeBase64Escape(
          absl::StrCat(last->created_unix_ms(), "/", last->id())));
      break;
    }
    *response.add_jobs() = job;
    last = &job;
  }
  return response;
}

absl::StatusOr<Job> Scheduler::Cancel(const std::string& job_id) {
  const int64_t now = NowMs();
  Job result;
  RETURN_IF_ERROR(Mutate([&](Change& change) -> absl::Status {
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
    }
    if (!IsActive(it->second->job.state())) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", job_id, " has already ended (",
                       lpd::v1::JobState_Name(it->second->job.state()), ")"));
    }
    Job& job = MutableJob(change, job_id);
    job.set_state(lpd::v1::JOB_STATE_CANCELLED);
    for (const TaskRecord* task : TasksIn(change, job_id)) {
      if (task->state == TaskState::kQueued ||
          task->state == TaskState::kLeased) {
        MutableTask(change, task->task_id).state = TaskState::kCancelled;
      }
    }
    AddEvent(change, job, now, "cancelled");
    result = job;
    return absl::OkStatus();
  }));
  return result;
}

absl::StatusOr<std::vector<JobEvent>> Scheduler::EventsAfter(
    const std::string& job_id, int64_t after_sequence) {
  {
    absl::ReaderMutexLock lock(&mu_);
    if (!jobs_.contains(job_id)) {
      return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
    }
  }
  return store_->EventsAfter(job_id, after_sequence);
}

int64_t Scheduler::Subscribe(const std::string& job_id,
                             std::function<void()> notify) {
  const int64_t id = next_id_++;
  auto subscription = std::make_shared<Subscription>();
  subscription->job_id = job_id;
  subscription->notify = std::move(notify);
  absl::MutexLock lock(&sub_mu_);
  subscribers_.emplace(job_id, subscription);
  subscriptions_[id] = std::move(subscription);
  return id;
}

void Scheduler::Unsubscribe(int64_t subscription) {
  std::shared_ptr<Subscription> sub;
  {
    absl::MutexLock lock(&sub_mu_);
    auto it = subscriptions_.find(subscription);
    if (it == subscriptions_.end()) return;
    sub = std::move(it->second);
    subscriptions_.erase(it);
    auto [begin, end] = subscribers_.equal_range(sub->job_id);
    for (auto s = begin; s != end; ++s) {
      if (s->second == sub) {
        subscribers_.erase(s);
        break;
      }
    }
  }
  absl::MutexLock lock(&sub->mu);  // waits for a notify in progress
  sub->active = false;
}

void Scheduler::Notify(const std::vector<std::string>& job_ids) {
  if (job_ids.empty()) return;
  std::vector<std::shared_ptr<Subscription>> subs;
  {
    absl::MutexLock lock(&sub_mu_);
    for (const std::string& id : job_ids) {
      auto [begin, end] = subscribers_.equal_range(id);
      for (auto s = begin; s != end; ++s) subs.push_back(s->second);
    }
  }
  for (const auto& sub : subs) {
    absl::MutexLock lock(&sub->mu);
    if (sub->active) sub->notify();
  }
}

// ---------------------------------------------------------------------------
// WorkerService.

absl::StatusOr<lpd::v1::RegisterWorkerResponse> Scheduler::RegisterWorker(
    const lpd::v1::RegisterWorkerRequest& request) {
  const int64_t now = NowMs();
  std::string id;
  RETURN_IF_ERROR(Mutate([&](Change& change) -> absl::Status {
    if (!request.worker_id().empty() &&
        workers_.contains(request.worker_id())) {
      id = request.worker_id();
    } else {
      do {
        id = absl::StrCat("w-", Hex16(gen_));
      } while (workers_.contains(id));
    }
    change.workers.push_back(WorkerRecord{
        id, request.name(), request.device(), now,
        request.has_gpus() && request.gpus() >= 0 ? request.gpus() : -1});
    return absl::OkStatus();
  }));
  lpd::v1::RegisterWorkerResponse response;
  Seen(id);
  response.set_worker_id(id);
  response.set_heartbeat_interval_ms(static_cast<int32_t>(
      absl::ToInt64Milliseconds(options_.heartbeat_interval)));
  response.set_lease_duration_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(options_.lease_duration)));
  return response;
}

Scheduler::Stats Scheduler::GetStats() const {
  Stats stats;
  for (int s = lpd::v1::JobState_MIN; s <= lpd::v1::JobState_MAX; ++s) {
    if (lpd::v1::JobState_IsValid(s) && s != lpd::v1::JOB_STATE_UNSPECIFIED) {
      stats.jobs[static_cast<lpd::v1::JobState>(s)] = 0;
    }
  }
  absl::flat_hash_set<std::string> busy;
  absl::flat_hash_set<std::string> waiting;  // in a long poll now
  {
    absl::MutexLock lock(&wait_mu_);
    for (const auto& [id, waiter] : waiters_) waiting.insert(waiter.worker_id);
  }
  absl::flat_hash_map<std::string, int64_t> seen;
  {
    absl::MutexLock lock(&seen_mu_);
    seen = last_seen_ms_;
  }
  const int64_t now = NowMs();
  const int64_t lost_ms = absl::ToInt64Milliseconds(
      options_.worker_lost_after > absl::ZeroDuration()
          ? options_.worker_lost_after
          : 2 * options_.lease_duration);
  const int64_t forget_ms = absl::ToInt64Milliseconds(
      options_.worker_forget_after > absl::ZeroDuration()
          ? options_.worker_forget_after
          : absl::Minutes(10));
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, entry] : jobs_) {
      ++stats.jobs[entry->job.state()];
      if (IsActive(entry->job.state())) {
        stats.active_progress.emplace_back(id, entry->job.progress());
      }
    }
    for (const std::string& id : leased_) busy.insert(tasks_.at(id).worker_id);
    for (const auto& [id, worker] : workers_) {
      if (busy.contains(id)) {
        ++stats.workers_busy;
        continue;
      }
      auto it = seen.find(id);
      const int64_t silent =
          it == seen.end() ? forget_ms + 1 : now - it->second;
      if (waiting.contains(id) || silent <= lost_ms) {
        ++stats.workers_idle;
      } else if (silent <= forget_ms) {
        ++stats.workers_lost;
      }
    }
  }
  stats.jobs_submitted = jobs_submitted_;
  stats.tasks_requeued_lease_expired = requeued_lease_expired_;
  stats.tasks_requeued_failed = requeued_failed_;
  return stats;
}

bool Scheduler::Fits(const TaskRecord& task,
                     const std::string& worker_id) const {
  if (task.phase != lpd::v1::PHASE_DISTILL) return true;
  auto job = jobs_.find(task.job_id);
  if (job == jobs_.end()) return true;
  const auto& spec = job->second->job.spec().spec();
  const int needed = spec.distill().gpus();
  if (needed <= 1 || spec.device() == lpd::v1::DEVICE_CPU) return true;
  auto worker = workers_.find(worker_id);
  if (worker == workers_.end() || worker->second.gpus < 0) return true;
  const int gpus = worker->second.gpus;
  // "auto" on a worker without GPUs runs its ranks on the CPU (gloo).
  return gpus >= needed ||
         (gpus == 0 && spec.device() == lpd::v1::DEVICE_UNSPECIFIED);
}

const std::string* Scheduler::FirstReadyFor(
    const std::string& worker_id,
    const absl::flat_hash_set<std::string>& taken) const {
  for (const auto& [key, task_id] : ready_) {
    if (taken.contains(task_id)) continue;
    auto task = tasks_.find(task_id);
    if (task == tasks_.end() || Fits(task->second, worker_id)) return &task_id;
  }
  return nullptr;
}

int64_t Scheduler::LeaseAsync(
    const std::string& worker_id, absl::Duration wait,
    std::function<void(absl::StatusOr<lpd::v1::LeaseTaskResponse>)> done) {
  const int64_t waiter_id = next_id_++;
  if (worker_id.empty()) {
    done(absl::InvalidArgumentError("worker_id: empty"));
    return waiter_id;
  }
  Seen(worker_id);
  wait = std::min(wait, kMaxLeaseWait);
  const absl::Time now = options_.clock();
  lpd::v1::LeaseTaskResponse response;
  bool waiting = false;
  absl::Status status = Mutate([&](Change& change) -> absl::Status {
    if (!workers_.contains(worker_id)) {
      return absl::NotFoundError(absl::StrCat(
          "worker ", worker_id, " is not registered (RegisterWorker first)"));
    }
    absl::MutexLock wait_lock(&wait_mu_);
    if (waiters_closed_) return absl::OkStatus();  // shut down: no task
    const std::string* task =
        waiters_.empty() ? FirstReadyFor(worker_id, {}) : nullptr;
    if (task != nullptr) {
      AddLease(change, *task, worker_id, absl::ToUnixMillis(now), &response);
    } else if (wait > absl::ZeroDuration()) {
      waiters_[waiter_id] = Waiter{worker_id, now + wait, std::move(done)};
      waiting = true;
    }
    return absl::OkStatus();
  });
  if (!status.ok()) {
    done(std::move(status));
  } else if (!waiting) {
    done(std::move(response));
  } else {
    Wake();  // tasks may be ready for earlier waiters, and a new deadline
  }
  return waiter_id;
}

bool Scheduler::CancelLease(int64_t waiter) {
  absl::MutexLock lock(&wait_mu_);
  return waiters_.erase(waiter) > 0;
}

absl::StatusOr<lpd::v1::HeartbeatResponse> Scheduler::Heartbeat(
    const lpd::v1::HeartbeatRequest& request) {
  if (request.lease_id().empty()) {
    return absl::InvalidArgumentError("lease_id: empty");
  }
  if (!request.worker_id().empty()) Seen(request.worker_id());
  const int64_t now = NowMs();
  lpd::v1::HeartbeatResponse response;
  response.set_action(lpd::v1::HeartbeatResponse::ACTION_LEASE_LOST);
  bool expired = false;
  {
    absl::MutexLock lock(&mu_);
    const absl::string_view lease_id = request.lease_id();
    const size_t hash = lease_id.rfind('#');
    auto it = hash == absl::string_view::npos
                  ? tasks_.end()
                  : tasks_.find(std::string(lease_id.substr(0, hash)));
    if (it == tasks_.end() || it->second.lease_id != lease_id ||
        it->second.worker_id != request.worker_id()) {
      return response;
    }
    TaskRecord& task = it->second;
    JobEntry& entry = *jobs_.at(task.job_id);
    // Cancelled: its job was cancelled, or failed because of another task.
    if (task.state == TaskState::kCancelled) {
      response.set_action(lpd::v1::HeartbeatResponse::ACTION_CANCEL);
      return response;
    }
    if (task.state != TaskState::kLeased) return response;
    if (!IsActive(entry.job.state())) {
      response.set_action(lpd::v1::HeartbeatResponse::ACTION_CANCEL);
      return response;
    }
    if (task.lease_expires_ms <= now) {
      expired = true;
    } else {
      task.lease_expires_ms =
          now + absl::ToInt64Milliseconds(options_.lease_duration);
      const double progress = std::isfinite(request.progress())
                                  ? std::clamp(request.progress(), 0.0, 1.0)
                                  : task.progress;
      if (progress != task.progress ||
          request.message() != entry.progress_message) {
        task.progress = progress;
        entry.progress_message = request.message();
        entry.job.set_progress(
            ComputeProgress(entry.job, TasksOf(task.job_id)));
        progress_dirty_.insert(task.job_id);
      }
      response.set_action(lpd::v1::HeartbeatResponse::ACTION_CONTINUE);
      response.set_lease_expires_unix_ms(task.lease_expires_ms);
    }
  }
  if (expired) Wake();  // requeue it now
  return response;
}

absl::Status Scheduler::Complete(const lpd::v1::CompleteTaskRequest& request) {
  if (!request.worker_id().empty()) Seen(request.worker_id());
  const int64_t now = NowMs();
  return Mutate([&](Change& change) -> absl::Status {
    ASSIGN_OR_RETURN(const TaskRecord* live,
                     LiveLease(request.worker_id(), request.lease_id(), now));
    TaskRecord& task = MutableTask(change, live->task_id);
    Job& job = MutableJob(change, task.job_id);
    task.state = TaskState::kDone;
    task.progress = 1;
    task.result_json = request.result_json();
    AddEvent(change, job, now,
             absl::StrCat(TaskLabel(task), " done on worker ", task.worker_id,
                          request.result_json().empty() ? "" : ": ",
                          request.result_json()));
    // The phase is done when all of its tasks are (SCORE has one per shard);
    // then the phase graph (job/names.h) says what comes next.
    bool phase_done = true;
    for (const TaskRecord* t : TasksIn(change, job.id())) {
      if (t->phase == task.phase && t->state != TaskState::kDone) {
        phase_done = false;
      }
    }
    if (phase_done) {
      const Phase next = job::NextPhase(task.phase);
      if (next == lpd::v1::PHASE_UNSPECIFIED) {
        job.set_state(lpd::v1::JOB_STATE_SUCCEEDED);
        AddEvent(change, job, now, "succeeded");
      } else if (!job::FindPhase(next)->runs_on_workers) {
        // SELECT: the scheduler runs it itself, off the store's lock.
        job.set_phase(next);
        AddEvent(change, job, now,
                 absl::StrCat(PhaseName(task.phase), " done; ", PhaseName(next),
                              " running"));
        change.selects.push_back(job.id());
      } else {
        AddNextPhase(change, job.id(), next, now);
      }
    }
    return absl::OkStatus();
  });
}

absl::Status Scheduler::Fail(const lpd::v1::FailTaskRequest& request) {
  if (!request.worker_id().empty()) Seen(request.worker_id());
  const int64_t now = NowMs();
  return Mutate([&](Change& change) -> absl::Status {
    ASSIGN_OR_RETURN(const TaskRecord* live,
                     LiveLease(request.worker_id(), request.lease_id(), now));
    const std::string error =
        request.error().empty() ? "failed (no message)" : request.error();
    if (request.handed_back()) {
      TaskRecord& task = MutableTask(change, live->task_id);
      Job& job = MutableJob(change, task.job_id);
      task.state = TaskState::kQueued;
      task.lease_expires_ms = 0;
      task.progress = 0;
      task.attempt = std::max(0, task.attempt - 1);
      task.last_error = error;
      AddEvent(change, job, now,
               absl::StrCat(TaskLabel(task), ": handed back by worker ",
                            live->worker_id, " (", error,
                            "); requeued, the attempt not counted"));
      return absl::OkStatus();
    }
    AddRequeueOrFail(
        change, live->task_id,
        absl::StrCat("failed on worker ", live->worker_id, ", attempt ",
                     live->attempt, " of ", options_.max_attempts, ": ", error),
        request.retryable(), now);
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------
// The timer thread's work.

void Scheduler::Tick() {
  if (!healthy_) RecordStoreResult(store_->Probe(NowMs()));
  ExpireLeases();
  ExpireWaiters();
  FlushProgress(/*force=*/false);
  Dispatch();
}

void Scheduler::ExpireLeases() {
  const int64_t now = NowMs();
  Mutate([&](Change& change) -> absl::Status {
    std::vector<std::string> expired;
    for (const std::string& id : leased_) {
      if (tasks_.at(id).lease_expires_ms <= now) expired.push_back(id);
    }
    std::sort(expired.begin(), expired.end());
    for (const std::string& id : expired) {
      const TaskRecord& task = tasks_.at(id);
      AddRequeueOrFail(
          change, id,
          absl::StrCat("lease expired on worker ", task.worker_id, ", attempt ",
                       task.attempt, " of ", options_.max_attempts),
          /*retryable=*/true, now);
    }
    return absl::OkStatus();
  }).IgnoreError();  // retried at the next tick; Healthy() says why
}

void Scheduler::ExpireWaiters() {
  const absl::Time now = options_.clock();
  std::vector<Waiter> expired;
  {
    absl::MutexLock lock(&wait_mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (Waiter& waiter : expired) {
    Seen(waiter.worker_id);  // it waited, connected, until now
    waiter.done(lpd::v1::LeaseTaskResponse());
  }
}

void Scheduler::FlushProgress(bool force) {
  const int64_t now = NowMs();
  const int64_t interval =
      absl::ToInt64Milliseconds(options_.progress_flush_interval);
  Mutate([&](Change& change) -> absl::Status {
    if (!force && now < next_flush_ms_) return absl::OkStatus();
    next_flush_ms_ = now + interval;
    std::vector<std::string> dirty(progress_dirty_.begin(),
                                   progress_dirty_.end());
    std::sort(dirty.begin(), dirty.end());
    for (const std::string& id : dirty) {
      change.flushed.push_back(id);
      const JobEntry& entry = *jobs_.at(id);
      if (!IsActive(entry.job.state())) continue;
      for (const TaskRecord* task : TasksOf(id)) {
        if (task->state == TaskState::kLeased) {
          MutableTask(change, task->task_id);
        }
      }
      Job& job = MutableJob(change, id);
      std::string message = absl::StrFormat(
          "progress %.1f%%", 100 * ComputeProgress(job, TasksOf(id)));
      if (!entry.progress_message.empty()) {
        absl::StrAppend(&message, ": ", entry.progress_message);
      }
      AddEvent(change, job, now, std::move(message));
    }
    return absl::OkStatus();
  }).IgnoreError();
}

void Scheduler::Dispatch() {
  const int64_t now = NowMs();
  std::vector<std::pair<Waiter, lpd::v1::LeaseTaskResponse>> handed;
  absl::Status status = Mutate([&](Change& change) -> absl::Status {
    if (ready_.empty()) return absl::OkStatus();
    absl::MutexLock wait_lock(&wait_mu_);
    // Each waiter, oldest first, takes the first ready task it can run.
    absl::flat_hash_set<std::string> taken;
    for (auto waiter = waiters_.begin();
         waiter != waiters_.end() && taken.size() < ready_.size();) {
      const std::string* task = FirstReadyFor(waiter->second.worker_id, taken);
      if (task == nullptr) {
        ++waiter;
        continue;
      }
      taken.insert(*task);
      lpd::v1::LeaseTaskResponse response;
      AddLease(change, *task, waiter->second.worker_id, now, &response);
      handed.emplace_back(std::move(waiter->second), std::move(response));
      waiter = waiters_.erase(waiter);
    }
    return absl::OkStatus();
  });
  for (auto& [waiter, response] : handed) {
    if (status.ok()) {
      waiter.done(std::move(response));
    } else {
      waiter.done(status);
    }
  }
}

void Scheduler::Wake() {
  absl::MutexLock lock(&bg_mu_);
  wake_ = true;
}

void Scheduler::TimerLoop() {
  while (true) {
    {
      absl::MutexLock lock(&bg_mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(bg_mu_) {
        return stop_ || wake_;
      };
      bg_mu_.AwaitWithTimeout(absl::Condition(&woken), options_.tick_interval);
      if (stop_) return;
      wake_ = false;
    }
    Tick();
  }
}

void Scheduler::SelectLoop() {
  while (true) {
    std::string job_id;
    {
      absl::MutexLock lock(&bg_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(bg_mu_) {
        return stop_ || !select_queue_.empty();
      };
      bg_mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      job_id = std::move(select_queue_.front());
      select_queue_.pop_front();
    }
    Job job;
    int shards = 0;
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = jobs_.find(job_id);
      if (it == jobs_.end() ||
          it->second->job.state() != lpd::v1::JOB_STATE_RUNNING ||
          it->second->job.phase() != lpd::v1::PHASE_SELECT) {
        continue;
      }
      job = it->second->job;
      for (const TaskRecord* task : TasksOf(job_id)) {
        if (task->phase == lpd::v1::PHASE_SCORE) ++shards;
      }
    }
    const absl::StatusOr<std::string> result = options_.run_select(job, shards);
    absl::Status stored = absl::OkStatus();
    const int64_t now = NowMs();
    stored = Mutate([&](Change& change) -> absl::Status {
      auto it = jobs_.find(job_id);
      if (it == jobs_.end()) return absl::OkStatus();
      const Job& current = it->second->job;
      if (current.state() != lpd::v1::JOB_STATE_RUNNING ||
          current.phase() != lpd::v1::PHASE_SELECT) {
        return absl::OkStatus();  // cancelled meanwhile, or done already
      }
      Job& copy = MutableJob(change, job_id);
      if (result.ok()) {
        AddEvent(
            change, copy, now,
            absl::StrCat("SELECT done", result->empty() ? "" : ": ", *result));
        AddNextPhase(change, job_id, job::NextPhase(lpd::v1::PHASE_SELECT),
                     now);
        return absl::OkStatus();
      }
      const int attempt = ++select_attempts_[job_id];
      if (absl::IsUnavailable(result.status()) &&
          attempt < options_.max_attempts) {
        AddEvent(change, copy, now,
                 absl::StrCat("SELECT failed (attempt ", attempt, " of ",
                              options_.max_attempts, "): ",
                              result.status().message(), "; running it again"));
        change.selects.push_back(job_id);
        return absl::OkStatus();
      }
      AddJobFailure(change, job_id,
                    absl::StrCat("SELECT failed: ", result.status().message()),
                    now);
      return absl::OkStatus();
    });
    if (!stored.ok()) {
      // The store cannot be written: run SELECT again a little later.
      absl::MutexLock lock(&bg_mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(bg_mu_) {
        return stop_;
      };
      if (bg_mu_.AwaitWithTimeout(absl::Condition(&stopped),
                                  absl::Seconds(1))) {
        return;
      }
      select_queue_.push_back(job_id);
    }
  }
}

void Scheduler::Shutdown() {
  if (shut_down_.exchange(true)) return;
  {
    absl::MutexLock lock(&bg_mu_);
    stop_ = true;
  }
  if (timer_thread_.joinable()) timer_thread_.join();
  if (select_thread_.joinable()) select_thread_.join();
  FlushProgress(/*force=*/true);
  std::map<int64_t, Waiter> waiters;
  {
    absl::MutexLock lock(&wait_mu_);
    waiters_closed_ = true;
    waiters.swap(waiters_);
  }
  for (auto& [id, waiter] : waiters) waiter.done(lpd::v1::LeaseTaskResponse());
}

}  // namespace lpd::server

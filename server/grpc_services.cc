#include "server/grpc_services.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/grpc_status.h"

namespace lpd::server {
namespace {

using lpd::v1::JobEvent;
using lpd::v1::JobState;

absl::Status CheckId(absl::string_view field, const std::string& value,
                     bool required) {
  if (required && value.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": required"));
  }
  if (value.size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": at most ", kMaxIdBytes, " bytes, got ", value.size()));
  }
  return absl::OkStatus();
}

bool IsFinal(JobState state) {
  return state == lpd::v1::JOB_STATE_SUCCEEDED ||
         state == lpd::v1::JOB_STATE_FAILED ||
         state == lpd::v1::JOB_STATE_CANCELLED;
}

// Finishes `reactor` with `status`, copying the value into `response` first.
template <typename T>
void FinishWith(grpc::ServerUnaryReactor* reactor,
                const absl::StatusOr<T>& result, T* response) {
  if (result.ok()) *response = *result;
  reactor->Finish(ToGrpcStatus(result.status()));
}

// WatchJob: sends the job's stored events after the requested sequence, then
// each new one, one write at a time; ends after the event that ends the job.
// Fetching events reads the store, so it runs on the pool. The reactor
// deletes itself once gRPC is done with it and no pool work refers to it.
class WatchReactor final : public grpc::ServerWriteReactor<JobEvent> {
 public:
  WatchReactor(Scheduler* scheduler, TaskPool* pool, std::string job_id,
               int64_t after)
      : scheduler_(scheduler),
        pool_(pool),
        job_id_(std::move(job_id)),
        last_sent_(after) {}

  // Separate from the constructor: callbacks may arrive at once.
  void Start() {
    auto job = scheduler_->Get(job_id_);
    if (!job.ok()) {
      Finish(ToGrpcStatus(job.status()));
      return;
    }
    subscription_ = scheduler_->Subscribe(job_id_, [this] { Schedule(); });
    Schedule();
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mutex_);
    writing_ = false;
    if (!ok) {  // the client went away
      FinishLocked(grpc::Status::CANCELLED);
      return;
    }
    last_sent_ = queue_.front().sequence();
    const bool final_event = IsFinal(queue_.front().state());
    queue_.pop_front();
    if (!queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
    } else if (final_event) {
      FinishLocked(grpc::Status::OK);
    } else {
      lock.unlock();
      Schedule();  // events may have come while writing
    }
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!writing_) FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    if (subscription_ != 0) scheduler_->Unsubscribe(subscription_);
    bool last;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
      last = pending_ == 0;
    }
    if (last) delete this;
  }

 private:
  void Schedule() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (done_ || finished_) return;
      ++pending_;
    }
    pool_->Post([this] {
      Fetch();
      bool last;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --pending_;
        last = done_ && pending_ == 0;
      }
      if (last) delete this;
    });
  }

  void Fetch() {
    int64_t after;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (finished_ || writing_ || !queue_.empty()) return;
      after = last_sent_;
    }
    auto events = scheduler_->EventsAfter(job_id_, after);
    std::lock_guard<std::mutex> lock(mutex_);
    if (finished_ || writing_ || !queue_.empty() || last_sent_ != after) return;
    if (!events.ok()) {
      FinishLocked(ToGrpcStatus(events.status()));
      return;
    }
    if (events->empty()) {
      // Nothing new: a job that has ended and whose last event was already
      // sent (a watch that starts after the end) is finished here.
      auto job = scheduler_->Get(job_id_);
      if (job.ok() && IsFinal(job->state()) && job->last_event() <= after) {
        FinishLocked(grpc::Status::OK);
      }
      return;
    }
    for (JobEvent& event : *events) queue_.push_back(std::move(event));
    writing_ = true;
    StartWrite(&queue_.front());
  }

  void FinishLocked(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  Scheduler* const scheduler_;
  TaskPool* const pool_;
  const std::string job_id_;
  int64_t subscription_ = 0;
  std::mutex mutex_;
  int64_t last_sent_;
  std::deque<JobEvent> queue_;
  bool writing_ = false;
  bool finished_ = false;
  bool done_ = false;
  int pending_ = 0;  // pool closures that refer to this reactor
};

// LeaseTask: a long poll that holds no thread. Start runs on the pool
// (handing out a ready task commits the lease, an fsync); the scheduler calls
// back with a task or, after the wait, with none; a client that goes away
// withdraws its waiter. Exactly one of them finishes the RPC. The reactor is
// deleted when gRPC is done with it and Start has returned.
class LeaseReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit LeaseReactor(Scheduler* scheduler) : scheduler_(scheduler) {}

  void Start(const lpd::v1::LeaseTaskRequest& request,
             lpd::v1::LeaseTaskResponse* response) {
    StartLocked(request, response);
    bool last;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      started_ = true;
      last = done_;
    }
    if (last) delete this;
  }

  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (waiter_ != 0) scheduler_->CancelLease(waiter_);
    }
    if (!finished_->exchange(true)) Finish(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    bool last;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
      last = started_;
    }
    if (last) delete this;
  }

 private:
  void StartLocked(const lpd::v1::LeaseTaskRequest& request,
                   lpd::v1::LeaseTaskResponse* response) {
    absl::Status valid = CheckId("worker_id", request.worker_id(), true);
    if (valid.ok() &&
        (request.wait_ms() < 0 || request.wait_ms() > kMaxLeaseWaitMs)) {
      valid = absl::InvalidArgumentError(
          absl::StrCat("wait_ms: must be in [0, ", kMaxLeaseWaitMs, "], got ",
                       request.wait_ms()));
    }
    if (!valid.ok()) {
      if (!finished_->exchange(true)) Finish(ToGrpcStatus(valid));
      return;
    }
    if (finished_->load()) return;  // cancelled before it started
    auto finished = finished_;
    const int64_t waiter = scheduler_->LeaseAsync(
        request.worker_id(), absl::Milliseconds(request.wait_ms()),
        [this, finished,
         response](absl::StatusOr<lpd::v1::LeaseTaskResponse> result) {
          if (finished->exchange(true)) return;
          if (result.ok()) *response = *std::move(result);
          Finish(ToGrpcStatus(result.status()));
        });
    std::lock_guard<std::mutex> lock(mutex_);
    waiter_ = waiter;
  }

  Scheduler* const scheduler_;
  std::mutex mutex_;
  std::shared_ptr<std::atomic<bool>> finished_ =
      std::make_shared<std::atomic<bool>>(false);
  int64_t waiter_ = 0;
  bool started_ = false;
  bool done_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* JobServiceImpl::SubmitJob(
    grpc::CallbackServerContext* context,
    const lpd::v1::SubmitJobRequest* request, lpd::v1::Job* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status valid =
      CheckId("request_id", request->request_id(), false);
  if (!valid.ok()) {
    reactor->Finish(ToGrpcStatus(valid));
    return reactor;
  }
  pool_->Post([this, reactor, request, response] {
    FinishWith(reactor,
               scheduler_->Submit(request->job(), request->request_id()),
               response);
  });
  return reactor;
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(
    grpc::CallbackServerContext* context, const lpd::v1::GetJobRequest* request,
    lpd::v1::Job* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status valid = CheckId("job_id", request->job_id(), true);
  if (!valid.ok()) {
    reactor->Finish(ToGrpcStatus(valid));
    return reactor;
  }
  FinishWith(reactor, scheduler_->Get(request->job_id()), response);
  return reactor;
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(
    grpc::CallbackServerContext* context,
    const lpd::v1::ListJobsRequest* request,
    lpd::v1::ListJobsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  FinishWith(reactor, scheduler_->List(*request), response);
  return reactor;
}

grpc::ServerWriteReactor<JobEvent>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext* context,
    const lpd::v1::WatchJobRequest* request) {
  auto* reactor =
      new WatchReactor(scheduler_, pool_, request->job_id(),
                       std::max<int64_t>(0, request->after_sequence()));
  const absl::Status valid = CheckId("job_id", request->job_id(), true);
  if (!valid.ok()) {
    reactor->Finish(ToGrpcStatus(valid));
  } else {
    reactor->Start();
  }
  return reactor;
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(
    grpc::CallbackServerContext* context,
    const lpd::v1::CancelJobRequest* request, lpd::v1::Job* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status valid = CheckId("job_id", request->job_id(), true);
  if (!valid.ok()) {
    reactor->Finish(ToGrpcStatus(valid));
    return reactor;
  }
  pool_->Post([this, reactor, request, response] {
    FinishWith(reactor, scheduler_->Cancel(request->job_id()), response);
  });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::RegisterWorker(
    grpc::CallbackServerContext* context,
    const lpd::v1::RegisterWorkerRequest* request,
    lpd::v1::RegisterWorkerResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status valid = CheckId("name", request->name(), false);
  if (valid.ok()) valid = CheckId("device", request->device(), false);
  if (valid.ok()) valid = CheckId("worker_id", request->worker_id(), false);
  if (!valid.ok()) {
    reactor->Finish(ToGrpcStatus(valid));
    return reactor;
  }
  pool_->Post([this, reactor, request, response] {
    FinishWith(reactor, scheduler_->RegisterWorker(*request), response);
  });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::LeaseTask(
    grpc::CallbackServerContext*, const lpd::v1::LeaseTaskRequest* request,
    lpd::v1::LeaseTaskResponse* response) {
  auto* reactor = new LeaseReactor(scheduler_);
  pool_->Post(
      [reactor, request, response] { reactor->Start(*request, response); });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Heartbeat(
    grpc::CallbackServerContext* context,
    const lpd::v1::HeartbeatRequest* request,
    lpd::v1::HeartbeatResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (request->message().size() > 4096) {
    reactor->Finish(ToGrpcStatus(
        absl::InvalidArgumentError("message: at most 4096 bytes")));
    return reactor;
  }
  FinishWith(reactor, scheduler_->Heartbeat(*request), response);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::CompleteTask(
    grpc::CallbackServerContext* context,
    const lpd::v1::CompleteTaskRequest* request,
    lpd::v1::CompleteTaskResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (request->result_json().size() > 65536) {
    reactor->Finish(ToGrpcStatus(
        absl::InvalidArgumentError("result_json: at most 65536 bytes")));
    return reactor;
  }
  pool_->Post([this, reactor, request] {
    reactor->Finish(ToGrpcStatus(scheduler_->Complete(*request)));
  });
  (void)response;
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::FailTask(
    grpc::CallbackServerContext* context,
    const lpd::v1::FailTaskRequest* request,
    lpd::v1::FailTaskResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  pool_->Post([this, reactor, request] {
    reactor->Finish(ToGrpcStatus(scheduler_->Fail(*request)));
  });
  (void)response;
  return reactor;
}

}  // namespace lpd::server

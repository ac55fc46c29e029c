#include "worker/worker_loop.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/grpc_status.h"
#include "lpd/v1/worker_service.grpc.pb.h"

namespace lpd::worker {
namespace {

using lpd::v1::HeartbeatResponse;
using lpd::v1::WorkerService;

std::chrono::system_clock::time_point DeadlineIn(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

// Sleeps `d` or until `stop`, in small slices.
void SleepUnlessStopped(absl::Duration d, const std::atomic<bool>& stop) {
  const absl::Time end = absl::Now() + d;
  while (!stop.load() && absl::Now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(
        50, absl::ToInt64Milliseconds(end - absl::Now()) + 1)));
  }
}

// Reconnects fast after the scheduler restarts (gRPC's default backoff grows
// to minutes), so heartbeats reach it again well within a lease.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

class Worker {
 public:
  Worker(const WorkerLoopOptions& options, const TaskRunner& runner,
         const std::atomic<bool>& stop)
      : options_(options),
        runner_(runner),
        stop_(stop),
        stub_(WorkerService::NewStub(MakeChannel(options.scheduler_address))) {}

  void Run() {
    std::thread watcher([this] { WatchStop(); });
    int tasks = 0;
    absl::Duration backoff = absl::Milliseconds(100);
    while (!stop_.load()) {
      if (worker_id_.empty() && !Register()) continue;
      auto lease = Lease();
      if (!lease.ok()) {
        if (lease.status().code() == absl::StatusCode::kNotFound) {
          worker_id_.clear();  // the scheduler forgot us: register again
        } else if (!stop_.load()) {
          Log(absl::StrCat("lease: ", lease.status().ToString(), "; retrying"));
          SleepUnlessStopped(backoff, stop_);
          backoff = std::min(backoff * 2, options_.max_backoff);
        }
        continue;
      }
      backoff = absl::Milliseconds(100);
      if (!lease->has_task()) continue;
      RunTask(lease->task());
      if (options_.max_tasks > 0 && ++tasks >= options_.max_tasks) break;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_ = true;
    }
    changed_.notify_all();
    watcher.join();
  }

 private:
  void Log(const std::string& line) {
    if (options_.log) {
      options_.log(line);
    } else {
      std::fprintf(stderr, "lpd-worker: %s\n", line.c_str());
    }
  }

  // Cancels the long poll in flight when a stop is requested.
  void WatchStop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!finished_) {
      if (stop_.load() && lease_context_ != nullptr) {
        lease_context_->TryCancel();
      }
      changed_.wait_for(lock, std::chrono::milliseconds(50));
    }
  }

  bool Register() {
    absl::Duration backoff = absl::Milliseconds(100);
    while (!stop_.load()) {
      lpd::v1::RegisterWorkerRequest request;
      request.set_name(options_.name);
      request.set_device(options_.device);
      if (options_.gpus >= 0) request.set_gpus(options_.gpus);
      request.set_worker_id(previous_id_);
      lpd::v1::RegisterWorkerResponse response;
      grpc::ClientContext context;
      context.set_deadline(DeadlineIn(absl::Seconds(10)));
      const grpc::Status status =
          stub_->RegisterWorker(&context, request, &response);
      if (status.ok()) {
        worker_id_ = previous_id_ = response.worker_id();
        if (response.heartbeat_interval_ms() > 0) {
          heartbeat_interval_ =
              absl::Milliseconds(response.heartbeat_interval_ms());
        }
        Log(absl::StrCat("registered with ", options_.scheduler_address, " as ",
                         worker_id_, " (",
                         options_.gpus >= 0
                             ? absl::StrCat(options_.gpus, " GPUs, ")
                             : std::string(),
                         "heartbeat every ",
                         absl::FormatDuration(heartbeat_interval_), ")"));
        return true;
      }
      Log(absl::StrCat("register with ", options_.scheduler_address, ": ",
                       FromGrpcStatus(status).ToString(), "; retrying"));
      SleepUnlessStopped(backoff, stop_);
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
    return false;
  }

  absl::StatusOr<lpd::v1::LeaseTaskResponse> Lease() {
    lpd::v1::LeaseTaskRequest request;
    request.set_worker_id(worker_id_);
    request.set_wait_ms(
        static_cast<int32_t>(absl::ToInt64Milliseconds(options_.lease_wait)));
    lpd::v1::LeaseTaskResponse response;
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(options_.lease_wait + absl::Seconds(10)));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      lease_context_ = &context;
    }
    const grpc::Status status = stub_->LeaseTask(&context, request, &response);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      lease_context_ = nullptr;
    }
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  // What a running task shares with the heartbeat loop.
  struct Running {
    std::mutex mutex;
    double fraction = 0;
    std::string line;
    std::string stop_reason;  // non-empty: the task must stop
    bool done = false;
    std::condition_variable done_changed;
  };

  void RunTask(const lpd::v1::Task& task) {
    Log(absl::StrFormat("task %s (job %s, attempt %d) leased", task.task_id(),
                        task.job_id(), task.attempt()));
    Running running;
    TaskProgress progress = [&running](double fraction,
                                       const std::string& line) {
      std::lock_guard<std::mutex> lock(running.mutex);
      running.fraction = std::clamp(fraction, 0.0, 1.0);
      running.line = line;
      if (!running.stop_reason.empty()) {
        return absl::CancelledError(running.stop_reason);
      }
      return absl::OkStatus();
    };
    absl::StatusOr<std::string> result = absl::UnknownError("not run");
    std::thread thread([&] {
      result = runner_(task, progress);
      std::lock_guard<std::mutex> lock(running.mutex);
      running.done = true;
      running.done_changed.notify_all();
    });
    // Heartbeats until the task returns.
    HeartbeatResponse::Action action = HeartbeatResponse::ACTION_CONTINUE;
    bool shutting_down = false;
    bool unreachable = false;
    for (;;) {
      double fraction;
      std::string line;
      {
        std::unique_lock<std::mutex> lock(running.mutex);
        running.done_changed.wait_for(
            lock, absl::ToChronoMilliseconds(heartbeat_interval_),
            [&] { return running.done || (stop_.load() && !shutting_down); });
        if (running.done) break;
        if (stop_.load() && !shutting_down) {
          shutting_down = true;
          running.stop_reason =
              absl::StrCat("worker ", options_.name, " is shutting down");
          continue;
        }
        fraction = running.fraction;
        line = running.line;
      }
      lpd::v1::HeartbeatRequest request;
      request.set_worker_id(worker_id_);
      request.set_lease_id(task.lease_id());
      request.set_progress(fraction);
      request.set_message(line.substr(0, 4000));
      HeartbeatResponse response;
      grpc::ClientContext context;
      context.set_deadline(DeadlineIn(absl::Seconds(5)));
      const grpc::Status status =
          stub_->Heartbeat(&context, request, &response);
      if (!status.ok()) {
        // Keep working: the scheduler may be restarting.
        if (!unreachable) {
          Log(absl::StrCat("heartbeat: ", FromGrpcStatus(status).ToString(),
                           "; the task goes on"));
        }
        unreachable = true;
        continue;
      }
      if (unreachable) Log("heartbeat: the scheduler answers again");
      unreachable = false;
      if (response.action() != HeartbeatResponse::ACTION_CONTINUE &&
          action == HeartbeatResponse::ACTION_CONTINUE) {
        action = response.action();
        std::lock_guard<std::mutex> lock(running.mutex);
        running.stop_reason =
            action == HeartbeatResponse::ACTION_CANCEL
                ? absl::StrCat("job ", task.job_id(), " was cancelled")
                : absl::StrCat("lease ", task.lease_id(), " was lost");
        Log(absl::StrCat(running.stop_reason, "; stopping task ",
                         task.task_id()));
      }
    }
    thread.join();
    if (action != HeartbeatResponse::ACTION_CONTINUE) {
      Log(absl::StrCat(
          "task ", task.task_id(), " stopped: ",
          result.ok() ? "finished anyway" : result.status().ToString()));
      return;  // the scheduler no longer wants a report
    }
    if (result.ok()) {
      lpd::v1::CompleteTaskRequest request;
      request.set_worker_id(worker_id_);
      request.set_lease_id(task.lease_id());
      request.set_result_json(*result);
      Report(task, "complete", [&](grpc::ClientContext* context) {
        lpd::v1::CompleteTaskResponse response;
        return stub_->CompleteTask(context, request, &response);
      });
      return;
    }
    lpd::v1::FailTaskRequest request;
    request.set_worker_id(worker_id_);
    request.set_lease_id(task.lease_id());
    request.set_error(std::string(result.status().message()).substr(0, 8000));
    request.set_retryable(shutting_down ||
                          IsRetryableTaskError(result.status()));
    // Stopped by our own shutdown (DISTILL checkpoints first): not a failure.
    request.set_handed_back(shutting_down);
    Log(absl::StrCat("task ", task.task_id(), " failed (",
                     request.retryable() ? "retryable" : "final",
                     "): ", result.status().ToString()));
    Report(task, "fail", [&](grpc::ClientContext* context) {
      lpd::v1::FailTaskResponse response;
      return stub_->FailTask(context, request, &response);
    });
  }

  // Delivers a result until the scheduler takes it or refuses it for good;
  // gives up after a minute once a stop was requested.
  template <typename Call>
  void Report(const lpd::v1::Task& task, absl::string_view what, Call call) {
    absl::Duration backoff = absl::Milliseconds(100);
    const absl::Time started = absl::Now();
    for (;;) {
      grpc::ClientContext context;
      context.set_deadline(DeadlineIn(absl::Seconds(10)));
      const absl::Status status = FromGrpcStatus(call(&context));
      if (status.ok()) {
        Log(absl::StrCat("task ", task.task_id(), ": reported ", what));
        return;
      }
      const bool transient =
          status.code() == absl::StatusCode::kUnavailable ||
          status.code() == absl::StatusCode::kDeadlineExceeded ||
          status.code() == absl::StatusCode::kUnknown ||
          status.code() == absl::StatusCode::kInternal;
      if (!transient ||
          (stop_.load() && absl::Now() - started > absl::Minutes(1))) {
        Log(absl::StrCat("task ", task.task_id(), ": ", what,
                         " not taken: ", status.ToString()));
        return;
      }
      std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
  }

  const WorkerLoopOptions& options_;
  const TaskRunner& runner_;
  const std::atomic<bool>& stop_;
  std::unique_ptr<WorkerService::Stub> stub_;
  std::string worker_id_;
  std::string previous_id_;
  absl::Duration heartbeat_interval_ = absl::Seconds(2);
  std::mutex mutex_;
  std::condition_variable changed_;
  grpc::ClientContext* lease_context_ = nullptr;
  bool finished_ = false;
};

}  // namespace

bool IsRetryableTaskError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kDataLoss:
      return false;
    default:
      return true;
  }
}

absl::Status RunWorkerLoop(const WorkerLoopOptions& options,
                           const TaskRunner& runner,
                           const std::atomic<bool>& stop) {
  if (options.scheduler_address.empty()) {
    return absl::InvalidArgumentError("--scheduler: required (host:port)");
  }
  if (!runner) return absl::InvalidArgumentError("no task runner");
  WorkerLoopOptions resolved = options;
  if (resolved.name.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    resolved.name = absl::StrCat(host, ":", getpid());
  }
  Worker worker(resolved, runner, stop);
  worker.Run();
  return absl::OkStatus();
}

}  // namespace lpd::worker

// The gRPC face of the scheduler (DESIGN §2): JobService for users,
// WorkerService for lpd-worker processes, both on the callback API.
//
// Threading. Reactor threads do only what is quick and in memory (GetJob,
// ListJobs, Heartbeat, registering a long poll). Everything that commits to
// the job store (a SQLite transaction with fsync) runs on the TaskPool, which
// finishes the reactor when done. Long polls (LeaseTask) and watches
// (WatchJob) hold no thread while they wait: the scheduler calls back when a
// task or an event is ready. Status codes come from lpd::ToGrpcStatus only.
#ifndef LPD_SERVER_GRPC_SERVICES_H_
#define LPD_SERVER_GRPC_SERVICES_H_

#include <grpcpp/grpcpp.h>

#include "lpd/v1/job_service.grpc.pb.h"
#include "lpd/v1/worker_service.grpc.pb.h"
#include "server/scheduler.h"
#include "server/task_pool.h"

namespace lpd::server {

// Requests are bounded: a longer request_id, job id or message is refused.
inline constexpr size_t kMaxIdBytes = 128;
inline constexpr int kMaxLeaseWaitMs = 60000;

class JobServiceImpl final : public lpd::v1::JobService::CallbackService {
 public:
  // Both must outlive the service.
  JobServiceImpl(Scheduler* scheduler, TaskPool* pool)
      : scheduler_(scheduler), pool_(pool) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context,
                                      const lpd::v1::SubmitJobRequest* request,
                                      lpd::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const lpd::v1::GetJobRequest* request,
                                   lpd::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(
      grpc::CallbackServerContext* context,
      const lpd::v1::ListJobsRequest* request,
      lpd::v1::ListJobsResponse* response) override;
  grpc::ServerWriteReactor<lpd::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* context,
      const lpd::v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const lpd::v1::CancelJobRequest* request,
                                      lpd::v1::Job* response) override;

 private:
  Scheduler* scheduler_;
  TaskPool* pool_;
};

class WorkerServiceImpl final : public lpd::v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(Scheduler* scheduler, TaskPool* pool)
      : scheduler_(scheduler), pool_(pool) {}

  grpc::ServerUnaryReactor* RegisterWorker(
      grpc::CallbackServerContext* context,
      const lpd::v1::RegisterWorkerRequest* request,
      lpd::v1::RegisterWorkerResponse* response) override;
  grpc::ServerUnaryReactor* LeaseTask(
      grpc::CallbackServerContext* context,
      const lpd::v1::LeaseTaskRequest* request,
      lpd::v1::LeaseTaskResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(
      grpc::CallbackServerContext* context,
      const lpd::v1::HeartbeatRequest* request,
      lpd::v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* CompleteTask(
      grpc::CallbackServerContext* context,
      const lpd::v1::CompleteTaskRequest* request,
      lpd::v1::CompleteTaskResponse* response) override;
  grpc::ServerUnaryReactor* FailTask(
      grpc::CallbackServerContext* context,
      const lpd::v1::FailTaskRequest* request,
      lpd::v1::FailTaskResponse* response) override;

 private:
  Scheduler* scheduler_;
  TaskPool* pool_;
};

}  // namespace lpd::server

#endif  // LPD_SERVER_GRPC_SERVICES_H_

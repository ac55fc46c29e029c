// lpd-scheduler: the job service (DESIGN §2). Wires the scheduler core
// (server/scheduler.h, its SQLite job store), SELECT (selection/
// select_phase.h) and the gRPC services; serves the standard health service
// (NOT_SERVING while the job store cannot be written). SIGTERM or SIGINT:
// stop taking calls, finish those in flight (up to --grace-seconds), flush
// batched progress, close the store.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/cli_args.h"
#include "base/termination_signals.h"
#include "metrics/endpoint.h"
#include "metrics/registry.h"
#include "runtime/select_phase.h"
#include "server/grpc_services.h"
#include "server/scheduler.h"
#include "server/scheduler_metrics.h"
#include "server/task_pool.h"
#include "storage/object_store.h"
#include "storage/s3_flags.h"

namespace {

const std::vector<lpd::FlagSpec> kFlags = [] {
  std::vector<lpd::FlagSpec> flags = {
      {"listen", false, false,
       "address:port to serve on (default 127.0.0.1:50051; port 0 picks a "
       "free one)"},
      {"state-dir", false, false,
       "folder of the job store, jobs.db (default ./lpd-state)"},
      {"port-file", false, false,
       "write the port actually bound to this file (for --listen ...:0)"},
      {"lease-seconds", false, false,
       "task lease, renewed by heartbeats (default 30)"},
      {"heartbeat-ms", false, false,
       "heartbeat interval asked of workers (default 2000)"},
      {"max-attempts", false, false,
       "attempts per task before its job fails (default 3)"},
      {"score-shards", false, false,
       "SCORE tasks per job, taken by workers in parallel (default 4)"},
      {"restart-grace-seconds", false, false,
       "after a restart, leases run out no sooner than this (default 30)"},
      {"grace-seconds", false, false,
       "on SIGTERM, how long calls in flight may finish (default 10)"},
      {"metrics-listen", false, false,
       "address:port of the Prometheus /metrics endpoint (default: none; "
       "port 0 picks a free one)"},
      {"metrics-port-file", false, false,
       "write the metrics port actually bound to this file"},
  };
  for (const lpd::FlagSpec& spec : lpd::storage::S3FlagSpecs()) {
    flags.push_back(spec);
  }
  return flags;
}();

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "lpd-scheduler: %s\n", status.ToString().c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // SIGTERM/SIGINT: stop serving, gracefully (below).
  static std::mutex mutex;
  static std::condition_variable stop_changed;
  static bool stop = false;
  static int stop_signal = 0;
  lpd::HandleTerminationSignals([](int signal) {
    std::lock_guard<std::mutex> lock(mutex);
    stop = true;
    stop_signal = signal;
    stop_changed.notify_all();
  });
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    std::printf("usage: lpd-scheduler [flags]\n%s",
                lpd::CliArgs::Usage(kFlags).c_str());
    return 0;
  }
  auto flags = lpd::CliArgs::Parse(args, kFlags);
  if (!flags.ok()) {
    std::fprintf(stderr, "usage: lpd-scheduler [flags]\n%s",
                 lpd::CliArgs::Usage(kFlags).c_str());
    return Fail(flags.status());
  }
  auto s3_config = lpd::storage::S3ConfigFromFlags(*flags);
  if (!s3_config.ok()) return Fail(s3_config.status());
  lpd::storage::SetDefaultS3Config(*s3_config);

  lpd::server::SchedulerOptions options;
  options.state_dir = flags->Get("state-dir", "lpd-state");
  const std::string listen = flags->Get("listen", "127.0.0.1:50051");
  options.holder = absl::StrCat("lpd-scheduler --listen ", listen);
  auto lease = flags->GetInt("lease-seconds", 30);
  auto heartbeat = flags->GetInt("heartbeat-ms", 2000);
  auto attempts = flags->GetInt("max-attempts", 3);
  auto shards = flags->GetInt("score-shards", 4);
  auto grace = flags->GetInt("grace-seconds", 10);
  auto restart_grace = flags->GetInt("restart-grace-seconds", 30);
  for (const auto* value :
       {&lease, &heartbeat, &attempts, &shards, &grace, &restart_grace}) {
    if (!value->ok()) return Fail(value->status());
  }
  if (*lease < 1 || *heartbeat < 10 || *attempts < 1 || *shards < 1 ||
      *grace < 0 || *restart_grace < 0) {
    return Fail(absl::InvalidArgumentError(
        "--lease-seconds, --max-attempts and --score-shards must be >= 1, "
        "--heartbeat-ms >= 10, --grace-seconds and --restart-grace-seconds "
        ">= 0"));
  }
  options.lease_duration = absl::Seconds(*lease);
  options.restart_grace = absl::Seconds(*restart_grace);
  options.heartbeat_interval = absl::Milliseconds(*heartbeat);
  options.max_attempts = static_cast<int>(*attempts);
  options.score_shards = static_cast<int>(*shards);
  options.run_select = [](const lpd::v1::Job& job,
                          int score_shards) -> absl::StatusOr<std::string> {
    auto result = lpd::selection::RunSelectTask(job.spec(), score_shards);
    if (!result.ok()) return result.status();
    return result->dump();
  };
  auto scheduler = lpd::server::Scheduler::Open(options);
  if (!scheduler.ok()) return Fail(scheduler.status());

  lpd::server::TaskPool pool(4);
  lpd::server::JobServiceImpl job_service(scheduler->get(), &pool);
  lpd::server::WorkerServiceImpl worker_service(scheduler->get(), &pool);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  // A port in use is an error: with gRPC's default SO_REUSEPORT a second
  // scheduler would bind it too and the kernel would share the calls out.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&job_service);
  builder.RegisterService(&worker_service);
  builder.SetMaxReceiveMessageSize(4 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen, " (in use, or not an address here)")));
  }
  if (flags->Has("port-file")) {
    lpd::metrics::WritePortFile(flags->Get("port-file"), port);
  }
  std::fprintf(stderr, "lpd-scheduler: serving on port %d, state in %s\n", port,
               options.state_dir.c_str());

  // Prometheus: /metrics, filled from the scheduler at each scrape.
  lpd::metrics::Registry registry;
  lpd::server::RegisterSchedulerMetrics(registry, **scheduler, LPD_VERSION);
  std::unique_ptr<lpd::metrics::MetricsHttpServer> metrics_server;
  if (flags->Has("metrics-listen")) {
    auto started =
        lpd::metrics::ServeRegistry(registry, flags->Get("metrics-listen"),
                                    flags->Get("metrics-port-file"));
    if (!started.ok()) return Fail(started.status());
    metrics_server = std::move(*started);
    std::fprintf(stderr, "lpd-scheduler: metrics on port %d (/metrics)\n",
                 metrics_server->port());
  }

  // Health: SERVING while the store is writable; checked every second.
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  {
    std::unique_lock<std::mutex> lock(mutex);
    while (!stop) {
      if (health != nullptr) {
        const bool healthy = (*scheduler)->Healthy();
        health->SetServingStatus(healthy);  // the server as a whole: ""
        for (const char* service :
             {"lpd.v1.JobService", "lpd.v1.WorkerService"}) {
          health->SetServingStatus(service, healthy);
        }
      }
      stop_changed.wait_for(lock, std::chrono::seconds(1));
    }
  }
  std::fprintf(stderr, "lpd-scheduler: signal %d, shutting down\n",
               stop_signal);
  if (health != nullptr) health->SetServingStatus(false);
  (*scheduler)->Shutdown();  // answers pending long polls, flushes progress
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::seconds(*grace));
  server->Wait();
  metrics_server.reset();
  scheduler->reset();
  std::fprintf(stderr, "lpd-scheduler: stopped\n");
  return 0;
}

// The scheduler under load (issue 5's scale figures): starts the real
// lpd-scheduler on loopback with a fresh state folder, stores --jobs jobs,
// lets --workers simulated workers lease a task each and heartbeat every
// --heartbeat-ms, and meanwhile times SubmitJob, GetJob and ListJobs calls
// from a client. Prints p50/p99/max per call, the scheduler's CPU use over
// the measured window (from /proc/PID/stat) and, beside them, this disk's
// fsync latency (4 KiB write + fdatasync in the state folder).
//
//   scheduler_load --scheduler-bin build/server/lpd-scheduler
//       [--jobs 1000] [--workers 100] [--heartbeat-ms 1000] [--seconds 30]
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/cli_args.h"
#include "lpd/v1/job_service.grpc.pb.h"
#include "lpd/v1/worker_service.grpc.pb.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const std::vector<lpd::FlagSpec> kFlags = {
    {"scheduler-bin", true, false, "path of lpd-scheduler"},
    {"jobs", false, false, "jobs stored before measuring (default 1000)"},
    {"workers", false, false, "simulated workers (default 100)"},
    {"heartbeat-ms", false, false, "heartbeat period per worker (1000)"},
    {"seconds", false, false, "measured window (default 30)"},
    {"rate", false, false, "client calls per second of each kind (20)"},
};

struct Stats {
  std::vector<double> ms;
  int errors = 0;
  void Print(const char* name) {
    std::sort(ms.begin(), ms.end());
    auto at = [&](double q) {
      return ms.empty() ? 0.0
                        : ms[std::min(ms.size() - 1,
                                      static_cast<size_t>(q * ms.size()))];
    };
    std::printf(
        "%-10s n=%-6zu p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  "
        "errors %d\n",
        name, ms.size(), at(0.5), at(0.99), ms.empty() ? 0.0 : ms.back(),
        errors);
  }
};

double Since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start)
      .count();
}

lpd::v1::CompressionJob MakeSpec(int i, const std::string& root) {
  lpd::v1::CompressionJob job;
  job.set_api_version("lpd/v1");
  job.set_kind("CompressionJob");
  job.mutable_metadata()->set_name("load-" + std::to_string(i));
  auto* spec = job.mutable_spec();
  spec->mutable_model()->set_uri("file://" + root + "/model/");
  spec->mutable_data()->mutable_train()->set_uri("file://" + root + "/data/");
  spec->mutable_output()->set_uri("file://" + root + "/out-" +
                                  std::to_string(i) + "/");
  return job;
}

// utime + stime of `pid`, in seconds.
double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');
  std::istringstream rest(text.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

void FsyncLatency(const std::string& dir) {
  Stats stats;
  const std::string path = dir + "/fsync-probe";
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::string block(4096, 'x');
  for (int i = 0; i < 200; ++i) {
    const auto start = Clock::now();
    if (pwrite(fd, block.data(), block.size(), 4096 * (i % 16)) < 0 ||
        fdatasync(fd) != 0) {
      ++stats.errors;
    }
    stats.ms.push_back(Since(start));
  }
  close(fd);
  fs::remove(path);
  stats.Print("fsync");
}

}  // namespace

int main(int argc, char** argv) {
  auto flags = lpd::CliArgs::Parse(
      std::vector<std::string>(argv + 1, argv + argc), kFlags);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n%s", flags.status().ToString().c_str(),
                 lpd::CliArgs::Usage(kFlags).c_str());
    return 2;
  }
  const int jobs = static_cast<int>(flags->GetInt("jobs", 1000).value_or(1000));
  const int workers =
      static_cast<int>(flags->GetInt("workers", 100).value_or(100));
  const int heartbeat_ms =
      static_cast<int>(flags->GetInt("heartbeat-ms", 1000).value_or(1000));
  const int seconds =
      static_cast<int>(flags->GetInt("seconds", 30).value_or(30));
  const int rate = static_cast<int>(flags->GetInt("rate", 20).value_or(20));

  char pattern[] = "/tmp/lpd_load_XXXXXX";
  const std::string root = mkdtemp(pattern);
  const std::string port_file = root + "/port";
  const pid_t pid = fork();
  if (pid == 0) {
    const int log = open((root + "/scheduler.log").c_str(),
                         O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(log, 1);
    dup2(log, 2);
    const std::string bin = flags->Get("scheduler-bin");
    const std::string state = root + "/state";
    execl(bin.c_str(), bin.c_str(), "--listen", "127.0.0.1:0", "--state-dir",
          state.c_str(), "--port-file", port_file.c_str(), "--lease-seconds",
          "30", "--heartbeat-ms", std::to_string(heartbeat_ms).c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 200 && !fs::exists(port_file); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::string port;
  std::ifstream(port_file) >> port;
  if (port.empty()) {
    std::fprintf(stderr, "the scheduler did not start; see %s/scheduler.log\n",
                 root.c_str());
    return 1;
  }
  auto channel = grpc::CreateChannel("127.0.0.1:" + port,
                                     grpc::InsecureChannelCredentials());
  auto jobs_stub = lpd::v1::JobService::NewStub(channel);

  // 1. Store the jobs.
  Stats fill;
  for (int i = 0; i < jobs; ++i) {
    lpd::v1::SubmitJobRequest request;
    *request.mutable_job() = MakeSpec(i, root);
    lpd::v1::Job job;
    grpc::ClientContext context;
    const auto start = Clock::now();
    if (!jobs_stub->SubmitJob(&context, request, &job).ok()) ++fill.errors;
    fill.ms.push_back(Since(start));
  }
  std::printf("stored %d jobs\n", jobs);
  fill.Print("fill");

  // 2. Workers: each registers, leases one task, heartbeats it.
  std::atomic<bool> stop{false};
  std::atomic<int> heartbeat_errors{0}, heartbeats{0}, leased{0};
  std::vector<std::thread> worker_threads;
  const int threads = 10;
  for (int t = 0; t < threads; ++t) {
    worker_threads.emplace_back([&, t] {
      auto stub = lpd::v1::WorkerService::NewStub(channel);
      std::vector<std::string> leases;
      std::vector<std::string> ids;
      for (int w = t; w < workers; w += threads) {
        lpd::v1::RegisterWorkerRequest reg;
        reg.set_name("sim-" + std::to_string(w));
        reg.set_device("cpu");
        lpd::v1::RegisterWorkerResponse registered;
        grpc::ClientContext c1;
        if (!stub->RegisterWorker(&c1, reg, &registered).ok()) continue;
        lpd::v1::LeaseTaskRequest lease;
        lease.set_worker_id(registered.worker_id());
        lease.set_wait_ms(1000);
        lpd::v1::LeaseTaskResponse got;
        grpc::ClientContext c2;
        if (stub->LeaseTask(&c2, lease, &got).ok() && got.has_task()) {
          ids.push_back(registered.worker_id());
          leases.push_back(got.task().lease_id());
          ++leased;
        }
      }
      while (!stop.load()) {
        const auto round = Clock::now();
        for (size_t i = 0; i < leases.size(); ++i) {
          lpd::v1::HeartbeatRequest beat;
          beat.set_worker_id(ids[i]);
          beat.set_lease_id(leases[i]);
          beat.set_progress(0.5);
          beat.set_message("simulated");
          lpd::v1::HeartbeatResponse response;
          grpc::ClientContext context;
          if (stub->Heartbeat(&context, beat, &response).ok()) {
            ++heartbeats;
          } else {
            ++heartbeat_errors;
          }
        }
        std::this_thread::sleep_until(round +
                                      std::chrono::milliseconds(heartbeat_ms));
      }
    });
  }
  const auto leasing = Clock::now();
  while (leased.load() < workers && Since(leasing) < 20000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::printf(
      "%d simulated workers holding a lease, heartbeating every %d "
      "ms\n",
      leased.load(), heartbeat_ms);

  // 3. Measure client calls while the workers heartbeat.
  Stats submit, get, list;
  const double cpu_start = CpuSeconds(pid);
  const auto window = Clock::now();
  int n = 0;
  std::vector<std::string> ids;
  while (Since(window) < seconds * 1000.0) {
    const auto tick = Clock::now();
    {
      lpd::v1::SubmitJobRequest request;
      *request.mutable_job() = MakeSpec(jobs + n, root);
      lpd::v1::Job job;
      grpc::ClientContext context;
      const auto start = Clock::now();
      if (jobs_stub->SubmitJob(&context, request, &job).ok()) {
        ids.push_back(job.id());
      } else {
        ++submit.errors;
      }
      submit.ms.push_back(Since(start));
    }
    if (!ids.empty()) {
      lpd::v1::GetJobRequest request;
      request.set_job_id(ids[n % ids.size()]);
      lpd::v1::Job job;
      grpc::ClientContext context;
      const auto start = Clock::now();
      if (!jobs_stub->GetJob(&context, request, &job).ok()) ++get.errors;
      get.ms.push_back(Since(start));
    }
    {
      lpd::v1::ListJobsRequest request;
      request.set_page_size(50);
      if (n % 2 == 1) request.set_state(lpd::v1::JOB_STATE_QUEUED);
      lpd::v1::ListJobsResponse response;
      grpc::ClientContext context;
      const auto start = Clock::now();
      if (!jobs_stub->ListJobs(&context, request, &response).ok()) {
        ++list.errors;
      }
      list.ms.push_back(Since(start));
    }
    ++n;
    std::this_thread::sleep_until(tick +
                                  std::chrono::microseconds(1000000 / rate));
  }
  const double window_s = Since(window) / 1000.0;
  const double cpu = CpuSeconds(pid) - cpu_start;
  stop = true;
  for (std::thread& t : worker_threads) t.join();

  std::printf(
      "window %.1f s, %d stored jobs at start, %d heartbeats (%d "
      "errors)\n",
      window_s, jobs, heartbeats.load(), heartbeat_errors.load());
  submit.Print("submit");
  get.Print("get");
  list.Print("list(50)");
  std::printf("scheduler CPU: %.2f s over %.1f s = %.1f%% of one core\n", cpu,
              window_s, 100 * cpu / window_s);
  FsyncLatency(root);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  fs::remove_all(root);
  return 0;
}

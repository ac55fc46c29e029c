// The service end to end, with real processes on loopback: lpd-scheduler
// (SQLite job store in a temporary folder) and lpd-worker serve processes
// running the engine on the CPU, a tiny SD-v1.5-layout U-Net and a
// synthetic training set (issue 5's integration tests).
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/data/synthetic_dataset.h"
#include "engine/formats/unet_config.h"
#include "engine/model/model_loader.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "job/checkpoints.h"
#include "job/spec.h"
#include "lpd/v1/job_service.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "selection/knapsack.h"
#include "tests/service_test_support.h"
#include "tests/worker_test_support.h"

namespace {

namespace fs = std::filesystem;
using lpd::testing::ChildProcess;
using lpd::testing::Golden;
using lpd::testing::HttpBody;
using lpd::testing::ReadFileText;
using lpd::testing::WaitFor;
using lpd::v1::Job;
using lpd::v1::JobEvent;
using lpd::v1::JobService;
using lpd::v1::JobState;
using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

struct JobOptions {
  std::string name = "tiny";
  std::string model;   // default: tiny-sd15
  std::string output;  // default: dir_/out-<name>
  int steps = 8;
  int checkpoint_every = 4;
  int calibration_samples = 4;
  std::string criterion = "output_loss";
  std::string target_ratio = "0.3";
  int gpus = 1;
  // spec.prune.additivity_sets: 0 here, the check has tests of its own
  // (tests/worker_run_test.cc) and costs ~10 s of CPU per job.
  int additivity_sets = 0;
};

JobOptions Named(const std::string& name, int steps = 8,
                 int checkpoint_every = 4) {
  JobOptions o;
  o.name = name;
  o.steps = steps;
  o.checkpoint_every = checkpoint_every;
  return o;
}

class ServiceTest : public lpd::testing::TempDirTest {
 protected:
  void SetUp() override {
    lpd::testing::TempDirTest::SetUp();
    WriteDataset(48);
  }

  void WriteDataset(int samples) {
    auto config = lpd::engine::LoadUNetConfig(Golden("tiny-sd15"));
    ASSERT_TRUE(config.ok()) << config.status();
    lpd::engine::SyntheticDatasetOptions options;
    options.num_samples = samples;
    options.latent_size = 16;
    options.seq_len = 7;
    options.shard_size = 16;
    options.seed = 5;
    auto manifest =
        lpd::engine::WriteSyntheticDataset(*config, options, dir_ + "/data");
    ASSERT_TRUE(manifest.ok()) << manifest.status();
  }

  // Starts lpd-scheduler on a free port (or `port`), state in dir_/state.
  void StartScheduler(int port = 0, int lease_seconds = 2) {
    const std::string port_file = dir_ + "/port";
    fs::remove(port_file);
    fs::remove(dir_ + "/metrics-port");
    scheduler_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{LPD_SCHEDULER_BIN,
                                 "--listen",
                                 "127.0.0.1:" + std::to_string(port),
                                 "--state-dir",
                                 dir_ + "/state",
                                 "--port-file",
                                 port_file,
                                 "--lease-seconds",
                                 std::to_string(lease_seconds),
                                 "--heartbeat-ms",
                                 "200",
                                 "--max-attempts",
                                 "3",
                                 "--score-shards",
                                 "4",
                                 "--grace-seconds",
                                 "2",
                                 "--metrics-listen",
                                 "127.0.0.1:0",
                                 "--metrics-port-file",
                                 dir_ + "/metrics-port"},
        dir_ + "/scheduler.log");
    ASSERT_TRUE(WaitFor([&] { return fs::exists(port_file); }, 20s))
        << scheduler_->Log();
    port_ = std::stoi(ReadFileText(port_file));
    ASSERT_TRUE(
        WaitFor([&] { return fs::exists(dir_ + "/metrics-port"); }, 20s));
    metrics_port_ = std::stoi(ReadFileText(dir_ + "/metrics-port"));
    address_ = "127.0.0.1:" + std::to_string(port_);
    stub_ = JobService::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }

  // Starts `lpd-worker serve` named `name`; waits until it registered.
  ChildProcess* StartWorker(const std::string& name) {
    const std::string log = dir_ + "/" + name + ".log";
    workers_[name] = std::make_unique<ChildProcess>(
        std::vector<std::string>{
            LPD_WORKER_BIN, "serve", "--scheduler", address_, "--device", "cpu",
            "--threads", "1", "--name", name, "--lease-wait-ms", "2000",
            "--metrics-listen", "127.0.0.1:0", "--metrics-port-file",
            dir_ + "/" + name + ".metrics-port"},
        log);
    ChildProcess* worker = workers_[name].get();
    EXPECT_TRUE(WaitFor(
        [&] { return worker->Log().find("registered") != std::string::npos; },
        30s))
        << worker->Log();
    return worker;
  }

  lpd::v1::CompressionJob Spec(const JobOptions& o) {
    const std::string model =
        o.model.empty() ? fs::canonical(Golden("tiny-sd15")).string() : o.model;
    const std::string output =
        o.output.empty() ? dir_ + "/out-" + o.name : o.output;
    const std::string yaml =
        "apiVersion: lpd/v1\nkind: CompressionJob\n"
        "metadata: {name: " +
        o.name +
        "}\n"
        "spec:\n"
        "  model: {uri: \"file://" +
        model +
        "/\", prediction_type: epsilon}\n"
        "  data:\n"
        "    train: {uri: \"file://" +
        dir_ +
        "/data/\"}\n"
        "    calibration_samples: " +
        std::to_string(o.calibration_samples) +
        "\n    eval_samples: 4\n"
        "  prune:\n"
        "    target_ratio: " +
        o.target_ratio +
        "\n"
        "    criterion: " +
        o.criterion +
        "\n"
        "    units: [resnet, attention]\n"
        "    additivity_sets: " +
        std::to_string(o.additivity_sets) +
        "\n"
        "  distill:\n"
        "    steps: " +
        std::to_string(o.steps) +
        "\n"
        "    batch_size: 2\n    learning_rate: 1.0e-4\n    warmup_steps: 2\n"
        "    precision: fp32\n"
        "    checkpoint_every: " +
        std::to_string(o.checkpoint_every) +
        "\n    gpus: " + std::to_string(o.gpus) +
        "\n"
        "  output: {uri: \"file://" +
        output +
        "/\"}\n"
        "  seed: 7\n  device: cpu\n";
    auto spec = lpd::job::ParseJobSpecYaml(yaml, "job.yaml");
    EXPECT_TRUE(spec.ok()) << spec.status();
    return spec.ok() ? *spec : lpd::v1::CompressionJob();
  }

  grpc::Status Submit(const lpd::v1::CompressionJob& spec, Job* job,
                      const std::string& request_id = "") {
    lpd::v1::SubmitJobRequest request;
    *request.mutable_job() = spec;
    request.set_request_id(request_id);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    return stub_->SubmitJob(&context, request, job);
  }

  Job MustSubmit(const JobOptions& o) {
    Job job;
    const grpc::Status status = Submit(Spec(o), &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return job;
  }

  absl::StatusOr<Job> Get(const std::string& id) {
    lpd::v1::GetJobRequest request;
    request.set_job_id(id);
    Job job;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 5s);
    const grpc::Status status = stub_->GetJob(&context, request, &job);
    if (!status.ok()) {
      return absl::UnavailableError(status.error_message());
    }
    return job;
  }

  // Waits until the job is in `state`; its last view.
  Job WaitForState(const std::string& id, JobState state,
                   std::chrono::milliseconds timeout = 180s) {
    Job last;
    WaitFor(
        [&] {
          auto job = Get(id);
          if (job.ok()) last = *job;
          return job.ok() && job->state() == state;
        },
        timeout);
    EXPECT_EQ(JobState_Name(last.state()), JobState_Name(state))
        << "job " << id << " error: " << last.error() << "\n"
        << DescribeLogs();
    return last;
  }

  // Every event of an ended job after `after` (the watch ends with it).
  std::vector<JobEvent> Events(const std::string& id, int64_t after = 0) {
    lpd::v1::WatchJobRequest request;
    request.set_job_id(id);
    request.set_after_sequence(after);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 20s);
    auto reader = stub_->WatchJob(&context, request);
    std::vector<JobEvent> events;
    JobEvent event;
    while (reader->Read(&event)) events.push_back(event);
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    return events;
  }

  static std::string JoinMessages(const std::vector<JobEvent>& events) {
    std::string all;
    for (const JobEvent& e : events) all += e.message() + "\n";
    return all;
  }

  // The newest complete checkpoint step under `output`, or -1.
  static int64_t LatestStep(const std::string& output) {
    const std::string latest = ReadFileText(output + "/checkpoints/LATEST");
    if (latest.rfind("step-", 0) != 0) return -1;
    return std::stoll(latest.substr(5));
  }

  // The name of the worker whose log says it leased a task of `phase`
  // ("distill", "score") for `job`, the latest such lease.
  std::string WorkerHolding(const std::string& job, const std::string& phase) {
    std::string holder;
    for (const auto& [name, worker] : workers_) {
      const std::string log = worker->Log();
      if (log.find(job + "/" + phase) != std::string::npos) holder = name;
    }
    return holder;
  }

  std::string DescribeLogs() {
    std::string all = "--- scheduler ---\n" +
                      (scheduler_ ? scheduler_->Log() : std::string());
    for (const auto& [name, worker] : workers_) {
      all += "--- " + name + " ---\n" + worker->Log();
    }
    return all.size() > 20000 ? all.substr(all.size() - 20000) : all;
  }

  std::unique_ptr<ChildProcess> scheduler_;
  std::map<std::string, std::unique_ptr<ChildProcess>> workers_;
  int port_ = 0, metrics_port_ = 0;
  std::string address_;
  std::unique_ptr<JobService::Stub> stub_;
};

TEST_F(ServiceTest, JobRunsEveryPhaseWithScoringSpreadOverTwoWorkers) {
  StartScheduler();
  {
    auto health = grpc::health::v1::Health::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(health->Check(&context, request, &response).ok());
    EXPECT_EQ(response.status(),
              grpc::health::v1::HealthCheckResponse::SERVING);
  }
  StartWorker("w1");
  StartWorker("w2");
  const Job submitted = MustSubmit(Named("e2e"));
  EXPECT_THAT(submitted.id(), ::testing::StartsWith("job-"));
  EXPECT_EQ(submitted.state(), lpd::v1::JOB_STATE_QUEUED);
  const Job done = WaitForState(submitted.id(), lpd::v1::JOB_STATE_SUCCEEDED);
  EXPECT_DOUBLE_EQ(done.progress(), 1.0);

  // Scoring shards ran on both workers.
  for (const char* name : {"w1", "w2"}) {
    EXPECT_THAT(workers_[name]->Log(), HasSubstr(submitted.id() + "/score"))
        << name << " ran no scoring shard\n"
        << DescribeLogs();
  }
  // Every phase left its artifact; final/ reloads.
  const std::string out = dir_ + "/out-e2e";
  for (int shard = 0; shard < 4; ++shard) {
    EXPECT_TRUE(fs::exists(out + "/scores/shard-" + std::to_string(shard) +
                           "-of-4.json"));
  }
  auto plan = lpd::selection::PlanFromJson(
      nlohmann::json::parse(ReadFileText(out + "/plan.json")));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GE(plan->achieved_ratio, 0.3);
  EXPECT_EQ(LatestStep(out), 8);
  EXPECT_TRUE(fs::exists(out + "/report.json"));
  auto student = lpd::engine::LoadModel(out + "/final", {});
  ASSERT_TRUE(student.ok()) << student.status();
  EXPECT_EQ((*student)->NumParameters(),
            plan->total_params - plan->removed_params);

  // The events tell the story in order, numbered 1, 2, 3, ...
  const std::vector<JobEvent> events = Events(submitted.id());
  ASSERT_FALSE(events.empty());
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1));
  }
  EXPECT_EQ(events.back().state(), lpd::v1::JOB_STATE_SUCCEEDED);
  std::vector<lpd::v1::Phase> phases;
  for (const JobEvent& e : events) {
    if (phases.empty() || phases.back() != e.phase()) {
      if (e.phase() != lpd::v1::PHASE_UNSPECIFIED) phases.push_back(e.phase());
    }
  }
  EXPECT_THAT(phases, ::testing::IsSupersetOf(
                          {lpd::v1::PHASE_SCORE, lpd::v1::PHASE_SELECT,
                           lpd::v1::PHASE_DISTILL, lpd::v1::PHASE_EVALUATE,
                           lpd::v1::PHASE_EXPORT}));

  // Watching from a given event number gives the rest only.
  const std::vector<JobEvent> tail = Events(submitted.id(), 3);
  ASSERT_EQ(tail.size(), events.size() - 3);
  EXPECT_EQ(tail.front().sequence(), 4);

  // lpdctl sees the same: watch exits 0 for a job that succeeded.
  auto watched =
      lpd::testing::RunCommand(std::string(LPD_LPDCTL_BIN) + " watch " +
                               submitted.id() + " --server " + address_);
  EXPECT_EQ(watched.exit_code, 0) << watched.output;
  EXPECT_THAT(watched.output, HasSubstr("succeeded"));
  auto caught_up = lpd::testing::RunCommand(
      std::string(LPD_LPDCTL_BIN) + " watch " + submitted.id() + " --after " +
      std::to_string(events.size()) + " --server " + address_);
  EXPECT_EQ(caught_up.exit_code, 0) << caught_up.output;
  EXPECT_THAT(caught_up.output, HasSubstr("is succeeded"));
  auto listed =
      lpd::testing::RunCommand(std::string(LPD_LPDCTL_BIN) +
                               " list --state succeeded --server " + address_);
  EXPECT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_THAT(listed.output, HasSubstr(submitted.id()));
  // Graceful shutdown on SIGTERM, both sides.
  for (auto& [name, worker] : workers_) worker->Signal(SIGTERM);
  for (auto& [name, worker] : workers_) {
    EXPECT_EQ(worker->Wait(20s), 0) << worker->Log();
  }
  scheduler_->Signal(SIGTERM);
  EXPECT_EQ(scheduler_->Wait(20s), 0) << scheduler_->Log();
}

// The scheduler's and the worker's /metrics, checked by promtool, the
// scheduler's also scraped by a real Prometheus on loopback: per-job series
// while the job runs, gone once it ended; the totals and states after.
TEST_F(ServiceTest,
       MetricsOfSchedulerAndWorkerPassPromtoolAndPrometheusScrapes) {
  StartScheduler();
  const int prometheus_port = lpd::testing::FreePort();
  std::ofstream(dir_ + "/prometheus.yml")
      << "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
         "scrape_configs:\n"
         "  - job_name: lpd-scheduler\n"
         "    static_configs: [{targets: ['127.0.0.1:"
      << metrics_port_ << "']}]\n";
  ChildProcess prometheus(
      {"/usr/bin/prometheus", "--config.file=" + dir_ + "/prometheus.yml",
       "--storage.tsdb.path=" + dir_ + "/prometheus-data",
       "--web.listen-address=127.0.0.1:" + std::to_string(prometheus_port)},
      dir_ + "/prometheus.log");
  StartWorker("w1");
  ASSERT_TRUE(
      WaitFor([&] { return fs::exists(dir_ + "/w1.metrics-port"); }, 20s));
  const int worker_port = std::stoi(ReadFileText(dir_ + "/w1.metrics-port"));
  const Job job = MustSubmit(Named("metrics", 60, 30));
  const std::string series = "lpd_job_progress_ratio{job=\"" + job.id() + "\"}";
  EXPECT_TRUE(WaitFor(
      [&] {
        return HttpBody(lpd::testing::HttpGet(metrics_port_, "/metrics"))
                   .find(series) != std::string::npos;
      },
      60s));
  // The worker's loss gauge while DISTILL runs.
  const std::string loss_series =
      "lpd_distill_loss{job=\"" + job.id() + "\",term=\"total\"}";
  EXPECT_TRUE(WaitFor(
      [&] {
        return HttpBody(lpd::testing::HttpGet(worker_port, "/metrics"))
                   .find(loss_series) != std::string::npos;
      },
      120s))
      << DescribeLogs();
  WaitForState(job.id(), lpd::v1::JOB_STATE_SUCCEEDED);

  const std::string response = lpd::testing::HttpGet(metrics_port_, "/metrics");
  EXPECT_THAT(response, ::testing::StartsWith("HTTP/1.1 200 OK"));
  const std::string text = HttpBody(response);
  EXPECT_THAT(text, HasSubstr("lpd_jobs_submitted_total 1\n"));
  EXPECT_THAT(text, HasSubstr("lpd_jobs{state=\"succeeded\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("lpd_jobs{state=\"running\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("lpd_workers{state=\"idle\"} 1\n"));
  EXPECT_THAT(text, Not(HasSubstr(series)));  // removed when the job ended
  EXPECT_THAT(text, HasSubstr("lpd_build_info{version=\""));
  std::ofstream(dir_ + "/metrics.txt") << text;
  const auto checked = lpd::testing::RunCommand("promtool check metrics < " +
                                                dir_ + "/metrics.txt");
  EXPECT_EQ(checked.exit_code, 0) << checked.output;

  // The worker's: its steps, units and bytes; the job's loss series gone.
  const std::string worker_text =
      HttpBody(lpd::testing::HttpGet(worker_port, "/metrics"));
  EXPECT_THAT(worker_text,
              HasSubstr("lpd_distill_step_duration_seconds_count 60\n"));
  EXPECT_THAT(worker_text, Not(HasSubstr(loss_series)));
  EXPECT_THAT(worker_text, HasSubstr("lpd_score_units_total "));
  EXPECT_THAT(worker_text, Not(HasSubstr("lpd_score_units_total 0\n")));
  EXPECT_THAT(worker_text,
              Not(HasSubstr("lpd_storage_bytes_total{direction=\"upload\"} "
                            "0\n")));
  EXPECT_THAT(worker_text, HasSubstr("lpd_storage_errors_total 0\n"));
  std::ofstream(dir_ + "/worker-metrics.txt") << worker_text;
  const auto worker_checked = lpd::testing::RunCommand(
      "promtool check metrics < " + dir_ + "/worker-metrics.txt");
  EXPECT_EQ(worker_checked.exit_code, 0) << worker_checked.output;

  // Prometheus scraped it: the query API sees the succeeded job.
  std::string answer;
  EXPECT_TRUE(WaitFor(
      [&] {
        answer = HttpBody(lpd::testing::HttpGet(
            prometheus_port,
            "/api/v1/query?query=lpd_jobs%7Bstate%3D%22succeeded%22%7D"));
        auto json = nlohmann::json::parse(answer, nullptr, false);
        return !json.is_discarded() && json.value("status", "") == "success" &&
               !json["data"]["result"].empty() &&
               json["data"]["result"][0]["value"][1] == "1";
      },
      60s))
      << answer << "\n"
      << prometheus.Log();
}

TEST_F(ServiceTest, KilledWorkerDuringDistillIsResumedFromCheckpoint) {
  StartScheduler();
  StartWorker("w1");
  StartWorker("w2");
  const Job job = MustSubmit(Named("killed", 60, 10));
  const std::string out = dir_ + "/out-killed";
  ASSERT_TRUE(WaitFor([&] { return LatestStep(out) >= 20; }, 180s))
      << DescribeLogs();
  const std::string holder = WorkerHolding(job.id(), "distill");
  ASSERT_FALSE(holder.empty()) << DescribeLogs();
  workers_[holder]->Signal(SIGKILL);
  workers_[holder]->Wait();
  const int64_t resume_step = LatestStep(out);  // nothing writes it now
  ASSERT_GE(resume_step, 20);
  const Job done = WaitForState(job.id(), lpd::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(LatestStep(out), 60);
  const std::string other = holder == "w1" ? "w2" : "w1";
  EXPECT_THAT(workers_[other]->Log(), HasSubstr(job.id() + "/distill"));
  // The retry resumed from the newest checkpoint, not from step 0.
  const std::string messages = JoinMessages(Events(job.id()));
  EXPECT_THAT(messages,
              HasSubstr("\"resumed_from\":" + std::to_string(resume_step)))
      << messages;
  EXPECT_THAT(messages, HasSubstr("expired")) << messages;
}

TEST_F(ServiceTest, WorkerStoppedBySigtermHandsItsTaskBackWithACheckpoint) {
  StartScheduler();
  StartWorker("w1");
  const Job job = MustSubmit(Named("sigterm", 40, 30));
  const std::string out = dir_ + "/out-sigterm";
  // Stop w1 mid-DISTILL, between two regular checkpoints (0 and 30).
  ASSERT_TRUE(WaitFor(
      [&] {
        return workers_["w1"]->Log().find("DISTILL: step ") !=
               std::string::npos;
      },
      180s))
      << DescribeLogs();
  StartWorker("w2");
  workers_["w1"]->Signal(SIGTERM);
  EXPECT_EQ(workers_["w1"]->Wait(60s), 0) << workers_["w1"]->Log();
  const int64_t stopped_at = LatestStep(out);
  EXPECT_GT(stopped_at, 0) << workers_["w1"]->Log();
  EXPECT_THAT(workers_["w1"]->Log(), HasSubstr("shutting down"));
  WaitForState(job.id(), lpd::v1::JOB_STATE_SUCCEEDED);
  // w2 went on from w1's last step, at once (no lease had to run out).
  const std::string messages = JoinMessages(Events(job.id()));
  EXPECT_THAT(messages,
              HasSubstr("\"resumed_from\":" + std::to_string(stopped_at)))
      << messages;
  EXPECT_THAT(messages, Not(HasSubstr("expired"))) << messages;
  // A graceful stop is no failure: the attempt is given back (issue 16).
  EXPECT_THAT(messages, HasSubstr("handed back by worker")) << messages;
  EXPECT_THAT(messages, HasSubstr("the attempt not counted")) << messages;
}

// spec.distill.gpus: 2 (two gloo processes on the CPU): the worker runs
// DISTILL through its ranks; SIGTERM stops both at one step with a
// checkpoint, and another worker's ranks go on from it.
TEST_F(ServiceTest, DataParallelDistillStopsOnSigtermAndResumesElsewhere) {
  StartScheduler();
  StartWorker("w1");
  JobOptions o = Named("dp", 40, 30);
  o.gpus = 2;
  const Job job = MustSubmit(o);
  const std::string out = dir_ + "/out-dp";
  ASSERT_TRUE(WaitFor(
      [&] {
        return workers_["w1"]->Log().find("DISTILL: step ") !=
               std::string::npos;
      },
      180s))
      << DescribeLogs();
  EXPECT_THAT(workers_["w1"]->Log(),
              HasSubstr("DISTILL: data-parallel over 2 ranks (gloo)"));
  StartWorker("w2");
  workers_["w1"]->Signal(SIGTERM);
  EXPECT_EQ(workers_["w1"]->Wait(60s), 0) << workers_["w1"]->Log();
  const int64_t stopped_at = LatestStep(out);
  EXPECT_GT(stopped_at, 0) << workers_["w1"]->Log();
  EXPECT_THAT(workers_["w1"]->Log(),
              HasSubstr("stopping the data-parallel ranks"));
  WaitForState(job.id(), lpd::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(LatestStep(out), 40);
  const std::string messages = JoinMessages(Events(job.id()));
  EXPECT_THAT(messages,
              HasSubstr("\"resumed_from\":" + std::to_string(stopped_at)))
      << messages;
  EXPECT_THAT(messages, HasSubstr("\"ranks\":2")) << messages;
  // Rank 0's steps reached w2's metrics through its launcher (@step lines).
  const int w2_port = std::stoi(ReadFileText(dir_ + "/w2.metrics-port"));
  const std::string w2_metrics =
      HttpBody(lpd::testing::HttpGet(w2_port, "/metrics"));
  EXPECT_THAT(w2_metrics,
              HasSubstr("lpd_distill_step_duration_seconds_count "));
  EXPECT_THAT(w2_metrics,
              Not(HasSubstr("lpd_distill_step_duration_seconds_count 0\n")));
  EXPECT_THAT(messages, Not(HasSubstr("expired"))) << messages;
}

TEST_F(ServiceTest, SchedulerKilledMidJobLosesNothing) {
  StartScheduler(0, /*lease_seconds=*/5);
  StartWorker("w1");
  const Job job = MustSubmit(Named("restart", 50, 10));
  const std::string out = dir_ + "/out-restart";
  ASSERT_TRUE(WaitFor([&] { return LatestStep(out) >= 20; }, 180s))
      << DescribeLogs();
  scheduler_->Signal(SIGKILL);
  scheduler_->Wait();
  std::this_thread::sleep_for(1s);  // the worker goes on without it
  StartScheduler(port_, 5);
  // The job, its tasks and its events survived.
  auto reloaded = Get(job.id());
  ASSERT_TRUE(reloaded.ok()) << reloaded.status() << DescribeLogs();
  EXPECT_EQ(reloaded->state(), lpd::v1::JOB_STATE_RUNNING);
  const Job done = WaitForState(job.id(), lpd::v1::JOB_STATE_SUCCEEDED);
  const std::vector<JobEvent> events = Events(job.id());
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1));
  }
  // Nothing that had completed ran again: each shard completed once, the
  // distillation ran once (on the same worker, never resumed).
  const std::string messages = JoinMessages(events);
  for (int shard = 0; shard < 4; ++shard) {
    const std::string task = job.id() + "/score-" + std::to_string(shard);
    const std::string log = workers_["w1"]->Log();
    size_t count = 0;
    for (size_t at = log.find(task + " "); at != std::string::npos;
         at = log.find(task + " ", at + 1)) {
      if (log.compare(at + task.size() + 1, 6, "(job j") == 0) ++count;
    }
    EXPECT_EQ(count, 1u) << task << "\n" << log;
  }
  EXPECT_THAT(messages, HasSubstr("\"resumed_from\":null")) << messages;
  EXPECT_EQ(LatestStep(out), 50);
}

TEST_F(ServiceTest, CancelReachesTheWorkerDuringScoreAndDistill) {
  fs::remove_all(dir_ + "/data");
  WriteDataset(160);
  StartScheduler();
  ChildProcess* worker = StartWorker("w1");
  // During SCORE: many calibration samples make scoring last.
  JobOptions long_scoring = Named("cancel-score", 4);
  long_scoring.calibration_samples = 128;
  const Job scoring = MustSubmit(long_scoring);
  ASSERT_TRUE(WaitFor(
      [&] {
        return worker->Log().find(scoring.id() + "/score") != std::string::npos;
      },
      60s))
      << DescribeLogs();
  lpd::v1::CancelJobRequest request;
  request.set_job_id(scoring.id());
  Job cancelled;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->CancelJob(&context, request, &cancelled).ok());
  }
  EXPECT_EQ(cancelled.state(), lpd::v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(WaitFor(
      [&] { return worker->Log().find("was cancelled") != std::string::npos; },
      10s))
      << worker->Log();
  // Cancelling again: the job has ended.
  {
    grpc::ClientContext context;
    Job again;
    EXPECT_EQ(stub_->CancelJob(&context, request, &again).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }

  // During DISTILL: the partial checkpoints stay readable.
  const Job distilling = MustSubmit(Named("cancel-distill", 400, 10));
  const std::string out = dir_ + "/out-cancel-distill";
  ASSERT_TRUE(WaitFor([&] { return LatestStep(out) >= 10; }, 180s))
      << DescribeLogs();
  request.set_job_id(distilling.id());
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->CancelJob(&context, request, &cancelled).ok());
  }
  const size_t stops_before = 1;
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string log = worker->Log();
        size_t count = 0;
        for (size_t at = log.find("was cancelled"); at != std::string::npos;
             at = log.find("was cancelled", at + 1)) {
          ++count;
        }
        return count > stops_before;
      },
      10s))
      << worker->Log();
  const int64_t step = LatestStep(out);
  EXPECT_GE(step, 10);
  EXPECT_LT(step, 400);
  EXPECT_TRUE(
      fs::exists(out + "/" + lpd::job::CheckpointDir(step) + "manifest.json"));
  EXPECT_EQ(
      WaitForState(distilling.id(), lpd::v1::JOB_STATE_CANCELLED, 5s).state(),
      lpd::v1::JOB_STATE_CANCELLED);
  // The worker is free for the next job.
  const Job next = MustSubmit(Named("after-cancel", 2, 2));
  WaitForState(next.id(), lpd::v1::JOB_STATE_SUCCEEDED);
}

TEST_F(ServiceTest, SubmissionIsIdempotentAndBadSpecsAreRefused) {
  StartScheduler();
  Job first, second, third;
  ASSERT_TRUE(Submit(Spec(Named("idem")), &first, "req-1").ok());
  ASSERT_TRUE(Submit(Spec(Named("idem")), &second, "req-1").ok());
  EXPECT_EQ(first.id(), second.id());
  EXPECT_EQ(Submit(Spec(Named("idem", 9)), &third, "req-1").error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // Two live jobs may not write to one output folder.
  EXPECT_EQ(Submit(Spec(Named("idem")), &third, "req-2").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // Impossible ratio, missing model: refused with the field path.
  lpd::v1::CompressionJob bad = Spec(Named("bad"));
  bad.mutable_spec()->mutable_prune()->set_target_ratio(1.5);
  grpc::Status status = Submit(bad, &third);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("spec.prune.target_ratio"));
  bad = Spec(Named("bad"));
  bad.mutable_spec()->mutable_model()->clear_uri();
  status = Submit(bad, &third);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("spec.model.uri"));

  // Wrong types and unknown fields, through lpdctl: exit 2, field named.
  std::ofstream(dir_ + "/typo.yaml")
      << "apiVersion: lpd/v1\nkind: CompressionJob\nmetadata: {name: x}\n"
         "spec:\n  model: {uri: \"file:///m/\"}\n"
         "  data: {train: {uri: \"file:///d/\"}}\n"
         "  prune: {target_ratio: half}\n"
         "  output: {uri: \"file:///o/\"}\n";
  std::ofstream(dir_ + "/unknown.yaml")
      << "apiVersion: lpd/v1\nkind: CompressionJob\nmetadata: {name: x}\n"
         "spec:\n  model: {uri: \"file:///m/\", revision: 3}\n"
         "  data: {train: {uri: \"file:///d/\"}}\n"
         "  output: {uri: \"file:///o/\"}\n";
  auto typo =
      lpd::testing::RunCommand(std::string(LPD_LPDCTL_BIN) + " submit " + dir_ +
                               "/typo.yaml --server " + address_);
  EXPECT_EQ(typo.exit_code, 2) << typo.output;
  EXPECT_THAT(typo.output, HasSubstr("spec.prune.target_ratio"));
  auto unknown =
      lpd::testing::RunCommand(std::string(LPD_LPDCTL_BIN) + " submit " + dir_ +
                               "/unknown.yaml --server " + address_);
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_THAT(unknown.output, HasSubstr("spec.model.revision"));

  // Unknown job: NOT_FOUND.
  auto missing = Get("job-0000000000000000");
  EXPECT_FALSE(missing.ok());
  lpd::v1::GetJobRequest get;
  get.set_job_id("job-0000000000000000");
  Job none;
  grpc::ClientContext context;
  EXPECT_EQ(stub_->GetJob(&context, get, &none).error_code(),
            grpc::StatusCode::NOT_FOUND);

  // Listing: newest first, filtered by state, paged.
  for (int i = 0; i < 3; ++i) {
    MustSubmit(Named("list-" + std::to_string(i)));
  }
  lpd::v1::ListJobsRequest list;
  list.set_state(lpd::v1::JOB_STATE_QUEUED);
  list.set_page_size(2);
  std::vector<std::string> names;
  for (;;) {
    lpd::v1::ListJobsResponse page;
    grpc::ClientContext list_context;
    ASSERT_TRUE(stub_->ListJobs(&list_context, list, &page).ok());
    for (const Job& j : page.jobs()) {
      names.push_back(j.spec().metadata().name());
    }
    if (page.next_page_token().empty()) break;
    list.set_page_token(page.next_page_token());
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"list-2", "list-1", "list-0", "idem"}));
}

TEST_F(ServiceTest, ModelThatFailsToLoadFailsOnlyItsJob) {
  StartScheduler();
  StartWorker("w1");
  StartWorker("w2");
  const std::string broken = dir_ + "/broken-model";
  fs::create_directories(broken);
  fs::copy(Golden("tiny-sd15"), broken, fs::copy_options::recursive);
  std::ofstream(broken + "/config.json") << "{\"_class_name\": ";
  JobOptions broken_job = Named("broken");
  broken_job.model = broken;
  const Job bad = MustSubmit(broken_job);
  const Job good = MustSubmit(Named("good"));
  const Job failed = WaitForState(bad.id(), lpd::v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("config.json"));
  WaitForState(good.id(), lpd::v1::JOB_STATE_SUCCEEDED);
}

// The shape of a scrape's `lpd_` families (the project's own: a library's
// families are not ours to pin), one line each, sorted, without duplicates:
//   "<who> <family> TYPE <type>"            from each `# TYPE` line
//   "<who> <sample>{<label>,...}"           label names of each sample, sorted
//   "<who> <sample> le <bound> ... +Inf"    a histogram's bucket bounds
// Values, HELP texts and label values are left out.
std::vector<std::string> MetricFamilyShape(const std::string& who,
                                           const std::string& text) {
  std::set<std::string> lines;
  std::map<std::string, std::set<double>> bounds;  // by sample name
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# TYPE lpd_", 0) == 0) {
      std::istringstream words(line.substr(7));
      std::string family, type;
      words >> family >> type;
      lines.insert(who + " " + family + " TYPE " + type);
      continue;
    }
    if (line.rfind("lpd_", 0) != 0) continue;
    const size_t name_end = line.find_first_of("{ ");
    const std::string name = line.substr(0, name_end);
    std::set<std::string> labels;
    size_t at = name_end;
    if (at < line.size() && line[at] == '{') {
      ++at;
      while (at < line.size() && line[at] != '}') {
        const size_t equals = line.find('=', at);
        if (equals == std::string::npos) {
          lines.insert(who + " unparsed: " + line);
          break;
        }
        const std::string label = line.substr(at, equals - at);
        labels.insert(label);
        std::string value;
        at = equals + 2;  // past ="
        while (at < line.size() && line[at] != '"') {
          if (line[at] == '\\') ++at;
          value += line[at++];
        }
        ++at;  // past the closing "
        if (at < line.size() && line[at] == ',') ++at;
        if (label == "le")
          bounds[name].insert(std::strtod(value.c_str(), nullptr));
      }
    }
    std::string joined;
    for (const std::string& label : labels) {
      joined += (joined.empty() ? "" : ",") + label;
    }
    lines.insert(who + " " + name + "{" + joined + "}");
  }
  for (const auto& [name, values] : bounds) {
    std::string line = who + " " + name + " le";
    for (double bound : values) {
      char buffer[64];
      const auto end = std::to_chars(buffer, buffer + sizeof(buffer), bound);
      line += " " + (std::isinf(bound) ? std::string("+Inf")
                                       : std::string(buffer, end.ptr));
    }
    lines.insert(line);
  }
  return {lines.begin(), lines.end()};
}

// Issue 14's guard: both binaries expose the same families (names, types,
// label names, bucket bounds) as listed in tests/testdata/
// metric_families.txt, scraped while a job distills so that the per-job
// series exist. LPD_UPDATE_METRIC_FAMILIES=1 rewrites the list instead.
TEST_F(ServiceTest, MetricFamiliesMatchTheCommittedList) {
  StartScheduler();
  StartWorker("w1");
  ASSERT_TRUE(
      WaitFor([&] { return fs::exists(dir_ + "/w1.metrics-port"); }, 20s));
  const int worker_port = std::stoi(ReadFileText(dir_ + "/w1.metrics-port"));
  const Job job = MustSubmit(Named("families", 400, 200));
  const std::string progress =
      "lpd_job_progress_ratio{job=\"" + job.id() + "\"}";
  const std::string loss = "lpd_distill_loss{job=\"" + job.id() + "\"";
  std::string scheduler_text, worker_text;
  ASSERT_TRUE(WaitFor(
      [&] {
        worker_text = HttpBody(lpd::testing::HttpGet(worker_port, "/metrics"));
        scheduler_text =
            HttpBody(lpd::testing::HttpGet(metrics_port_, "/metrics"));
        return worker_text.find(loss) != std::string::npos &&
               scheduler_text.find(progress) != std::string::npos;
      },
      180s))
      << scheduler_text << "\n"
      << worker_text << "\n"
      << DescribeLogs();

  std::vector<std::string> shape =
      MetricFamilyShape("scheduler", scheduler_text);
  const std::vector<std::string> worker_shape =
      MetricFamilyShape("worker", worker_text);
  shape.insert(shape.end(), worker_shape.begin(), worker_shape.end());
  std::string actual;
  for (const std::string& line : shape) actual += line + "\n";
  if (const char* update = std::getenv("LPD_UPDATE_METRIC_FAMILIES");
      update != nullptr && std::string(update) == "1") {
    std::ofstream(LPD_METRIC_FAMILIES_FILE) << actual;
  }
  EXPECT_EQ(actual, ReadFileText(LPD_METRIC_FAMILIES_FILE))
      << "scheduler:\n"
      << scheduler_text << "\nworker:\n"
      << worker_text;

  lpd::v1::CancelJobRequest cancel;
  cancel.set_job_id(job.id());
  Job cancelled;
  grpc::ClientContext context;
  EXPECT_TRUE(stub_->CancelJob(&context, cancel, &cancelled).ok());
}

}  // namespace

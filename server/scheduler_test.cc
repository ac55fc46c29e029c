#include "server/scheduler.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/job_store.h"

namespace lpd::server {
namespace {

using ::lpd::v1::HeartbeatResponse;
using ::lpd::v1::Job;
using ::lpd::v1::JobEvent;
using ::lpd::v1::LeaseTaskResponse;
using ::testing::HasSubstr;

// A clock the test moves by hand.
class FakeClock {
 public:
  absl::Time Now() {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
};

lpd::v1::CompressionJob Spec(const std::string& name) {
  lpd::v1::CompressionJob job;
  job.set_api_version("lpd/v1");
  job.set_kind("CompressionJob");
  job.mutable_metadata()->set_name(name);
  job.mutable_spec()->mutable_model()->set_uri("file:///models/tiny/");
  job.mutable_spec()->mutable_data()->mutable_train()->set_uri(
      "file:///data/tiny/");
  job.mutable_spec()->mutable_output()->set_uri(
      absl::StrCat("file:///out/", name, "/"));
  return job;
}

// The number of elements (of a vector or a repeated field).
template <typename C>
int64_t Count(const C& container) {
  return static_cast<int64_t>(container.size());
}

// Polls `done` (real time) for up to 10 s.
bool Eventually(const std::function<bool()>& done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return done();
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (std::filesystem::path(::testing::TempDir()) /
            absl::StrCat("scheduler_test_", info->name(), "_", ::getpid()))
               .string();
    std::filesystem::remove_all(dir_);
    options_.state_dir = dir_;
    options_.lease_duration = absl::Seconds(30);
    options_.max_attempts = 3;
    options_.score_shards = 2;
    options_.progress_flush_interval = absl::Seconds(2);
    options_.clock = [this] { return clock_.Now(); };
    options_.run_select = [this](const Job& job,
                                 int shards) -> absl::StatusOr<std::string> {
      ++select_calls_;
      last_select_shards_ = shards;
      return std::string("{\"removed_units\": 3}");
    };
  }
  void TearDown() override {
    scheduler_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Open() {
    auto scheduler = Scheduler::Open(options_);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    scheduler_ = std::move(*scheduler);
  }
  void Reopen() {
    scheduler_.reset();
    Open();
  }

  // gpus < 0: the worker does not say.
  std::string Register(const std::string& old_id = "", int gpus = -1) {
    lpd::v1::RegisterWorkerRequest request;
    request.set_name("host");
    request.set_device("cpu");
    request.set_worker_id(old_id);
    if (gpus >= 0) request.set_gpus(gpus);
    auto response = scheduler_->RegisterWorker(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->worker_id() : "";
  }

  Job Submit(const std::string& name, const std::string& request_id = "") {
    auto job = scheduler_->Submit(Spec(name), request_id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : Job();
  }

  Job Get(const std::string& id) {
    auto job = scheduler_->Get(id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : Job();
  }

  // A task ready now, or an empty response (wait 0: answered at once).
  absl::StatusOr<LeaseTaskResponse> LeaseNow(const std::string& worker) {
    std::optional<absl::StatusOr<LeaseTaskResponse>> result;
    scheduler_->LeaseAsync(
        worker, absl::ZeroDuration(),
        [&](absl::StatusOr<LeaseTaskResponse> r) { result = std::move(r); });
    EXPECT_TRUE(result.has_value()) << "wait 0 must answer synchronously";
    if (!result.has_value()) return absl::InternalError("no answer");
    return *result;
  }

  // Waits (real time, 10 s at most) for a task, with a long fake wait.
  LeaseTaskResponse LeaseWait(const std::string& worker) {
    auto promise =
        std::make_shared<std::promise<absl::StatusOr<LeaseTaskResponse>>>();
    auto future = promise->get_future();
    const int64_t waiter =
        scheduler_->LeaseAsync(worker, absl::Seconds(60),
                               [promise](absl::StatusOr<LeaseTaskResponse> r) {
                                 promise->set_value(std::move(r));
                               });
    if (future.wait_for(std::chrono::seconds(10)) !=
        std::future_status::ready) {
      scheduler_->CancelLease(waiter);
      ADD_FAILURE() << "no task within 10 s";
      return LeaseTaskResponse();
    }
    auto result = future.get();
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : LeaseTaskResponse();
  }

  HeartbeatResponse::Action Heartbeat(const std::string& worker,
                                      const std::string& lease,
                                      double progress = 0,
                                      const std::string& message = "") {
    lpd::v1::HeartbeatRequest request;
    request.set_worker_id(worker);
    request.set_lease_id(lease);
    request.set_progress(progress);
    request.set_message(message);
    auto response = scheduler_->Heartbeat(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->action() : HeartbeatResponse::Action();
  }

  absl::Status Complete(const std::string& worker, const std::string& lease,
                        const std::string& result = "{}") {
    lpd::v1::CompleteTaskRequest request;
    request.set_worker_id(worker);
    request.set_lease_id(lease);
    request.set_result_json(result);
    return scheduler_->Complete(request);
  }

  absl::Status Fail(const std::string& worker, const std::string& lease,
                    const std::string& error, bool retryable) {
    lpd::v1::FailTaskRequest request;
    request.set_worker_id(worker);
    request.set_lease_id(lease);
    request.set_error(error);
    request.set_retryable(retryable);
    return scheduler_->Fail(request);
  }

  std::vector<JobEvent> Events(const std::string& id, int64_t after = 0) {
    auto events = scheduler_->EventsAfter(id, after);
    EXPECT_TRUE(events.ok()) << events.status();
    return events.ok() ? *events : std::vector<JobEvent>();
  }

  // How many of the job's events contain `text`.
  int CountEvents(const std::string& id, const std::string& text) {
    int n = 0;
    for (const JobEvent& e : Events(id)) {
      if (absl::StrContains(e.message(), text)) ++n;
    }
    return n;
  }

  std::string dir_;
  FakeClock clock_;
  SchedulerOptions options_;
  std::atomic<int> select_calls_{0};
  std::atomic<int> last_select_shards_{0};
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, JobRunsThroughAllPhases) {
  Open();
  const std::string w = Register();
  const Job submitted = Submit("all-phases");
  EXPECT_THAT(submitted.id(), ::testing::MatchesRegex("job-[0-9a-f]{16}"));
  EXPECT_EQ(submitted.state(), lpd::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(submitted.phase(), lpd::v1::PHASE_SCORE);
  EXPECT_EQ(submitted.output_uri(), "file:///out/all-phases/");
  EXPECT_EQ(submitted.last_event(), 1);
  // Defaults applied.
  EXPECT_EQ(submitted.spec().spec().distill().steps(), 20000);
  const std::string id = submitted.id();

  auto s0 = LeaseNow(w);
  ASSERT_TRUE(s0.ok() && s0->has_task());
  EXPECT_EQ(s0->task().phase(), lpd::v1::PHASE_SCORE);
  EXPECT_EQ(s0->task().shard_count(), 2);
  EXPECT_EQ(s0->task().attempt(), 1);
  EXPECT_EQ(s0->task().spec().metadata().name(), "all-phases");
  EXPECT_EQ(s0->task().output_uri(), "file:///out/all-phases/");
  EXPECT_EQ(s0->lease_expires_unix_ms(),
            absl::ToUnixMillis(clock_.Now() + absl::Seconds(30)));
  EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_RUNNING);
  auto s1 = LeaseNow(w);
  ASSERT_TRUE(s1.ok() && s1->has_task());
  EXPECT_NE(s1->task().shard_index(), s0->task().shard_index());

  EXPECT_EQ(Heartbeat(w, s0->task().lease_id(), 0.5),
            HeartbeatResponse::ACTION_CONTINUE);
  EXPECT_DOUBLE_EQ(Get(id).progress(), 0.10 * 0.5 / 2);

  ASSERT_TRUE(Complete(w, s0->task().lease_id(), "{\"units\": 10}").ok());
  EXPECT_EQ(Get(id).phase(), lpd::v1::PHASE_SCORE);
  ASSERT_TRUE(Complete(w, s1->task().lease_id()).ok());

  // SELECT runs on the scheduler's thread, then DISTILL is handed out.
  const LeaseTaskResponse distill = LeaseWait(w);
  ASSERT_TRUE(distill.has_task());
  EXPECT_EQ(distill.task().phase(), lpd::v1::PHASE_DISTILL);
  EXPECT_EQ(distill.task().task_id(), id + "/distill");
  EXPECT_EQ(select_calls_, 1);
  EXPECT_EQ(last_select_shards_, 2);
  EXPECT_EQ(Heartbeat(w, distill.task().lease_id(), 0.5),
            HeartbeatResponse::ACTION_CONTINUE);
  EXPECT_NEAR(Get(id).progress(), 0.12 + 0.75 * 0.5, 1e-9);
  ASSERT_TRUE(
      Complete(w, distill.task().lease_id(), "{\"final_loss\": 0.25}").ok());

  auto evaluate = LeaseNow(w);
  ASSERT_TRUE(evaluate.ok() && evaluate->has_task());
  EXPECT_EQ(evaluate->task().phase(), lpd::v1::PHASE_EVALUATE);
  ASSERT_TRUE(Complete(w, evaluate->task().lease_id()).ok());
  auto export_task = LeaseNow(w);
  ASSERT_TRUE(export_task.ok() && export_task->has_task());
  EXPECT_EQ(export_task->task().phase(), lpd::v1::PHASE_EXPORT);
  ASSERT_TRUE(Complete(w, export_task->task().lease_id()).ok());

  const Job done = Get(id);
  EXPECT_EQ(done.state(), lpd::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.phase(), lpd::v1::PHASE_EXPORT);
  EXPECT_EQ(done.progress(), 1.0);
  auto none = LeaseNow(w);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_task());

  const std::vector<JobEvent> events = Events(id);
  ASSERT_EQ(Count(events), done.last_event());
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1));
  }
  EXPECT_THAT(events.front().message(), HasSubstr("submitted"));
  EXPECT_EQ(events.front().state(), lpd::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(events.back().message(), "succeeded");
  EXPECT_EQ(events.back().state(), lpd::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(CountEvents(id, absl::StrCat("DISTILL done on worker ", w,
                                         ": {\"final_loss\": 0.25}")),
            1);
  EXPECT_EQ(CountEvents(id, "SELECT done: {\"removed_units\": 3}"), 1);
  EXPECT_EQ(CountEvents(id, "leased to worker"), 5);
  // A completed task cannot be completed again.
  EXPECT_EQ(Complete(w, distill.task().lease_id()).code(),
            absl::StatusCode::kFailedPrecondition);
}

// A DISTILL asking for 2 GPUs goes to a worker that has them; a 1-GPU
// worker takes the other tasks meanwhile, and every task fits a worker that
// did not say how many GPUs it has.
TEST_F(SchedulerTest, DistillOnTwoGpusGoesOnlyToAWorkerWithTwo) {
  options_.score_shards = 1;
  Open();
  const std::string one = Register("", 1);
  lpd::v1::CompressionJob spec = Spec("two-gpus");
  spec.mutable_spec()->mutable_distill()->set_gpus(2);
  spec.mutable_spec()->mutable_distill()->set_batch_size(8);
  spec.mutable_spec()->set_device(lpd::v1::DEVICE_CUDA);
  auto job = scheduler_->Submit(spec, "");
  ASSERT_TRUE(job.ok()) << job.status();
  auto score = LeaseNow(one);  // SCORE needs no second GPU
  ASSERT_TRUE(score.ok() && score->has_task());
  ASSERT_TRUE(Complete(one, score->task().lease_id()).ok());
  ASSERT_TRUE(Eventually(
      [&] { return Get(job->id()).phase() == lpd::v1::PHASE_DISTILL; }));
  auto refused = LeaseNow(one);
  ASSERT_TRUE(refused.ok());
  EXPECT_FALSE(refused->has_task());
  EXPECT_EQ(CountEvents(job->id(),
                        "DISTILL queued (data-parallel over 2 GPUs; no "
                        "registered worker has 2 GPUs (most: 1): it waits "
                        "for one)"),
            1);
  // A 1-GPU worker waiting is passed over when the 2-GPU one asks.
  auto waiting = std::make_shared<std::promise<bool>>();
  auto answered = waiting->get_future();
  const int64_t waiter = scheduler_->LeaseAsync(
      one, absl::Seconds(60), [waiting](absl::StatusOr<LeaseTaskResponse> r) {
        waiting->set_value(r.ok() && r->has_task());
      });
  const std::string two = Register("", 2);
  const LeaseTaskResponse distill = LeaseWait(two);
  ASSERT_TRUE(distill.has_task());
  EXPECT_EQ(distill.task().phase(), lpd::v1::PHASE_DISTILL);
  EXPECT_EQ(answered.wait_for(std::chrono::milliseconds(200)),
            std::future_status::timeout);
  scheduler_->CancelLease(waiter);
  ASSERT_TRUE(Complete(two, distill.task().lease_id()).ok());
  // EVALUATE fits the 1-GPU worker again; one that said nothing takes any.
  auto evaluate = LeaseNow(one);
  ASSERT_TRUE(evaluate.ok() && evaluate->has_task());
  EXPECT_EQ(evaluate->task().phase(), lpd::v1::PHASE_EVALUATE);

  lpd::v1::CompressionJob cpu = Spec("two-ranks-on-cpu");
  cpu.mutable_spec()->mutable_distill()->set_gpus(2);
  cpu.mutable_spec()->mutable_distill()->set_batch_size(8);
  cpu.mutable_spec()->set_device(lpd::v1::DEVICE_CPU);
  ASSERT_TRUE(scheduler_->Submit(cpu, "").ok());
  const std::string silent = Register();
  auto cpu_score = LeaseNow(silent);
  ASSERT_TRUE(cpu_score.ok() && cpu_score->has_task());
  ASSERT_TRUE(Complete(silent, cpu_score->task().lease_id()).ok());
  // device cpu: gloo ranks, any worker.
  const LeaseTaskResponse cpu_distill = LeaseWait(one);
  ASSERT_TRUE(cpu_distill.has_task());
  EXPECT_EQ(cpu_distill.task().phase(), lpd::v1::PHASE_DISTILL);
}

TEST_F(SchedulerTest, HandcraftedCriterionHasOneScoreShard) {
  Open();
  const std::string w = Register();
  lpd::v1::CompressionJob spec = Spec("handcrafted");
  spec.mutable_spec()->mutable_prune()->set_criterion(
      lpd::v1::CRITERION_HANDCRAFTED);
  auto job = scheduler_->Submit(spec, "");
  ASSERT_TRUE(job.ok()) << job.status();
  auto lease = LeaseNow(w);
  ASSERT_TRUE(lease.ok() && lease->has_task());
  EXPECT_EQ(lease->task().shard_count(), 1);
  auto none = LeaseNow(w);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_task());
}

// Issue 16, defect 3: lease ids were `<task>#<attempt>`, and events name the
// worker, so anyone could complete or fail another worker's task.
TEST_F(SchedulerTest, LeaseIdsCannotBeGuessedFromWhatEventsShow) {
  Open();
  const std::string w = Register();
  Submit("unguessable");
  auto a = LeaseNow(w);
  ASSERT_TRUE(a.ok() && a->has_task());
  const std::string& task = a->task().task_id();
  EXPECT_THAT(a->task().lease_id(),
              ::testing::MatchesRegex(task + "#1\\.[0-9a-f]{32}"));
  // The old, predictable form, with the right worker id: refused.
  EXPECT_EQ(Complete(w, task + "#1").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Fail(w, task + "#1", "forged", false).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Heartbeat(w, task + "#1"), HeartbeatResponse::ACTION_LEASE_LOST);
  // Two leases never share their random part.
  auto b = LeaseNow(w);
  ASSERT_TRUE(b.ok() && b->has_task());
  EXPECT_NE(a->task().lease_id().substr(a->task().lease_id().find('.')),
            b->task().lease_id().substr(b->task().lease_id().find('.')));
  EXPECT_TRUE(Complete(w, a->task().lease_id()).ok());
}

// Issue 16, defect 5: three workers stopped by SIGTERM, each handing the
// task back after a checkpoint, failed the job "after 3 attempts".
TEST_F(SchedulerTest, HandedBackTasksDoNotUseUpAttempts) {
  Open();  // max_attempts 3
  const std::string w = Register();
  const std::string id = Submit("rolling").id();
  for (int restart = 0; restart < 5; ++restart) {
    auto lease = LeaseNow(w);
    ASSERT_TRUE(lease.ok() && lease->has_task()) << restart;
    EXPECT_EQ(lease->task().attempt(), 1);
    lpd::v1::FailTaskRequest request;
    request.set_worker_id(w);
    request.set_lease_id(lease->task().lease_id());
    request.set_error("worker w is shutting down");
    request.set_retryable(true);
    request.set_handed_back(true);
    ASSERT_TRUE(scheduler_->Fail(request).ok());
    EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_RUNNING);
  }
  EXPECT_EQ(CountEvents(id, "requeued, the attempt not counted"), 5);
  // Real failures still count.
  for (int attempt = 1; attempt <= 3; ++attempt) {
    auto lease = LeaseNow(w);
    ASSERT_TRUE(lease.ok() && lease->has_task());
    EXPECT_EQ(lease->task().attempt(), attempt);
    ASSERT_TRUE(Fail(w, lease->task().lease_id(), "boom", true).ok());
  }
  EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_FAILED);
}

// Issue 16, defect 8: lpd_workers counted killed workers as idle forever.
TEST_F(SchedulerTest, SilentWorkersBecomeLostThenAreForgotten) {
  Open();  // lease 30 s: lost after 60 s of silence, forgotten after 10 min
  const std::string quiet = Register();
  const std::string polling = Register();
  auto stats = scheduler_->GetStats();
  EXPECT_EQ(stats.workers_idle, 2);
  EXPECT_EQ(stats.workers_lost, 0);
  // `polling` waits in a long poll: alive, however long it waits.
  scheduler_->LeaseAsync(polling, absl::Seconds(60),
                         [](absl::StatusOr<LeaseTaskResponse>) {});
  clock_.Advance(absl::Seconds(59));
  EXPECT_EQ(scheduler_->GetStats().workers_idle, 2);
  clock_.Advance(absl::Seconds(2));
  stats = scheduler_->GetStats();
  EXPECT_EQ(stats.workers_idle, 1);
  EXPECT_EQ(stats.workers_lost, 1);  // `quiet`
  scheduler_->Tick();  // answers the long poll: `polling` was there till now
  EXPECT_EQ(scheduler_->GetStats().workers_idle, 1);
  // 10 minutes on: `quiet` is forgotten, `polling` (silent since its poll
  // was answered) lost, then forgotten too.
  clock_.Advance(absl::Minutes(10));
  stats = scheduler_->GetStats();
  EXPECT_EQ(stats.workers_lost, 1);
  EXPECT_EQ(stats.workers_idle + stats.workers_busy, 0);
  clock_.Advance(absl::Seconds(1));
  stats = scheduler_->GetStats();
  EXPECT_EQ(stats.workers_idle + stats.workers_busy + stats.workers_lost, 0);
  // A forgotten worker that calls again counts again.
  EXPECT_EQ(Register(quiet), quiet);
  EXPECT_EQ(scheduler_->GetStats().workers_idle, 1);
}

TEST_F(SchedulerTest, ShardsGoToTwoWorkersInParallel) {
  Open();
  const std::string w1 = Register();
  const std::string w2 = Register();
  EXPECT_NE(w1, w2);
  const std::string id = Submit("parallel").id();
  auto a = LeaseNow(w1);
  auto b = LeaseNow(w2);
  ASSERT_TRUE(a.ok() && a->has_task());
  ASSERT_TRUE(b.ok() && b->has_task());
  EXPECT_NE(a->task().task_id(), b->task().task_id());
  EXPECT_NE(a->task().lease_id(), b->task().lease_id());
  auto c = LeaseNow(w1);  // both shards are out
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->has_task());
  EXPECT_EQ(Heartbeat(w1, a->task().lease_id(), 0.4),
            HeartbeatResponse::ACTION_CONTINUE);
  EXPECT_EQ(Heartbeat(w2, b->task().lease_id(), 0.6),
            HeartbeatResponse::ACTION_CONTINUE);
  EXPECT_DOUBLE_EQ(Get(id).progress(), 0.10 * (0.4 + 0.6) / 2);
  // A worker cannot heartbeat or complete another worker's lease.
  EXPECT_EQ(Heartbeat(w1, b->task().lease_id()),
            HeartbeatResponse::ACTION_LEASE_LOST);
  EXPECT_EQ(Complete(w1, b->task().lease_id()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Complete(w2, b->task().lease_id()).ok());
  ASSERT_TRUE(Complete(w1, a->task().lease_id()).ok());
  const LeaseTaskResponse distill = LeaseWait(w2);
  EXPECT_EQ(distill.task().phase(), lpd::v1::PHASE_DISTILL);
}

TEST_F(SchedulerTest, LeaseExpiryRequeuesUntilAttemptsRunOut) {
  Open();
  const std::string w = Register();
  lpd::v1::CompressionJob spec = Spec("expiry");
  spec.mutable_spec()->mutable_prune()->set_criterion(
      lpd::v1::CRITERION_HANDCRAFTED);
  auto job = scheduler_->Submit(spec, "");
  ASSERT_TRUE(job.ok());
  const std::string id = job->id();
  const std::string other = Submit("bystander").id();

  std::string previous_lease;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    auto lease = LeaseNow(w);
    ASSERT_TRUE(lease.ok() && lease->has_task()) << attempt;
    ASSERT_EQ(lease->task().job_id(), id);  // the older job first
    EXPECT_EQ(lease->task().attempt(), attempt);
    EXPECT_NE(lease->task().lease_id(), previous_lease);
    previous_lease = lease->task().lease_id();
    // Heartbeats renew: 20 s + 20 s is past the first deadline, not the
    // renewed one.
    clock_.Advance(absl::Seconds(20));
    EXPECT_EQ(Heartbeat(w, previous_lease), HeartbeatResponse::ACTION_CONTINUE);
    clock_.Advance(absl::Seconds(20));
    scheduler_->Tick();
    EXPECT_EQ(Heartbeat(w, previous_lease), HeartbeatResponse::ACTION_CONTINUE);
    clock_.Advance(absl::Seconds(31));
    scheduler_->Tick();
    EXPECT_EQ(Heartbeat(w, previous_lease),
              HeartbeatResponse::ACTION_LEASE_LOST);
    EXPECT_EQ(Complete(w, previous_lease).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(CountEvents(id, absl::StrCat("lease expired on worker ", w,
                                           ", attempt ", attempt, " of 3; ")),
              1);
  }
  const Job failed = Get(id);
  EXPECT_EQ(failed.state(), lpd::v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("failed after 3 attempts"));
  EXPECT_THAT(failed.error(), HasSubstr(absl::StrCat("lease expired on worker ",
                                                     w, ", attempt 3 of 3")));
  EXPECT_EQ(Events(id).back().state(), lpd::v1::JOB_STATE_FAILED);
  // The other job is untouched and still runs.
  EXPECT_EQ(Get(other).state(), lpd::v1::JOB_STATE_QUEUED);
  auto next = LeaseNow(w);
  ASSERT_TRUE(next.ok() && next->has_task());
  EXPECT_EQ(next->task().job_id(), other);
}

TEST_F(SchedulerTest, RetryableFailRequeuesAndNonRetryableFailsAtOnce) {
  Open();
  const std::string w = Register();
  const std::string id = Submit("fails").id();
  auto a = LeaseNow(w);
  ASSERT_TRUE(a.ok() && a->has_task());
  ASSERT_TRUE(Fail(w, a->task().lease_id(), "CUDA out of memory", true).ok());
  EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_RUNNING);
  // A stale lease is refused.
  EXPECT_EQ(Fail(w, a->task().lease_id(), "again", true).code(),
            absl::StatusCode::kFailedPrecondition);
  auto c = LeaseNow(w);  // the failed one again (shards go in order)
  auto b = LeaseNow(w);  // the other shard
  ASSERT_TRUE(b.ok() && b->has_task() && c.ok() && c->has_task());
  EXPECT_EQ(c->task().task_id(), a->task().task_id());
  EXPECT_EQ(c->task().attempt(), 2);
  EXPECT_EQ(b->task().attempt(), 1);
  EXPECT_EQ(CountEvents(id, "CUDA out of memory; requeued"), 1);
  ASSERT_TRUE(Fail(w, c->task().lease_id(), "model does not load", false).ok());
  const Job failed = Get(id);
  EXPECT_EQ(failed.state(), lpd::v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("model does not load"));
  EXPECT_THAT(failed.error(), HasSubstr("not retryable"));
  // The job's other leased shard is told to stop.
  EXPECT_EQ(Heartbeat(w, b->task().lease_id()),
            HeartbeatResponse::ACTION_CANCEL);
  EXPECT_EQ(Complete(w, b->task().lease_id()).code(),
            absl::StatusCode::kFailedPrecondition);
  auto none = LeaseNow(w);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_task());
}

TEST_F(SchedulerTest, CancelWhileQueued) {
  Open();
  const std::string w = Register();
  const std::string id = Submit("cancel-queued").id();
  auto cancelled = scheduler_->Cancel(id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), lpd::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Events(id).back().message(), "cancelled");
  auto none = LeaseNow(w);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_task());
  EXPECT_EQ(scheduler_->Cancel(id).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(scheduler_->Cancel("job-0000000000000000").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(scheduler_->Get("job-0000000000000000").status().code(),
            absl::StatusCode::kNotFound);
  // Durable: still cancelled after a restart.
  Reopen();
  EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_CANCELLED);
}

TEST_F(SchedulerTest, CancelWhileLeasedStopsTheWorkerOnly) {
  Open();
  const std::string w = Register();
  const std::string id = Submit("cancel-leased").id();
  auto lease = LeaseNow(w);
  ASSERT_TRUE(lease.ok() && lease->has_task());
  const std::string other = Submit("other").id();
  ASSERT_TRUE(scheduler_->Cancel(id).ok());
  EXPECT_EQ(Heartbeat(w, lease->task().lease_id()),
            HeartbeatResponse::ACTION_CANCEL);
  EXPECT_EQ(Complete(w, lease->task().lease_id()).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_CANCELLED);
  // The other job's shards are next.
  auto next = LeaseNow(w);
  ASSERT_TRUE(next.ok() && next->has_task());
  EXPECT_EQ(next->task().job_id(), other);
  // And the cancelled task does not come back when its lease runs out.
  clock_.Advance(absl::Minutes(5));
  scheduler_->Tick();
  EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(CountEvents(id, "requeued"), 0);
}

TEST_F(SchedulerTest, RequestIdIsIdempotent) {
  Open();
  const Job first = Submit("idem", "req-1");
  const Job again = Submit("idem", "req-1");
  EXPECT_EQ(first.id(), again.id());
  lpd::v1::ListJobsRequest list;
  EXPECT_EQ(Count(scheduler_->List(list)->jobs()), 1);

  lpd::v1::CompressionJob different = Spec("idem");
  different.mutable_spec()->set_seed(7);
  auto conflict = scheduler_->Submit(different, "req-1");
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(conflict.status().message(), HasSubstr(first.id()));

  // Survives a restart.
  Reopen();
  EXPECT_EQ(Submit("idem", "req-1").id(), first.id());
  EXPECT_EQ(Count(scheduler_->List(list)->jobs()), 1);

  // A spec that fails validation names the field.
  lpd::v1::CompressionJob bad = Spec("bad");
  bad.mutable_spec()->mutable_prune()->set_target_ratio(1.5);
  auto invalid = scheduler_->Submit(bad, "req-2");
  EXPECT_EQ(invalid.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(invalid.status().message(), HasSubstr("spec.prune.target_ratio"));
  EXPECT_EQ(
      scheduler_->Submit(Spec("long"), std::string(129, 'x')).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, OutputUriOfARunningJobIsRefused) {
  Open();
  const std::string first = Submit("same").id();
  lpd::v1::CompressionJob spec = Spec("same-again");
  spec.mutable_spec()->mutable_output()->set_uri("file:///out/same");
  auto conflict = scheduler_->Submit(spec, "");
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(conflict.status().message(), HasSubstr(first));
  ASSERT_TRUE(scheduler_->Cancel(first).ok());
  auto accepted = scheduler_->Submit(spec, "");
  EXPECT_TRUE(accepted.ok()) << accepted.status();
}

TEST_F(SchedulerTest, ListPagesNewestFirstAndFilters) {
  Open();
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    ids.push_back(Submit(absl::StrCat("list-", i)).id());
    clock_.Advance(absl::Milliseconds(1));
  }
  ASSERT_TRUE(scheduler_->Cancel(ids[1]).ok());
  ASSERT_TRUE(scheduler_->Cancel(ids[4]).ok());

  lpd::v1::ListJobsRequest request;
  request.set_page_size(3);
  std::vector<std::string> seen;
  int pages = 0;
  do {
    auto page = scheduler_->List(request);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_LE(page->jobs_size(), 3);
    for (const Job& job : page->jobs()) seen.push_back(job.id());
    request.set_page_token(page->next_page_token());
    ++pages;
  } while (!request.page_token().empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, std::vector<std::string>(ids.rbegin(), ids.rend()));

  lpd::v1::ListJobsRequest cancelled;
  cancelled.set_state(lpd::v1::JOB_STATE_CANCELLED);
  cancelled.set_page_size(2);
  auto page = scheduler_->List(cancelled);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(Count(page->jobs()), 2);
  EXPECT_EQ(page->jobs(0).id(), ids[4]);
  EXPECT_EQ(page->jobs(1).id(), ids[1]);
  EXPECT_TRUE(page->next_page_token().empty());

  lpd::v1::ListJobsRequest all;
  EXPECT_EQ(Count(scheduler_->List(all)->jobs()), 7);

  lpd::v1::ListJobsRequest bad;
  bad.set_page_token("not a token!");
  EXPECT_EQ(scheduler_->List(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad.set_page_token("bm9zbGFzaA");  // "noslash"
  EXPECT_EQ(scheduler_->List(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  lpd::v1::ListJobsRequest negative;
  negative.set_page_size(-1);
  EXPECT_EQ(scheduler_->List(negative).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, EventsAfterAndSubscribe) {
  Open();
  const std::string w = Register();
  const std::string id = Submit("events").id();
  const std::string other = Submit("events-other").id();
  std::atomic<int> notified{0};
  const int64_t sub = scheduler_->Subscribe(id, [&] { ++notified; });
  auto lease = LeaseNow(w);  // a task of `id`, the older job
  ASSERT_TRUE(lease.ok() && lease->has_task());
  ASSERT_EQ(lease->task().job_id(), id);
  EXPECT_EQ(notified, 1);  // before LeaseAsync answered
  std::vector<JobEvent> events = Events(id, 1);
  ASSERT_EQ(Count(events), 1);
  EXPECT_EQ(events[0].sequence(), 2);
  EXPECT_EQ(events[0].state(), lpd::v1::JOB_STATE_RUNNING);
  EXPECT_THAT(events[0].message(),
              HasSubstr(absl::StrCat("leased to worker ", w)));
  ASSERT_TRUE(scheduler_->Cancel(other).ok());  // not ours
  EXPECT_EQ(notified, 1);
  ASSERT_TRUE(scheduler_->Cancel(id).ok());
  EXPECT_EQ(notified, 2);
  EXPECT_EQ(Count(Events(id, 2)), 1);
  EXPECT_EQ(Count(Events(id, 3)), 0);
  scheduler_->Unsubscribe(sub);
  Submit("events-3");
  EXPECT_EQ(notified, 2);
  EXPECT_EQ(scheduler_->EventsAfter("job-404", 0).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(SchedulerTest, HeartbeatProgressIsBatched) {
  Open();
  const std::string w = Register();
  const std::string id = Submit("progress").id();
  auto lease = LeaseNow(w);
  ASSERT_TRUE(lease.ok() && lease->has_task());
  const int64_t before = Get(id).last_event();
  for (int i = 1; i <= 5; ++i) {
    EXPECT_EQ(Heartbeat(w, lease->task().lease_id(), 0.1 * i,
                        absl::StrCat("batch ", i)),
              HeartbeatResponse::ACTION_CONTINUE);
  }
  EXPECT_EQ(Get(id).last_event(), before);  // nothing written yet
  clock_.Advance(absl::Seconds(2));
  scheduler_->Tick();
  std::vector<JobEvent> events = Events(id, before);
  ASSERT_EQ(Count(events), 1);
  EXPECT_THAT(events[0].message(), HasSubstr("progress"));
  EXPECT_THAT(events[0].message(), HasSubstr("batch 5"));
  EXPECT_DOUBLE_EQ(events[0].progress(), 0.10 * 0.5 / 2);
  // No new heartbeat: no new event at the next flush.
  clock_.Advance(absl::Seconds(2));
  scheduler_->Tick();
  EXPECT_EQ(Count(Events(id, before)), 1);
  // Shutdown flushes what is pending; the progress survives a restart.
  EXPECT_EQ(Heartbeat(w, lease->task().lease_id(), 0.8, "last"),
            HeartbeatResponse::ACTION_CONTINUE);
  Reopen();
  EXPECT_DOUBLE_EQ(Get(id).progress(), 0.10 * 0.8 / 2);
  EXPECT_THAT(Events(id).back().message(), HasSubstr("last"));
}

TEST_F(SchedulerTest, ReopenMidJobFinishesWithNothingRunTwice) {
  Open();
  const std::string w = Register();
  const std::string id = Submit("restart").id();
  auto s0 = LeaseNow(w);
  auto s1 = LeaseNow(w);
  ASSERT_TRUE(s0.ok() && s0->has_task() && s1.ok() && s1->has_task());
  ASSERT_TRUE(Complete(w, s0->task().lease_id()).ok());

  // The scheduler goes away; the worker keeps its lease on shard 1.
  Reopen();
  EXPECT_EQ(Register(w), w);  // re-registers with its old id
  Job job = Get(id);
  EXPECT_EQ(job.state(), lpd::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job.phase(), lpd::v1::PHASE_SCORE);
  // The lease is still valid, with a fresh deadline.
  clock_.Advance(absl::Seconds(29));
  scheduler_->Tick();
  lpd::v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(w);
  heartbeat.set_lease_id(s1->task().lease_id());
  auto renewed = scheduler_->Heartbeat(heartbeat);
  ASSERT_TRUE(renewed.ok());
  EXPECT_EQ(renewed->action(), HeartbeatResponse::ACTION_CONTINUE);
  // Shard 0 is done and shard 1 is leased: nothing to hand out.
  auto none = LeaseNow(w);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_task());
  ASSERT_TRUE(Complete(w, s1->task().lease_id()).ok());

  const LeaseTaskResponse distill = LeaseWait(w);
  ASSERT_EQ(distill.task().phase(), lpd::v1::PHASE_DISTILL);
  Reopen();
  ASSERT_TRUE(Complete(w, distill.task().lease_id(), "{\"step\": 20000}").ok());
  auto evaluate = LeaseNow(w);
  ASSERT_TRUE(evaluate.ok() && evaluate->has_task());
  ASSERT_EQ(evaluate->task().phase(), lpd::v1::PHASE_EVALUATE);
  ASSERT_TRUE(Complete(w, evaluate->task().lease_id()).ok());
  Reopen();
  auto export_task = LeaseNow(w);
  ASSERT_TRUE(export_task.ok() && export_task->has_task());
  ASSERT_EQ(export_task->task().phase(), lpd::v1::PHASE_EXPORT);
  ASSERT_TRUE(Complete(w, export_task->task().lease_id()).ok());

  EXPECT_EQ(Get(id).state(), lpd::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(select_calls_, 1);
  // Each task was leased exactly once.
  EXPECT_EQ(CountEvents(id, "leased to worker"), 5);
  EXPECT_EQ(CountEvents(id, "(attempt 2"), 0);
  const std::vector<JobEvent> events = Events(id);
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1));
  }
}

TEST_F(SchedulerTest, SelectInterruptedByRestartRunsAgain) {
  // The store as a scheduler left it when it died during SELECT: the job is
  // RUNNING in SELECT, its SCORE task done, no DISTILL task yet.
  {
    auto store = JobStore::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status();
    StoreWrite write;
    Job& job = write.jobs.emplace_back();
    job.set_id("job-00000000000000aa");
    *job.mutable_spec() = Spec("interrupted");
    job.set_state(lpd::v1::JOB_STATE_RUNNING);
    job.set_phase(lpd::v1::PHASE_SELECT);
    job.set_output_uri("file:///out/interrupted/");
    job.set_created_unix_ms(1);
    job.set_last_event(1);
    TaskRecord& task = write.tasks.emplace_back();
    task.task_id = "job-00000000000000aa/score-0";
    task.job_id = job.id();
    task.phase = lpd::v1::PHASE_SCORE;
    task.state = TaskState::kDone;
    task.attempt = 1;
    JobEvent& event = write.events.emplace_back();
    event.set_job_id(job.id());
    event.set_sequence(1);
    event.set_message("SCORE done; SELECT running");
    ASSERT_TRUE((*store)->Write(write).ok());
  }
  Open();
  const std::string w = Register();
  const LeaseTaskResponse distill = LeaseWait(w);
  EXPECT_EQ(distill.task().phase(), lpd::v1::PHASE_DISTILL);
  EXPECT_EQ(distill.task().job_id(), "job-00000000000000aa");
  EXPECT_EQ(select_calls_, 1);
  EXPECT_EQ(last_select_shards_, 1);
}

TEST_F(SchedulerTest, SelectErrorsFailOrRetry) {
  std::atomic<int> calls{0};
  options_.run_select = [&](const Job&, int) -> absl::StatusOr<std::string> {
    if (++calls == 1) return absl::UnavailableError("storage hiccup");
    return absl::InvalidArgumentError("no unit fits the budget");
  };
  Open();
  const std::string w = Register();
  lpd::v1::CompressionJob spec = Spec("select-fails");
  spec.mutable_spec()->mutable_prune()->set_criterion(
      lpd::v1::CRITERION_HANDCRAFTED);
  const std::string id = scheduler_->Submit(spec, "")->id();
  auto lease = LeaseNow(w);
  ASSERT_TRUE(lease.ok() && lease->has_task());
  ASSERT_TRUE(Complete(w, lease->task().lease_id()).ok());
  ASSERT_TRUE(
      Eventually([&] { return Get(id).state() == lpd::v1::JOB_STATE_FAILED; }));
  EXPECT_EQ(calls, 2);
  EXPECT_THAT(Get(id).error(), HasSubstr("no unit fits the budget"));
  EXPECT_EQ(CountEvents(id, "storage hiccup"), 1);
}

TEST_F(SchedulerTest, LongPollsAreAnsweredByTaskTimeoutOrCancel) {
  Open();
  const std::string w = Register();
  // A waiter gets the task as soon as one is submitted.
  auto promise = std::make_shared<std::promise<LeaseTaskResponse>>();
  auto future = promise->get_future();
  scheduler_->LeaseAsync(
      w, absl::Seconds(30), [promise](absl::StatusOr<LeaseTaskResponse> r) {
        promise->set_value(r.ok() ? *r : LeaseTaskResponse());
      });
  const std::string id = Submit("long-poll").id();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)),
            std::future_status::ready);
  const LeaseTaskResponse got = future.get();
  ASSERT_TRUE(got.has_task());
  EXPECT_EQ(got.task().job_id(), id);

  // Another lease takes the second shard; then a waiter times out empty.
  ASSERT_TRUE(LeaseNow(w)->has_task());
  std::atomic<int> answers{0};
  std::atomic<bool> had_task{false};
  scheduler_->LeaseAsync(w, absl::Seconds(5),
                         [&](absl::StatusOr<LeaseTaskResponse> r) {
                           had_task = r.ok() && r->has_task();
                           ++answers;
                         });
  scheduler_->Tick();
  EXPECT_EQ(answers, 0);
  clock_.Advance(absl::Seconds(6));
  scheduler_->Tick();
  EXPECT_EQ(answers, 1);
  EXPECT_FALSE(had_task);

  // A cancelled waiter is never answered.
  std::atomic<int> cancelled_answers{0};
  const int64_t waiter = scheduler_->LeaseAsync(
      w, absl::Seconds(5),
      [&](absl::StatusOr<LeaseTaskResponse>) { ++cancelled_answers; });
  EXPECT_TRUE(scheduler_->CancelLease(waiter));
  EXPECT_FALSE(scheduler_->CancelLease(waiter));
  clock_.Advance(absl::Seconds(6));
  scheduler_->Tick();
  EXPECT_EQ(cancelled_answers, 0);

  // Shutdown answers pending polls with no task.
  std::atomic<int> shutdown_answers{0};
  scheduler_->LeaseAsync(w, absl::Seconds(30),
                         [&](absl::StatusOr<LeaseTaskResponse> r) {
                           EXPECT_TRUE(r.ok() && !r->has_task());
                           ++shutdown_answers;
                         });
  scheduler_->Shutdown();
  EXPECT_EQ(shutdown_answers, 1);
}

TEST_F(SchedulerTest, WorkersMustRegister) {
  Open();
  auto unknown = LeaseNow("w-unknown");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LeaseNow("").status().code(), absl::StatusCode::kInvalidArgument);
  lpd::v1::RegisterWorkerRequest request;
  request.set_worker_id("w-made-up");
  auto response = scheduler_->RegisterWorker(request);
  ASSERT_TRUE(response.ok());
  EXPECT_NE(response->worker_id(), "w-made-up");
  EXPECT_EQ(response->lease_duration_ms(), 30000);
  EXPECT_EQ(response->heartbeat_interval_ms(), 2000);
  EXPECT_EQ(Heartbeat(response->worker_id(), "job-x/score-0#1"),
            HeartbeatResponse::ACTION_LEASE_LOST);
}

TEST_F(SchedulerTest, UnwritableStateDirIsUnavailable) {
  std::filesystem::create_directories(dir_);
  std::ofstream(dir_ + "/file") << "x";
  options_.state_dir = dir_ + "/file/state";
  auto scheduler = Scheduler::Open(options_);
  ASSERT_FALSE(scheduler.ok());
  EXPECT_EQ(scheduler.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(scheduler.status().message(), HasSubstr(dir_ + "/file"));
}

TEST_F(SchedulerTest, ManyThreadsAtOnce) {
  options_.score_shards = 4;
  Open();
  std::vector<std::string> workers;
  for (int i = 0; i < 4; ++i) workers.push_back(Register());
  std::vector<std::thread> threads;
  std::atomic<int> submitted{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        if (scheduler_->Submit(Spec(absl::StrCat("many-", t, "-", i)), "")
                .ok()) {
          ++submitted;
        }
      }
    });
    threads.emplace_back([&, t] {
      // Each worker runs SCORE shards until it finds none for a while.
      int idle = 0;
      while (submitted < 20 || idle < 100) {
        auto lease = LeaseNow(workers[t]);
        if (!lease.ok() || !lease->has_task()) {
          ++idle;
          absl::SleepFor(absl::Milliseconds(2));
          continue;
        }
        idle = 0;
        Heartbeat(workers[t], lease->task().lease_id(), 0.5);
        if (lease->task().phase() == lpd::v1::PHASE_SCORE) {
          EXPECT_TRUE(Complete(workers[t], lease->task().lease_id()).ok());
        } else {
          EXPECT_TRUE(
              Fail(workers[t], lease->task().lease_id(), "stop", false).ok());
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(submitted, 20);
  lpd::v1::ListJobsRequest request;
  auto all = scheduler_->List(request);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(Count(all->jobs()), 20);
  for (const Job& job : all->jobs()) {
    EXPECT_EQ(job.state(), lpd::v1::JOB_STATE_FAILED) << job.id();
    EXPECT_EQ(CountEvents(job.id(), "leased to worker"), 5);  // 4 + DISTILL
    EXPECT_EQ(CountEvents(job.id(), " done on worker"), 4);
  }
}

TEST_F(SchedulerTest, ThousandStoredJobsAreServedFromMemory) {
  // 1,000 jobs in the store (written in one transaction), as a scheduler
  // would have left them.
  {
    auto store = JobStore::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status();
    StoreWrite write;
    for (int i = 0; i < 1000; ++i) {
      Job& job = write.jobs.emplace_back();
      job.set_id(absl::StrFormat("job-%016x", i));
      *job.mutable_spec() = Spec(absl::StrCat("stored-", i));
      job.set_state(i % 10 == 0 ? lpd::v1::JOB_STATE_QUEUED
                                : lpd::v1::JOB_STATE_SUCCEEDED);
      job.set_phase(lpd::v1::PHASE_SCORE);
      job.set_progress(i % 10 == 0 ? 0 : 1);
      job.set_output_uri(job.spec().spec().output().uri());
      job.set_created_unix_ms(1000 + i);
      job.set_last_event(1);
      JobEvent& event = write.events.emplace_back();
      event.set_job_id(job.id());
      event.set_sequence(1);
      event.set_message("submitted");
      TaskRecord& task = write.tasks.emplace_back();
      task.task_id = job.id() + "/score-0";
      task.job_id = job.id();
      task.phase = lpd::v1::PHASE_SCORE;
      task.state = i % 10 == 0 ? TaskState::kQueued : TaskState::kDone;
    }
    ASSERT_TRUE((*store)->Write(write).ok());
  }
  const absl::Time opening = absl::Now();
  Open();
  const absl::Duration open_time = absl::Now() - opening;
  std::vector<absl::Duration> gets, lists;
  for (int i = 0; i < 1000; ++i) {
    const absl::Time start = absl::Now();
    auto job = scheduler_->Get(absl::StrFormat("job-%016x", (i * 7) % 1000));
    gets.push_back(absl::Now() - start);
    ASSERT_TRUE(job.ok());
  }
  lpd::v1::ListJobsRequest request;
  for (int i = 0; i < 100; ++i) {
    request.set_state(i % 2 ? lpd::v1::JOB_STATE_QUEUED
                            : lpd::v1::JOB_STATE_UNSPECIFIED);
    const absl::Time start = absl::Now();
    auto page = scheduler_->List(request);
    lists.push_back(absl::Now() - start);
    ASSERT_TRUE(page.ok());
    EXPECT_EQ(Count(page->jobs()), 100);
  }
  std::sort(gets.begin(), gets.end());
  std::sort(lists.begin(), lists.end());
  const absl::Duration get_p99 = gets[gets.size() * 99 / 100];
  const absl::Duration list_p99 = lists[lists.size() * 99 / 100];
  std::cerr << "open " << open_time << ", get p99 " << get_p99
            << ", list(100) p99 " << list_p99 << "\n";
  EXPECT_LT(get_p99, absl::Milliseconds(10));
  EXPECT_LT(list_p99, absl::Milliseconds(10));
  // The queued ones are handed out, oldest first.
  const std::string w = Register();
  auto lease = LeaseNow(w);
  ASSERT_TRUE(lease.ok() && lease->has_task());
  EXPECT_EQ(lease->task().job_id(), "job-0000000000000000");
  // Submits are durable (one fsync each): printed, not asserted, as they
  // depend on the disk.
  std::vector<absl::Duration> submits;
  absl::StatusOr<Job> submitted;
  for (int i = 0; i < 20; ++i) {
    const absl::Time start = absl::Now();
    submitted = scheduler_->Submit(Spec(absl::StrCat("new-", i)), "");
    submits.push_back(absl::Now() - start);
    ASSERT_TRUE(submitted.ok()) << submitted.status();
  }
  std::sort(submits.begin(), submits.end());
  std::cerr << "submit median " << submits[submits.size() / 2] << ", max "
            << submits.back() << "\n";
  request.set_state(lpd::v1::JOB_STATE_UNSPECIFIED);
  request.set_page_size(1);
  EXPECT_EQ(scheduler_->List(request)->jobs(0).id(), submitted->id());
}

}  // namespace
}  // namespace lpd::server

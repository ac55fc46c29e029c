#include "server/job_store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lpd::server {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

// A fresh, empty folder under the test's temp directory.
std::string TempDir(const std::string& name) {
  const std::string dir =
      (std::filesystem::path(::testing::TempDir()) /
       absl::StrCat("job_store_test_", name, "_", ::getpid()))
          .string();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

lpd::v1::Job MakeJob(const std::string& id, const std::string& request_id) {
  lpd::v1::Job job;
  job.set_id(id);
  job.set_request_id(request_id);
  job.mutable_spec()->set_api_version("lpd/v1");
  job.mutable_spec()->mutable_metadata()->set_name("tiny");
  (*job.mutable_spec()->mutable_metadata()->mutable_labels())["team"] = "x";
  job.mutable_spec()->mutable_spec()->mutable_output()->set_uri("file:///out/" +
                                                                id + "/");
  job.set_state(lpd::v1::JOB_STATE_QUEUED);
  job.set_phase(lpd::v1::PHASE_SCORE);
  job.set_output_uri("file:///out/" + id + "/");
  job.set_created_unix_ms(1000);
  job.set_updated_unix_ms(1000);
  job.set_last_event(1);
  return job;
}

lpd::v1::JobEvent MakeEvent(const std::string& job_id, int64_t sequence,
                            const std::string& message) {
  lpd::v1::JobEvent event;
  event.set_job_id(job_id);
  event.set_sequence(sequence);
  event.set_unix_ms(1000 + sequence);
  event.set_state(lpd::v1::JOB_STATE_RUNNING);
  event.set_phase(lpd::v1::PHASE_DISTILL);
  event.set_progress(0.25);
  event.set_message(message);
  return event;
}

TEST(JobStoreTest, CreatesSchemaInWalMode) {
  const std::string dir = TempDir("schema");
  auto store = JobStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->path(), dir + "/jobs.db");
  EXPECT_TRUE(std::filesystem::exists(dir + "/jobs.db"));
  // WAL mode leaves a -wal file beside the database once written.
  ASSERT_TRUE((*store)->Probe(1).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/jobs.db-wal"));
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_THAT(*jobs, SizeIs(0));
}

TEST(JobStoreTest, RoundTripsJobsTasksEventsAndWorkersAcrossReopen) {
  const std::string dir = TempDir("roundtrip");
  {
    auto store = JobStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    StoreWrite write;
    write.jobs.push_back(MakeJob("job-1", "req-1"));
    write.jobs.push_back(MakeJob("job-2", ""));
    TaskRecord task;
    task.task_id = "job-1/score-0";
    task.job_id = "job-1";
    task.phase = lpd::v1::PHASE_SCORE;
    task.shard_index = 0;
    task.shard_count = 2;
    task.state = TaskState::kLeased;
    task.attempt = 2;
    task.lease_id = "job-1/score-0#2";
    task.worker_id = "w-1";
    task.lease_expires_ms = 99;
    task.progress = 0.5;
    task.result_json = "{\"a\": 1}";
    task.last_error = "boom";
    write.tasks.push_back(task);
    write.events.push_back(MakeEvent("job-1", 1, "submitted"));
    write.events.push_back(MakeEvent("job-1", 2, "leased 'quoted'; DROP"));
    write.events.push_back(MakeEvent("job-2", 1, "submitted"));
    write.workers.push_back(WorkerRecord{"w-1", "host", "cuda:0", 5});
    ASSERT_TRUE((*store)->Write(write).ok());

    // Upserts: the job's state changes, its spec and request_id stay.
    StoreWrite update;
    lpd::v1::Job changed = MakeJob("job-1", "req-1");
    changed.set_state(lpd::v1::JOB_STATE_RUNNING);
    changed.set_progress(0.125);
    changed.set_last_event(3);
    update.jobs.push_back(changed);
    task.state = TaskState::kDone;
    update.tasks.push_back(task);
    update.events.push_back(MakeEvent("job-1", 3, "done"));
    ASSERT_TRUE((*store)->Write(update).ok());
  }
  auto store = JobStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_THAT(*jobs, SizeIs(2));
  const lpd::v1::Job& job =
      (*jobs)[0].id() == "job-1" ? (*jobs)[0] : (*jobs)[1];
  EXPECT_EQ(job.state(), lpd::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job.progress(), 0.125);
  EXPECT_EQ(job.last_event(), 3);
  EXPECT_EQ(job.request_id(), "req-1");
  EXPECT_EQ(job.spec().metadata().labels().at("team"), "x");
  EXPECT_EQ(job.output_uri(), "file:///out/job-1/");

  auto tasks = (*store)->LoadTasks();
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_THAT(*tasks, SizeIs(1));
  EXPECT_EQ((*tasks)[0].state, TaskState::kDone);
  EXPECT_EQ((*tasks)[0].attempt, 2);
  EXPECT_EQ((*tasks)[0].lease_id, "job-1/score-0#2");
  EXPECT_EQ((*tasks)[0].worker_id, "w-1");
  EXPECT_EQ((*tasks)[0].lease_expires_ms, 99);
  EXPECT_EQ((*tasks)[0].shard_count, 2);
  EXPECT_EQ((*tasks)[0].result_json, "{\"a\": 1}");
  EXPECT_EQ((*tasks)[0].last_error, "boom");

  auto events = (*store)->EventsAfter("job-1", 1);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_THAT(*events, SizeIs(2));
  EXPECT_EQ((*events)[0].sequence(), 2);
  EXPECT_EQ((*events)[0].message(), "leased 'quoted'; DROP");
  EXPECT_EQ((*events)[0].phase(), lpd::v1::PHASE_DISTILL);
  EXPECT_EQ((*events)[1].sequence(), 3);
  auto limited = (*store)->EventsAfter("job-1", 0, 1);
  ASSERT_TRUE(limited.ok());
  EXPECT_THAT(*limited, SizeIs(1));
  auto none = (*store)->EventsAfter("job-404", 0);
  ASSERT_TRUE(none.ok());
  EXPECT_THAT(*none, SizeIs(0));

  auto workers = (*store)->LoadWorkers();
  ASSERT_TRUE(workers.ok());
  ASSERT_THAT(*workers, SizeIs(1));
  EXPECT_EQ((*workers)[0].device, "cuda:0");
}

TEST(JobStoreTest, FailedWriteStoresNothing) {
  const std::string dir = TempDir("atomic");
  auto store = JobStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  StoreWrite first;
  first.jobs.push_back(MakeJob("job-1", "req-1"));
  first.events.push_back(MakeEvent("job-1", 1, "submitted"));
  ASSERT_TRUE((*store)->Write(first).ok());

  // A second job plus a duplicate event: the whole transaction fails.
  StoreWrite second;
  second.jobs.push_back(MakeJob("job-2", ""));
  second.events.push_back(MakeEvent("job-1", 1, "again"));
  const absl::Status status = (*store)->Write(second);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
  EXPECT_THAT(status.message(), HasSubstr("jobs.db"));
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok());
  EXPECT_THAT(*jobs, SizeIs(1));

  // request_id is unique.
  StoreWrite third;
  third.jobs.push_back(MakeJob("job-3", "req-1"));
  EXPECT_EQ((*store)->Write(third).code(), absl::StatusCode::kInternal);
  // The store still works afterwards.
  StoreWrite fourth;
  fourth.jobs.push_back(MakeJob("job-4", "req-4"));
  EXPECT_TRUE((*store)->Write(fourth).ok());
}

TEST(JobStoreTest, UnwritableStateDirIsUnavailable) {
  const std::string dir = TempDir("unwritable");
  // A regular file where the state folder should be: cannot be created,
  // whatever the user's privileges.
  const std::string file = dir + "/not-a-dir";
  std::ofstream(file) << "x";
  auto store = JobStore::Open(file + "/state");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(store.status().message(), HasSubstr("not-a-dir"));

  // A folder named jobs.db: SQLite cannot open it.
  std::filesystem::create_directories(dir + "/state2/jobs.db");
  auto store2 = JobStore::Open(dir + "/state2");
  ASSERT_FALSE(store2.ok());
  EXPECT_EQ(store2.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(store2.status().message(), HasSubstr("state2/jobs.db"));
}

// Issue 16, defect 2: two schedulers on one state directory both served.
TEST(JobStoreTest, SecondStoreOnOneFolderIsRefusedNamingTheHolder) {
  const std::string dir = TempDir("held");
  {
    auto first = JobStore::Open(dir, "lpd-scheduler --listen 127.0.0.1:7");
    ASSERT_TRUE(first.ok()) << first.status();
    auto second = JobStore::Open(dir, "lpd-scheduler --listen 127.0.0.1:8");
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(second.status().message(),
                HasSubstr("is in use by lpd-scheduler --listen 127.0.0.1:7 "
                          "(pid "));
  }
  EXPECT_TRUE(JobStore::Open(dir).ok());  // closed: free again
}

TEST(JobStoreTest, RefusesNewerSchema) {
  const std::string dir = TempDir("newer");
  {
    auto store = JobStore::Open(dir);
    ASSERT_TRUE(store.ok());
  }
  {  // Reopening keeps the schema and the data.
    auto store = JobStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir + "/jobs.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(
      sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr),
      SQLITE_OK);
  sqlite3_close(db);
  auto store = JobStore::Open(dir);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("99"));
}

}  // namespace
}  // namespace lpd::server

#include "server/job_store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace lpd::server {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE jobs (
  id TEXT PRIMARY KEY NOT NULL,
  request_id TEXT UNIQUE,           -- NULL when the submit had none
  spec BLOB NOT NULL,               -- serialized lpd.v1.CompressionJob
  state INTEGER NOT NULL,           -- lpd.v1.JobState
  phase INTEGER NOT NULL,           -- lpd.v1.Phase
  progress REAL NOT NULL,
  error TEXT NOT NULL,
  output_uri TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  last_event INTEGER NOT NULL
);
CREATE INDEX jobs_created ON jobs (created_ms, id);
CREATE TABLE tasks (
  task_id TEXT PRIMARY KEY NOT NULL,
  job_id TEXT NOT NULL REFERENCES jobs (id),
  phase INTEGER NOT NULL,
  shard_index INTEGER NOT NULL,
  shard_count INTEGER NOT NULL,
  state TEXT NOT NULL
    CHECK (state IN ('queued', 'leased', 'done', 'failed', 'cancelled')),
  attempt INTEGER NOT NULL,
  lease_id TEXT NOT NULL,
  worker_id TEXT NOT NULL,
  lease_expires_ms INTEGER NOT NULL,
  progress REAL NOT NULL,
  result_json TEXT NOT NULL,
  last_error TEXT NOT NULL
);
CREATE INDEX tasks_job ON tasks (job_id);
CREATE TABLE events (
  job_id TEXT NOT NULL,
  sequence INTEGER NOT NULL,
  unix_ms INTEGER NOT NULL,
  state INTEGER NOT NULL,
  phase INTEGER NOT NULL,
  progress REAL NOT NULL,
  message TEXT NOT NULL,
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE workers (
  worker_id TEXT PRIMARY KEY NOT NULL,
  name TEXT NOT NULL,
  device TEXT NOT NULL,
  registered_ms INTEGER NOT NULL
);
CREATE TABLE meta (
  key TEXT PRIMARY KEY NOT NULL,
  value
);
PRAGMA user_version = 1;
)sql";

constexpr const char* kUpsertJob = R"sql(
INSERT INTO jobs (id, request_id, spec, state, phase, progress, error,
                  output_uri, created_ms, updated_ms, last_event)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
ON CONFLICT (id) DO UPDATE SET
  state = excluded.state, phase = excluded.phase,
  progress = excluded.progress, error = excluded.error,
  output_uri = excluded.output_uri, updated_ms = excluded.updated_ms,
  last_event = excluded.last_event
)sql";

constexpr const char* kUpsertTask = R"sql(
INSERT INTO tasks (task_id, job_id, phase, shard_index, shard_count, state,
                   attempt, lease_id, worker_id, lease_expires_ms, progress,
                   result_json, last_error)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
ON CONFLICT (task_id) DO UPDATE SET
  state = excluded.state, attempt = excluded.attempt,
  lease_id = excluded.lease_id, worker_id = excluded.worker_id,
  lease_expires_ms = excluded.lease_expires_ms, progress = excluded.progress,
  result_json = excluded.result_json, last_error = excluded.last_error
)sql";

constexpr const char* kInsertEvent = R"sql(
INSERT INTO events (job_id, sequence, unix_ms, state, phase, progress, message)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
)sql";

constexpr const char* kUpsertWorker = R"sql(
INSERT INTO workers (worker_id, name, device, registered_ms)
VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (worker_id) DO UPDATE SET
  name = excluded.name, device = excluded.device,
  registered_ms = excluded.registered_ms
)sql";

constexpr const char* kSelectJobs = R"sql(
SELECT id, request_id, spec, state, phase, progress, error, output_uri,
       created_ms, updated_ms, last_event
FROM jobs ORDER BY created_ms, id
)sql";

constexpr const char* kSelectTasks = R"sql(
SELECT task_id, job_id, phase, shard_index, shard_count, state, attempt,
       lease_id, worker_id, lease_expires_ms, progress, result_json, last_error
FROM tasks ORDER BY job_id, phase, shard_index
)sql";

constexpr const char* kSelectWorkers = R"sql(
SELECT worker_id, name, device, registered_ms FROM workers
)sql";

constexpr const char* kSelectEvents = R"sql(
SELECT sequence, unix_ms, state, phase, progress, message
FROM events WHERE job_id = ?1 AND sequence > ?2 ORDER BY sequence LIMIT ?3
)sql";

constexpr const char* kProbe = R"sql(
INSERT INTO meta (key, value) VALUES ('probe_ms', ?1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
)sql";

absl::StatusOr<TaskState> ParseTaskState(absl::string_view name) {
  for (TaskState s : {TaskState::kQueued, TaskState::kLeased, TaskState::kDone,
                      TaskState::kFailed, TaskState::kCancelled}) {
    if (TaskStateName(s) == name) return s;
  }
  return absl::DataLossError(absl::StrCat("unknown task state \"", name, "\""));
}

std::string ColumnText(sqlite3_stmt* stmt, int column) {
  const auto* text =
      reinterpret_cast<const char*>(sqlite3_column_text(stmt, column));
  if (text == nullptr) return "";
  return std::string(text, sqlite3_column_bytes(stmt, column));
}

}  // namespace

absl::string_view TaskStateName(TaskState state) {
  switch (state) {
    case TaskState::kQueued:
      return "queued";
    case TaskState::kLeased:
      return "leased";
    case TaskState::kDone:
      return "done";
    case TaskState::kFailed:
      return "failed";
    case TaskState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

// A prepared statement with bound parameters (1-based), finalized when it
// goes out of scope.
class JobStore::Statement {
 public:
  Statement(const JobStore& store, sqlite3* db, const char* sql)
      : store_(store), db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  absl::Status Prepared(absl::string_view what) const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return store_.Error(db_, rc_, what);
  }
  void Bind(int i, absl::string_view text) {
    sqlite3_bind_text(stmt_, i, text.data(), static_cast<int>(text.size()),
                      SQLITE_TRANSIENT);
  }
  // NULL for an empty string.
  void BindOrNull(int i, absl::string_view text) {
    if (text.empty()) {
      sqlite3_bind_null(stmt_, i);
    } else {
      Bind(i, text);
    }
  }
  void BindBlob(int i, absl::string_view bytes) {
    sqlite3_bind_blob(stmt_, i, bytes.data(), static_cast<int>(bytes.size()),
                      SQLITE_TRANSIENT);
  }
  void Bind(int i, int64_t value) { sqlite3_bind_int64(stmt_, i, value); }
  void Bind(int i, double value) { sqlite3_bind_double(stmt_, i, value); }

  // Runs a statement that returns no rows.
  absl::Status Run(absl::string_view what) {
    const int rc = sqlite3_step(stmt_);
    if (rc != SQLITE_DONE) return store_.Error(db_, rc, what);
    return absl::OkStatus();
  }
  // Steps to the next row: true with a row, false at the end.
  absl::StatusOr<bool> Next(absl::string_view what) {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return store_.Error(db_, rc, what);
  }
  sqlite3_stmt* get() const { return stmt_; }

 private:
  const JobStore& store_;
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
};

JobStore::JobStore(std::string path, FolderLock lock, sqlite3* db,
                   sqlite3* reader)
    : path_(std::move(path)),
      lock_(std::move(lock)),
      db_(db),
      reader_(reader) {}

JobStore::~JobStore() {
  sqlite3_close_v2(reader_);
  sqlite3_close_v2(db_);
}

absl::Status JobStore::Error(sqlite3* db, int rc,
                             absl::string_view what) const {
  const int primary = rc & 0xff;
  std::string message =
      absl::StrCat("job store ", path_, ": ", what, ": ", sqlite3_errstr(rc));
  if (db != nullptr) {
    const char* detail = sqlite3_errmsg(db);
    if (detail != nullptr && absl::string_view(detail) != sqlite3_errstr(rc)) {
      absl::StrAppend(&message, " (", detail, ")");
    }
  }
  if (primary == SQLITE_CONSTRAINT) return absl::InternalError(message);
  return absl::UnavailableError(message);
}

absl::Status JobStore::Exec(sqlite3* db, const char* sql,
                            absl::string_view what) {
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  sqlite3_free(error);
  if (rc != SQLITE_OK) return Error(db, rc, what);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(
    const std::string& state_dir, const std::string& holder) {
  if (state_dir.empty()) {
    return absl::InvalidArgumentError("job store: empty state directory");
  }
  std::error_code ec;
  std::filesystem::create_directories(state_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("job store: cannot create state directory ", state_dir,
                     ": ", ec.message()));
  }
  std::string path =
      (std::filesystem::path(state_dir) / std::string(kFileName)).string();
  char host[256] = "";
  gethostname(host, sizeof(host) - 1);
  absl::StatusOr<FolderLock> lock = FolderLock::Acquire(
      state_dir,
      absl::StrCat(holder.empty() ? "a job store" : holder, " (pid ", getpid(),
                   " on ", host, ", since ",
                   absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(),
                                    absl::UTCTimeZone()),
                   ")"));
  if (!lock.ok()) {
    return absl::Status(lock.status().code(),
                        absl::StrCat("job store: ", lock.status().message()));
  }

  const int flags =
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = absl::UnavailableError(absl::StrCat(
        "job store ", path,
        ": cannot open: ", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    sqlite3_close_v2(db);
    return status;
  }
  // The reader is opened once the schema exists (below).
  std::unique_ptr<JobStore> store(
      new JobStore(path, std::move(*lock), db, nullptr));
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, 5000);
  {
    absl::MutexLock lock(&store->write_mu_);
    // journal_mode returns a row; sqlite3_exec ignores it. WAL cannot be
    // set on a database it cannot write, so this is also the first write.
    RETURN_IF_ERROR(
        store->Exec(db, "PRAGMA journal_mode=WAL", "setting WAL mode"));
    RETURN_IF_ERROR(
        store->Exec(db, "PRAGMA synchronous=FULL", "setting synchronous=FULL"));
    int version = 0;
    {
      Statement stmt(*store, db, "PRAGMA user_version");
      RETURN_IF_ERROR(stmt.Prepared("reading the schema version"));
      ASSIGN_OR_RETURN(bool row, stmt.Next("reading the schema version"));
      if (row) version = sqlite3_column_int(stmt.get(), 0);
    }
    if (version > kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job store ", path, ": schema version ", version,
          " is newer than this scheduler's (", kSchemaVersion, ")"));
    }
    if (version == 0) {
      RETURN_IF_ERROR(
          store->Exec(db, "BEGIN IMMEDIATE", "creating the schema"));
      absl::Status created = store->Exec(db, kSchema, "creating the schema");
      if (created.ok()) {
        created = store->Exec(db, "COMMIT", "creating the schema");
      }
      if (!created.ok()) {
        store->Exec(db, "ROLLBACK", "rolling back").IgnoreError();
        return created;
      }
    }
  }
  sqlite3* reader = nullptr;
  rc = sqlite3_open_v2(path.c_str(), &reader,
                       SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = store->Error(reader, rc, "opening a reader");
    sqlite3_close_v2(reader);
    return status;
  }
  sqlite3_extended_result_codes(reader, 1);
  sqlite3_busy_timeout(reader, 5000);
  store->reader_ = reader;
  return store;
}

absl::Status JobStore::Write(const StoreWrite& write) {
  if (write.empty()) return absl::OkStatus();
  absl::MutexLock lock(&write_mu_);
  RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE", "beginning a transaction"));
  absl::Status status = WriteLocked(write);
  if (status.ok()) status = Exec(db_, "COMMIT", "committing");
  if (!status.ok() && !sqlite3_get_autocommit(db_)) {
    Exec(db_, "ROLLBACK", "rolling back").IgnoreError();
  }
  return status;
}

absl::Status JobStore::WriteLocked(const StoreWrite& write) {
  if (!write.jobs.empty()) {
    Statement stmt(*this, db_, kUpsertJob);
    RETURN_IF_ERROR(stmt.Prepared("preparing a job write"));
    std::string spec;
    for (const lpd::v1::Job& job : write.jobs) {
      spec.clear();
      {
        google::protobuf::io::StringOutputStream out(&spec);
        google::protobuf::io::CodedOutputStream coded(&out);
        coded.SetSerializationDeterministic(true);
        job.spec().SerializeToCodedStream(&coded);
      }
      sqlite3_reset(stmt.get());
      stmt.Bind(1, job.id());
      stmt.BindOrNull(2, job.request_id());
      stmt.BindBlob(3, spec);
      stmt.Bind(4, static_cast<int64_t>(job.state()));
      stmt.Bind(5, static_cast<int64_t>(job.phase()));
      stmt.Bind(6, job.progress());
      stmt.Bind(7, job.error());
      stmt.Bind(8, job.output_uri());
      stmt.Bind(9, job.created_unix_ms());
      stmt.Bind(10, job.updated_unix_ms());
      stmt.Bind(11, job.last_event());
      RETURN_IF_ERROR(stmt.Run(absl::StrCat("writing job ", job.id())));
    }
  }
  if (!write.tasks.empty()) {
    Statement stmt(*this, db_, kUpsertTask);
    RETURN_IF_ERROR(stmt.Prepared("preparing a task write"));
    for (const TaskRecord& task : write.tasks) {
      sqlite3_reset(stmt.get());
      stmt.Bind(1, task.task_id);
      stmt.Bind(2, task.job_id);
      stmt.Bind(3, static_cast<int64_t>(task.phase));
      stmt.Bind(4, static_cast<int64_t>(task.shard_index));
      stmt.Bind(5, static_cast<int64_t>(task.shard_count));
      stmt.Bind(6, TaskStateName(task.state));
      stmt.Bind(7, static_cast<int64_t>(task.attempt));
      stmt.Bind(8, task.lease_id);
      stmt.Bind(9, task.worker_id);
      stmt.Bind(10, task.lease_expires_ms);
      stmt.Bind(11, task.progress);
      stmt.Bind(12, task.result_json);
      stmt.Bind(13, task.last_error);
      RETURN_IF_ERROR(stmt.Run(absl::StrCat("writing task ", task.task_id)));
    }
  }
  if (!write.events.empty()) {
    Statement stmt(*this, db_, kInsertEvent);
    RETURN_IF_ERROR(stmt.Prepared("preparing an event write"));
    for (const lpd::v1::JobEvent& event : write.events) {
      sqlite3_reset(stmt.get());
      stmt.Bind(1, event.job_id());
      stmt.Bind(2, event.sequence());
      stmt.Bind(3, event.unix_ms());
      stmt.Bind(4, static_cast<int64_t>(event.state()));
      stmt.Bind(5, static_cast<int64_t>(event.phase()));
      stmt.Bind(6, event.progress());
      stmt.Bind(7, event.message());
      RETURN_IF_ERROR(stmt.Run(absl::StrCat("writing event ", event.job_id(),
                                            "#", event.sequence())));
    }
  }
  if (!write.workers.empty()) {
    Statement stmt(*this, db_, kUpsertWorker);
    RETURN_IF_ERROR(stmt.Prepared("preparing a worker write"));
    for (const WorkerRecord& worker : write.workers) {
      sqlite3_reset(stmt.get());
      stmt.Bind(1, worker.worker_id);
      stmt.Bind(2, worker.name);
      stmt.Bind(3, worker.device);
      stmt.Bind(4, worker.registered_ms);
      RETURN_IF_ERROR(
          stmt.Run(absl::StrCat("writing worker ", worker.worker_id)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<lpd::v1::Job>> JobStore::LoadJobs() {
  absl::MutexLock lock(&read_mu_);
  Statement stmt(*this, reader_, kSelectJobs);
  RETURN_IF_ERROR(stmt.Prepared("reading jobs"));
  std::vector<lpd::v1::Job> jobs;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Next("reading jobs"));
    if (!row) break;
    sqlite3_stmt* s = stmt.get();
    lpd::v1::Job& job = jobs.emplace_back();
    job.set_id(ColumnText(s, 0));
    job.set_request_id(ColumnText(s, 1));
    const void* spec = sqlite3_column_blob(s, 2);
    const int spec_size = sqlite3_column_bytes(s, 2);
    if (spec_size > 0 && !job.mutable_spec()->ParseFromArray(spec, spec_size)) {
      return absl::DataLossError(absl::StrCat(
          "job store ", path_, ": job ", job.id(), " has an unreadable spec"));
    }
    job.set_state(static_cast<lpd::v1::JobState>(sqlite3_column_int(s, 3)));
    job.set_phase(static_cast<lpd::v1::Phase>(sqlite3_column_int(s, 4)));
    job.set_progress(sqlite3_column_double(s, 5));
    job.set_error(ColumnText(s, 6));
    job.set_output_uri(ColumnText(s, 7));
    job.set_created_unix_ms(sqlite3_column_int64(s, 8));
    job.set_updated_unix_ms(sqlite3_column_int64(s, 9));
    job.set_last_event(sqlite3_column_int64(s, 10));
  }
  return jobs;
}

absl::StatusOr<std::vector<TaskRecord>> JobStore::LoadTasks() {
  absl::MutexLock lock(&read_mu_);
  Statement stmt(*this, reader_, kSelectTasks);
  RETURN_IF_ERROR(stmt.Prepared("reading tasks"));
  std::vector<TaskRecord> tasks;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Next("reading tasks"));
    if (!row) break;
    sqlite3_stmt* s = stmt.get();
    TaskRecord& task = tasks.emplace_back();
    task.task_id = ColumnText(s, 0);
    task.job_id = ColumnText(s, 1);
    task.phase = static_cast<lpd::v1::Phase>(sqlite3_column_int(s, 2));
    task.shard_index = sqlite3_column_int(s, 3);
    task.shard_count = sqlite3_column_int(s, 4);
    ASSIGN_OR_RETURN(task.state, ParseTaskState(ColumnText(s, 5)));
    task.attempt = sqlite3_column_int(s, 6);
    task.lease_id = ColumnText(s, 7);
    task.worker_id = ColumnText(s, 8);
    task.lease_expires_ms = sqlite3_column_int64(s, 9);
    task.progress = sqlite3_column_double(s, 10);
    task.result_json = ColumnText(s, 11);
    task.last_error = ColumnText(s, 12);
  }
  return tasks;
}

absl::StatusOr<std::vector<WorkerRecord>> JobStore::LoadWorkers() {
  absl::MutexLock lock(&read_mu_);
  Statement stmt(*this, reader_, kSelectWorkers);
  RETURN_IF_ERROR(stmt.Prepared("reading workers"));
  std::vector<WorkerRecord> workers;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Next("reading workers"));
    if (!row) break;
    sqlite3_stmt* s = stmt.get();
    WorkerRecord& worker = workers.emplace_back();
    worker.worker_id = ColumnText(s, 0);
    worker.name = ColumnText(s, 1);
    worker.device = ColumnText(s, 2);
    worker.registered_ms = sqlite3_column_int64(s, 3);
  }
  return workers;
}

absl::StatusOr<std::vector<lpd::v1::JobEvent>> JobStore::EventsAfter(
    absl::string_view job_id, int64_t after_sequence, int limit) {
  absl::MutexLock lock(&read_mu_);
  Statement stmt(*this, reader_, kSelectEvents);
  RETURN_IF_ERROR(stmt.Prepared("reading events"));
  stmt.Bind(1, job_id);
  stmt.Bind(2, after_sequence);
  stmt.Bind(3, static_cast<int64_t>(limit > 0 ? limit : -1));
  std::vector<lpd::v1::JobEvent> events;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Next("reading events"));
    if (!row) break;
    sqlite3_stmt* s = stmt.get();
    lpd::v1::JobEvent& event = events.emplace_back();
    event.set_job_id(std::string(job_id));
    event.set_sequence(sqlite3_column_int64(s, 0));
    event.set_unix_ms(sqlite3_column_int64(s, 1));
    event.set_state(static_cast<lpd::v1::JobState>(sqlite3_column_int(s, 2)));
    event.set_phase(static_cast<lpd::v1::Phase>(sqlite3_column_int(s, 3)));
    event.set_progress(sqlite3_column_double(s, 4));
    event.set_message(ColumnText(s, 5));
  }
  return events;
}

absl::Status JobStore::Probe(int64_t now_ms) {
  absl::MutexLock lock(&write_mu_);
  Statement stmt(*this, db_, kProbe);
  RETURN_IF_ERROR(stmt.Prepared("preparing a probe write"));
  stmt.Bind(1, now_ms);
  return stmt.Run("probing");
}

}  // namespace lpd::server

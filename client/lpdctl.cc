// lpdctl: the command-line client of lpd-scheduler's JobService.
//
//   lpdctl submit JOB.yaml [--request-id ID] [--watch]
//   lpdctl get JOB_ID [--json]
//   lpdctl list [--state queued|running|succeeded|failed|cancelled]
//               [--page-size N] [--page-token T] [--json]
//   lpdctl watch JOB_ID [--after N]
//   lpdctl cancel JOB_ID
//
// Every command takes --server host:port (default: $LPD_SERVER, else
// 127.0.0.1:50051) and --timeout-seconds (unary calls; default 30).
// Exit status: 0 success; 1 the call failed or (watch, submit --watch) the
// job ended FAILED or CANCELLED; 2 bad usage or a spec refused as invalid.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "base/cli_args.h"
#include "base/grpc_status.h"
#include "job/names.h"
#include "job/spec.h"
#include "lpd/v1/job_service.grpc.pb.h"

namespace {

using lpd::v1::JobService;

const std::vector<lpd::FlagSpec> kCommonFlags = {
    {"server", false, false,
     "scheduler host:port (default $LPD_SERVER, else 127.0.0.1:50051)"},
    {"timeout-seconds", false, false, "deadline of unary calls (default 30)"},
};

std::vector<lpd::FlagSpec> With(std::vector<lpd::FlagSpec> own) {
  for (const lpd::FlagSpec& f : kCommonFlags) own.push_back(f);
  return own;
}

const std::vector<lpd::FlagSpec> kSubmitFlags =
    With({{"request-id", false, false,
           "idempotency key: a retried submit returns the same job"},
          {"watch", false, true, "then follow the job to its end"}});
const std::vector<lpd::FlagSpec> kGetFlags =
    With({{"json", false, true, "print the job as JSON"}});
const std::vector<lpd::FlagSpec> kListFlags =
    With({{"state", false, false, "only jobs in this state"},
          {"page-size", false, false, "jobs per page (default 100)"},
          {"page-token", false, false, "from a previous page"},
          {"json", false, true, "print the response as JSON"}});
const std::vector<lpd::FlagSpec> kWatchFlags =
    With({{"after", false, false,
           "only events with a larger sequence number (default 0: all)"}});
const std::vector<lpd::FlagSpec> kCancelFlags = With({});

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "lpdctl: %s\n", status.ToString().c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

std::string Lower(absl::string_view s) { return absl::AsciiStrToLower(s); }

std::string StateName(lpd::v1::JobState state) {
  return Lower(lpd::v1::JobState_Name(state).substr(strlen("JOB_STATE_")));
}
// "score", ...; "-" before a job has a phase.
std::string PhaseName(lpd::v1::Phase phase) {
  return lpd::job::FindPhase(phase) == nullptr ? "-"
                                               : lpd::job::PhaseLabel(phase);
}

std::string FormatTime(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

void PrintJobLine(const lpd::v1::Job& job) {
  std::printf("%-21s %-10s %-8s %5.1f%%  %s%s\n", job.id().c_str(),
              StateName(job.state()).c_str(), PhaseName(job.phase()).c_str(),
              100 * job.progress(), job.spec().metadata().name().c_str(),
              job.error().empty() ? "" : ("  error: " + job.error()).c_str());
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

bool IsFinal(lpd::v1::JobState state) {
  return state == lpd::v1::JOB_STATE_SUCCEEDED ||
         state == lpd::v1::JOB_STATE_FAILED ||
         state == lpd::v1::JOB_STATE_CANCELLED;
}

class Client {
 public:
  explicit Client(const lpd::CliArgs& flags) {
    const char* env = std::getenv("LPD_SERVER");
    address_ = flags.Get("server", env != nullptr ? env : "127.0.0.1:50051");
    stub_ = JobService::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
    auto timeout = flags.GetInt("timeout-seconds", 30);
    timeout_seconds_ = timeout.ok() ? *timeout : 30;
  }

  void Prepare(grpc::ClientContext* context) const {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(timeout_seconds_));
  }

  absl::Status Check(const grpc::Status& status) const {
    absl::Status result = lpd::FromGrpcStatus(status);
    if (result.code() == absl::StatusCode::kUnavailable) {
      return absl::UnavailableError(absl::StrCat(
          "scheduler at ", address_, " unavailable: ", result.message()));
    }
    return result;
  }

  // Prints events until the job ends; the job's final state.
  absl::StatusOr<lpd::v1::JobState> Watch(const std::string& job_id,
                                          int64_t after) {
    lpd::v1::WatchJobRequest request;
    request.set_job_id(job_id);
    request.set_after_sequence(after);
    grpc::ClientContext context;
    auto reader = stub_->WatchJob(&context, request);
    lpd::v1::JobEvent event;
    lpd::v1::JobState last = lpd::v1::JOB_STATE_UNSPECIFIED;
    while (reader->Read(&event)) {
      std::printf("%4lld %s %-10s %-8s %5.1f%%  %s\n",
                  static_cast<long long>(event.sequence()),
                  FormatTime(event.unix_ms()).c_str(),
                  StateName(event.state()).c_str(),
                  PhaseName(event.phase()).c_str(), 100 * event.progress(),
                  event.message().c_str());
      std::fflush(stdout);
      last = event.state();
    }
    const absl::Status status = Check(reader->Finish());
    if (!status.ok()) return status;
    if (last == lpd::v1::JOB_STATE_UNSPECIFIED) {
      // Nothing after `after`: the job had already ended; its state.
      lpd::v1::GetJobRequest get;
      get.set_job_id(job_id);
      lpd::v1::Job job;
      grpc::ClientContext get_context;
      Prepare(&get_context);
      const absl::Status got = Check(stub_->GetJob(&get_context, get, &job));
      if (!got.ok()) return got;
      last = job.state();
      std::printf("job %s is %s\n", job_id.c_str(), StateName(last).c_str());
    }
    if (!IsFinal(last)) {
      return absl::UnavailableError("the watch ended before the job did");
    }
    return last;
  }

  JobService::Stub& stub() { return *stub_; }

 private:
  std::string address_;
  int64_t timeout_seconds_ = 30;
  std::unique_ptr<JobService::Stub> stub_;
};

int ExitForState(lpd::v1::JobState state) {
  return state == lpd::v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

int Submit(const lpd::CliArgs& flags, const std::string& path) {
  auto spec = lpd::job::LoadJobSpecFile(path);
  if (!spec.ok()) return Fail(spec.status());
  Client client(flags);
  lpd::v1::SubmitJobRequest request;
  *request.mutable_job() = *spec;
  request.set_request_id(flags.Get("request-id"));
  lpd::v1::Job job;
  grpc::ClientContext context;
  client.Prepare(&context);
  const absl::Status status =
      client.Check(client.stub().SubmitJob(&context, request, &job));
  if (!status.ok()) return Fail(status);
  std::printf("%s\n", job.id().c_str());
  std::fflush(stdout);
  if (!flags.Has("watch")) return 0;
  auto state = client.Watch(job.id(), 0);
  if (!state.ok()) return Fail(state.status());
  return ExitForState(*state);
}

int Get(const lpd::CliArgs& flags, const std::string& id) {
  Client client(flags);
  lpd::v1::GetJobRequest request;
  request.set_job_id(id);
  lpd::v1::Job job;
  grpc::ClientContext context;
  client.Prepare(&context);
  const absl::Status status =
      client.Check(client.stub().GetJob(&context, request, &job));
  if (!status.ok()) return Fail(status);
  if (flags.Has("json")) {
    std::printf("%s", ToJson(job).c_str());
  } else {
    PrintJobLine(job);
    std::printf("  output %s\n  created %s, updated %s, %lld events\n",
                job.output_uri().c_str(),
                FormatTime(job.created_unix_ms()).c_str(),
                FormatTime(job.updated_unix_ms()).c_str(),
                static_cast<long long>(job.last_event()));
  }
  return 0;
}

int List(const lpd::CliArgs& flags) {
  Client client(flags);
  lpd::v1::ListJobsRequest request;
  if (flags.Has("state")) {
    lpd::v1::JobState state;
    const std::string name =
        "JOB_STATE_" + absl::AsciiStrToUpper(flags.Get("state"));
    if (!lpd::v1::JobState_Parse(name, &state) ||
        state == lpd::v1::JOB_STATE_UNSPECIFIED) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--state: unknown state ", flags.Get("state"))));
    }
    request.set_state(state);
  }
  auto page_size = flags.GetInt("page-size", 0);
  if (!page_size.ok()) return Fail(page_size.status());
  request.set_page_size(static_cast<int32_t>(*page_size));
  request.set_page_token(flags.Get("page-token"));
  lpd::v1::ListJobsResponse response;
  grpc::ClientContext context;
  client.Prepare(&context);
  const absl::Status status =
      client.Check(client.stub().ListJobs(&context, request, &response));
  if (!status.ok()) return Fail(status);
  if (flags.Has("json")) {
    std::printf("%s", ToJson(response).c_str());
    return 0;
  }
  for (const lpd::v1::Job& job : response.jobs()) PrintJobLine(job);
  if (!response.next_page_token().empty()) {
    std::printf("next page: --page-token %s\n",
                response.next_page_token().c_str());
  }
  return 0;
}

int Watch(const lpd::CliArgs& flags, const std::string& id) {
  auto after = flags.GetInt("after", 0);
  if (!after.ok()) return Fail(after.status());
  Client client(flags);
  auto state = client.Watch(id, *after);
  if (!state.ok()) return Fail(state.status());
  return ExitForState(*state);
}

int Cancel(const lpd::CliArgs& flags, const std::string& id) {
  Client client(flags);
  lpd::v1::CancelJobRequest request;
  request.set_job_id(id);
  lpd::v1::Job job;
  grpc::ClientContext context;
  client.Prepare(&context);
  const absl::Status status =
      client.Check(client.stub().CancelJob(&context, request, &job));
  if (!status.ok()) return Fail(status);
  PrintJobLine(job);
  return 0;
}

void PrintUsage() {
  std::fprintf(stderr,
               "usage:\n"
               "  lpdctl submit JOB.yaml [--request-id ID] [--watch]\n"
               "  lpdctl get JOB_ID [--json]\n"
               "  lpdctl list [--state STATE] [--page-size N] [--page-token T] "
               "[--json]\n"
               "  lpdctl watch JOB_ID [--after N]\n"
               "  lpdctl cancel JOB_ID\n"
               "common flags:\n%s",
               lpd::CliArgs::Usage(kCommonFlags).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage();
    return 2;
  }
  const std::string command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    PrintUsage();
    return 0;
  }
  // The first word after the command is its operand (none for list).
  std::vector<std::string> words(argv + 2, argv + argc);
  std::string operand;
  if (command != "list") {
    if (words.empty() || words[0].rfind("--", 0) == 0) {
      PrintUsage();
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          command, ": missing ", command == "submit" ? "JOB.yaml" : "JOB_ID")));
    }
    operand = words[0];
    words.erase(words.begin());
  }
  const std::vector<lpd::FlagSpec>* specs = nullptr;
  if (command == "submit") specs = &kSubmitFlags;
  if (command == "get") specs = &kGetFlags;
  if (command == "list") specs = &kListFlags;
  if (command == "watch") specs = &kWatchFlags;
  if (command == "cancel") specs = &kCancelFlags;
  if (specs == nullptr) {
    PrintUsage();
    return Fail(
        absl::InvalidArgumentError(absl::StrCat("unknown command ", command)));
  }
  auto flags = lpd::CliArgs::Parse(words, *specs);
  if (!flags.ok()) return Fail(flags.status());
  if (command == "submit") return Submit(*flags, operand);
  if (command == "get") return Get(*flags, operand);
  if (command == "list") return List(*flags);
  if (command == "watch") return Watch(*flags, operand);
  return Cancel(*flags, operand);
}

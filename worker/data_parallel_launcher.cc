#include "worker/data_parallel_launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "base/remove_tree.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace lpd::worker {
namespace {

using Clock = std::chrono::steady_clock;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// One child process: its pid, the read end of its stdout, what it printed
// that is not a whole line yet, and how it ended.
struct Rank {
  int index = 0;
  pid_t pid = -1;
  int out_fd = -1;
  std::string pending;
  bool exited = false;
  std::string how;  // "exit code 1", "signal 9"
  bool clean = false;
  std::string result_path;
};

// argv and envp of a child, built before fork() (the child may only make
// async-signal-safe calls until it execs).
struct ChildCommand {
  std::vector<std::string> args, env;
  std::vector<char*> argv, envp;
  void Seal() {
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
  }
};

absl::Status Spawn(ChildCommand& command, Rank& rank) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(
        absl::StrCat("data-parallel launch: pipe: ", std::strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return absl::ResourceExhaustedError(
        absl::StrCat("data-parallel launch: fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(126);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(fds[1], 1);
    execve(command.argv[0], command.argv.data(), command.envp.data());
    _exit(127);
  }
  close(fds[1]);
  // Also here, so that the group exists before any signal is sent to it
  // (whichever of parent and child runs first).
  setpgid(pid, pid);
  rank.pid = pid;
  rank.out_fd = fds[0];
  return absl::OkStatus();
}

// Signals each rank still running, with what it started: its process group,
// once (a rank takes a second SIGTERM as "exit now", with no checkpoint).
void SignalAll(std::vector<Rank>& ranks, int signal) {
  for (const Rank& rank : ranks) {
    if (rank.exited || rank.pid <= 0) continue;
    if (kill(-rank.pid, signal) != 0) kill(rank.pid, signal);
  }
}

}  // namespace

std::string RankResultJson(const absl::StatusOr<std::string>& result) {
  nlohmann::json json;
  if (result.ok()) {
    json = {{"ok", true},
            {"result", nlohmann::json::parse(*result, nullptr, false)}};
  } else {
    json = {{"ok", false},
            {"code", static_cast<int>(result.status().code())},
            {"message", std::string(result.status().message())}};
  }
  return json.dump() + "\n";
}

absl::StatusOr<std::string> ParseRankResult(const std::string& text) {
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_object() || !json.contains("ok") ||
      !json["ok"].is_boolean()) {
    return absl::DataLossError("malformed rank result");
  }
  if (json["ok"].get<bool>()) {
    if (!json.contains("result") || json["result"].is_discarded()) {
      return absl::DataLossError("rank result without a result");
    }
    return json["result"].dump();
  }
  const int code =
      json.value("code", static_cast<int>(absl::StatusCode::kUnknown));
  const std::string message = json.value("message", std::string());
  if (code <= 0 ||
      code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(message);
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

absl::StatusOr<std::string> RunDataParallelDistill(
    const lpd::v1::CompressionJob& job,
    const DataParallelLaunchOptions& options) {
  auto log = [&](const std::string& line) {
    if (options.log) {
      options.log(line);
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  };
  if (options.world_size < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data-parallel launch: world size ", options.world_size, " (< 2)"));
  }
  const std::string device =
      options.device == "auto" ? std::string() : options.device;
  if (!device.empty() && device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat(
        "data-parallel DISTILL takes one GPU per rank (cuda:0 ... cuda:",
        options.world_size - 1, "); a worker told to use device \"",
        options.device, "\" cannot run it (use --device cuda or auto)"));
  }
  std::string executable = options.executable;
  if (executable.empty()) {
    char path[4096];
    const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
    if (n <= 0) {
      return absl::InternalError(absl::StrCat(
          "data-parallel launch: /proc/self/exe: ", std::strerror(errno)));
    }
    executable.assign(path, static_cast<size_t>(n));
  }

  // A private folder: the job, the rendezvous file, the results.
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(
      tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/lpd-distill-XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat(
        "data-parallel launch: mkdtemp ", pattern, ": ", std::strerror(errno)));
  }
  const std::string dir = pattern;
  struct RemoveDir {
    std::string path;
    ~RemoveDir() { RemoveTree(path); }
  } remove_dir{dir};
  const std::string job_path = dir + "/job.pb";
  {
    std::ofstream out(job_path, std::ios::binary);
    if (!job.SerializeToOstream(&out) || !out.flush()) {
      return absl::InternalError(
          absl::StrCat("data-parallel launch: cannot write ", job_path));
    }
  }
  const std::string rendezvous = absl::StrCat("file://", dir, "/rendezvous");

  std::vector<Rank> ranks(options.world_size);
  std::vector<ChildCommand> commands(options.world_size);
  for (int r = 0; r < options.world_size; ++r) {
    Rank& rank = ranks[r];
    rank.index = r;
    rank.result_path = absl::StrCat(dir, "/result-", r, ".json");
    ChildCommand& c = commands[r];
    c.args = {executable,     "distill-rank",
              "--job",        job_path,
              "--rank",       absl::StrCat(r),
              "--world-size", absl::StrCat(options.world_size),
              "--rendezvous", rendezvous,
              "--result",     rank.result_path};
    if (!device.empty()) {
      c.args.push_back("--device");
      c.args.push_back(device);
    }
    if (options.threads_per_rank > 0) {
      c.args.push_back("--threads");
      c.args.push_back(absl::StrCat(options.threads_per_rank));
    }
    for (const std::string& a : options.extra_args) c.args.push_back(a);
    std::vector<std::string> own = options.extra_env;
    own.push_back(absl::StrCat("LOCAL_RANK=", r));
    auto overridden = [&](absl::string_view entry) {
      for (absl::string_view name : {"RANK=", "WORLD_SIZE="}) {
        if (absl::StartsWith(entry, name)) return true;
      }
      for (const std::string& e : own) {
        const absl::string_view name =
            absl::string_view(e).substr(0, e.find('=') + 1);
        if (absl::StartsWith(entry, name)) return true;
      }
      return false;
    };
    for (char** e = environ; *e != nullptr; ++e) {
      if (!overridden(*e)) c.env.emplace_back(*e);
    }
    for (const std::string& e : own) c.env.push_back(e);
    c.Seal();
  }
  log(absl::StrFormat("DISTILL: starting %d data-parallel ranks (%s %s)",
                      options.world_size, executable,
                      device.empty() ? "auto" : device));
  for (int r = 0; r < options.world_size; ++r) {
    absl::Status started = Spawn(commands[r], ranks[r]);
    if (!started.ok()) {
      SignalAll(ranks, SIGKILL);
      for (Rank& rank : ranks) {
        if (rank.pid > 0) waitpid(rank.pid, nullptr, 0);
        if (rank.out_fd >= 0) close(rank.out_fd);
      }
      return started;
    }
  }

  double fraction = 0;
  std::string progress_line = "DISTILL: starting the ranks";
  bool progress_new = true;
  auto last_progress = Clock::now() - std::chrono::hours(1);
  bool stopping = false, failed = false;
  absl::Status stop_status;
  int first_failed = -1;
  auto kill_at = Clock::time_point::max();

  auto handle_line = [&](const Rank& rank, absl::string_view line) {
    if (rank.index == 0 && absl::ConsumePrefix(&line, "@progress ")) {
      const size_t space = line.find(' ');
      double f = 0;
      if (absl::SimpleAtod(line.substr(0, space), &f)) {
        fraction = f;
        progress_line = std::string(
            space == absl::string_view::npos ? "" : line.substr(space + 1));
        progress_new = true;
        return;
      }
    }
    if (rank.index == 0 && absl::ConsumePrefix(&line, "@step ")) {
      std::vector<absl::string_view> fields =
          absl::StrSplit(line, ' ', absl::SkipEmpty());
      double seconds = 0;
      if (!fields.empty() && absl::SimpleAtod(fields[0], &seconds)) {
        std::vector<std::pair<std::string, double>> losses;
        for (size_t i = 1; i < fields.size(); ++i) {
          const size_t eq = fields[i].find('=');
          double value = 0;
          if (eq != absl::string_view::npos &&
              absl::SimpleAtod(fields[i].substr(eq + 1), &value)) {
            losses.emplace_back(std::string(fields[i].substr(0, eq)), value);
          }
        }
        if (options.on_distill_step) options.on_distill_step(seconds, losses);
        return;
      }
    }
    if (rank.index == 0 && absl::ConsumePrefix(&line, "@log ")) {
      log(std::string(line));
      return;
    }
    log(absl::StrCat("rank ", rank.index, ": ", line));
  };

  // Until every rank has exited and its output is read (what a rank
  // started may hold its pipe open: at most 2 s more).
  auto all_exited = Clock::time_point::max();
  auto open_or_running = [&] {
    bool running = false, open = false;
    for (const Rank& rank : ranks) {
      running = running || !rank.exited;
      open = open || rank.out_fd >= 0;
    }
    if (running) return true;
    if (all_exited == Clock::time_point::max()) all_exited = Clock::now();
    return open && Clock::now() - all_exited < std::chrono::seconds(2);
  };
  while (open_or_running()) {
    std::vector<pollfd> fds;
    std::vector<int> owners;
    for (const Rank& rank : ranks) {
      if (rank.out_fd < 0) continue;
      fds.push_back({rank.out_fd, POLLIN, 0});
      owners.push_back(rank.index);
    }
    if (!fds.empty()) {
      poll(fds.data(), fds.size(), 200);
    } else {
      usleep(50 * 1000);
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      Rank& rank = ranks[owners[i]];
      char buffer[65536];
      const ssize_t n = read(rank.out_fd, buffer, sizeof(buffer));
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        if (!rank.pending.empty()) handle_line(rank, rank.pending);
        rank.pending.clear();
        close(rank.out_fd);
        rank.out_fd = -1;
        continue;
      }
      rank.pending.append(buffer, static_cast<size_t>(n));
      size_t newline;
      while ((newline = rank.pending.find('\n')) != std::string::npos) {
        handle_line(rank, absl::string_view(rank.pending).substr(0, newline));
        rank.pending.erase(0, newline + 1);
      }
    }
    for (Rank& rank : ranks) {
      if (rank.exited) continue;
      int status = 0;
      if (waitpid(rank.pid, &status, WNOHANG) != rank.pid) continue;
      rank.exited = true;
      rank.clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      rank.how = WIFEXITED(status)
                     ? absl::StrCat("exit code ", WEXITSTATUS(status))
                     : absl::StrCat("signal ", WTERMSIG(status));
      if (!rank.clean && !stopping && !failed) {
        failed = true;
        first_failed = rank.index;
        log(absl::StrFormat(
            "DISTILL: data-parallel rank %d ended (%s); stopping the others",
            rank.index, rank.how));
        SignalAll(ranks, SIGTERM);
        kill_at =
            Clock::now() + absl::ToChronoNanoseconds(options.failure_grace);
      }
    }
    const auto now = Clock::now();
    if (!stopping && !failed && options.progress &&
        (progress_new || now - last_progress >= std::chrono::seconds(1))) {
      progress_new = false;
      last_progress = now;
      absl::Status asked = options.progress(fraction, progress_line);
      if (!asked.ok()) {
        stopping = true;
        stop_status = asked;
        log(absl::StrCat("DISTILL: stopping the data-parallel ranks (",
                         asked.message(), ")"));
        SignalAll(ranks, SIGTERM);
        kill_at = now + absl::ToChronoNanoseconds(options.stop_grace);
      }
    }
    if (now > kill_at) {
      SignalAll(ranks, SIGKILL);
      kill_at = Clock::time_point::max();
    }
  }

  for (Rank& rank : ranks) {
    if (rank.out_fd >= 0) close(rank.out_fd);
  }
  if (stopping) return stop_status;
  if (failed) {
    const Rank& rank = ranks[first_failed];
    const std::string text = ReadFile(rank.result_path);
    if (!text.empty()) {
      absl::StatusOr<std::string> result = ParseRankResult(text);
      if (!result.ok()) {
        return absl::Status(result.status().code(),
                            absl::StrCat("data-parallel rank ", rank.index,
                                         ": ", result.status().message()));
      }
    }
    return absl::AbortedError(
        absl::StrCat("data-parallel rank ", rank.index, " ended (", rank.how,
                     ") without a result (killed? out of memory?)"));
  }
  const std::string text = ReadFile(ranks[0].result_path);
  if (text.empty()) {
    return absl::InternalError("data-parallel rank 0 wrote no result");
  }
  return ParseRankResult(text);
}

}  // namespace lpd::worker

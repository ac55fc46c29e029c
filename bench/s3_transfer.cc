// Benchmark of S3ObjectStore transfers against the aws CLI, both talking to
// a local s3rver (started here, on loopback, with its data in a temporary
// folder on local disk).
//
//   s3_transfer [--size-mib 2048] [--runs 5] [--work-dir /var/tmp]
//               [--delay-ms 20] [--parallel-parts 4] [--part-mib 16]
//
// Creates a file of --size-mib MiB of pseudo-random bytes, then, interleaved,
// --runs times each: our upload (PutFile) vs `aws s3 cp FILE s3://...`, and
// our download (GetToFile) vs `aws s3 cp s3://... FILE`; prints MiB/s of each
// run and the medians. Then the same again through a delaying proxy.
//
// What the delaying proxy delays: it is a loopback TCP forwarder (one thread
// per connection). On each connection, the first bytes the client sends, and
// the first client bytes after any bytes came back from the server (that is:
// the start of each request on a kept-alive connection), are held for
// --delay-ms before being forwarded. Everything else (the rest of a request
// body, all server-to-client bytes) passes at once. A request body that
// follows a "100 Continue" answer (the aws CLI sends Expect: 100-continue on
// uploads) counts as a new burst and is delayed too.
//
// s3rver needs Node's legacy OpenSSL provider (NODE_OPTIONS is set for it).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/cli_args.h"
#include "storage/s3_object_store.h"
#include "testing/free_port.h"

namespace lpd {
namespace {

constexpr char kBucket[] = "bench";

using ::lpd::test::FreePort;

int ConnectLoopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// See the file comment for exactly what is delayed.
class DelayProxy {
 public:
  DelayProxy(int upstream_port, absl::Duration delay)
      : upstream_(upstream_port), delay_(delay) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::listen(listen_fd_, 128);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~DelayProxy() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    accept_thread_.join();
    std::vector<std::thread> connections;
    {
      std::lock_guard<std::mutex> lock(mu_);
      connections.swap(connections_);
    }
    for (std::thread& t : connections) t.join();
    ::close(listen_fd_);
  }
  int port() const { return port_; }
  int64_t delayed() const { return delayed_; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (stop_) return;
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      connections_.emplace_back([this, fd] { Pipe(fd); });
    }
  }

  void Pipe(int client) {
    int server = ConnectLoopback(upstream_);
    if (server < 0) {
      ::close(client);
      return;
    }
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    std::vector<char> buf(1 << 20);
    bool new_request = true;  // next client bytes start a request
    while (!stop_) {
      int r = ::poll(fds, 2, 100);
      if (r < 0) break;
      if (r == 0) continue;
      bool done = false;
      for (int i = 0; i < 2 && !done; ++i) {
        if (fds[i].revents == 0) continue;
        ssize_t n = ::recv(fds[i].fd, buf.data(), buf.size(), 0);
        if (n <= 0) {
          done = true;
          break;
        }
        if (i == 0 && new_request) {
          absl::SleepFor(delay_);
          ++delayed_;
        }
        new_request = i == 1;
        for (ssize_t off = 0; off < n;) {
          ssize_t w =
              ::send(fds[1 - i].fd, buf.data() + off, n - off, MSG_NOSIGNAL);
          if (w <= 0) {
            done = true;
            break;
          }
          off += w;
        }
      }
      if (done) break;
    }
    ::close(client);
    ::close(server);
  }

  int upstream_;
  absl::Duration delay_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> delayed_{0};
  std::mutex mu_;
  std::thread accept_thread_;
  std::vector<std::thread> connections_;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  return v.size() % 2 ? v[v.size() / 2]
                      : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

int Run(int argc, char** argv) {
  const std::vector<FlagSpec> specs = {
      {"size-mib", false, false, "file size in MiB (2048)"},
      {"runs", false, false, "runs of each transfer (5)"},
      {"work-dir", false, false, "where the temporary folder goes (/var/tmp)"},
      {"delay-ms", false, false, "proxy delay per request (20)"},
      {"parallel-parts", false, false, "S3Config::parallel_parts (4)"},
      {"part-mib", false, false, "S3Config::part_size in MiB (16)"},
  };
  absl::StatusOr<CliArgs> args =
      CliArgs::Parse(std::vector<std::string>(argv + 1, argv + argc), specs);
  if (!args.ok()) {
    std::cerr << args.status() << "\n" << CliArgs::Usage(specs);
    return 2;
  }
  const int64_t size_mib = *args->GetInt("size-mib", 2048);
  const int runs = static_cast<int>(*args->GetInt("runs", 5));
  const int64_t delay_ms = *args->GetInt("delay-ms", 20);
  const int parallel = static_cast<int>(*args->GetInt("parallel-parts", 4));
  const int64_t part_mib = *args->GetInt("part-mib", 16);
  std::string work = args->Get("work-dir", "/var/tmp");

  std::string templ = work + "/s3_transfer.XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string dir = templ;
  const std::string s3dir = dir + "/s3rver";
  std::filesystem::create_directory(s3dir);
  const char* env_s3rver = ::getenv("LPD_S3RVER");
  const std::string s3rver = env_s3rver != nullptr && *env_s3rver
                                 ? env_s3rver
                                 : LPD_SOURCE_DIR
                                 "/.tools/node_modules/.bin/s3rver";
  const int port = FreePort();
  const std::string log = dir + "/s3rver.log";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::setenv("NODE_OPTIONS", "--openssl-legacy-provider", 1);
    const std::string port_s = absl::StrCat(port);
    ::execl(s3rver.c_str(), s3rver.c_str(), "-d", s3dir.c_str(), "-a",
            "127.0.0.1", "-p", port_s.c_str(), "--configure-bucket", kBucket,
            "--silent", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  auto cleanup = [&] {
    if (pid > 0) {
      ::kill(-pid, SIGTERM);
      ::kill(pid, SIGTERM);
      int status = 0;
      ::waitpid(pid, &status, 0);
      pid = -1;
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  };

  auto open_store = [&](int p) {
    storage::S3Config config;
    config.endpoint = absl::StrCat("http://127.0.0.1:", p);
    config.credentials = {"S3RVER", "S3RVER", ""};
    config.part_size = part_mib << 20;
    config.parallel_parts = parallel;
    auto store = storage::S3ObjectStore::Create(kBucket, "", config);
    if (!store.ok()) {
      std::cerr << store.status() << "\n";
      std::exit(1);
    }
    return std::move(*store);
  };
  {
    auto probe = open_store(port);
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!probe->List("").ok()) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) != 0 || absl::Now() > deadline) {
        std::cerr << "s3rver did not start; see " << log << "\n";
        pid = -1;
        cleanup();
        return 1;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  std::cout << "s3rver on 127.0.0.1:" << port << ", data in " << s3dir << "\n";

  // The source file: pseudo-random bytes.
  const std::string src = dir + "/src.bin";
  {
    std::FILE* f = std::fopen(src.c_str(), "wb");
    std::mt19937_64 rng(42);
    std::vector<uint64_t> block((1 << 20) / 8);
    for (int64_t i = 0; i < size_mib; ++i) {
      for (uint64_t& w : block) w = rng();
      std::fwrite(block.data(), 1, 1 << 20, f);
    }
    std::fclose(f);
  }
  const double mib = static_cast<double>(size_mib);
  std::cout << "file: " << size_mib << " MiB; runs: " << runs << "; ours: part "
            << part_mib << " MiB, parallel_parts " << parallel << "\n";

  bool ok = true;
  auto timed = [&](const std::string& label, auto&& fn) -> double {
    absl::Time start = absl::Now();
    bool good = fn();
    double s = absl::ToDoubleSeconds(absl::Now() - start);
    double rate = mib / s;
    std::cout << absl::StrFormat("  %-16s %8.2f s  %8.1f MiB/s%s\n", label, s,
                                 rate, good ? "" : "  FAILED");
    std::cout.flush();
    if (!good) ok = false;
    return rate;
  };
  auto aws = [&](int p, const std::string& what) {
    std::string command = absl::StrCat(
        "env AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER "
        "AWS_DEFAULT_REGION=us-east-1 AWS_PAGER= /usr/bin/aws "
        "--endpoint-url http://127.0.0.1:",
        p, " s3 cp --only-show-errors ", what);
    return std::system(command.c_str()) == 0;
  };
  auto same = [&](const std::string& path) {
    return FileSize(path) == size_mib << 20 &&
           std::system(absl::StrCat("cmp -s ", src, " ", path).c_str()) == 0;
  };

  auto round = [&](int p, const std::string& title) {
    std::cout << "== " << title << "\n";
    auto store = open_store(p);
    std::vector<double> up_ours, up_aws, down_ours, down_aws;
    for (int run = 0; run < runs; ++run) {
      std::cout << " run " << run + 1 << "\n";
      const std::string out = dir + "/out.bin";
      up_ours.push_back(timed("ours upload", [&] {
        absl::Status s = store->PutFile("ours.bin", src);
        if (!s.ok()) std::cerr << s << "\n";
        return s.ok();
      }));
      up_aws.push_back(timed("aws upload", [&] {
        return aws(p, absl::StrCat(src, " s3://", kBucket, "/aws.bin"));
      }));
      std::filesystem::remove(out);
      down_ours.push_back(timed("ours download", [&] {
        absl::Status s = store->GetToFile("ours.bin", out);
        if (!s.ok()) std::cerr << s << "\n";
        return s.ok();
      }));
      if (run == 0 && !same(out)) {
        std::cout << "  ours download differs from the source\n";
        ok = false;
      }
      std::filesystem::remove(out);
      down_aws.push_back(timed("aws download", [&] {
        return aws(p, absl::StrCat("s3://", kBucket, "/aws.bin ", out));
      }));
      if (run == 0 && !same(out)) {
        std::cout << "  aws download differs from the source\n";
        ok = false;
      }
      std::filesystem::remove(out);
    }
    std::cout << absl::StrFormat(
        " medians (MiB/s): ours upload %.1f | aws upload %.1f | ours download "
        "%.1f | aws download %.1f\n",
        Median(up_ours), Median(up_aws), Median(down_ours), Median(down_aws));
  };

  round(port, "direct (loopback)");
  {
    DelayProxy proxy(port, absl::Milliseconds(delay_ms));
    round(proxy.port(), absl::StrCat("through the delaying proxy (+", delay_ms,
                                     " ms before each request's first bytes)"));
    std::cout << " proxy delayed " << proxy.delayed() << " bursts\n";
  }
  const storage::S3Counters c = storage::GetS3Counters();
  std::cout << "ours, all runs: " << c.requests << " requests, " << c.retries
            << " retries, " << c.errors << " errors\n";
  cleanup();
  std::cout << "s3rver stopped\n";
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace lpd

int main(int argc, char** argv) { return lpd::Run(argc, argv); }

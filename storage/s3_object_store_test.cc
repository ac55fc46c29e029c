// Tests of S3ObjectStore against a real S3 server (s3rver, installed by
// scripts/install-s3rver.sh into .tools/), the aws CLI and a fault-injecting
// proxy. s3rver does not check signatures: sigv4_test.cc does that.
#include "storage/s3_object_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "storage/manifest.h"
#include "storage/test_util.h"
#include "testing/free_port.h"

namespace lpd::storage {
namespace {

using testing_util::IsError;
using testing_util::PatternBytes;
using testing_util::ReadLocalFile;
using testing_util::TempFolder;
using testing_util::WriteLocalFile;

constexpr char kBucket[] = "lpd-test";
constexpr int64_t kPart = 64 << 10;  // small parts: s3rver takes them

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

std::string S3rverPath() {
  const char* env = ::getenv("LPD_S3RVER");
  if (env != nullptr && *env != '\0') return env;
  return LPD_SOURCE_DIR "/.tools/node_modules/.bin/s3rver";
}

// A loopback TCP proxy to `upstream_port` that, for the next `faults`
// connections, answers 503 (or closes without answering) instead.
class FaultProxy {
 public:
  explicit FaultProxy(int upstream_port) : upstream_(upstream_port) {
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
    ::listen(listen_fd_, 64);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~FaultProxy() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    accept_thread_.join();
    for (std::thread& t : connections_) t.join();
    ::close(listen_fd_);
  }
  int port() const { return port_; }
  // The next `n` connections get `status` (503 by default; or, with
  // `drop`, are closed unread).
  void Fail(int n, bool drop, int status = 503) {
    drop_ = drop;
    status_ = status;
    faults_ = n;
  }
  // The first later connection whose request head contains `needle` gets
  // 503 (once); the others pass.
  void FailOnceMatching(std::string needle) {
    std::lock_guard<std::mutex> lock(mu_);
    needle_ = std::move(needle);
  }
  // The next `n` connections whose request head contains `needle` (any
  // connection if empty) forward the head and `body_bytes` bytes of the
  // body, then forward nothing more for `stall` and are closed.
  void StallMatching(std::string needle, int n, int64_t body_bytes,
                     absl::Duration stall) {
    std::lock_guard<std::mutex> lock(mu_);
    stall_needle_ = std::move(needle);
    stalls_ = n;
    stall_body_bytes_ = body_bytes;
    stall_for_ = stall;
  }
  int faults_served() const { return served_; }
  int stalls_served() const { return stalls_served_; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (stop_) return;
        continue;
      }
      if (faults_.fetch_sub(1) > 0) {
        ++served_;
        if (!drop_) {
          // Read the request head, then refuse.
          std::string head;
          char buf[4096];
          while (head.find("\r\n\r\n") == std::string::npos) {
            ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
            if (n <= 0) break;
            head.append(buf, n);
          }
          const std::string answer =
              absl::StrCat("HTTP/1.1 ", status_.load(),
                           " Server Error\r\nContent-Length: 0\r\nConnection: "
                           "close\r\n\r\n");
          (void)!::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
        }
        ::close(fd);
        continue;
      }
      faults_ = 0;
      std::string needle;
      {
        std::lock_guard<std::mutex> lock(mu_);
        needle = needle_;
      }
      std::string head;
      int64_t stall_after = -1;  // client bytes forwarded before a stall
      absl::Duration stall_for;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stalls_ > 0) {
          head = ReadHead(fd);
          const size_t end = head.find("\r\n\r\n");
          if (end != std::string::npos &&
              head.find(stall_needle_) != std::string::npos) {
            --stalls_;
            ++stalls_served_;
            stall_after = static_cast<int64_t>(end + 4) + stall_body_bytes_;
            stall_for = stall_for_;
          }
        }
      }
      if (!needle.empty()) {
        if (head.empty()) head = ReadHead(fd);
        if (head.find(needle) != std::string::npos) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            needle_.clear();
          }
          ++served_;
          Refuse(fd);
          ::close(fd);
          continue;
        }
      }
      connections_.emplace_back(
          [this, fd, head = std::move(head), stall_after, stall_for] {
            Pipe(fd, head, stall_after, stall_for);
          });
    }
  }

  // Reads until the end of the request head (some body may follow it).
  static std::string ReadHead(int fd) {
    std::string head;
    char buf[4096];
    while (head.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      head.append(buf, n);
    }
    return head;
  }

  static void Refuse(int fd) {
    const std::string answer =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n";
    (void)!::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
  }

  // Waits `stall` (or until the proxy stops), then closes both ends.
  void StallAndClose(int client, int server, absl::Duration stall) {
    const absl::Time until = absl::Now() + stall;
    while (!stop_ && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    ::close(client);
    ::close(server);
  }

  // Forwards `first` (bytes already read from the client), then both ways;
  // with `stall_after` >= 0, stalls once that many client bytes are
  // forwarded.
  void Pipe(int client, const std::string& first, int64_t stall_after = -1,
            absl::Duration stall = absl::ZeroDuration()) {
    int server = ConnectLoopback(upstream_);
    int64_t forwarded = 0;
    const size_t first_n =
        stall_after < 0
            ? first.size()
            : std::min<size_t>(first.size(), static_cast<size_t>(stall_after));
    if (server < 0 ||
        (first_n > 0 && ::send(server, first.data(), first_n, MSG_NOSIGNAL) !=
                            static_cast<ssize_t>(first_n))) {
      if (server >= 0) ::close(server);
      ::close(client);
      return;
    }
    forwarded += static_cast<int64_t>(first_n);
    if (stall_after >= 0 && forwarded >= stall_after) {
      StallAndClose(client, server, stall);
      return;
    }
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    char buf[65536];
    while (!stop_) {
      int r = ::poll(fds, 2, 100);
      if (r < 0) break;
      if (r == 0) continue;
      bool done = false;
      for (int i = 0; i < 2; ++i) {
        if (fds[i].revents == 0) continue;
        size_t want = sizeof(buf);
        if (i == 0 && stall_after >= 0) {
          want = std::min<size_t>(want,
                                  static_cast<size_t>(stall_after - forwarded));
        }
        ssize_t n = ::recv(fds[i].fd, buf, want, 0);
        if (n <= 0) {
          done = true;
          break;
        }
        if (i == 0) forwarded += n;
        for (ssize_t off = 0; off < n;) {
          ssize_t w = ::send(fds[1 - i].fd, buf + off, n - off, MSG_NOSIGNAL);
          if (w <= 0) {
            done = true;
            break;
          }
          off += w;
        }
      }
      if (done) break;
      if (stall_after >= 0 && forwarded >= stall_after) {
        StallAndClose(client, server, stall);
        return;
      }
    }
    ::close(client);
    ::close(server);
  }

  int upstream_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> drop_{false};
  std::atomic<int> status_{503};
  std::atomic<int> faults_{0};
  std::atomic<int> served_{0};
  std::mutex mu_;
  std::string needle_;
  std::string stall_needle_;
  int stalls_ = 0;
  int64_t stall_body_bytes_ = 0;
  absl::Duration stall_for_;
  std::atomic<int> stalls_served_{0};
  std::thread accept_thread_;
  std::vector<std::thread> connections_;
};

class S3StoreTest : public testing::Test {
 protected:
  void SetUp() override {
    const std::string s3rver = S3rverPath();
    ASSERT_TRUE(std::filesystem::exists(s3rver))
        << "s3rver is not installed at " << s3rver
        << ": run scripts/install-s3rver.sh (scripts/test.sh does) or set "
           "LPD_S3RVER to its path";
    std::filesystem::create_directory(temp_.Sub("s3rver"));
    port_ = FreePort();
    SpawnS3rver();
    WaitForS3rver();
  }

  // Starts s3rver on port_ with its data in temp_/s3rver (kept across
  // restarts).
  void SpawnS3rver() {
    const std::string s3rver = S3rverPath();
    const std::string log = temp_.Sub("s3rver.log");
    const std::string port = absl::StrCat(port_);
    const std::string dir = temp_.Sub("s3rver");
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(out, 1);
      ::dup2(out, 2);
      // s3rver 3.7 makes continuation tokens with DES, which Node 20's
      // OpenSSL 3 only offers through the legacy provider.
      ::setenv("NODE_OPTIONS", "--openssl-legacy-provider", 1);
      ::execl(s3rver.c_str(), s3rver.c_str(), "-d", dir.c_str(), "-a",
              "127.0.0.1", "-p", port.c_str(), "--configure-bucket", kBucket,
              "--silent", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    pid_ = pid;
  }

  // Ready when the bucket can be listed.
  void WaitForS3rver() {
    ASSERT_GT(pid_, 0);
    const std::string log = temp_.Sub("s3rver.log");
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    std::unique_ptr<S3ObjectStore> probe = Open(kBucket, "");
    while (true) {
      int status = 0;
      ASSERT_EQ(::waitpid(pid_, &status, WNOHANG), 0)
          << "s3rver exited: " << ReadLocalFile(log);
      if (probe->List("").ok()) break;
      ASSERT_LT(absl::Now(), deadline)
          << "s3rver did not start: " << ReadLocalFile(log);
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  // Kills s3rver (as a crash would) and waits for it to exit.
  void KillS3rver() {
    if (pid_ <= 0) return;
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  void TearDown() override {
    if (pid_ > 0) {
      ::kill(-pid_, SIGTERM);
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }

  S3Config Config(int port = 0) const {
    S3Config config;
    config.endpoint = absl::StrCat("http://127.0.0.1:", port ? port : port_);
    config.credentials = {"S3RVER", "S3RVER", ""};
    config.part_size = kPart;
    config.allow_small_parts = true;
    config.max_attempts = 3;
    config.initial_backoff = absl::Milliseconds(5);
    config.connect_timeout = absl::Seconds(5);
    return config;
  }

  std::unique_ptr<S3ObjectStore> Open(const std::string& bucket,
                                      const std::string& prefix) const {
    return Open(bucket, prefix, Config());
  }
  static std::unique_ptr<S3ObjectStore> Open(const std::string& bucket,
                                             const std::string& prefix,
                                             S3Config config) {
    auto store = S3ObjectStore::Create(bucket, prefix, std::move(config));
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  // Runs the aws CLI against s3rver; returns its exit status.
  int Aws(const std::string& args) {
    const std::string out = temp_.Sub("aws.log");
    std::string command = absl::StrCat(
        "env AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER "
        "AWS_DEFAULT_REGION=us-east-1 AWS_PAGER= /usr/bin/aws "
        "--endpoint-url http://127.0.0.1:",
        port_, " ", args, " >", out, " 2>&1");
    int rc = std::system(command.c_str());
    if (rc != 0) ADD_FAILURE() << command << ":\n" << ReadLocalFile(out);
    return rc;
  }

  TempFolder temp_;
  int port_ = 0;
  pid_t pid_ = -1;
};

TEST_F(S3StoreTest, SmallRoundTrip) {
  auto store = Open(kBucket, "jobs/1/");
  EXPECT_EQ(store->uri(), "s3://lpd-test/jobs/1/");
  ASSERT_TRUE(store->Put("a/b c+d.txt", "hello").ok());
  EXPECT_EQ(*store->Get("a/b c+d.txt"), "hello");
  EXPECT_TRUE(*store->Exists("a/b c+d.txt"));
  absl::StatusOr<ObjectStat> stat = store->Stat("a/b c+d.txt");
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->size, 5);
  EXPECT_LT(absl::AbsDuration(stat->mtime - absl::Now()), absl::Minutes(5));
  ASSERT_TRUE(store->Put("empty", "").ok());
  EXPECT_EQ(*store->Get("empty"), "");
  // Overwrite.
  ASSERT_TRUE(store->Put("a/b c+d.txt", "bye").ok());
  EXPECT_EQ(*store->Get("a/b c+d.txt"), "bye");
  // The prefix is where the objects are.
  EXPECT_EQ(*Open(kBucket, "")->Get("jobs/1/a/b c+d.txt"), "bye");
}

TEST_F(S3StoreTest, MissingKeyAndBucketAreNotFound) {
  auto store = Open(kBucket, "p/");
  EXPECT_TRUE(IsError(store->Get("missing").status(),
                      absl::StatusCode::kNotFound,
                      {"\"missing\"", "s3://lpd-test/p/"}));
  EXPECT_TRUE(IsError(store->Stat("missing").status(),
                      absl::StatusCode::kNotFound, {"\"missing\""}));
  EXPECT_FALSE(*store->Exists("missing"));
  EXPECT_TRUE(IsError(store->GetToFile("missing", temp_.Sub("x")),
                      absl::StatusCode::kNotFound, {"\"missing\""}));
  EXPECT_FALSE(std::filesystem::exists(temp_.Sub("x")));

  auto nobucket = Open("no-such-bucket", "");
  EXPECT_TRUE(IsError(nobucket->Get("k").status(), absl::StatusCode::kNotFound,
                      {"\"no-such-bucket\"", "does not exist"}));
  EXPECT_TRUE(IsError(nobucket->List("").status(), absl::StatusCode::kNotFound,
                      {"\"no-such-bucket\""}));
  EXPECT_TRUE(IsError(nobucket->Put("k", "v"), absl::StatusCode::kNotFound,
                      {"\"no-such-bucket\""}));
}

TEST_F(S3StoreTest, MultipartRoundTrip) {
  auto store = Open(kBucket, "big/");
  const std::string data = PatternBytes(5 * kPart + 12345);
  auto writer = store->NewWriter("model.bin");
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (size_t off = 0; off < data.size();) {
    size_t n = std::min<size_t>(data.size() - off, 40000 + off % 7);
    ASSERT_TRUE((*writer)->Append(data.substr(off, n)).ok());
    off += n;
  }
  // Parts are up, but nothing is visible before Commit.
  EXPECT_FALSE(*store->Exists("model.bin"));
  const S3Counters before = GetS3Counters();
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_GT(GetS3Counters().bytes_sent, before.bytes_sent);
  EXPECT_EQ((*writer)->bytes_written(), static_cast<int64_t>(data.size()));
  EXPECT_EQ(*store->Get("model.bin"), data);

  // One big Put and PutFile take the multipart path too.
  ASSERT_TRUE(store->Put("put.bin", data).ok());
  EXPECT_EQ(*store->Get("put.bin"), data);
  WriteLocalFile(temp_.Sub("local.bin"), data);
  ASSERT_TRUE(store->PutFile("file.bin", temp_.Sub("local.bin")).ok());
  ASSERT_TRUE(store->GetToFile("file.bin", temp_.Sub("back.bin")).ok());
  EXPECT_EQ(ReadLocalFile(temp_.Sub("back.bin")), data);
  std::vector<ObjectEntry> want = {
      {"file.bin", static_cast<int64_t>(data.size())},
      {"model.bin", static_cast<int64_t>(data.size())},
      {"put.bin", static_cast<int64_t>(data.size())}};
  EXPECT_EQ(*store->List(""), want);
}

TEST_F(S3StoreTest, AbortLeavesNothingVisible) {
  auto store = Open(kBucket, "");
  auto writer = store->NewWriter("aborted.bin");
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Append(PatternBytes(4 * kPart)).ok());
  // s3rver answers AbortMultipartUpload with 405: logged, still OK.
  EXPECT_TRUE((*writer)->Abort().ok());
  EXPECT_TRUE((*writer)->Abort().ok());
  EXPECT_TRUE(
      IsError((*writer)->Commit(), absl::StatusCode::kFailedPrecondition));
  EXPECT_FALSE(*store->Exists("aborted.bin"));
  EXPECT_TRUE(store->List("")->empty());
  {
    auto dropped = store->NewWriter("dropped.bin");
    ASSERT_TRUE((*dropped)->Append(PatternBytes(2 * kPart)).ok());
  }
  EXPECT_FALSE(*store->Exists("dropped.bin"));
}

TEST_F(S3StoreTest, ListsWithPrefixesAndContinuation) {
  S3Config config = Config();
  config.list_page_size = 2;
  auto store = Open(kBucket, "root/", config);
  for (const char* key : {"a/1", "a/2", "a/b/3", "a/bc", "b/1", "c", "a/b/4"}) {
    ASSERT_TRUE(store->Put(key, key).ok());
  }
  ASSERT_TRUE(Open(kBucket, "")->Put("outside", "x").ok());
  auto keys = [&](const std::string& prefix) {
    std::vector<std::string> out;
    absl::StatusOr<std::vector<ObjectEntry>> list = store->List(prefix);
    EXPECT_TRUE(list.ok()) << list.status();
    for (const ObjectEntry& e : *list) out.push_back(e.key);
    return out;
  };
  EXPECT_EQ(keys(""), (std::vector<std::string>{"a/1", "a/2", "a/b/3", "a/b/4",
                                                "a/bc", "b/1", "c"}));
  EXPECT_EQ(keys("a/"),
            (std::vector<std::string>{"a/1", "a/2", "a/b/3", "a/b/4", "a/bc"}));
  EXPECT_EQ(keys("a/b"), (std::vector<std::string>{"a/b/3", "a/b/4", "a/bc"}));
  EXPECT_EQ(keys("a/b/"), (std::vector<std::string>{"a/b/3", "a/b/4"}));
  EXPECT_TRUE(keys("zzz/").empty());
  EXPECT_EQ((*store->List("a/b/"))[0].size, 5);
}

TEST_F(S3StoreTest, ManifestCatchesACorruptedObject) {
  auto store = Open(kBucket, "", Config(port_));
  Manifest manifest;
  ASSERT_TRUE(
      PutWithManifest(*store, "final", "model.bin", "the weights", manifest)
          .ok());
  ASSERT_TRUE(WriteManifest(*store, "final", manifest).ok());
  auto read = ReadManifest(*store, "final");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*VerifiedGet(*store, "final", *read, "model.bin"), "the weights");
  // The same size, one byte flipped: still caught.
  ASSERT_TRUE(store->Put("final/model.bin", "the weighTs").ok());
  auto corrupted = VerifiedGet(*store, "final", *read, "model.bin");
  EXPECT_EQ(corrupted.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(corrupted.status().message(), "model.bin"))
      << corrupted.status();
}

TEST_F(S3StoreTest, RangedReads) {
  auto store = Open(kBucket, "");
  const std::string data = PatternBytes(1000);
  ASSERT_TRUE(store->Put("r", data).ok());
  EXPECT_EQ(*store->GetRange("r", 0, 10), data.substr(0, 10));
  EXPECT_EQ(*store->GetRange("r", 990, 10), data.substr(990));
  EXPECT_EQ(*store->GetRange("r", 123, 456), data.substr(123, 456));
  EXPECT_EQ(*store->GetRange("r", 1000, 0), "");
  EXPECT_TRUE(IsError(store->GetRange("r", 995, 10).status(),
                      absl::StatusCode::kOutOfRange,
                      {"s3://lpd-test/r", "[995, 1005)", "1000 bytes"}));
  EXPECT_TRUE(IsError(store->GetRange("r", 2000, 1).status(),
                      absl::StatusCode::kOutOfRange, {"1000 bytes"}));
  EXPECT_TRUE(IsError(store->GetRange("r", 1001, 0).status(),
                      absl::StatusCode::kOutOfRange));
  EXPECT_TRUE(IsError(store->GetRange("missing", 0, 1).status(),
                      absl::StatusCode::kNotFound));
}

TEST_F(S3StoreTest, DeleteAndDeletePrefix) {
  auto store = Open(kBucket, "d/");
  for (const char* key : {"x/1", "x/2", "y/1"}) {
    ASSERT_TRUE(store->Put(key, "v").ok());
  }
  ASSERT_TRUE(store->Delete("y/1").ok());
  EXPECT_FALSE(*store->Exists("y/1"));
  EXPECT_TRUE(store->Delete("y/1").ok());  // missing: OK, as on S3
  ASSERT_TRUE(store->DeletePrefix("x/").ok());
  EXPECT_TRUE(store->List("")->empty());
}

TEST_F(S3StoreTest, InteroperatesWithAwsCli) {
  auto store = Open(kBucket, "cli/");
  const std::string ours = PatternBytes(3 * kPart + 7, 2);
  ASSERT_TRUE(store->Put("ours.bin", ours).ok());
  ASSERT_EQ(Aws(absl::StrCat("s3 cp s3://lpd-test/cli/ours.bin ",
                             temp_.Sub("from-s3.bin"))),
            0);
  EXPECT_EQ(ReadLocalFile(temp_.Sub("from-s3.bin")), ours);

  // 9 MiB: the CLI uploads it in parts.
  const std::string theirs = PatternBytes(9 << 20, 3);
  WriteLocalFile(temp_.Sub("theirs.bin"), theirs);
  ASSERT_EQ(Aws(absl::StrCat("s3 cp ", temp_.Sub("theirs.bin"),
                             " s3://lpd-test/cli/sub/theirs.bin")),
            0);
  EXPECT_EQ(*store->Get("sub/theirs.bin"), theirs);
  EXPECT_EQ(*store->GetRange("sub/theirs.bin", 5 << 20, 100),
            theirs.substr(5 << 20, 100));
}

TEST_F(S3StoreTest, RetriesThroughFaultsThenSucceeds) {
  FaultProxy proxy(port_);
  S3Config config = Config(proxy.port());
  config.reuse_connections = false;
  config.max_attempts = 4;
  auto store = Open(kBucket, "", config);
  const S3Counters before = GetS3Counters();
  proxy.Fail(3, /*drop=*/false);
  ASSERT_TRUE(store->Put("a", "retried").ok());
  EXPECT_EQ(proxy.faults_served(), 3);
  proxy.Fail(2, /*drop=*/false, /*status=*/500);
  ASSERT_TRUE(store->Put("b", "after 500s").ok());
  EXPECT_EQ(proxy.faults_served(), 5);
  EXPECT_EQ(*store->Get("b"), "after 500s");
  proxy.Fail(3, /*drop=*/true);
  EXPECT_EQ(*store->Get("a"), "retried");
  EXPECT_EQ(proxy.faults_served(), 8);
  const S3Counters after = GetS3Counters();
  EXPECT_GE(after.retries - before.retries, 8);
  EXPECT_GE(after.errors - before.errors, 8);

  // A multipart upload whose parts meet faults: each part is retried.
  const std::string data = PatternBytes(4 * kPart + 1);
  auto writer = store->NewWriter("parts.bin");
  ASSERT_TRUE((*writer)->Append(data.substr(0, 2 * kPart + 1)).ok());
  proxy.Fail(2, /*drop=*/true);
  ASSERT_TRUE((*writer)->Append(data.substr(2 * kPart + 1)).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_EQ(*store->Get("parts.bin"), data);
}

TEST_F(S3StoreTest, ParallelPartsRoundTripWithAFailedPartRetried) {
  FaultProxy proxy(port_);
  S3Config config = Config(proxy.port());
  config.reuse_connections = false;
  config.parallel_parts = 4;
  auto store = Open(kBucket, "par/", config);
  const std::string data = PatternBytes(9 * kPart + 321, 5);
  const S3Counters before = GetS3Counters();
  // Part 5 of 10 fails once (503) and is retried while others are in flight.
  proxy.FailOnceMatching("partNumber=5&");
  auto writer = store->NewWriter("par.bin");
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (size_t off = 0; off < data.size();) {
    size_t n = std::min<size_t>(data.size() - off, 50000 + off % 11);
    ASSERT_TRUE((*writer)->Append(data.substr(off, n)).ok());
    off += n;
  }
  absl::Status commit = (*writer)->Commit();
  ASSERT_TRUE(commit.ok()) << commit;
  EXPECT_EQ(proxy.faults_served(), 1);
  EXPECT_GE(GetS3Counters().retries - before.retries, 1);
  EXPECT_EQ(*store->Get("par.bin"), data);
  // PutFile too, and GetToFile as parallel ranges (10 of kPart).
  WriteLocalFile(temp_.Sub("par-local.bin"), data);
  ASSERT_TRUE(store->PutFile("file.bin", temp_.Sub("par-local.bin")).ok());
  proxy.FailOnceMatching("bytes=327680-393215");  // the 6th range, once
  absl::Status got = store->GetToFile("file.bin", temp_.Sub("par-back.bin"));
  ASSERT_TRUE(got.ok()) << got;
  EXPECT_EQ(proxy.faults_served(), 2);
  EXPECT_EQ(ReadLocalFile(temp_.Sub("par-back.bin")), data);
  // No temporary files are left beside it.
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(temp_.Sub(""))) {
    files += entry.path().filename().string().rfind(".lpd-tmp.", 0) == 0;
  }
  EXPECT_EQ(files, 0);
}

TEST_F(S3StoreTest, ParallelUploadFailureAbortsAfterPartsInFlight) {
  FaultProxy proxy(port_);
  S3Config config = Config(proxy.port());
  config.reuse_connections = false;
  config.parallel_parts = 4;
  auto store = Open(kBucket, "", config);
  auto writer = store->NewWriter("failed.bin");
  ASSERT_TRUE((*writer)->Append(PatternBytes(kPart + 1)).ok());
  proxy.Fail(1000, /*drop=*/false);
  // With parts in flight the failure shows in Append or at the latest in
  // Commit; either way the writer keeps it.
  absl::Status status = (*writer)->Append(PatternBytes(6 * kPart));
  if (status.ok()) status = (*writer)->Commit();
  EXPECT_TRUE(IsError(status, absl::StatusCode::kUnavailable,
                      {"failed.bin", "503", "after 3 attempts"}));
  EXPECT_EQ((*writer)->Commit(), status);
  proxy.Fail(0, false);
  EXPECT_FALSE(*store->Exists("failed.bin"));
  EXPECT_TRUE(store->List("")->empty());
}

TEST_F(S3StoreTest, ExhaustedRetriesAbortAndLeaveNothing) {
  FaultProxy proxy(port_);
  S3Config config = Config(proxy.port());
  config.reuse_connections = false;
  // One part at a time: the failing Append itself reports the error.
  config.parallel_parts = 1;
  auto store = Open(kBucket, "", config);
  auto writer = store->NewWriter("failed.bin");
  ASSERT_TRUE((*writer)->Append(PatternBytes(2 * kPart + 1)).ok());
  proxy.Fail(1000, /*drop=*/false);
  absl::Status status = (*writer)->Append(PatternBytes(2 * kPart));
  EXPECT_TRUE(IsError(status, absl::StatusCode::kUnavailable,
                      {"UploadPart", "failed.bin", "503", "after 3 attempts"}));
  // The writer is broken and keeps its error.
  EXPECT_EQ((*writer)->Commit(), status);
  proxy.Fail(0, false);
  EXPECT_FALSE(*store->Exists("failed.bin"));
  EXPECT_TRUE(store->List("")->empty());

  proxy.Fail(1000, /*drop=*/true);
  EXPECT_TRUE(IsError(store->Put("x", "y"), absl::StatusCode::kUnavailable,
                      {"PUT", "s3://lpd-test/x"}));
  proxy.Fail(0, false);
}

TEST_F(S3StoreTest, UnknownAccessKeyIsPermissionDeniedWithoutRetries) {
  S3Config config = Config();
  config.credentials = {"NOT-S3RVER", "any secret", ""};
  config.max_attempts = 5;
  auto store = Open(kBucket, "", config);
  const S3Counters before = GetS3Counters();
  EXPECT_TRUE(IsError(store->Put("k", "v"), absl::StatusCode::kPermissionDenied,
                      {"\"NOT-S3RVER\"", "\"lpd-test\"", "403"}));
  EXPECT_TRUE(IsError(store->Get("k").status(),
                      absl::StatusCode::kPermissionDenied,
                      {"\"NOT-S3RVER\"", "\"lpd-test\""}));
  // One request each: refused credentials are not retried.
  const S3Counters after = GetS3Counters();
  EXPECT_EQ(after.requests - before.requests, 2);
  EXPECT_EQ(after.retries - before.retries, 0);
  EXPECT_FALSE(*Open(kBucket, "")->Exists("k"));
}

TEST_F(S3StoreTest, StalledPartIsRetriedAfterTheStallTimeout) {
  FaultProxy proxy(port_);
  S3Config config = Config(proxy.port());
  config.reuse_connections = false;
  config.parallel_parts = 1;
  config.stall_timeout = absl::Seconds(1);
  auto store = Open(kBucket, "", config);
  const std::string data = PatternBytes(3 * kPart + 1, 7);
  const S3Counters before = GetS3Counters();
  // Part 2 stops after 10,000 bytes of its body, longer than the timeout.
  proxy.StallMatching("partNumber=2&", 1, 10000, absl::Seconds(6));
  auto writer = store->NewWriter("stalled.bin");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append(data).ok());
  absl::Status commit = (*writer)->Commit();
  ASSERT_TRUE(commit.ok()) << commit;
  EXPECT_EQ(proxy.stalls_served(), 1);
  EXPECT_GE(GetS3Counters().retries - before.retries, 1);
  EXPECT_EQ(*store->Get("stalled.bin"), data);
}

TEST_F(S3StoreTest, PartStalledOnEveryAttemptFailsAndLeavesNothing) {
  FaultProxy proxy(port_);
  S3Config config = Config(proxy.port());
  config.reuse_connections = false;
  config.parallel_parts = 1;
  config.max_attempts = 2;
  config.stall_timeout = absl::Seconds(1);
  auto store = Open(kBucket, "", config);
  proxy.StallMatching("partNumber=", 1000, 10000, absl::Seconds(6));
  auto writer = store->NewWriter("stalled.bin");
  ASSERT_TRUE(writer.ok()) << writer.status();
  absl::Status status = (*writer)->Append(PatternBytes(3 * kPart + 1));
  if (status.ok()) status = (*writer)->Commit();
  EXPECT_TRUE(status.code() == absl::StatusCode::kDeadlineExceeded ||
              status.code() == absl::StatusCode::kUnavailable)
      << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "after 2 attempts"))
      << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "stalled.bin")) << status;
  EXPECT_EQ(proxy.stalls_served(), 2);
  proxy.StallMatching("", 0, 0, absl::ZeroDuration());
  EXPECT_FALSE(*store->Exists("stalled.bin"));
  EXPECT_TRUE(store->List("")->empty());
}

TEST_F(S3StoreTest, ServerDownMidUploadFailsThenAFreshUploadSucceeds) {
  S3Config config = Config();
  config.parallel_parts = 1;
  auto store = Open(kBucket, "", config);
  const std::string data = PatternBytes(4 * kPart + 3, 9);
  auto writer = store->NewWriter("crash.bin");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append(data.substr(0, 2 * kPart + 1)).ok());
  EXPECT_FALSE(*store->Exists("crash.bin"));
  KillS3rver();
  absl::Status status = (*writer)->Append(data.substr(2 * kPart + 1));
  if (status.ok()) status = (*writer)->Commit();
  EXPECT_TRUE(IsError(status, absl::StatusCode::kUnavailable,
                      {"crash.bin", "after 3 attempts"}));
  EXPECT_EQ((*writer)->Commit(), status);
  writer->reset();

  SpawnS3rver();
  WaitForS3rver();
  EXPECT_FALSE(*store->Exists("crash.bin"));
  EXPECT_TRUE(store->List("")->empty());
  auto fresh = store->NewWriter("crash.bin");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  ASSERT_TRUE((*fresh)->Append(data.substr(0, 3 * kPart)).ok());
  EXPECT_FALSE(*store->Exists("crash.bin"));
  ASSERT_TRUE((*fresh)->Append(data.substr(3 * kPart)).ok());
  absl::Status commit = (*fresh)->Commit();
  ASSERT_TRUE(commit.ok()) << commit;
  EXPECT_EQ(*store->Get("crash.bin"), data);
}

TEST_F(S3StoreTest, UploadResumesWhenTheServerReturnsWithinTheRetryBudget) {
  S3Config config = Config();
  config.parallel_parts = 1;
  // About 12 s of retries: longer than s3rver takes to restart.
  config.max_attempts = 30;
  config.initial_backoff = absl::Milliseconds(100);
  config.max_backoff = absl::Milliseconds(500);
  auto store = Open(kBucket, "", config);
  const std::string data = PatternBytes(4 * kPart + 3, 11);
  auto writer = store->NewWriter("resumed.bin");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append(data.substr(0, 2 * kPart + 1)).ok());
  // Give s3rver a moment to finish writing part 1 to its folder (once, under
  // heavy load, the object read back differed; suspected: the answer to
  // UploadPart came before the part file was complete).
  absl::SleepFor(absl::Milliseconds(300));
  KillS3rver();
  // Back on the same port and data folder a second later.
  std::thread restart([this] {
    absl::SleepFor(absl::Seconds(1));
    SpawnS3rver();
  });
  const S3Counters before = GetS3Counters();
  absl::Status status = (*writer)->Append(data.substr(2 * kPart + 1));
  restart.join();
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_GE(GetS3Counters().retries - before.retries, 1);
  EXPECT_FALSE(*store->Exists("resumed.bin"));
  absl::Status commit = (*writer)->Commit();
  ASSERT_TRUE(commit.ok()) << commit;
  absl::StatusOr<std::string> got = store->Get("resumed.bin");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), data.size());
  EXPECT_TRUE(*got == data);
}

TEST(S3ObjectStoreCreateTest, RejectsBadConfig) {
  S3Config config;
  config.credentials = {"a", "b", ""};
  EXPECT_TRUE(S3ObjectStore::Create("b", "", config).ok());
  config.endpoint = "ftp://x";
  EXPECT_TRUE(IsError(S3ObjectStore::Create("b", "", config).status(),
                      absl::StatusCode::kInvalidArgument, {"ftp://x"}));
  config.endpoint = "";
  config.part_size = 1 << 20;
  EXPECT_TRUE(IsError(S3ObjectStore::Create("b", "", config).status(),
                      absl::StatusCode::kInvalidArgument, {"part size"}));
  config.part_size = kS3MinPartBytes;
  config.parallel_parts = 0;
  EXPECT_TRUE(IsError(S3ObjectStore::Create("b", "", config).status(),
                      absl::StatusCode::kInvalidArgument, {"parallel_parts"}));
  config.parallel_parts = 4;
  config.credentials = {};
  EXPECT_TRUE(IsError(S3ObjectStore::Create("b", "", config).status(),
                      absl::StatusCode::kInvalidArgument,
                      {"AWS_ACCESS_KEY_ID"}));
}

TEST(S3ConfigTest, ReadsTheEnvironment) {
  ::setenv("AWS_ACCESS_KEY_ID", "AKID", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "SECRET", 1);
  ::setenv("AWS_SESSION_TOKEN", "TOKEN", 1);
  ::unsetenv("AWS_REGION");
  ::setenv("AWS_DEFAULT_REGION", "eu-west-3", 1);
  ::unsetenv("AWS_ENDPOINT_URL_S3");
  ::setenv("AWS_ENDPOINT_URL", "http://minio:9000", 1);
  S3Config config = S3Config::FromEnvironment();
  EXPECT_EQ(config.credentials.access_key_id, "AKID");
  EXPECT_EQ(config.credentials.secret_access_key, "SECRET");
  EXPECT_EQ(config.credentials.session_token, "TOKEN");
  EXPECT_EQ(config.region, "eu-west-3");
  EXPECT_EQ(config.endpoint, "http://minio:9000");
  ::setenv("AWS_REGION", "ap-south-1", 1);
  EXPECT_EQ(S3Config::FromEnvironment().region, "ap-south-1");
}

TEST(XmlTest, ExtractsAndUnescapes) {
  const std::string xml =
      "<R><KeyCount>2</KeyCount><Contents><Key>a&amp;b&lt;&#233;&#x41;</Key>"
      "<Size>3</Size></Contents><Contents><Key>c</Key><Size>4</Size>"
      "</Contents><Empty/></R>";
  std::vector<std::string> contents = XmlElements(xml, "Contents");
  ASSERT_EQ(contents.size(), 2u);
  EXPECT_EQ(XmlUnescape(XmlElements(contents[0], "Key")[0]),
            "a&b<\xc3\xa9"
            "A");
  EXPECT_EQ(XmlElements(xml, "Key").size(), 2u);  // not KeyCount
  EXPECT_EQ(XmlElements(xml, "Empty"), std::vector<std::string>{""});
  EXPECT_EQ(XmlUnescape("a & b &bogus; c"), "a & b &bogus; c");
}

}  // namespace
}  // namespace lpd::storage

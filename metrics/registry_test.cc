#include "metrics/registry.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <string>

#include "metrics/endpoint.h"

namespace lpd::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// promtool's verdict on an exposition: its exit code and output.
std::pair<int, std::string> PromtoolCheck(const std::string& text) {
  char path[] = "/tmp/lpd-metrics-XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << text;
  const std::string command =
      std::string("promtool check metrics < ") + path + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  char buffer[512];
  while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) {
    output += buffer;
  }
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  unlink(path);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

Registry& Example() {
  static Registry* registry = [] {
    auto* r = new Registry;
    r->AddCounter("lpd_jobs_submitted_total", "Jobs accepted.")
        .With({})
        .Increment(3);
    auto& jobs = r->AddGauge("lpd_jobs", "Jobs by state.", {"state"});
    jobs.With({"running"}).Set(2);
    jobs.With({"queued"}).Set(0);
    r->AddGauge("lpd_job_progress_ratio", "Progress \\ of a \"job\".", {"job"})
        .With({"odd \"name\"\\\n"})
        .Set(0.25);
    auto& h = r->AddHistogram("lpd_phase_duration_seconds", "Phase durations.",
                              {"phase"}, {0.5, 1, 2.5});
    h.With({"score"}).Observe(0.2);
    h.With({"score"}).Observe(0.7);
    h.With({"score"}).Observe(100);
    return r;
  }();
  return *registry;
}

TEST(MetricsTest, SerializesTheTextFormat) {
  EXPECT_EQ(Example().Serialize(),
            "# HELP lpd_jobs_submitted_total Jobs accepted.\n"
            "# TYPE lpd_jobs_submitted_total counter\n"
            "lpd_jobs_submitted_total 3\n"
            "# HELP lpd_jobs Jobs by state.\n"
            "# TYPE lpd_jobs gauge\n"
            "lpd_jobs{state=\"queued\"} 0\n"
            "lpd_jobs{state=\"running\"} 2\n"
            "# HELP lpd_job_progress_ratio Progress \\\\ of a \"job\".\n"
            "# TYPE lpd_job_progress_ratio gauge\n"
            "lpd_job_progress_ratio{job=\"odd \\\"name\\\"\\\\\\n\"} 0.25\n"
            "# HELP lpd_phase_duration_seconds Phase durations.\n"
            "# TYPE lpd_phase_duration_seconds histogram\n"
            "lpd_phase_duration_seconds_bucket{phase=\"score\",le=\"0.5\"} 1\n"
            "lpd_phase_duration_seconds_bucket{phase=\"score\",le=\"1\"} 2\n"
            "lpd_phase_duration_seconds_bucket{phase=\"score\",le=\"2.5\"} 2\n"
            "lpd_phase_duration_seconds_bucket{phase=\"score\",le=\"+Inf\"} 3\n"
            "lpd_phase_duration_seconds_sum{phase=\"score\"} 100.9\n"
            "lpd_phase_duration_seconds_count{phase=\"score\"} 3\n");
}

TEST(MetricsTest, PromtoolAcceptsItAndRejectsABrokenOne) {
  const auto [code, output] = PromtoolCheck(Example().Serialize());
  ASSERT_NE(code, 127) << "promtool not found: scripts/setup-debian.sh "
                          "installs it (Debian package prometheus)";
  EXPECT_EQ(code, 0) << output;
  EXPECT_EQ(output, "");
  // The check is real: a counter without _total and a malformed line fail.
  const auto [bad_code, bad_output] = PromtoolCheck(
      "# HELP jobs x\n# TYPE jobs counter\njobs 1\nnot a metric line{\n");
  EXPECT_NE(bad_code, 0) << bad_output;
}

TEST(MetricsTest, SeriesAreRemovedAndCountersOnlyRise) {
  Registry r;
  auto& progress = r.AddGauge("lpd_job_progress_ratio", "p", {"job"});
  progress.With({"a"}).Set(0.5);
  progress.With({"b"}).Set(0.1);
  progress.With({"c"}).Set(0.9);
  progress.Remove({"a"});
  EXPECT_THAT(r.Serialize(), Not(HasSubstr("job=\"a\"")));
  progress.RetainOnly({{"c"}});
  EXPECT_THAT(r.Serialize(), Not(HasSubstr("job=\"b\"")));
  EXPECT_THAT(r.Serialize(),
              HasSubstr("lpd_job_progress_ratio{job=\"c\"} 0.9"));
  auto& c = r.AddCounter("lpd_x_total", "x").With({});
  c.Increment(2);
  c.Increment(-5);
  EXPECT_EQ(c.value(), 2);
  int collected = 0;
  r.AddCollector([&] { ++collected; });
  r.Serialize();
  EXPECT_EQ(collected, 1);
}

TEST(MetricsTest, FormatsNumbersAsPrometheusDoes) {
  EXPECT_EQ(FormatValue(3), "3");
  EXPECT_EQ(FormatValue(-0.125), "-0.125");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(1.0 / 3), "0.3333333333333333");  // shortest
  EXPECT_EQ(FormatValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatValue(-INFINITY), "-Inf");
  EXPECT_EQ(FormatValue(NAN), "NaN");
}

TEST(MetricsDeathTest, BadNamesAreBugsCaughtAtStartUp) {
  Registry r;
  EXPECT_DEATH(r.AddGauge("lpd jobs", "x"), "not a valid metric name");
  EXPECT_DEATH(r.AddGauge("lpd_jobs", "x", {"le"}), "bad or repeated label");
  r.AddGauge("lpd_jobs", "x");
  EXPECT_DEATH(r.AddCounter("lpd_jobs", "x"), "registered twice");
}

// A raw HTTP exchange with 127.0.0.1:port.
std::string Http(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return "connect failed";
  }
  send(fd, request.data(), request.size(), 0);
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0)
    response.append(buffer, n);
  close(fd);
  return response;
}

TEST(MetricsHttpTest, ServesMetricsAndRefusesTheRest) {
  int renders = 0;
  auto server = MetricsHttpServer::Start("127.0.0.1:0", [&] {
    ++renders;
    return std::string("lpd_up 1\n");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  const std::string ok = Http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(ok, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(ok, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(ok, HasSubstr("Content-Length: 9\r\n"));
  EXPECT_THAT(ok, ::testing::EndsWith("\r\n\r\nlpd_up 1\n"));
  EXPECT_EQ(renders, 1);
  EXPECT_THAT(Http(port, "GET /other HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 404"));
  EXPECT_THAT(Http(port, "POST /metrics HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 405"));
  EXPECT_THAT(Http(port, "garbage\r\n\r\n"), StartsWith("HTTP/1.1 400"));
  EXPECT_THAT(Http(port, std::string(10000, 'x')), StartsWith("HTTP/1.1 431"));
  EXPECT_EQ(renders, 1);
}

TEST(MetricsHttpTest, ASilentClientHoldsTheEndpointFiveSecondsAtMost) {
  auto server = MetricsHttpServer::Start("127.0.0.1:0",
                                         [] { return std::string("x 1\n"); });
  ASSERT_TRUE(server.ok());
  const int port = (*server)->port();
  const int silent = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(
      connect(silent, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
      0);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(Http(port, "GET /metrics HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 200"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(8));
  close(silent);
}

TEST(MetricsHttpTest, BadAddressesAreClearErrors) {
  EXPECT_EQ(MetricsHttpServer::Start("no-port", nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto first = MetricsHttpServer::Start("127.0.0.1:0", nullptr);
  ASSERT_TRUE(first.ok());
  auto second = MetricsHttpServer::Start(
      "127.0.0.1:" + std::to_string((*first)->port()), nullptr);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace lpd::metrics

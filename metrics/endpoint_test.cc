#include "metrics/endpoint.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "testing/temp_folder.h"

namespace lpd::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

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

TEST(MetricsHttpTest, ServesARegistryReadAtEachScrapeAndWritesThePortFile) {
  Registry registry;
  AddBuildInfo(registry, "0.1.0");
  auto& running = prometheus::BuildGauge()
                      .Name("lpd_jobs")
                      .Help("Jobs by state.")
                      .Register(registry.families())
                      .Add({{"state", "running"}});
  int jobs = 2;
  registry.AddCollector([&] { running.Set(jobs); });
  test::TempFolder dir("lpd-endpoint-");
  const std::string port_file = dir.Sub("port");

  auto server = ServeRegistry(registry, "127.0.0.1:0", port_file);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  int written = 0;
  std::ifstream(port_file) >> written;
  EXPECT_EQ(written, port);
  const std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string first = Http(port, request);
  EXPECT_THAT(first, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(first, HasSubstr("# TYPE lpd_build_info gauge\n"
                               "lpd_build_info{version=\"0.1.0\"} 1\n"));
  EXPECT_THAT(first, HasSubstr("# TYPE lpd_jobs gauge\n"));
  EXPECT_THAT(first, HasSubstr("lpd_jobs{state=\"running\"} 2\n"));
  jobs = 5;  // read again by the collector at the next scrape
  EXPECT_THAT(Http(port, request),
              HasSubstr("lpd_jobs{state=\"running\"} 5\n"));
}

}  // namespace
}  // namespace lpd::metrics

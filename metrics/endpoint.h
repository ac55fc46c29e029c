// The /metrics endpoint: a small HTTP/1.1 server on its own thread that
// answers GET /metrics with a render callback's text (the Prometheus text
// format), 404 for other paths and 405 for other methods, one connection at
// a time, each closed after its answer. Requests are bounded (8 KiB of
// header, 5 s to send it), so a slow or broken client cannot hold the
// endpoint for long. No TLS: scrape it on a trusted network, as the Helm
// chart's ServiceMonitor does.
//
// Not prometheus-cpp's Exposer: Debian 12's civetweb (which it runs on)
// starts its threads with a fixed 100 KiB stack, and glibc refuses a thread
// whose stack is smaller than the process's static TLS; lpd-worker's is
// about 106 KiB (OpenBLAS, glog, LibTorch), so the Exposer fails there with
// "Cannot create threads".
#ifndef LPD_METRICS_ENDPOINT_H_
#define LPD_METRICS_ENDPOINT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "metrics/registry.h"

namespace lpd::metrics {

class MetricsHttpServer {
 public:
  // Listens on "host:port" (port 0: any free one; see port()).
  // InvalidArgument for a malformed address, Unavailable when it cannot
  // listen there.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, std::function<std::string()> render);
  ~MetricsHttpServer();  // stops and joins the thread
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsHttpServer(int listen_fd, int wake_read, int wake_write, int port,
                    std::function<std::string()> render);
  void Serve();
  void Answer(int fd);

  int listen_fd_, wake_read_, wake_write_, port_;
  std::function<std::string()> render_;
  std::thread thread_;
};

// Writes `port` to `path` whole (a temporary file, then a rename), for
// whoever started a server on port 0.
void WritePortFile(const std::string& path, int port);

// Serves `registry` (which must outlive the server) on `listen` and, when
// `port_file` is not empty, writes the bound port there.
absl::StatusOr<std::unique_ptr<MetricsHttpServer>> ServeRegistry(
    const Registry& registry, const std::string& listen,
    const std::string& port_file);

}  // namespace lpd::metrics

#endif  // LPD_METRICS_ENDPOINT_H_

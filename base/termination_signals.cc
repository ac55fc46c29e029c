#include "base/termination_signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <utility>

namespace lpd {
namespace {

int signal_pipe[2] = {-1, -1};
std::atomic<int> signals_seen{0};

void OnSignal(int signal) {
  if (signals_seen.fetch_add(1) > 0) _exit(128 + signal);
  const unsigned char byte = static_cast<unsigned char>(signal);
  const ssize_t written = write(signal_pipe[1], &byte, 1);
  (void)written;
}

}  // namespace

void HandleTerminationSignals(std::function<void(int signal)> on_signal) {
  if (pipe2(signal_pipe, O_CLOEXEC) != 0) return;
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  std::thread([on_signal = std::move(on_signal)] {
    unsigned char byte = 0;
    ssize_t n;
    do {
      n = read(signal_pipe[0], &byte, 1);
    } while (n < 0 && errno == EINTR);
    if (n == 1 && on_signal) on_signal(byte);
  }).detach();
}

}  // namespace lpd

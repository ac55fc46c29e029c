// Graceful shutdown for the binaries: SIGTERM and SIGINT are caught by a
// handler that only writes to a pipe; one waiting thread reads it and runs
// the binary's shutdown code as ordinary code (no async-signal-safety
// limits). Works whatever thread the kernel delivers the signal to, so
// threads started before (by libraries' static initializers) do not matter.
#ifndef LPD_BASE_TERMINATION_SIGNALS_H_
#define LPD_BASE_TERMINATION_SIGNALS_H_

#include <functional>

namespace lpd {

// Call once, early in main(). `on_signal` runs once, on a detached thread,
// with the number of the first SIGTERM or SIGINT; a second one of them ends
// the process at once with status 128 + signal.
void HandleTerminationSignals(std::function<void(int signal)> on_signal);

}  // namespace lpd

#endif  // LPD_BASE_TERMINATION_SIGNALS_H_

// The engine's edge: LibTorch reports failures by throwing (c10::Error and
// its out-of-memory subclass, std::exception); callers above the engine see
// absl::Status only. Wrap each entry point's body in GuardTorch.
#ifndef LPD_ENGINE_CORE_TORCH_ERRORS_H_
#define LPD_ENGINE_CORE_TORCH_ERRORS_H_

#include <exception>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lpd::engine {

// The status for a caught exception: out of memory → ResourceExhausted,
// std::invalid_argument → InvalidArgument, anything else → Internal. The
// message starts with `what_failed` and keeps LibTorch's first line.
absl::Status StatusFromException(std::exception_ptr error,
                                 absl::string_view what_failed);

// Runs `body` (returning absl::Status or absl::StatusOr<T>) and turns any
// exception it throws into a status.
template <typename Body>
auto GuardTorch(absl::string_view what_failed, Body&& body)
    -> decltype(body()) {
  try {
    return body();
  } catch (...) {
    return StatusFromException(std::current_exception(), what_failed);
  }
}

}  // namespace lpd::engine

#endif  // LPD_ENGINE_CORE_TORCH_ERRORS_H_

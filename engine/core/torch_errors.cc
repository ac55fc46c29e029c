#include "engine/core/torch_errors.h"

#include <c10/util/Exception.h>

#include <stdexcept>
#include <string>

#include "absl/strings/str_cat.h"

namespace lpd::engine {
namespace {

// LibTorch messages carry a C++ backtrace after the first lines; keep the
// part a user can act on.
std::string Headline(const std::string& what) {
  const size_t cut = what.find("\nException raised from");
  std::string text = what.substr(0, cut);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

}  // namespace

absl::Status StatusFromException(std::exception_ptr error,
                                 absl::string_view what_failed) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what_failed, ": out of memory: ", Headline(e.what())));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(what_failed, ": ", Headline(e.what_without_backtrace())));
  } catch (const std::invalid_argument& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(what_failed, ": ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what_failed, ": out of host memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what_failed, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(
        absl::StrCat(what_failed, ": unknown exception"));
  }
}

}  // namespace lpd::engine

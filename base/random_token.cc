#include "base/random_token.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "absl/strings/escaping.h"

namespace lpd {

std::string RandomHex(int bytes) {
  std::vector<char> buffer(static_cast<size_t>(bytes > 0 ? bytes : 0));
  size_t filled = 0;
  while (filled < buffer.size()) {
    const ssize_t n =
        getrandom(buffer.data() + filled, buffer.size() - filled, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) std::abort();  // no kernel randomness: nothing safe to do
    filled += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(
      absl::string_view(buffer.data(), buffer.size()));
}

}  // namespace lpd

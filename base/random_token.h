// Unguessable tokens, from the kernel's random source.
#ifndef LPD_BASE_RANDOM_TOKEN_H_
#define LPD_BASE_RANDOM_TOKEN_H_

#include <string>

namespace lpd {

// `bytes` random bytes from getrandom(2) as lowercase hex (2 * bytes
// characters). For secrets such as lease ids: not absl's BitGen, whose
// output can be predicted from earlier outputs.
std::string RandomHex(int bytes);

}  // namespace lpd

#endif  // LPD_BASE_RANDOM_TOKEN_H_

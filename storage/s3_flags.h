// Command-line flags for the S3 back end, shared by the binaries that open
// object stores. Kept out of lpd_storage so that it does not depend on the
// flag parser.
#ifndef LPD_STORAGE_S3_FLAGS_H_
#define LPD_STORAGE_S3_FLAGS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "base/cli_args.h"
#include "storage/s3_object_store.h"

namespace lpd::storage {

// --s3-endpoint, --s3-region, --s3-addressing (path|virtual|auto),
// --s3-access-key-id, --s3-secret-access-key, --s3-session-token; none
// required. Append them to a subcommand's own specs.
const std::vector<FlagSpec>& S3FlagSpecs();

// S3Config::FromEnvironment() with the flags present in `flags` overriding
// the fields they name. InvalidArgument naming the flag for a bad
// --s3-addressing.
absl::StatusOr<S3Config> S3ConfigFromFlags(const CliArgs& flags);

}  // namespace lpd::storage

#endif  // LPD_STORAGE_S3_FLAGS_H_

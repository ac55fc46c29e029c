// The one mapping between absl::Status and grpc::Status, used by every
// service and client of lpd. absl's codes are gRPC's codes (same numbers, same
// meaning), so the mapping keeps the code and the message; what it adds is
// the direction the caller needs and a bound on message size:
//
//   InvalidArgument     bad spec or request (message starts with the field)
//   NotFound            unknown job, lease or worker
//   AlreadyExists       request_id reused with another spec
//   FailedPrecondition  the job or lease is in a state that forbids the call
//   Unavailable         the job store cannot be written, or shutting down
//   Internal            a bug: everything unexpected
#ifndef LPD_BASE_GRPC_STATUS_H_
#define LPD_BASE_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace lpd {

// Messages longer than this are cut (with a note) before they go on the wire.
inline constexpr size_t kMaxStatusMessageBytes = 4096;

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace lpd

#endif  // LPD_BASE_GRPC_STATUS_H_

#include "base/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace lpd {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.size() > kMaxStatusMessageBytes) {
    message = absl::StrCat(message.substr(0, kMaxStatusMessageBytes),
                           "... (message cut)");
  }
  // absl::StatusCode and grpc::StatusCode share their numbering (both are
  // google.rpc.Code); codes outside it are a bug and become INTERNAL.
  const int code = static_cast<int>(status.code());
  if (code < 0 || code > static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)) {
    return grpc::Status(grpc::StatusCode::INTERNAL, message);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code), message);
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::InternalError(status.error_message());
  }
  return absl::Status(static_cast<absl::StatusCode>(code),
                      status.error_message());
}

}  // namespace lpd

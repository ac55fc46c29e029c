#include "base/grpc_status.h"

#include <string>

#include "gtest/gtest.h"

namespace lpd {
namespace {

TEST(GrpcStatusTest, KeepsCodeAndMessageBothWays) {
  const absl::Status cases[] = {
      absl::InvalidArgumentError("spec.prune.target_ratio: must be in (0, 1)"),
      absl::NotFoundError("job job-00 not found"),
      absl::AlreadyExistsError("request_id r1 was used for another spec"),
      absl::FailedPreconditionError("job already ended"),
      absl::UnavailableError("job store not writable"),
      absl::CancelledError("cancelled"),
      absl::InternalError("bug"),
  };
  for (const absl::Status& status : cases) {
    const grpc::Status wire = ToGrpcStatus(status);
    EXPECT_EQ(static_cast<int>(wire.error_code()),
              static_cast<int>(status.code()));
    EXPECT_EQ(wire.error_message(), std::string(status.message()));
    EXPECT_EQ(FromGrpcStatus(wire), status);
  }
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError("x")).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ToGrpcStatus(absl::NotFoundError("x")).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, CutsLongMessages) {
  const grpc::Status wire =
      ToGrpcStatus(absl::InternalError(std::string(100000, 'x')));
  EXPECT_LT(wire.error_message().size(), kMaxStatusMessageBytes + 64);
  EXPECT_NE(wire.error_message().find("(message cut)"), std::string::npos);
}

}  // namespace
}  // namespace lpd

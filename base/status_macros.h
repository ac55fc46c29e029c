// Propagation helpers for absl::Status and absl::StatusOr, defined once for
// the whole project.
#ifndef LPD_BASE_STATUS_MACROS_H_
#define LPD_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LPD_STATUS_CONCAT_INNER_(a, b) a##b
#define LPD_STATUS_CONCAT_(a, b) LPD_STATUS_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function if it is not OK.
#define RETURN_IF_ERROR(expr)                                 \
  do {                                                        \
    if (absl::Status lpd_status_ = (expr); !lpd_status_.ok()) \
      return lpd_status_;                                     \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status from
// the enclosing function, otherwise moves the value into `lhs`, which may be
// a declaration (`ASSIGN_OR_RETURN(auto x, F())`).
#define ASSIGN_OR_RETURN(lhs, rexpr)                                       \
  ASSIGN_OR_RETURN_IMPL_(LPD_STATUS_CONCAT_(lpd_statusor_, __LINE__), lhs, \
                         rexpr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)       \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // LPD_BASE_STATUS_MACROS_H_

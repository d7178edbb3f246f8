// Small local replacements for absl's status macros (not shipped in Debian's abseil 20220623).
#ifndef HWID_COMMON_STATUS_MACROS_H_
#define HWID_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HWID_CONCAT_INNER_(a, b) a##b
#define HWID_CONCAT_(a, b) HWID_CONCAT_INNER_(a, b)

// RETURN_IF_ERROR(expr): evaluates expr (an absl::Status) and returns it from the current
// function when it is not OK.
#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    ::absl::Status hwid_status_ = (expr);           \
    if (!hwid_status_.ok()) {                       \
      return hwid_status_;                          \
    }                                               \
  } while (false)

// ASSIGN_OR_RETURN(lhs, expr): evaluates expr (an absl::StatusOr<T>); on error returns the status,
// otherwise moves the value into lhs (which may be a declaration).
#define ASSIGN_OR_RETURN(lhs, expr) \
  HWID_ASSIGN_OR_RETURN_IMPL_(HWID_CONCAT_(hwid_statusor_, __LINE__), lhs, expr)

#define HWID_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                \
  if (!statusor.ok()) {                                  \
    return std::move(statusor).status();                 \
  }                                                      \
  lhs = std::move(statusor).value()

#endif  // HWID_COMMON_STATUS_MACROS_H_

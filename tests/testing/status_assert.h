// gtest assertions for absl::Status / absl::StatusOr results, shared by the test binaries.
#ifndef HWID_TESTS_TESTING_STATUS_ASSERT_H_
#define HWID_TESTS_TESTING_STATUS_ASSERT_H_

#include <gtest/gtest.h>

#include <utility>

#include "absl/status/status.h"

// ASSERT_OK(expr): expr (a Status or StatusOr) is OK, else the test stops with its message.
#define ASSERT_OK(expr)                                      \
  do {                                                       \
    const ::absl::Status st_ = ::absl::Status(expr);         \
    ASSERT_TRUE(st_.ok()) << #expr << ": " << st_.message(); \
  } while (false)

// EXPECT_OK(expr): expr (a Status) is OK, else the test fails with its message and goes on.
#define EXPECT_OK(expr)                                      \
  do {                                                       \
    const ::absl::Status st_ = ::absl::Status(expr);         \
    EXPECT_TRUE(st_.ok()) << #expr << ": " << st_.message(); \
  } while (false)

// ASSERT_OK_AND_ASSIGN(lhs, expr): expr (a StatusOr) is OK, and its value is moved into lhs.
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  HWID_ASSERT_OK_AND_ASSIGN_IMPL_(HWID_STATUS_CONCAT_(sor_, __LINE__), lhs, expr)
#define HWID_STATUS_CONCAT_INNER_(a, b) a##b
#define HWID_STATUS_CONCAT_(a, b) HWID_STATUS_CONCAT_INNER_(a, b)
#define HWID_ASSERT_OK_AND_ASSIGN_IMPL_(sor, lhs, expr)              \
  auto sor = (expr);                                                 \
  ASSERT_TRUE(sor.ok()) << #expr << ": " << sor.status().ToString(); \
  lhs = std::move(sor).value()

#endif  // HWID_TESTS_TESTING_STATUS_ASSERT_H_

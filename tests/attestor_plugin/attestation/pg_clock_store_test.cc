// The PostgreSQL clock store against a real PostgreSQL 15 started privately by the test
// (tests/testing/postgres.h): compare-and-set in SQL between two "servers", the table created on
// first use, the database going away and coming back under both policies, and the password
// never in a message.
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/clock_state.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/postgres.h"
#include "tests/testing/run_shell.h"

namespace hwid::attestation {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

const std::string kId(64, 'b');

// firmware_version above INT64_MAX: stored as numeric(20).
ClockRecord Base() {
  return {.ak_name = "000b" + std::string(64, '3'), .clock = 5'000'000, .reset_count = 3,
          .restart_count = 0, .safe = true, .firmware_version = 0xfedcba9876543210ull,
          .verified_at_ms = 1'780'000'000'000};
}

class PgClockStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<testing::Postgres>> pg = testing::Postgres::Start();
    if (!pg.ok()) {
      start_error_ = new std::string(pg.status().ToString());
      return;
    }
    pg_ = pg->release();
  }
  static void TearDownTestSuite() {
    delete pg_;
    pg_ = nullptr;
  }
  void SetUp() override {
    if (pg_ == nullptr) {
      if (testing::RunningInCi()) {
        FAIL() << "PostgreSQL fixture: " << *start_error_;
      }
      GTEST_SKIP() << "PostgreSQL fixture: " << *start_error_;
    }
    ASSERT_TRUE(pg_->Psql("DROP TABLE IF EXISTS hwid_tpm_clock_state").ok());
  }
  std::unique_ptr<ClockStateStore> NewStore() {
    absl::StatusOr<std::unique_ptr<ClockStateStore>> s = NewPostgresClockStore(pg_->conninfo());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  static testing::Postgres* pg_;
  static std::string* start_error_;
};
testing::Postgres* PgClockStoreTest::pg_ = nullptr;
std::string* PgClockStoreTest::start_error_ = nullptr;

TEST_F(PgClockStoreTest, CreatesTableLoadsAndComparesAndSets) {
  std::unique_ptr<ClockStateStore> store = NewStore();
  auto none = store->Load(kId);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  ClockRecord r = Base();
  EXPECT_FALSE(store->CompareAndSet(kId, 1, r).value());
  EXPECT_TRUE(store->CompareAndSet(kId, 0, r).value());
  EXPECT_FALSE(store->CompareAndSet(kId, 0, r).value());
  auto got = store->Load(kId);
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->version, 1);
  EXPECT_EQ((*got)->record, r);
  r.clock += 10;
  r.reset_count = 0xffffffffu;
  r.safe = false;
  EXPECT_TRUE(store->CompareAndSet(kId, 1, r).value());
  EXPECT_FALSE(store->CompareAndSet(kId, 1, r).value());  // stale version
  EXPECT_EQ(store->Load(kId).value()->record, r);
  EXPECT_EQ(store->Load(kId).value()->version, 2);
  EXPECT_EQ(pg_->Psql("SELECT count(*) FROM hwid_tpm_clock_state").value(), "1\n");
}

// Two servers read the same version; exactly one compare-and-set wins.
TEST_F(PgClockStoreTest, TwoServersSameVersionOneWins) {
  std::unique_ptr<ClockStateStore> a = NewStore();
  std::unique_ptr<ClockStateStore> b = NewStore();
  ASSERT_TRUE(a->CompareAndSet(kId, 0, Base()).value());
  const int64_t v = b->Load(kId).value()->version;
  ClockRecord ra = Base();
  ra.clock += 100;
  ClockRecord rb = Base();
  rb.clock += 1;
  EXPECT_TRUE(a->CompareAndSet(kId, v, ra).value());
  EXPECT_FALSE(b->CompareAndSet(kId, v, rb).value());
  EXPECT_EQ(b->Load(kId).value()->record, ra);
}

// Two servers verifying two clones of one TPM concurrently: one history wins, the other is
// refused from then on (as in the file store test, but across two connections pools).
TEST_F(PgClockStoreTest, ConcurrentDivergingHistoriesAcrossServers) {
  ClockStateChecker server_a(NewStore(), StoreUnavailablePolicy::kFailClosed);
  ClockStateChecker server_b(NewStore(), StoreUnavailablePolicy::kFailClosed);
  ASSERT_TRUE(server_a.Advance(kId, Base()).ok());
  constexpr int kRounds = 15;
  std::atomic<int> accepted[2] = {0, 0};
  std::atomic<int> refused_clone1_after_clone0{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const int clone = t % 2;
      ClockStateChecker& server = t < 2 ? server_a : server_b;
      for (int i = 0; i < kRounds; ++i) {
        ClockRecord r = Base();
        r.clock += (clone == 0 ? 1000 : 1) + static_cast<uint64_t>(i);
        absl::Status st = server.Advance(kId, r);
        if (st.ok()) {
          accepted[clone]++;
        } else {
          EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
          EXPECT_THAT(std::string(st.message()), StartsWith("clock_went_backwards"));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const StoredClockRecord last = server_b.store().Load(kId).value().value();
  EXPECT_EQ(last.version, 1 + accepted[0] + accepted[1]);
  if (accepted[0] > 0) {
    EXPECT_GE(last.record.clock, Base().clock + 1000);
  }
}

TEST_F(PgClockStoreTest, DatabaseDownFailClosedOrOpenThenRecovers) {
  ClockStateChecker closed(NewStore(), StoreUnavailablePolicy::kFailClosed);
  ClockStateChecker open(NewStore(), StoreUnavailablePolicy::kFailOpen);
  ASSERT_TRUE(closed.Advance(kId, Base()).ok());  // both pools hold a live connection now
  ASSERT_TRUE(open.Advance(kId, Base()).ok());
  ASSERT_TRUE(pg_->Stop().ok());
  ClockRecord next = Base();
  next.clock += 50;
  bool stored = true;
  absl::Status st = closed.Advance(kId, next, &stored);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("on_store_unavailable = fail_closed"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("postgres"));
  EXPECT_THAT(std::string(st.message()), Not(HasSubstr(pg_->password())));
  EXPECT_FALSE(stored);
  // A second attempt: no pooled connection left, a new one is refused.
  st = closed.Advance(kId, next, &stored);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_THAT(std::string(st.message()), Not(HasSubstr(pg_->password())));
  EXPECT_TRUE(open.Advance(kId, next, &stored).ok());
  EXPECT_FALSE(stored);
  ASSERT_TRUE(pg_->Resume().ok());
  ASSERT_TRUE(closed.Advance(kId, next, &stored).ok());
  EXPECT_TRUE(stored);
  next.clock += 1;
  ASSERT_TRUE(open.Advance(kId, next, &stored).ok());
  EXPECT_TRUE(stored);
  // And the history check still holds after the outage.
  ClockRecord behind = Base();
  EXPECT_EQ(closed.Advance(kId, behind).code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(PgClockStoreTest, ConfigFromConninfoFileAndEnvNeverShowsPassword) {
  const std::string file = pg_->dir() + "/conninfo";
  std::ofstream(file) << pg_->conninfo() << "\n";
  auto from_file = NewClockStateChecker({"postgres", "", file, "", "fail_closed"});
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  ASSERT_TRUE((*from_file)->Advance(kId, Base()).ok());

  setenv("HWID_TEST_PG_CONNINFO", pg_->conninfo().c_str(), 1);
  auto from_env =
      NewClockStateChecker({"postgres", "", "", "HWID_TEST_PG_CONNINFO", "fail_closed"});
  ASSERT_TRUE(from_env.ok()) << from_env.status();
  ClockRecord next = Base();
  next.clock += 1;
  ASSERT_TRUE((*from_env)->Advance(kId, next).ok());

  // A wrong password: the database refuses, the message names the store, not the password.
  const std::string wrong = absl::StrCat("host=127.0.0.1 port=", pg_->port(),
                                         " dbname=hwid user=hwid password=not-the-pw-4711");
  setenv("HWID_TEST_PG_CONNINFO", wrong.c_str(), 1);
  auto bad = NewClockStateChecker({"postgres", "", "", "HWID_TEST_PG_CONNINFO", "fail_closed"});
  ASSERT_TRUE(bad.ok()) << bad.status();  // connections are lazy: Configure works while down
  absl::Status st = (*bad)->Advance(kId, next);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("password authentication failed"));
  EXPECT_THAT(std::string(st.message()), Not(HasSubstr("not-the-pw-4711")));
}

}  // namespace
}  // namespace hwid::attestation

// The clock-succession rules with crafted clock infos, and the file store (atomic records,
// compare-and-set under concurrency, corrupt files, unavailability and the two policies).
#include "attestor_plugin/attestation/clock_state.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hwid::attestation {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kId(64, 'a');

ClockRecord Base() {
  return {.ak_name = "000b" + std::string(64, '1'), .clock = 10'000'000, .reset_count = 7,
          .restart_count = 2, .safe = true, .firmware_version = 0x0002000100000000ull,
          .verified_at_ms = 1'780'000'000'000};
}

struct Row {
  const char* name;
  void (*mutate)(ClockRecord&);
  const char* refused_by;  // nullptr = accepted
};

// Every rule, accepted and refused, from TPM 2.0 Part 1's clock/resetCount/restartCount semantics.
const Row kRows[] = {
    {"same clock (two quotes within one ms)", [](ClockRecord&) {}, nullptr},
    {"clock advanced", [](ClockRecord& r) { r.clock += 5000; }, nullptr},
    // Real time: the records below share verified_at_ms unless a row moves it (elapsed 0, so
    // Clock may gain only kClockSlackMs).
    {"clock set forward beyond real time (TPM2_ClockSet)",
     [](ClockRecord& r) { r.clock += 3'600'000; }, "clock_ahead_of_real_time"},
    {"clock gained the server time elapsed",
     [](ClockRecord& r) {
       r.verified_at_ms += 3'600'000;
       r.clock += 3'600'000;
     },
     nullptr},
    {"clock gained exactly the tolerance (10 % + 120 s)",
     [](ClockRecord& r) {
       r.verified_at_ms += 3'600'000;
       r.clock += 3'600'000 + 360'000 + 120'000;
     },
     nullptr},
    {"clock gained 1 ms more than the tolerance",
     [](ClockRecord& r) {
       r.verified_at_ms += 3'600'000;
       r.clock += 3'600'000 + 360'000 + 120'001;
     },
     "clock_ahead_of_real_time"},
    {"paused VM: clock gained less than the time elapsed",
     [](ClockRecord& r) {
       r.verified_at_ms += 3'600'000;
       r.clock += 600'000;
     },
     nullptr},
    {"clock far ahead after a reset (ClockSet on another history)",
     [](ClockRecord& r) {
       r.reset_count += 1;
       r.restart_count = 0;
       r.clock += 86'400'000;
     },
     "clock_ahead_of_real_time"},
    {"clock behind, powered throughout", [](ClockRecord& r) { r.clock -= 1; },
     "clock_went_backwards"},
    {"clock behind, powered throughout, safe=NO", [](ClockRecord& r) {
       r.clock -= 1000;
       r.safe = false;
     },
     "clock_went_backwards"},
    {"TPM Reset after orderly shutdown: counters restart",
     [](ClockRecord& r) {
       r.reset_count += 1;
       r.restart_count = 0;
       r.clock += 10;
     },
     nullptr},
    {"TPM Reset after power loss: clock behind with safe=NO",
     [](ClockRecord& r) {
       r.reset_count += 1;
       r.restart_count = 0;
       r.clock -= 60'000;
       r.safe = false;
     },
     nullptr},
    {"TPM Reset: clock behind but safe=YES",
     [](ClockRecord& r) {
       r.reset_count += 1;
       r.clock -= 60'000;
     },
     "clock_rollback_not_signalled"},
    {"TPM Reset: clock far behind with safe=NO",
     [](ClockRecord& r) {
       r.reset_count += 1;
       r.clock -= kMaxUnsafeClockRollbackMs + 1;
       r.safe = false;
     },
     "clock_rollback_too_large"},
    {"resetCount decreased", [](ClockRecord& r) { r.reset_count -= 1; r.clock += 10; },
     "reset_count_decreased"},
    {"TPM2_Clear: counters and clock to 0",
     [](ClockRecord& r) {
       r.reset_count = 0;
       r.restart_count = 0;
       r.clock = 0;
     },
     "reset_count_decreased"},
    {"TPM Restart (Startup(STATE))", [](ClockRecord& r) { r.restart_count += 1; r.clock += 1; },
     nullptr},
    {"TPM Restart with clock behind and safe=YES",
     [](ClockRecord& r) {
       r.restart_count += 1;
       r.clock -= 5;
     },
     "clock_rollback_not_signalled"},
    {"restartCount decreased", [](ClockRecord& r) { r.restart_count -= 1; r.clock += 1; },
     "restart_count_decreased"},
    {"firmware changed without a reset", [](ClockRecord& r) { r.firmware_version += 1; },
     "firmware_changed_without_reset"},
    {"firmware upgraded with a reset",
     [](ClockRecord& r) {
       r.reset_count += 1;
       r.restart_count = 0;
       r.firmware_version += 0x100000000ull;
     },
     nullptr},
    {"firmware downgraded with a reset",
     [](ClockRecord& r) {
       r.reset_count += 1;
       r.restart_count = 0;
       r.firmware_version -= 1;
     },
     "firmware_downgraded"},
    // Counters of an AK outside the endorsement hierarchy carry a per-AK offset: compared as
    // wrapped differences, so an offset near 2^32 is still "one more reset".
    {"obfuscated resetCount wraps around",
     [](ClockRecord& r) {
       r.reset_count = 0;  // recorded 0xffffffff below
       r.restart_count = 0;
       r.clock += 1;
     },
     nullptr},
    // Another AK: counters are incomparable; only Clock is checked.
    {"another AK, counters unrelated, clock ahead",
     [](ClockRecord& r) {
       r.ak_name = "000b" + std::string(64, '2');
       r.reset_count = 12345;
       r.restart_count = 0;
       r.firmware_version = 1;
       r.clock += 1;
     },
     nullptr},
    {"another AK, clock behind with safe=YES",
     [](ClockRecord& r) {
       r.ak_name = "000b" + std::string(64, '2');
       r.clock -= 1;
     },
     "clock_rollback_not_signalled"},
};

TEST(ClockSuccessionTest, Rules) {
  for (const Row& row : kRows) {
    SCOPED_TRACE(row.name);
    ClockRecord prev = Base();
    if (std::string(row.name) == "obfuscated resetCount wraps around") {
      prev.reset_count = 0xffffffffu;
    }
    ClockRecord next = prev;
    row.mutate(next);
    absl::Status st = CheckClockSuccession(kId, prev, next);
    if (row.refused_by == nullptr) {
      EXPECT_TRUE(st.ok()) << st;
    } else {
      EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
      EXPECT_THAT(std::string(st.message()), StartsWith(row.refused_by));
      EXPECT_THAT(std::string(st.message()), HasSubstr(kId));
    }
  }
}

// Two copies of one TPM state taking turns, their Clocks 10 minutes apart (one VM started 10
// minutes after the other from the same snapshot), one attestation per hour: the copy behind
// passes once, as a paused VM would; the copy ahead then gained more than real time.
TEST(ClockSuccessionTest, ClonesTakingTurnsAreCaught) {
  const ClockRecord a1 = Base();
  ClockRecord b = a1;
  b.verified_at_ms += 3'600'000;
  b.clock += 3'600'000 - 600'000;
  ASSERT_TRUE(CheckClockSuccession(kId, a1, b).ok());
  ClockRecord a2 = a1;
  a2.verified_at_ms += 7'200'000;
  a2.clock += 7'200'000;
  absl::Status st = CheckClockSuccession(kId, b, a2);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(st.message()), StartsWith("clock_ahead_of_real_time"));
}

class TempDir {
 public:
  TempDir() {
    std::string t = std::filesystem::temp_directory_path() / "hwid-clock-XXXXXX";
    path_ = mkdtemp(t.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ClockRecordFileTest, RoundTripsAndRefusesEveryMalformedShape) {
  StoredClockRecord rec;
  rec.version = 7;
  rec.record.ak_name = "000b" + std::string(64, 'c');
  rec.record.clock = 987654321;
  rec.record.reset_count = 4;
  rec.record.restart_count = 2;
  rec.record.safe = false;
  rec.record.firmware_version = 0x2010001;
  rec.record.verified_at_ms = 1764800000000;
  const std::string text = EncodeClockRecordFile(rec);
  absl::StatusOr<StoredClockRecord> back = DecodeClockRecordFile("f", text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->version, 7);
  EXPECT_EQ(back->record, rec.record);
  auto refused = [](const std::string& t) {
    absl::StatusOr<StoredClockRecord> r = DecodeClockRecordFile("/x/f", t);
    return !r.ok() && r.status().code() == absl::StatusCode::kDataLoss &&
           absl::StrContains(r.status().message(), "/x/f");
  };
  EXPECT_TRUE(refused(""));
  EXPECT_TRUE(refused(text.substr(0, text.size() - 1)));  // no final newline
  EXPECT_TRUE(refused(text + "extra=1\n"));
  EXPECT_TRUE(refused("X" + text));  // wrong header
  std::string dup = text;
  dup.replace(dup.find("clock="), 6, "safe=");  // a key twice, one missing
  EXPECT_TRUE(refused(dup));
  std::string bad_safe = text;
  bad_safe.replace(bad_safe.find("safe=0"), 6, "safe=2");
  EXPECT_TRUE(refused(bad_safe));
  std::string bad_hex = text;
  bad_hex.replace(bad_hex.find("ak_name=") + 8, 2, "zz");
  EXPECT_TRUE(refused(bad_hex));
  std::string negative = text;
  negative.replace(negative.find("verified_at_ms=") + 15, 1, "-");
  EXPECT_TRUE(refused(negative));
}

TEST(FileClockStoreTest, LoadMissingThenCasAndVersions) {
  TempDir dir;
  auto store = NewFileClockStore(dir.path() + "/state");
  ASSERT_TRUE(store.ok()) << store.status();
  auto none = (*store)->Load(kId);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  ClockRecord r = Base();
  EXPECT_EQ((*store)->CompareAndSet(kId, 1, r).value(), false);  // no record at version 1
  EXPECT_EQ((*store)->CompareAndSet(kId, 0, r).value(), true);
  EXPECT_EQ((*store)->CompareAndSet(kId, 0, r).value(), false);  // already inserted
  auto got = (*store)->Load(kId);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->version, 1);
  EXPECT_EQ((*got)->record, r);
  r.clock += 1;
  EXPECT_EQ((*store)->CompareAndSet(kId, 1, r).value(), true);
  EXPECT_EQ((*store)->Load(kId).value()->version, 2);
  EXPECT_EQ((*store)->Load(kId).value()->record, r);
  struct stat st;
  ASSERT_EQ(stat((dir.path() + "/state").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST(FileClockStoreTest, RefusesNonHexIdentity) {
  TempDir dir;
  auto store = NewFileClockStore(dir.path());
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Load("../etc/passwd").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->CompareAndSet("../x", 0, Base()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FileClockStoreTest, CorruptRecordFailsClosedEvenWhenFailOpen) {
  TempDir dir;
  auto store = NewFileClockStore(dir.path());
  ASSERT_TRUE(store.ok());
  std::ofstream(dir.path() + "/" + kId + ".clock") << "hwid_tpm clock state v1\nversion=1\n";
  ClockStateChecker checker(std::move(*store), StoreUnavailablePolicy::kFailOpen);
  absl::Status st = checker.Advance(kId, Base());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("corrupt"));
}

// Crash safety: a record is replaced by rename, so a leftover temporary file (a crash between
// write and rename) never hides or damages the committed record.
TEST(FileClockStoreTest, LeftoverTemporaryFileIsIgnored) {
  TempDir dir;
  auto store = NewFileClockStore(dir.path());
  ASSERT_TRUE(store.ok());
  ClockRecord r = Base();
  ASSERT_TRUE((*store)->CompareAndSet(kId, 0, r).value());
  std::ofstream(dir.path() + "/" + kId + ".clock.tmp.12345") << "half a rec";
  auto got = (*store)->Load(kId);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->record, r);
}

TEST(ClockStateCheckerTest, AdvanceRefusesDivergingHistoryAndKeepsRecord) {
  TempDir dir;
  ClockStateChecker checker(NewFileClockStore(dir.path()).value(),
                            StoreUnavailablePolicy::kFailClosed);
  ClockRecord a = Base();
  bool stored = false;
  ASSERT_TRUE(checker.Advance(kId, a, &stored).ok());
  EXPECT_TRUE(stored);
  ClockRecord behind = a;
  behind.clock -= 100;
  absl::Status st = checker.Advance(kId, behind, &stored);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(stored);
  EXPECT_EQ(checker.store().Load(kId).value()->record, a);  // the refused one is not recorded
}

// Two clones attesting concurrently from diverging histories (same resetCount, different clocks
// that each follow the recorded value): whatever the interleaving, exactly one history is
// recorded, and every attempt of the other one after that is refused.
TEST(ClockStateCheckerTest, ConcurrentDivergingHistoriesOnlyOneWins) {
  TempDir dir;
  ClockStateChecker checker(NewFileClockStore(dir.path()).value(),
                            StoreUnavailablePolicy::kFailClosed);
  ASSERT_TRUE(checker.Advance(kId, Base()).ok());
  constexpr int kThreads = 8;
  constexpr int kRounds = 20;
  std::atomic<int> accepted[2] = {0, 0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const int clone = t % 2;
      for (int i = 0; i < kRounds; ++i) {
        ClockRecord r = Base();
        // Clone 0 runs at clocks base+1000.., clone 1 at base+1..: each history is monotonic on
        // its own, the two interleave into a backwards step.
        r.clock += (clone == 0 ? 1000 : 1) + static_cast<uint64_t>(i);
        if (checker.Advance(kId, r).ok()) {
          accepted[clone]++;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const ClockRecord last = checker.store().Load(kId).value()->record;
  // Every accepted step followed the record: the final clock is the maximum either clone reached.
  EXPECT_GT(accepted[0] + accepted[1], 0);
  // Clone 1's highest clock (base+1+19) is below clone 0's lowest (base+1000): once clone 0 won
  // any step, clone 1 can never be accepted again, so the record ends in clone 0's range
  // whenever clone 0 was accepted at all.
  if (accepted[0] > 0) {
    EXPECT_GE(last.clock, Base().clock + 1000);
  }
  EXPECT_EQ(checker.store().Load(kId).value()->version, 1 + accepted[0] + accepted[1]);
}

TEST(ClockStateCheckerTest, StoreUnavailableFailClosedAndFailOpenThenRecovers) {
  TempDir dir;
  const std::string state = dir.path() + "/state";
  for (StoreUnavailablePolicy policy :
       {StoreUnavailablePolicy::kFailClosed, StoreUnavailablePolicy::kFailOpen}) {
    std::filesystem::remove_all(state);
    ClockStateChecker checker(NewFileClockStore(state).value(), policy);
    // The directory disappears and a file takes its place: the store cannot be read or written.
    std::filesystem::remove_all(state);
    std::ofstream(state) << "not a directory";
    bool stored = true;
    absl::Status st = checker.Advance(kId, Base(), &stored);
    EXPECT_FALSE(stored);
    if (policy == StoreUnavailablePolicy::kFailClosed) {
      EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
      EXPECT_THAT(std::string(st.message()), HasSubstr("on_store_unavailable = fail_closed"));
      EXPECT_THAT(std::string(st.message()), HasSubstr(state));
    } else {
      EXPECT_TRUE(st.ok()) << st;
    }
    // The store comes back: the same checker records again.
    std::filesystem::remove(state);
    std::filesystem::create_directory(state);
    ASSERT_TRUE(checker.Advance(kId, Base(), &stored).ok());
    EXPECT_TRUE(stored);
  }
}

TEST(ClockStateConfigTest, Options) {
  TempDir dir;
  struct Case {
    ClockStateOptions o;
    const char* error;  // substring, nullptr = OK
  };
  setenv("HWID_TEST_EMPTY_CONNINFO", "", 1);
  setenv("HWID_TEST_BAD_CONNINFO", "host=x password='secret-pw", 1);
  const Case cases[] = {
      {{"none", "", "", "", "fail_closed"}, nullptr},
      {{"file", dir.path() + "/s", "", "", "fail_open"}, nullptr},
      {{"file", "", "", "", "fail_closed"}, "clock_state_path"},
      {{"none", dir.path(), "", "", "fail_closed"}, "clock_state"},
      {{"file", dir.path(), "", "", "maybe"}, "on_store_unavailable"},
      {{"disk", "", "", "", "fail_closed"}, "is not none, file or postgres"},
      {{"postgres", "", "", "", "fail_closed"}, "needs exactly one"},
      {{"postgres", "", dir.path() + "/missing", "", "fail_closed"}, "clock_state_conninfo_file"},
      {{"postgres", "", "", "HWID_TEST_UNSET_VARIABLE", "fail_closed"}, "is not set"},
      {{"postgres", "", "", "HWID_TEST_EMPTY_CONNINFO", "fail_closed"}, "is not set or empty"},
      {{"postgres", "", "", "HWID_TEST_BAD_CONNINFO", "fail_closed"}, "cannot parse"},
      {{"postgres", dir.path(), "", "HWID_TEST_BAD_CONNINFO", "fail_closed"}, "only for"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.o.kind, " ", c.o.path, " ", c.o.conninfo_env));
    auto checker = NewClockStateChecker(c.o);
    if (c.error == nullptr) {
      EXPECT_TRUE(checker.ok()) << checker.status();
      EXPECT_EQ(*checker == nullptr, c.o.kind == "none");
    } else {
      ASSERT_FALSE(checker.ok());
      EXPECT_EQ(checker.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(std::string(checker.status().message()), HasSubstr(c.error));
      EXPECT_THAT(std::string(checker.status().message()),
                  ::testing::Not(HasSubstr("secret-pw")));
    }
  }
}

}  // namespace
}  // namespace hwid::attestation

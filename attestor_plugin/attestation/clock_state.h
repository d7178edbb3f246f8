// Memory across attestations: per agent identity, the last TPMS_CLOCK_INFO and firmwareVersion the
// server verified in a signed quote, and the rules a later quote must follow (docs/threat-model.md,
// "State across attestations"). Software only, no TPM code.
//
// The TPM 2.0 facts the rules rest on (TPM 2.0 Library Part 1 "Timing components", Part 3 18.1
// and TPM2_Clear / TPM2_ClockSet):
//   - Clock counts milliseconds while the TPM is powered; it never runs backwards while powered
//     (TPM2_ClockSet may only move it forward). It is saved to NV periodically and at an orderly
//     TPM2_Shutdown. After a non-orderly power loss it restarts from the last NV copy, which may
//     be behind a value already reported, and the TPM says so with safe = NO.
//   - resetCount increments at every TPM Reset (Startup(CLEAR)); restartCount increments at every
//     TPM Restart/Resume (Startup(STATE) after Shutdown(STATE)) and returns to 0 at a TPM Reset.
//     Neither decreases except by TPM2_Clear (which also sets Clock to 0: a new history).
//   - firmwareVersion changes only by a field upgrade, which completes with a TPM Reset.
//   - For a signing key outside the endorsement and platform hierarchies (hwid's AK lives under
//     the SRK), the TPM adds a per-key constant (derived from the storage hierarchy proof and the
//     key's name) to resetCount, restartCount and firmwareVersion. Their absolute values are then
//     meaningless, but differences between two quotes by the SAME AK are exact (modulo 2^32 or
//     2^64). So counters are compared only between quotes of one AK, as wrapped differences, and
//     no counter is emitted as a selector. Clock is never obfuscated.
#ifndef HWID_ATTESTOR_PLUGIN_ATTESTATION_CLOCK_STATE_H_
#define HWID_ATTESTOR_PLUGIN_ATTESTATION_CLOCK_STATE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <tss2/tss2_tpm2_types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hwid::attestation {

// ClockRecord is what one verified quote says about its TPM's history.
struct ClockRecord {
  std::string ak_name;         // hex of the quoting AK's TPM name (counters compare per AK)
  uint64_t clock = 0;          // TPMS_CLOCK_INFO.clock, ms
  uint32_t reset_count = 0;    // TPMS_CLOCK_INFO.resetCount (as quoted; maybe obfuscated)
  uint32_t restart_count = 0;  // TPMS_CLOCK_INFO.restartCount (as quoted; maybe obfuscated)
  bool safe = true;            // TPMS_CLOCK_INFO.safe
  uint64_t firmware_version = 0;  // TPMS_ATTEST.firmwareVersion (as quoted; maybe obfuscated)
  // The server's wall clock (Unix ms) when it verified the quote; 0 = unknown. Set by
  // ClockStateChecker::Advance. Servers sharing a store must keep their clocks in sync (NTP).
  int64_t verified_at_ms = 0;
  friend bool operator==(const ClockRecord&, const ClockRecord&) = default;
};

// ClockRecordFromQuote takes the clock info and firmware version of a VERIFIED quote
// (wire::VerifyQuote's attest) and the name of the AK that signed it.
absl::StatusOr<ClockRecord> ClockRecordFromQuote(const TPMT_PUBLIC& ak, const TPMS_ATTEST& attest);

// kMaxUnsafeClockRollbackMs bounds how far Clock may fall behind a reported value after a
// non-orderly power loss: the TPM saves Clock to NV at least every 2^22 ms (~70 min, the
// reference implementation's NV_CLOCK_UPDATE_INTERVAL), so a larger gap is not a power loss.
inline constexpr uint64_t kMaxUnsafeClockRollbackMs = uint64_t{1} << 22;

// A TPM's Clock never advances faster than real time (only TPM2_ClockSet moves it ahead). Between
// two verifications it may gain at most the server time elapsed, plus kClockRateTolerancePercent
// of it (oscillator drift, TPM2_ClockRateAdjust) and kClockSlackMs (quote-to-verification latency,
// clock differences between servers).
inline constexpr int64_t kClockRateTolerancePercent = 10;
inline constexpr int64_t kClockSlackMs = 120'000;

// CheckClockSuccession decides whether `next` can follow `prev` on one TPM. OK when it can;
// PERMISSION_DENIED whose message starts with the rule's name otherwise:
//   reset_count_decreased      same AK, resetCount went back (an older copy of the TPM state, or
//                              TPM2_Clear: a new history the operator must accept by deleting
//                              the record);
//   restart_count_decreased    same AK and resetCount, restartCount went back;
//   clock_went_backwards       same AK, resetCount and restartCount (the TPM was powered without
//                              interruption), yet Clock is lower: two diverging histories, i.e.
//                              a cloned TPM state;
//   clock_rollback_not_signalled  after a reset/restart or with another AK, Clock is lower with
//                              safe = YES (a real TPM sets safe = NO when Clock lost time);
//   clock_rollback_too_large   Clock is lower with safe = NO but by more than
//                              kMaxUnsafeClockRollbackMs;
//   firmware_changed_without_reset  same AK and resetCount, another firmwareVersion;
//   firmware_downgraded        same AK, firmwareVersion went back;
//   clock_ahead_of_real_time   Clock advanced more than the server's time elapsed since `prev`
//                              (plus tolerance): TPM2_ClockSet, or two copies of one TPM state
//                              taking turns (the one behind passes as a paused VM, the one ahead
//                              then gained more than real time). Checked only when both records
//                              carry verified_at_ms.
// `identity` only labels the message.
absl::Status CheckClockSuccession(const std::string& identity, const ClockRecord& prev,
                                  const ClockRecord& next);

// StoredClockRecord is a record with its store version (compare-and-set token, >= 1).
struct StoredClockRecord {
  ClockRecord record;
  int64_t version = 0;
};

// EncodeClockRecordFile / DecodeClockRecordFile: the file store's record format (one text file
// per identity: a header line, then key=value lines). Decode is strict: exactly the expected
// lines and keys, each once and in range; anything else is DATA_LOSS naming `path` (for the
// message only). Exposed for the tests and the fuzzer.
std::string EncodeClockRecordFile(const StoredClockRecord& s);
absl::StatusOr<StoredClockRecord> DecodeClockRecordFile(const std::string& path,
                                                        absl::string_view text);

// ClockStateStore keeps one record per identity. Implementations are thread-safe.
// Errors: UNAVAILABLE when the store cannot be reached (the checker applies
// on_store_unavailable), other codes for corrupt data (always fail closed).
class ClockStateStore {
 public:
  virtual ~ClockStateStore() = default;
  // Load returns the record of `identity`, or nullopt when there is none.
  virtual absl::StatusOr<std::optional<StoredClockRecord>> Load(const std::string& identity) = 0;
  // CompareAndSet stores `record` if the current version of `identity` is `expected_version`
  // (0 = no record yet), atomically against every other writer (other threads, processes or
  // servers); returns false, changing nothing, when another writer came first.
  virtual absl::StatusOr<bool> CompareAndSet(const std::string& identity,
                                             int64_t expected_version,
                                             const ClockRecord& record) = 0;
  // Describe names the store for messages (never a password).
  virtual std::string Describe() const = 0;
};

// FileClockStore: one server. One file per identity in `dir` (0700, created if missing),
// "<identity>.clock", written with WriteFile (atomic rename + fsync), guarded by flock on
// "<identity>.lock" so that several processes on the host stay consistent.
// FAILED_PRECONDITION when `dir` cannot be created or is not a directory.
absl::StatusOr<std::unique_ptr<ClockStateStore>> NewFileClockStore(const std::string& dir);

// PostgresClockStore: several servers sharing one PostgreSQL database. `conninfo` is a libpq
// connection string (key=value or URI); it is never logged or put in a message. The table
// hwid_tpm_clock_state is created when missing. Connections are made lazily (the plugin
// configures even when the database is down) and re-made after a failure.
absl::StatusOr<std::unique_ptr<ClockStateStore>> NewPostgresClockStore(std::string conninfo);

enum class StoreUnavailablePolicy { kFailClosed, kFailOpen };

// ClockStateChecker applies CheckClockSuccession against a store, with compare-and-set retries.
class ClockStateChecker {
 public:
  ClockStateChecker(std::unique_ptr<ClockStateStore> store, StoreUnavailablePolicy policy)
      : store_(std::move(store)), policy_(policy) {}

  // Advance loads the record of `identity`, checks that `next` can follow it and stores `next`
  // with compare-and-set; when another server or thread stored a record in between, it starts
  // over against that record (bounded), so of two diverging histories verified concurrently at
  // most one is accepted. PERMISSION_DENIED from CheckClockSuccession; when the store is
  // unavailable: UNAVAILABLE naming the store and on_store_unavailable (fail_closed), or OK with
  // `*stored` = false (fail_open). `stored` may be null.
  absl::Status Advance(const std::string& identity, const ClockRecord& next,
                       bool* stored = nullptr);

  ClockStateStore& store() { return *store_; }
  StoreUnavailablePolicy policy() const { return policy_; }

 private:
  std::unique_ptr<ClockStateStore> store_;
  StoreUnavailablePolicy policy_;
};

// ClockStateOptions are the plugin_data keys of the clock state (server.h ServerConfigInput).
struct ClockStateOptions {
  std::string kind;                  // clock_state: "none", "file" or "postgres"
  std::string path;                  // clock_state_path (file)
  std::string conninfo_file;         // clock_state_conninfo_file (postgres)
  std::string conninfo_env;          // clock_state_conninfo_env (postgres)
  std::string on_store_unavailable;  // "fail_closed" or "fail_open"
};

// NewClockStateChecker validates the options and builds the store; null for "none". Fails with
// FAILED_PRECONDITION naming the key: unknown kind or policy, a path for the wrong kind, a file
// store directory that cannot be created, neither or both conninfo sources, an unreadable
// conninfo file, an unset variable, or a connection string libpq cannot parse (the string itself
// is never quoted).
absl::StatusOr<std::shared_ptr<ClockStateChecker>> NewClockStateChecker(
    const ClockStateOptions& options);

}  // namespace hwid::attestation

#endif  // HWID_ATTESTOR_PLUGIN_ATTESTATION_CLOCK_STATE_H_

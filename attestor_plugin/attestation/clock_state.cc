#include "attestor_plugin/attestation/clock_state.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/bytes.h"
#include "common/status_macros.h"
#include "tpm/wire/crypto.h"

namespace hwid::attestation {
namespace {

constexpr int kMaxCasAttempts = 8;
constexpr char kFileMagic[] = "hwid_tpm clock state v1";

// Signed wrapped differences: exact for counters obfuscated by a per-AK constant (clock_state.h).
int64_t Diff32(uint32_t next, uint32_t prev) { return static_cast<int32_t>(next - prev); }
bool Lower64(uint64_t next, uint64_t prev) { return static_cast<int64_t>(next - prev) < 0; }

absl::Status Refuse(absl::string_view rule, const std::string& identity,
                    absl::string_view detail) {
  return absl::PermissionDeniedError(absl::StrCat(
      rule, ": TPM history of ", identity, ": ", detail,
      ". If the TPM was cleared (TPM2_Clear) or its state deliberately restored, delete this "
      "identity's clock record to accept the new history (docs/plugin-protocol.md, section "
      "Clock state)"));
}

std::string Describe(const ClockRecord& r) {
  return absl::StrCat("clock=", r.clock, " resetCount=", r.reset_count,
                      " restartCount=", r.restart_count, " safe=", r.safe ? "yes" : "no",
                      " firmwareVersion=0x", absl::Hex(r.firmware_version));
}

// ValidIdentity: identities are EK public key hashes (hex); they name files, so nothing else.
absl::Status CheckIdentity(const std::string& identity) {
  if (identity.empty() || identity.size() > 128 ||
      !std::all_of(identity.begin(), identity.end(),
                   [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); })) {
    return absl::InvalidArgumentError(
        "clock state: the identity must be a lower-case hex EK public key hash");
  }
  return absl::OkStatus();
}

}  // namespace

std::string EncodeClockRecordFile(const StoredClockRecord& s) {
  const ClockRecord& r = s.record;
  return absl::StrCat(kFileMagic, "\nversion=", s.version, "\nak_name=", r.ak_name,
                      "\nclock=", r.clock, "\nreset_count=", r.reset_count,
                      "\nrestart_count=", r.restart_count, "\nsafe=", r.safe ? 1 : 0,
                      "\nfirmware_version=", r.firmware_version,
                      "\nverified_at_ms=", r.verified_at_ms, "\n");
}

absl::StatusOr<StoredClockRecord> DecodeClockRecordFile(const std::string& path,
                                                        absl::string_view text) {
  auto corrupt = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat("clock state file ", path, " is corrupt (", what,
                                            "); move it away to start this identity afresh"));
  };
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (lines.size() != 10 || lines[0] != kFileMagic || !lines[9].empty()) {
    return corrupt("not 9 lines under the header");
  }
  std::map<absl::string_view, absl::string_view> kv;
  for (size_t i = 1; i < 9; ++i) {
    std::pair<absl::string_view, absl::string_view> p = absl::StrSplit(lines[i], '=');
    if (!kv.emplace(p.first, p.second).second) {
      return corrupt(absl::StrCat("key ", p.first, " twice"));
    }
  }
  StoredClockRecord s;
  ClockRecord& r = s.record;
  uint32_t safe = 2;
  if (!absl::SimpleAtoi(kv["version"], &s.version) || s.version < 1 ||
      !absl::SimpleAtoi(kv["clock"], &r.clock) ||
      !absl::SimpleAtoi(kv["reset_count"], &r.reset_count) ||
      !absl::SimpleAtoi(kv["restart_count"], &r.restart_count) ||
      !absl::SimpleAtoi(kv["safe"], &safe) || safe > 1 ||
      !absl::SimpleAtoi(kv["firmware_version"], &r.firmware_version) ||
      !absl::SimpleAtoi(kv["verified_at_ms"], &r.verified_at_ms) || r.verified_at_ms < 0 ||
      !HexDecode(kv["ak_name"]).ok()) {
    return corrupt("a field is missing or out of range");
  }
  r.safe = safe == 1;
  r.ak_name = std::string(kv["ak_name"]);
  return s;
}

namespace {

class FileClockStore final : public ClockStateStore {
 public:
  explicit FileClockStore(std::string dir) : dir_(std::move(dir)) {}

  absl::StatusOr<std::optional<StoredClockRecord>> Load(const std::string& identity) override {
    RETURN_IF_ERROR(CheckIdentity(identity));
    const std::string path = RecordPath(identity);
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) {
        return std::optional<StoredClockRecord>();
      }
      return absl::UnavailableError(
          absl::StrCat("clock state: stat ", path, ": ", std::strerror(errno)));
    }
    absl::StatusOr<Bytes> data = ReadFile(path, 4096);
    if (!data.ok()) {
      return absl::UnavailableError(absl::StrCat("clock state: ", data.status().message()));
    }
    ASSIGN_OR_RETURN(StoredClockRecord s,
                     DecodeClockRecordFile(path, absl::string_view(
                                            reinterpret_cast<const char*>(data->data()),
                                            data->size())));
    return std::optional<StoredClockRecord>(std::move(s));
  }

  absl::StatusOr<bool> CompareAndSet(const std::string& identity, int64_t expected_version,
                                     const ClockRecord& record) override {
    RETURN_IF_ERROR(CheckIdentity(identity));
    const std::string lock_path = absl::StrCat(dir_, "/", identity, ".lock");
    const int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::UnavailableError(
          absl::StrCat("clock state: open ", lock_path, ": ", std::strerror(errno)));
    }
    struct Closer {
      int fd;
      ~Closer() { close(fd); }  // also releases the flock
    } closer{fd};
    while (flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
        return absl::UnavailableError(
            absl::StrCat("clock state: flock ", lock_path, ": ", std::strerror(errno)));
      }
    }
    ASSIGN_OR_RETURN(std::optional<StoredClockRecord> current, Load(identity));
    const int64_t have = current.has_value() ? current->version : 0;
    if (have != expected_version) {
      return false;
    }
    const std::string text = EncodeClockRecordFile({record, have + 1});
    absl::Status st = WriteFile(RecordPath(identity), AsSpan(absl::string_view(text)), 0600);
    if (!st.ok()) {
      return absl::UnavailableError(absl::StrCat("clock state: ", st.message()));
    }
    return true;
  }

  std::string Describe() const override { return absl::StrCat("file store ", dir_); }

 private:
  std::string RecordPath(const std::string& identity) const {
    return absl::StrCat(dir_, "/", identity, ".clock");
  }
  std::string dir_;
};

}  // namespace

absl::Status CheckClockSuccession(const std::string& identity, const ClockRecord& prev,
                                  const ClockRecord& next) {
  const std::string both =
      absl::StrCat("recorded ", Describe(prev), ", now ", Describe(next));
  if (prev.ak_name == next.ak_name) {
    const int64_t resets = Diff32(next.reset_count, prev.reset_count);
    if (resets < 0) {
      return Refuse("reset_count_decreased", identity,
                    absl::StrCat("resetCount went back by ", -resets,
                                 " (an older copy of the TPM state, or TPM2_Clear); ", both));
    }
    if (resets == 0) {
      const int64_t restarts = Diff32(next.restart_count, prev.restart_count);
      if (restarts < 0) {
        return Refuse("restart_count_decreased", identity,
                      absl::StrCat("restartCount went back by ", -restarts,
                                   " without a TPM Reset; ", both));
      }
      if (next.firmware_version != prev.firmware_version) {
        return Refuse("firmware_changed_without_reset", identity,
                      absl::StrCat("firmwareVersion changed without a TPM Reset; ", both));
      }
      if (restarts == 0 && next.clock < prev.clock) {
        return Refuse("clock_went_backwards", identity,
                      absl::StrCat("Clock is ", prev.clock - next.clock,
                                   " ms behind a value this TPM already reported, with no reset "
                                   "or restart in between: two diverging histories (a cloned "
                                   "TPM state); ",
                                   both));
      }
    }
    if (Lower64(next.firmware_version, prev.firmware_version)) {
      return Refuse("firmware_downgraded", identity,
                    absl::StrCat("firmwareVersion went back; ", both));
    }
  }
  if (next.clock > prev.clock && prev.verified_at_ms > 0 && next.verified_at_ms > 0) {
    const int64_t elapsed = std::max<int64_t>(0, next.verified_at_ms - prev.verified_at_ms);
    const uint64_t allowed = static_cast<uint64_t>(
        elapsed + elapsed / 100 * kClockRateTolerancePercent + kClockSlackMs);
    const uint64_t gained = next.clock - prev.clock;
    if (gained > allowed) {
      return Refuse("clock_ahead_of_real_time", identity,
                    absl::StrCat("Clock gained ", gained, " ms in ", elapsed,
                                 " ms of server time (at most ", allowed,
                                 " allowed): TPM2_ClockSet, or two copies of one TPM state "
                                 "attesting in turn; ",
                                 both));
    }
  }
  if (next.clock < prev.clock) {
    const uint64_t gap = prev.clock - next.clock;
    if (next.safe) {
      return Refuse("clock_rollback_not_signalled", identity,
                    absl::StrCat("Clock is ", gap,
                                 " ms behind a value this TPM already reported but safe = YES "
                                 "(a TPM that lost Clock time says safe = NO); ",
                                 both));
    }
    if (gap > kMaxUnsafeClockRollbackMs) {
      return Refuse("clock_rollback_too_large", identity,
                    absl::StrCat("Clock is ", gap, " ms behind a reported value, more than the ",
                                 kMaxUnsafeClockRollbackMs,
                                 " ms a power loss can cost (safe = NO); ", both));
    }
  }
  return absl::OkStatus();
}

absl::Status ClockStateChecker::Advance(const std::string& identity, const ClockRecord& record,
                                        bool* stored) {
  if (stored != nullptr) {
    *stored = false;
  }
  auto unavailable = [&](const absl::Status& st) -> absl::Status {
    if (st.code() == absl::StatusCode::kUnavailable &&
        policy_ == StoreUnavailablePolicy::kFailOpen) {
      return absl::OkStatus();
    }
    const char* policy =
        policy_ == StoreUnavailablePolicy::kFailOpen ? "fail_open" : "fail_closed";
    return absl::Status(st.code(), absl::StrCat("clock state (", store_->Describe(),
                                                ", on_store_unavailable = ", policy,
                                                "): ", st.message()));
  };
  ClockRecord next = record;
  if (next.verified_at_ms == 0) {
    next.verified_at_ms = absl::ToUnixMillis(absl::Now());
  }
  for (int attempt = 0; attempt < kMaxCasAttempts; ++attempt) {
    absl::StatusOr<std::optional<StoredClockRecord>> current = store_->Load(identity);
    if (!current.ok()) {
      return unavailable(current.status());
    }
    if (current->has_value()) {
      RETURN_IF_ERROR(CheckClockSuccession(identity, (*current)->record, next));
    }
    absl::StatusOr<bool> won =
        store_->CompareAndSet(identity, current->has_value() ? (*current)->version : 0, next);
    if (!won.ok()) {
      return unavailable(won.status());
    }
    if (*won) {
      if (stored != nullptr) {
        *stored = true;
      }
      return absl::OkStatus();
    }
  }
  return absl::AbortedError(absl::StrCat(
      "clock state: the record of ", identity, " changed under every one of ", kMaxCasAttempts,
      " compare-and-set attempts (many concurrent attestations of one TPM)"));
}

absl::StatusOr<ClockRecord> ClockRecordFromQuote(const TPMT_PUBLIC& ak,
                                                 const TPMS_ATTEST& attest) {
  ASSIGN_OR_RETURN(Bytes name, wire::ObjectName(ak));
  ClockRecord r;
  r.ak_name = HexEncode(name);
  r.clock = attest.clockInfo.clock;
  r.reset_count = attest.clockInfo.resetCount;
  r.restart_count = attest.clockInfo.restartCount;
  r.safe = attest.clockInfo.safe != 0;
  r.firmware_version = attest.firmwareVersion;
  return r;
}

absl::StatusOr<std::shared_ptr<ClockStateChecker>> NewClockStateChecker(
    const ClockStateOptions& o) {
  auto config_error = [](absl::string_view key, absl::string_view detail) {
    return absl::FailedPreconditionError(
        absl::StrCat("hwid_tpm server configuration: ", key, ": ", detail));
  };
  StoreUnavailablePolicy policy;
  if (o.on_store_unavailable == "fail_closed") {
    policy = StoreUnavailablePolicy::kFailClosed;
  } else if (o.on_store_unavailable == "fail_open") {
    policy = StoreUnavailablePolicy::kFailOpen;
  } else {
    return config_error("on_store_unavailable",
                        absl::StrCat("'", o.on_store_unavailable.substr(0, 40),
                                     "' is not fail_closed or fail_open"));
  }
  const bool has_conninfo = !o.conninfo_file.empty() || !o.conninfo_env.empty();
  if (o.kind == "none" || o.kind.empty()) {
    if (!o.path.empty() || has_conninfo) {
      return config_error("clock_state",
                          "clock_state_path / clock_state_conninfo_* are set but clock_state is "
                          "\"none\" (set clock_state = \"file\" or \"postgres\")");
    }
    return std::shared_ptr<ClockStateChecker>();
  }
  std::unique_ptr<ClockStateStore> store;
  if (o.kind == "file") {
    if (has_conninfo) {
      return config_error("clock_state_conninfo_file/env", "only for clock_state = \"postgres\"");
    }
    if (o.path.empty()) {
      return config_error("clock_state_path",
                          "clock_state = \"file\" needs a directory for the records");
    }
    absl::StatusOr<std::unique_ptr<ClockStateStore>> s = NewFileClockStore(o.path);
    if (!s.ok()) {
      return config_error("clock_state_path", s.status().message());
    }
    store = std::move(*s);
  } else if (o.kind == "postgres") {
    if (!o.path.empty()) {
      return config_error("clock_state_path", "only for clock_state = \"file\"");
    }
    if (o.conninfo_file.empty() == o.conninfo_env.empty()) {
      return config_error("clock_state_conninfo_file/env",
                          "clock_state = \"postgres\" needs exactly one of them (the "
                          "connection string, with its password, never goes in plugin_data)");
    }
    std::string conninfo;
    if (!o.conninfo_file.empty()) {
      absl::StatusOr<Bytes> data = ReadFile(o.conninfo_file, 64 * 1024);
      if (!data.ok()) {
        return config_error("clock_state_conninfo_file", data.status().message());
      }
      conninfo.assign(data->begin(), data->end());
      std::fill(data->begin(), data->end(), 0);
    } else {
      const char* v = std::getenv(o.conninfo_env.c_str());
      if (v == nullptr || *v == '\0') {
        return config_error("clock_state_conninfo_env",
                            absl::StrCat("environment variable ", o.conninfo_env.substr(0, 80),
                                         " is not set or empty"));
      }
      conninfo = v;
    }
    absl::StripAsciiWhitespace(&conninfo);
    absl::StatusOr<std::unique_ptr<ClockStateStore>> s = NewPostgresClockStore(std::move(conninfo));
    if (!s.ok()) {
      return config_error(o.conninfo_file.empty() ? "clock_state_conninfo_env"
                                                  : "clock_state_conninfo_file",
                          s.status().message());
    }
    store = std::move(*s);
  } else {
    return config_error("clock_state", absl::StrCat("'", o.kind.substr(0, 40),
                                                    "' is not none, file or postgres"));
  }
  return std::make_shared<ClockStateChecker>(std::move(store), policy);
}

absl::StatusOr<std::unique_ptr<ClockStateStore>> NewFileClockStore(const std::string& dir) {
  if (dir.empty()) {
    return absl::FailedPreconditionError("clock state: the file store needs a directory");
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("clock state: cannot create directory ", dir, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("clock state: ", dir, " is not a directory"));
  }
  return std::unique_ptr<ClockStateStore>(new FileClockStore(dir));
}

}  // namespace hwid::attestation

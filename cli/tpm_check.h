// `hwid tpm check`: one qualification report for a TPM (identity, EK certificates against the TCG
// EK Credential Profile and a trust bundle, key hygiene, capabilities, the hwid_tpm attestation
// flow exactly as the plugins run it, and command timings), as a table for people and as JSON with
// a stable schema (docs/tpm-check.md, docs/tpm-check.schema.json) for pipelines.
#ifndef HWID_CLI_TPM_CHECK_H_
#define HWID_CLI_TPM_CHECK_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace hwid::cli {

// kTpmCheckSchema names the JSON layout; it changes only when a field changes meaning or goes.
inline constexpr char kTpmCheckSchema[] = "hwid.tpm-check/v1";

enum class CheckResult { kPass, kWarn, kFail, kSkip };
const char* CheckResultName(CheckResult r);  // "pass", "warn", "fail", "skip"

// CheckItem is one line of the report. `id` is stable across releases (docs/tpm-check.md lists
// every id); `action` says what to do and is empty on pass and skip.
struct CheckItem {
  std::string id;
  std::string group;  // identity, ekcert, keys, capabilities, attestation, performance
  CheckResult result = CheckResult::kPass;
  std::string detail;
  std::string action;
  std::map<std::string, double> metrics;  // numbers for machines (ms, counts)
};

struct TpmCheckOptions {
  std::string tcti;                    // "" = $HWID_TCTI or device:/dev/tpmrm0
  std::optional<std::string> ca_path;  // trust bundle: a PEM/DER file or a directory
  std::string pcrs = "sha256:0,1,2,3,4,5,6,7";
  bool quick = false;                  // skip the performance group
  uint32_t ak_handle = 0x81000100;     // the hwid_tpm agent's default AK handle
  int perf_runs = 5;
};

// TpmFacts: the TPM's identity and clock as read at the start of the run (JSON "tpm").
struct TpmFacts {
  bool reachable = false;
  std::string manufacturer;
  uint32_t manufacturer_id = 0;
  std::string vendor;
  std::string firmware;
  std::string spec;
  uint64_t clock_ms = 0;
  uint32_t reset_count = 0;
  uint32_t restart_count = 0;
  bool safe = false;
};

struct TpmCheckReport {
  std::string tcti;
  std::string time;  // RFC 3339, UTC
  std::string ca_path;
  std::string pcrs;
  bool quick = false;
  TpmFacts tpm;
  std::vector<CheckItem> checks;

  size_t Count(CheckResult r) const;
  // ExitCode: 0 when no check failed, 1 otherwise.
  int ExitCode() const { return Count(CheckResult::kFail) == 0 ? 0 : 1; }
};

// RunTpmCheck runs every check and never stops at the first failure: a check that cannot run
// because an earlier one failed is reported as skip with the reason. An unreachable TPM is one
// failed check (identity.connect), not an error.
TpmCheckReport RunTpmCheck(const TpmCheckOptions& options);

// FormatCheckTable renders the report for a terminal: one line per check (id, result, detail)
// and, for warnings and failures, an indented "fix:" line.
std::string FormatCheckTable(const TpmCheckReport& report);

// CheckReportJson renders the report as JSON (schema kTpmCheckSchema), pretty-printed.
std::string CheckReportJson(const TpmCheckReport& report);

}  // namespace hwid::cli

#endif  // HWID_CLI_TPM_CHECK_H_

// Cloned TPM states for tests: two swtpms serving copies of one TPM state, as two VMs started from
// one snapshot, with tpm2-tools driving the TPM directly.
#ifndef HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_CLONE_TESTING_H_
#define HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_CLONE_TESTING_H_

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tests/testing/run_shell.h"
#include "tests/testing/swtpm.h"

namespace hwid::attestation::testing {

// Tpm2Tool runs `args` (a tpm2-tools command line) against `tpm`; INTERNAL with its output when
// it fails, else its output.
inline absl::StatusOr<std::string> Tpm2Tool(const ::hwid::testing::Swtpm& tpm,
                                            const std::string& args) {
  ::hwid::testing::ShellResult r = ::hwid::testing::RunShell(
      absl::StrCat(args, " -T 'swtpm:host=127.0.0.1,port=", tpm.port(), "'"));
  if (r.exit_code != 0) {
    return absl::InternalError(absl::StrCat(args, ": exit ", r.exit_code, ": ", r.output));
  }
  return r.output;
}

// SetClockAhead moves `tpm`'s Clock `ms` ahead (tpm2_readclock, then tpm2_setclock).
inline absl::Status SetClockAhead(const ::hwid::testing::Swtpm& tpm, uint64_t ms) {
  absl::StatusOr<std::string> out = Tpm2Tool(tpm, "tpm2_readclock");
  if (!out.ok()) {
    return out.status();
  }
  const size_t at = out->find(" clock: ");
  if (at == std::string::npos) {
    return absl::InternalError("tpm2_readclock printed no clock: " + *out);
  }
  const uint64_t clock = std::strtoull(out->c_str() + at + 8, nullptr, 10);
  return Tpm2Tool(tpm, absl::StrCat("tpm2_setclock ", clock + ms)).status();
}

struct TpmClones {
  std::unique_ptr<::hwid::testing::Swtpm> a;  // the original, its Clock 60 s ahead
  std::unique_ptr<::hwid::testing::Swtpm> b;  // the copy, behind A in the same power cycle
};

// MakeClones starts swtpm A, runs `prepare` on it (e.g. a first attestation, which creates and
// persists the AK), stops A, starts B from a copy of A's state, starts A again, and moves A's Clock
// 60 s ahead (less than the server's real-time tolerance), so that B is behind A with the same
// resetCount and restartCount: two diverging histories of one TPM.
inline absl::StatusOr<TpmClones> MakeClones(
    const std::function<absl::Status(const ::hwid::testing::Swtpm&)>& prepare) {
  TpmClones c;
  absl::StatusOr<std::unique_ptr<::hwid::testing::Swtpm>> a = ::hwid::testing::Swtpm::Start();
  if (!a.ok()) {
    return a.status();
  }
  c.a = std::move(*a);
  if (absl::Status st = prepare(*c.a); !st.ok()) {
    return st;
  }
  if (absl::Status st = c.a->Stop(); !st.ok()) {
    return st;
  }
  absl::StatusOr<std::unique_ptr<::hwid::testing::Swtpm>> b =
      ::hwid::testing::Swtpm::StartFrom(c.a->dir());
  if (!b.ok()) {
    return b.status();
  }
  c.b = std::move(*b);
  if (absl::Status st = c.a->Restart(); !st.ok()) {
    return st;
  }
  if (absl::Status st = SetClockAhead(*c.a, 60'000); !st.ok()) {
    return st;
  }
  return c;
}

}  // namespace hwid::attestation::testing

#endif  // HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_CLONE_TESTING_H_

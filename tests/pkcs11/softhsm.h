// A private SoftHSM2 token for tests: its own SOFTHSM2_CONF and token directory in a fresh
// temporary directory, one initialised token (softhsm2-util --init-token), removed at the end.
//
// SOFTHSM2_CONF is process-wide, so use one SoftHsm per test binary (GlobalSoftHsm()).
#ifndef HWID_TESTS_PKCS11_SOFTHSM_H_
#define HWID_TESTS_PKCS11_SOFTHSM_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tests/testing/run_shell.h"

namespace hwid::testing {

class SoftHsm {
 public:
  static constexpr char kModule[] = "/usr/lib/softhsm/libsofthsm2.so";
  static constexpr char kUtil[] = "/usr/bin/softhsm2-util";

  // Start creates DIR=mkdtemp($TMPDIR/hwid-softhsm-XXXXXX), writes DIR/softhsm2.conf
  // (tokendir DIR/tokens, file object store), exports SOFTHSM2_CONF and runs softhsm2-util
  // --init-token --free --label `label` --pin `pin` --so-pin `so_pin`. FailedPrecondition when
  // SoftHSM2 is not installed.
  static absl::StatusOr<std::unique_ptr<SoftHsm>> Start(const std::string& label,
                                                        const std::string& pin,
                                                        const std::string& so_pin);
  ~SoftHsm();

  const std::string& dir() const { return dir_; }
  const std::string& label() const { return label_; }
  const std::string& pin() const { return pin_; }
  // uri is "pkcs11:token=LABEL?module-path=...&pin-value=PIN".
  std::string uri() const;
  // uri_no_pin is the same without pin-value.
  std::string uri_no_pin() const;
  // LogOutThisProcess logs this process out of the token (C_Logout on a session of the already
  // loaded module): PKCS#11 login state is per process, so this is how a test gets a token that
  // checks the next PIN. OK when nobody was logged in.
  absl::Status LogOutThisProcess() const;

 private:
  SoftHsm(std::string dir, std::string label, std::string pin)
      : dir_(std::move(dir)), label_(std::move(label)), pin_(std::move(pin)) {}
  std::string dir_;
  std::string label_;
  std::string pin_;
};

// SoftHsmAvailable returns true when SoftHSM2 is installed (module and softhsm2-util).
bool SoftHsmAvailable();

}  // namespace hwid::testing

// HWID_REQUIRE_SOFTHSM(), in a fixture's SetUp or a test body (GoogleTest included), skips the
// test when SoftHSM2 is not installed, but fails it under CI=true (RunningInCi).
#define HWID_REQUIRE_SOFTHSM()                                                       \
  do {                                                                               \
    if (!::hwid::testing::SoftHsmAvailable()) {                                      \
      if (::hwid::testing::RunningInCi()) {                                          \
        FAIL() << "SoftHSM2 is required when CI=true (apt-get install softhsm2)";   \
      }                                                                              \
      GTEST_SKIP() << "SoftHSM2 not installed";                                      \
    }                                                                                \
  } while (false)

#endif  // HWID_TESTS_PKCS11_SOFTHSM_H_

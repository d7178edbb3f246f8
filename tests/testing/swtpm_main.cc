// gtest main() for test binaries that need a TPM: starts one private swtpm (Swtpm::Start) for the
// whole binary before RUN_ALL_TESTS, exports its TCTI and CA paths into the environment, and
// stops it at exit. A missing template or swtpm is a hard failure (exit code 2), never a skip.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "tests/testing/swtpm.h"

namespace hwid::testing {
namespace {
Swtpm* g_swtpm = nullptr;
}  // namespace

Swtpm& GlobalSwtpm() {
  if (g_swtpm == nullptr) {
    std::fprintf(stderr,
                 "FATAL: hwid::testing::GlobalSwtpm() called but no swtpm was started: link the "
                 "test with hwid_testing_swtpm's main() (hwid_add_test(... SWTPM)) and do not call "
                 "it from static initialisers or re-executed death-test children\n");
    std::abort();
  }
  return *g_swtpm;
}

}  // namespace hwid::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Listing tests needs no TPM. A re-executed ("threadsafe") death-test child must not start a
  // second swtpm; it inherits the parent's environment (HWID_TCTI etc.) instead.
  if (GTEST_FLAG_GET(list_tests) || !GTEST_FLAG_GET(internal_run_death_test).empty()) {
    return RUN_ALL_TESTS();
  }

  absl::StatusOr<std::unique_ptr<hwid::testing::Swtpm>> swtpm = hwid::testing::Swtpm::Start();
  if (!swtpm.ok()) {
    std::fprintf(stderr, "FATAL: cannot start the test swtpm: %s\n",
                 std::string(swtpm.status().message()).c_str());
    return 2;
  }
  hwid::testing::Swtpm& s = **swtpm;
  hwid::testing::g_swtpm = &s;
  const std::string tcti = s.tcti();
  setenv("HWID_TCTI", tcti.c_str(), 1);
  setenv("TPM2TOOLS_TCTI", tcti.c_str(), 1);
  setenv("TPM2OPENSSL_TCTI", tcti.c_str(), 1);
  setenv("HWID_EK_CA", s.ek_ca_bundle().c_str(), 1);
  setenv("HWID_EK_ROOT", s.ek_root().c_str(), 1);
  std::fprintf(stderr, "[swtpm] pid %d, %s, state in %s\n", static_cast<int>(s.pid()),
               tcti.c_str(), s.dir().c_str());

  int rc = RUN_ALL_TESTS();

  hwid::testing::g_swtpm = nullptr;
  absl::Status stopped = s.Stop();
  if (!stopped.ok()) {
    std::fprintf(stderr, "ERROR: stopping the test swtpm: %s\n",
                 std::string(stopped.message()).c_str());
    rc = rc != 0 ? rc : 1;
  }
  swtpm->reset();
  return rc;
}

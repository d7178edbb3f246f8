// Writing NV indices of a test swtpm with tpm2-tools, as swtpm-setup/swtpm-lib.sh provisions EK
// certificates: for tests that put certificates as vendors ship them (TCG header, padding, junk,
// chain certificates) into a private swtpm.
#ifndef HWID_TESTS_TESTING_SWTPM_NV_H_
#define HWID_TESTS_TESTING_SWTPM_NV_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/bytes.h"
#include "tests/testing/run_shell.h"

namespace hwid::testing {

// HaveTpm2Tools: tpm2_nvdefine, tpm2_nvwrite and tpm2_nvundefine are on PATH.
inline bool HaveTpm2Tools() {
  return RunShell("command -v tpm2_nvdefine && command -v tpm2_nvwrite && "
                  "command -v tpm2_nvundefine")
             .exit_code == 0;
}

// WriteNvIndex (re)defines NV index `index` under the platform hierarchy with the attributes of
// an EK certificate index, sized to `data`, and writes `data` (tpm2_nvundefine, tpm2_nvdefine -C p,
// tpm2_nvwrite -C p). `scratch_dir` receives the data file. The caller must hold no other
// connection to the swtpm (it serves one at a time).
inline absl::Status WriteNvIndex(const std::string& tcti, const std::string& scratch_dir,
                                 uint32_t index, ByteSpan data) {
  const std::string nv = absl::StrFormat("0x%08x", index);
  const std::string path = absl::StrCat(scratch_dir, "/nv-", nv, ".bin");
  if (absl::Status st = WriteFile(path, data); !st.ok()) {
    return st;
  }
  const std::string cmd = absl::StrCat(
      "T='", tcti, "'; tpm2_nvundefine -T \"$T\" -C p ", nv, " >/dev/null 2>&1; set -e; ",
      "tpm2_nvdefine -T \"$T\" -C p -s ", data.size(),
      " -a 'ppwrite|ppread|ownerread|authread|no_da|platformcreate' ", nv, " >/dev/null; ",
      "tpm2_nvwrite -T \"$T\" -C p -i '", path, "' ", nv);
  ShellResult r = RunShell(cmd);
  if (r.exit_code != 0) {
    return absl::InternalError(absl::StrCat("writing NV ", nv, " with tpm2-tools failed (exit ",
                                            r.exit_code, "): ", r.output));
  }
  return absl::OkStatus();
}

}  // namespace hwid::testing

#endif  // HWID_TESTS_TESTING_SWTPM_NV_H_

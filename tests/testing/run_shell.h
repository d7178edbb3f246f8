// RunShell: the one way tests run an external command (openssl, tpm2-tools, the hwid CLI, ...);
// RunningInCi: whether a missing tool fails a test (CI=true) or skips it.
#ifndef HWID_TESTS_TESTING_RUN_SHELL_H_
#define HWID_TESTS_TESTING_RUN_SHELL_H_

#include <string>

namespace hwid::testing {

struct ShellResult {
  int exit_code = -1;  // the command's exit status; 128 + signal when it was killed
  std::string output;  // stdout and stderr, interleaved
};

// RunShell runs `cmd` with /bin/sh as `(cmd) 2>&1` and returns its exit status and output.
ShellResult RunShell(const std::string& cmd);

// RunningInCi is true when $CI is "true": a test that misses a tool or fixture then fails instead
// of skipping.
bool RunningInCi();

}  // namespace hwid::testing

#endif  // HWID_TESTS_TESTING_RUN_SHELL_H_

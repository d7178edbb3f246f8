// Helpers for the CLI-driven provider tests (provider_cli_test, provider_pkcs11_cli_test,
// provider_order_test): unmodified programs (openssl, curl, nginx) load hwid.so, each in a process
// the test starts and stops itself, bounded in time, on loopback ports picked free, in a private
// directory per test.
//
// Needs HWID_PROVIDER_DIR, HWID_PROVIDER_DOC (docs/provider.md) and, in a sanitized build,
// HWID_SANITIZER_PRELOAD as compile definitions, and the binary's swtpm (hwid_testing_swtpm's
// main()).
#ifndef HWID_TESTS_PROVIDER_CLI_SUPPORT_H_
#define HWID_TESTS_PROVIDER_CLI_SUPPORT_H_

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>

#include <cstddef>
#include <string>
#include <utility>

#include "tests/testing/run_shell.h"

namespace hwid::testing {

// SanitizerEnv prefixes a command that loads hwid.so. In a sanitized build the programs we start
// (openssl, curl, nginx) are not instrumented but hwid.so is: they need the sanitizer runtimes
// preloaded. Leak reports would be about those programs, so only errors count there. (tpm2-tools
// hang with the runtimes preloaded, so this is not set for the whole test.) "" otherwise.
std::string SanitizerEnv();

// ProviderOrder is the order of `default` and `hwid` in openssl.cnf's [provider_sect], i.e. the
// order in which OpenSSL activates them.
enum class ProviderOrder { kDefaultFirst, kHwidFirst };

// DocumentedOpensslCnf is the openssl.cnf block of docs/provider.md (the ```ini block after the
// "openssl.cnf snippet" marker) with only these changes: the `module` value is this build's
// hwid.so, the `tcti` value is `tcti`, the lines `hwid_extra` ("key = value\n" ...) follow the
// tcti line, and [provider_sect]'s two lines come in `order`. ADDs a failure and returns "" when
// the page has no such block or the block lacks one of those lines.
std::string DocumentedOpensslCnf(ProviderOrder order, const std::string& tcti,
                                 const std::string& hwid_extra);

// HaveTool is true when `name` is on $PATH or in /usr/sbin.
bool HaveTool(const char* name);

// FreePort returns a loopback TCP port that was free a moment ago.
int FreePort();
// PortOpen is true when something accepts connections on 127.0.0.1:`port`.
bool PortOpen(int port);

// TransientCount returns the number of transient objects in the binary's swtpm (999 when the TPM
// cannot be asked).
size_t TransientCount();

// NginxConf is an nginx.conf for `nginx -p dir`: a master and `workers` workers in the
// foreground, logs and temporary files under `dir`, one TLS 1.2/1.3 server on 127.0.0.1:`port`
// with `dir`/server.crt and the key file `key_file`, answering every request 200 `reply`.
std::string NginxConf(const std::string& dir, int workers, int port, const std::string& key_file,
                      const std::string& reply);

// SClientGetCommand is an `openssl s_client` command (default provider unless `client_args` says
// otherwise, e.g. a client certificate and key) that sends GET / to 127.0.0.1:`port` and checks the
// server's certificate against ca.crt and IP 127.0.0.1; `version` is the s_client flag
// (-tls1_3, -tls1_2).
std::string SClientGetCommand(const std::string& client_args, int port,
                              const std::string& version);
// ExpectSClientGetOk EXPECTs that the SClientGetCommand run `r` succeeded: verified, the TLS
// version of `version`, `expect_sig` in its -brief output, and the server's HTTP answer.
void ExpectSClientGetOk(const ShellResult& r, const std::string& version,
                        const std::string& expect_sig);

// Background is one server process started by this test (sh -c "exec SanitizerEnv() cmd"), its
// output in a log file. The destructor stops it (SIGTERM).
class Background {
 public:
  Background(const std::string& cmd, const std::string& log);
  ~Background() { Stop(SIGTERM); }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  // WaitForLog waits (bounded) until the log contains `what` (s_server prints ACCEPT when it
  // listens; probing its port would use up its -naccept budget).
  bool WaitForLog(const std::string& what);
  // WaitForPort waits (bounded) until `port` accepts connections; false when the process exited.
  bool WaitForPort(int port);
  // Wait waits (bounded) for the process to exit by itself; returns its exit code, or -1 when it
  // was killed by a signal (a crash at exit counts as a failure) or did not exit in time.
  int Wait(int seconds = 20);
  // Stop sends `sig` to its own process only and waits for it (bounded), then SIGKILL.
  int Stop(int sig);
  std::string Log() const;

 private:
  std::string log_;
  pid_t pid_ = -1;
  int status_ = 0;
};

// ProviderCliTest is the fixture: OPENSSL_MODULES points at hwid.so's directory and the system
// openssl.cnf stays out of the way (tests set OPENSSL_CONF where they need one); each test gets
// its own directory dir_, kept when the test failed, and starts and ends with no transient object
// in the swtpm.
class ProviderCliTest : public ::testing::Test {
 protected:
  // `dir_prefix` names the test directories, /tmp/`dir_prefix`-XXXXXX.
  explicit ProviderCliTest(std::string dir_prefix) : dir_prefix_(std::move(dir_prefix)) {}

  static void SetUpTestSuite();
  // SetUp makes dir_ and ASSERTs the swtpm holds no transient object.
  void SetUp() override;
  // TearDown EXPECTs no transient object is left (and flushes any), then removes dir_ unless the
  // test failed. Nothing when SetUp did not make dir_ (a skipped test).
  void TearDown() override;

  // Run runs a shell command in dir_, bounded in time. The command must not contain single
  // quotes (it is passed to sh -c '...'); quote URIs with double quotes. Every command but
  // tpm2-tools, pkcs11-tool and a plain curl client (they do not load hwid.so, and curl and
  // tpm2-tools hang with the sanitizer runtimes preloaded: curl's resolver thread never returns)
  // runs with SanitizerEnv().
  ShellResult Run(const std::string& cmd, int seconds = 60);
  // MustRun ASSERTs that Run(cmd) exits with 0.
  void MustRun(const std::string& cmd, int seconds = 60);
  // MustFail runs a command that must fail cleanly: non-zero exit, not by a signal (the shell
  // reports 128 + signal, timeout 124), no crash report; returns its output.
  std::string MustFail(const std::string& cmd);

  // Text is the content of dir_/`name` ("" when it cannot be read).
  std::string Text(const std::string& name);
  // Write ASSERTs that `text` was written to dir_/`name`.
  void Write(const std::string& name, const std::string& text);

  // WriteOpensslCnf writes dir_/`name`, the documented openssl.cnf (DocumentedOpensslCnf) with
  // the providers in `order`, the TCTI `tcti` ("" = the binary's swtpm) and the lines
  // `hwid_extra`, and returns its path.
  std::string WriteOpensslCnf(const std::string& name, const std::string& hwid_extra = "",
                              ProviderOrder order = ProviderOrder::kDefaultFirst,
                              const std::string& tcti = "");

  std::string dir_;

 private:
  std::string dir_prefix_;
};

}  // namespace hwid::testing

// HWID_REQUIRE_TOOL(name), in a test body, skips the test without the program `name`, but fails
// it under CI=true.
#define HWID_REQUIRE_TOOL(name)                                                  \
  do {                                                                           \
    if (!::hwid::testing::HaveTool(name)) {                                      \
      if (::hwid::testing::RunningInCi()) {                                      \
        FAIL() << name << " is missing (CI=true: install it, scripts/lib.sh)";   \
      }                                                                          \
      GTEST_SKIP() << name << " is missing";                                     \
    }                                                                            \
  } while (false)

#endif  // HWID_TESTS_PROVIDER_CLI_SUPPORT_H_
